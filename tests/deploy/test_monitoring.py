"""The monitoring profile (Prometheus and Grafana), proven statically.

promtool (Debian's ``prometheus`` package; ``make services`` installs it) checks the
Prometheus configuration and every PromQL query of the dashboard (as recording rules);
a JSON schema checks the dashboard's structure; and the queries may only name metrics the
service really exports.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from service.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "lstm-serve.json"

DASHBOARD_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["uid", "title", "schemaVersion", "panels", "templating", "time"],
    "properties": {
        "uid": {"type": "string", "pattern": "^[a-z0-9-]{1,40}$"},
        "title": {"type": "string", "minLength": 1},
        "schemaVersion": {"type": "integer", "minimum": 36},
        "refresh": {"type": "string"},
        "time": {
            "type": "object",
            "required": ["from", "to"],
            "properties": {"from": {"type": "string"}, "to": {"type": "string"}},
        },
        "templating": {
            "type": "object",
            "required": ["list"],
            "properties": {
                "list": {
                    "type": "array",
                    "items": {"type": "object", "required": ["name", "type"]},
                }
            },
        },
        "panels": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["id", "type", "title", "gridPos", "datasource", "targets"],
                "properties": {
                    "id": {"type": "integer", "minimum": 1},
                    "type": {"enum": ["timeseries", "stat", "gauge", "bargauge", "table"]},
                    "title": {"type": "string", "minLength": 1},
                    "gridPos": {
                        "type": "object",
                        "required": ["x", "y", "w", "h"],
                        "properties": {
                            "x": {"type": "integer", "minimum": 0, "maximum": 23},
                            "y": {"type": "integer", "minimum": 0},
                            "w": {"type": "integer", "minimum": 1, "maximum": 24},
                            "h": {"type": "integer", "minimum": 1},
                        },
                    },
                    "datasource": {
                        "type": "object",
                        "required": ["type", "uid"],
                        "properties": {"type": {"const": "prometheus"}},
                    },
                    "targets": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["refId", "expr"],
                            "properties": {"expr": {"type": "string", "minLength": 1}},
                        },
                    },
                },
            },
        },
    },
}


def dashboard() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return doc


def queries() -> list[str]:
    return [t["expr"] for p in dashboard()["panels"] for t in p["targets"]]


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing (make services installs Debian's prometheus)")
        pytest.skip("promtool is missing (make services installs Debian's prometheus)")
    return found


def test_prometheus_config_is_valid() -> None:
    result = subprocess.run(
        [promtool(), "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_refuses_a_broken_config(tmp_path: Path) -> None:
    broken = tmp_path / "prometheus.yml"
    broken.write_text((DEPLOY / "prometheus.yml").read_text().replace("scrape_configs", "scrape"))
    result = subprocess.run(
        [promtool(), "check", "config", str(broken)], capture_output=True, timeout=60
    )
    assert result.returncode != 0


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """Each query, with Grafana's variables filled in, as a recording rule promtool checks."""
    rules = []
    for i, expr in enumerate(queries()):
        concrete = expr.replace("$__rate_interval", "1m").replace("$instance", ".*")
        assert "$" not in concrete, expr
        rules.append({"record": f"dashboard:query_{i}", "expr": concrete})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_matches_its_schema_and_panels_do_not_overlap() -> None:
    doc = dashboard()
    jsonschema.validate(doc, DASHBOARD_SCHEMA)
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in doc["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine


def test_dashboard_schema_rejects_a_broken_dashboard() -> None:
    doc = dashboard()
    del doc["panels"][0]["targets"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, DASHBOARD_SCHEMA)


def exported_names() -> set[str]:
    metrics = Metrics()
    metrics.observe_request("GET", "/healthz", 200, 0.001)
    metrics.observe_rpc("inference.GRPCInferenceService", "ModelInfer", "OK", 0.001)
    metrics.observe_run("m:1", 1, 0.0, 0.0)
    return {s.name for family in metrics.registry.collect() for s in family.samples}


def test_dashboard_queries_name_only_exported_metrics() -> None:
    exported = exported_names()
    named = {n for q in queries() for n in re.findall(r"\b(lstm_serve_[a-z_]+)", q)}
    assert named, "no lstm_serve metric in the dashboard"
    assert named <= exported, named - exported
    shown = {re.sub(r"_(bucket|count|sum|total)$", "", n) for n in named}
    assert shown >= CORE_FAMILIES, CORE_FAMILIES - shown


CORE_FAMILIES = {
    "lstm_serve_requests",
    "lstm_serve_request_duration_seconds",
    "lstm_serve_grpc_requests",
    "lstm_serve_grpc_request_duration_seconds",
    "lstm_serve_sessions_active",
    "lstm_serve_sessions_created",
    "lstm_serve_sessions_expired",
    "lstm_serve_sessions_evicted",
    "lstm_serve_inference_batch_size",
    "lstm_serve_inference_queue_wait_seconds",
    "lstm_serve_model_run_seconds",
    "lstm_serve_model_process_exits",
}
"""The families the dashboard must show."""


def test_compose_profile_wires_prometheus_and_grafana() -> None:
    services = yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["api"] and str(sd["port"]) in services["api"]["expose"]
    assert (
        "./deploy/prometheus.yml:/etc/prometheus/prometheus.yml:ro"
        in services["prometheus"]["volumes"]
    )
    grafana = services["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"])
    assert mounts["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "dashboards" / "lstm-serve.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == mounts["./deploy/grafana/dashboards"]
    datasource = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == mounts["./deploy/grafana/dashboards"] + "/" + DASHBOARD.name
