"""The deployment files, proven without a Docker engine or a cluster.

hadolint lints the Dockerfile, kubernetes-validate checks every manifest against the
Kubernetes OpenAPI schemas it ships (strict: unknown fields fail), docker-compose.yml is
validated against the Compose specification's JSON schema (the copy check-jsonschema
vendors), and nginx checks its configuration. The remaining tests check that the files
agree with each other and with the service (ports, paths, probes, settings).
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from service.settings import Settings
from tests.deploy.dockerfile import parse_dockerfile
from tests.deploy.nginx import local_nginx_conf, nginx_binary

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
K8S_VERSIONS = ["1.30.0", "1.37.0"]
"""The oldest Kubernetes the manifests claim (deploy/README.md) and the newest schema shipped."""

SETTING_VARS = {f"LSTM_SERVE_{name.upper()}" for name in Settings.model_fields}


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (make install-dev)")
    return found


def _documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in MANIFESTS:
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _kind(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for d in _documents()
        if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# -- Dockerfile ---------------------------------------------------------------------------------


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", "--failure-threshold", "style", "Dockerfile"],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""


def test_dockerfile_is_multi_stage_slim_non_root_and_torch_free() -> None:
    _, stages = parse_dockerfile(DEPLOY / "Dockerfile")
    assert len(stages) >= 2
    build, final = stages[0], stages[-1]
    assert all(s.base.startswith("python:3.11-slim") for s in stages), [s.base for s in stages]
    installs = [i.args for s in stages for i in s.all("RUN") if "pip install" in i.args]
    assert installs and all(i.rstrip().endswith(" .") for i in installs), installs
    assert not any("[" in i or "torch" in i for i in installs)
    assert not final.all("RUN") or all("pip" not in i.args for i in final.all("RUN"))
    assert any(f"--from={build.name}" in i.args for i in final.all("COPY"))
    assert any(i.words()[0] == "model_store" for i in final.all("COPY"))

    user = final.last("USER").args.split(":")[0]
    assert user not in ("root", "0")
    assert final.last("STOPSIGNAL").args == "SIGTERM"
    assert final.last("EXPOSE").args == "8000 8001"  # HTTP, gRPC
    assert final.env()["LSTM_SERVE_MODEL_STORE"] == "/app/model_store"

    health = final.last("HEALTHCHECK").args
    assert "/healthz" in health and "curl" not in health and "wget" not in health
    assert final.last("CMD").words() == [
        "lstm-serve",
        "serve",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]


def test_dockerignore_keeps_what_the_build_copies() -> None:
    from tests.deploy.dockerfile import dockerignore_excludes, is_excluded

    rules = dockerignore_excludes(REPO / ".dockerignore")
    for kept in ("pyproject.toml", "README.md", "service/app.py", "model_store/x/1/model.onnx"):
        assert not is_excluded(kept, rules), kept
    for dropped in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "service/__pycache__/a"):
        assert is_excluded(dropped, rules), dropped


# -- Kubernetes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_strictly(path: Path, version: str) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name} {doc['kind']}/{doc['metadata']['name']}: {exc.message}")


def test_api_deployment_probes_drain_and_resources() -> None:
    dep = _kind("Deployment", "lstm-serve")
    pod = dep["spec"]["template"]["spec"]
    (api,) = pod["containers"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= set(api["resources"]["requests"])
    assert "memory" in api["resources"]["limits"]
    pre_stop = api["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    graceful = 20  # lstm-serve serve --graceful-timeout default
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + graceful
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert dep["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    assert ports == {"http": 8000, "grpc": 8001}
    env_from = {e.get("configMapRef", e.get("secretRef", {})).get("name") for e in api["envFrom"]}
    assert _kind("ConfigMap")["metadata"]["name"] in env_from


def test_selectors_and_targets_line_up() -> None:
    dep = _kind("Deployment", "lstm-serve")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = _kind("Service", "lstm-serve")
    assert svc["spec"]["selector"].items() <= labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    pdb = _kind("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()

    hpa = _kind("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "lstm-serve")
    assert hpa["spec"]["minReplicas"] >= 2

    redis_dep = _kind("Deployment", "lstm-serve-redis")
    redis_svc = _kind("Service", "lstm-serve-redis")
    redis_labels = redis_dep["spec"]["template"]["metadata"]["labels"]
    assert redis_svc["spec"]["selector"].items() <= redis_labels.items()
    assert not svc["spec"]["selector"].items() <= redis_labels.items()
    store = _kind("ConfigMap")["data"]["LSTM_SERVE_SESSION_STORE"]
    assert store.startswith(f"redis://{redis_svc['metadata']['name']}:6379/")


def test_configmap_holds_valid_settings_only(monkeypatch: pytest.MonkeyPatch) -> None:
    data: dict[str, str] = _kind("ConfigMap")["data"]
    assert set(data) <= SETTING_VARS, set(data) - SETTING_VARS
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.session_store == data["LSTM_SERVE_SESSION_STORE"]


# -- Compose ------------------------------------------------------------------------------------


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    return doc


def test_compose_file_matches_the_compose_specification() -> None:
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath(
        "compose-spec.json"
    )
    schema = json.loads(schema_file.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(_compose()), key=str)
    assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_compose_schema_rejects_a_broken_file() -> None:
    """The schema is really applied: a misspelt key fails."""
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor").joinpath(
        "compose-spec.json"
    )
    schema = json.loads(schema_file.read_text())
    broken = _compose()
    broken["services"]["api"]["replica"] = 3
    assert not jsonschema.validators.validator_for(schema)(schema).is_valid(broken)


def _compose_default(value: str) -> str:
    """A compose value as compose reads it with nothing set in the shell
    (``${VAR:-default}`` is ``default``)."""
    m = re.fullmatch(r"\$\{[A-Z0-9_]+:-(.*)\}", value)
    return m.group(1) if m else value


def test_compose_cluster_profile_is_a_cluster_the_api_can_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = _compose()["services"]
    nodes = [n for n, s in services.items() if "cluster" in s.get("profiles", [])]
    data = [n for n in nodes if n.startswith("redis-node-")]
    assert len(data) == 6
    for name in data:
        cmd = services[name]["command"]
        assert cmd[cmd.index("--cluster-enabled") + 1] == "yes"
        assert cmd[cmd.index("--cluster-require-full-coverage") + 1] == "no"
    init = " ".join(services["redis-cluster-init"]["command"])
    assert "--cluster-replicas 1" in init and "--cluster create" in init
    assert set(services["redis-cluster-init"]["depends_on"]) == set(data)
    url = "redis+cluster://redis-node-1:6379,redis-node-2:6379"
    assert url in (REPO / "docker-compose.yml").read_text()
    monkeypatch.setenv("LSTM_SERVE_SESSION_STORE", url)
    assert Settings().session_store == url


def test_compose_runs_replicas_on_redis_behind_nginx(monkeypatch: pytest.MonkeyPatch) -> None:
    services = _compose()["services"]
    assert {n for n, s in services.items() if "profiles" not in s} == {"redis", "api", "nginx"}
    api, nginx = services["api"], services["nginx"]
    assert api["deploy"]["replicas"] >= 2
    assert "ports" not in api and "container_name" not in api
    assert (REPO / api["build"]["context"] / api["build"]["dockerfile"]).resolve() == (
        DEPLOY / "Dockerfile"
    )
    env = {k: _compose_default(v) for k, v in api["environment"].items()}
    assert env["LSTM_SERVE_SESSION_STORE"] == "redis://redis:6379/0"
    assert set(env) <= SETTING_VARS
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    Settings()

    assert nginx["ports"] == ["8000:8000", "8001:8001"]
    assert "./deploy/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    for name, svc in services.items():
        assert "healthcheck" in svc, name
        for dep, cond in svc.get("depends_on", {}).items():
            assert cond == {"condition": "service_healthy"}, (name, dep)
            assert "healthcheck" in services[dep]
    assert services["api"]["depends_on"].keys() == {"redis"}
    assert services["nginx"]["depends_on"].keys() == {"api"}
    assert "/readyz" in " ".join(api["healthcheck"]["test"])


# -- nginx --------------------------------------------------------------------------------------


def test_nginx_conf_routes_websockets_and_retries_on_errors() -> None:
    conf = (DEPLOY / "nginx.conf").read_text()
    assert "server api:8000" in conf
    assert "listen 8000;" in conf
    assert "location ~ ^/v1/sessions/[^/]+/stream$" in conf
    assert "proxy_set_header Upgrade $http_upgrade;" in conf
    assert "proxy_next_upstream error timeout" in conf
    assert "non_idempotent" not in conf  # a step that reached a replica is never re-sent
    # gRPC: h2c in and out, to every replica's gRPC door
    assert "server api:8001" in conf
    assert "listen 8001;" in conf and "http2 on;" in conf
    assert "grpc_pass grpc://lstm_serve_grpc;" in conf
    assert "client_max_body_size 0;" in conf  # a stream's messages are one body to nginx


def test_nginx_accepts_the_conf(tmp_path: Path) -> None:
    nginx = nginx_binary()
    if nginx is None:
        pytest.fail("nginx is not installed (Debian package nginx; .ci/run installs it)")
    conf = local_nginx_conf(DEPLOY / "nginx.conf", tmp_path, 18080, [18081, 18082])
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
