"""The model store's refusals: every broken version is reported by file, the rest still loads."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from service.errors import ModelStoreError
from service.models.manifest import MANIFEST_FILE
from service.models.registry import ModelRegistry
from service.models.store import next_version, read_version, scan, sha256_file, write_version
from tests.tiny_models import write_tiny_model


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    write_tiny_model(root, "good_lstm", "lstm", seed=1)
    write_tiny_model(root, "good_gru", "gru", seed=2)
    write_tiny_model(root, "victim", "lstm", seed=3)
    return root


def _manifest(root: Path, name: str, version: int = 1) -> dict[str, object]:
    data = json.loads((root / name / str(version) / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _write_manifest(root: Path, name: str, data: dict[str, object], version: int = 1) -> None:
    path = root / name / str(version) / MANIFEST_FILE
    path.write_text(json.dumps(data), encoding="utf-8")


def test_clean_store_scans_without_errors(store: Path) -> None:
    result = scan(store)
    assert result.errors == []
    assert {v.manifest.name for v in result.versions} == {"good_lstm", "good_gru", "victim"}
    for v in result.versions:
        assert sha256_file(v.onnx_path) == v.manifest.sha256


def test_bad_sha256_is_refused_naming_the_file(
    store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    onnx_path = store / "victim" / "1" / "model.onnx"
    onnx_path.write_bytes(onnx_path.read_bytes() + b"\0")
    with pytest.raises(ModelStoreError, match="sha256 mismatch") as info:
        read_version(store / "victim" / "1")
    assert str(onnx_path) in str(info.value)
    with caplog.at_level(logging.WARNING, logger="service.models.store"):
        result = scan(store)
    assert {v.manifest.name for v in result.versions} == {"good_lstm", "good_gru"}
    assert len(result.errors) == 1 and str(onnx_path) in result.errors[0]
    assert any("sha256 mismatch" in r.getMessage() for r in caplog.records)


def test_manifest_sha256_not_hex_is_refused(store: Path) -> None:
    data = _manifest(store, "victim")
    data["sha256"] = "not-a-digest"
    _write_manifest(store, "victim", data)
    with pytest.raises(ModelStoreError, match="sha256"):
        read_version(store / "victim" / "1")


@pytest.mark.parametrize("field", ["sha256", "state", "graph", "input", "parity", "cell"])
def test_missing_manifest_field_is_refused(store: Path, field: str) -> None:
    data = _manifest(store, "victim")
    del data[field]
    _write_manifest(store, "victim", data)
    manifest_path = store / "victim" / "1" / MANIFEST_FILE
    with pytest.raises(ModelStoreError, match="invalid manifest") as info:
        read_version(store / "victim" / "1")
    assert str(manifest_path) in str(info.value)
    assert field in str(info.value)
    result = scan(store)
    assert {v.manifest.name for v in result.versions} == {"good_lstm", "good_gru"}
    assert len(result.errors) == 1 and field in result.errors[0]


def test_unknown_manifest_field_is_refused(store: Path) -> None:
    data = _manifest(store, "victim")
    data["surprise"] = 1
    _write_manifest(store, "victim", data)
    with pytest.raises(ModelStoreError, match="surprise"):
        read_version(store / "victim" / "1")


def test_inconsistent_manifest_is_refused(store: Path) -> None:
    data = _manifest(store, "victim")
    feedback = data["feedback"]
    assert isinstance(feedback, dict)
    feedback["output_index"] = [0]
    _write_manifest(store, "victim", data)
    with pytest.raises(ModelStoreError, match="output_index"):
        read_version(store / "victim" / "1")


def test_unparseable_manifest_is_refused(store: Path) -> None:
    (store / "victim" / "1" / MANIFEST_FILE).write_text("{not json", encoding="utf-8")
    with pytest.raises(ModelStoreError, match="invalid manifest"):
        read_version(store / "victim" / "1")
    assert len(scan(store).versions) == 2


def test_missing_manifest_is_refused(store: Path) -> None:
    (store / "victim" / "1" / MANIFEST_FILE).unlink()
    with pytest.raises(ModelStoreError, match="cannot read manifest"):
        read_version(store / "victim" / "1")
    assert len(scan(store).versions) == 2


def test_missing_onnx_file_is_refused(store: Path) -> None:
    onnx_path = store / "victim" / "1" / "model.onnx"
    onnx_path.unlink()
    with pytest.raises(ModelStoreError, match="ONNX file missing") as info:
        read_version(store / "victim" / "1")
    assert str(onnx_path) in str(info.value)
    assert len(scan(store).versions) == 2


def test_manifest_in_the_wrong_directory_is_refused(store: Path) -> None:
    data = _manifest(store, "victim")
    data["version"] = 7
    _write_manifest(store, "victim", data)
    with pytest.raises(ModelStoreError, match="directory is victim/1"):
        read_version(store / "victim" / "1")


def test_odd_directories_are_reported_and_skipped(store: Path) -> None:
    (store / "Bad Name").mkdir()
    (store / "good_gru" / "latest").mkdir()
    (store / "good_gru" / "01").mkdir()
    result = scan(store)
    assert len(result.versions) == 3
    assert len(result.errors) == 3


def test_missing_store_is_an_error_not_a_crash(tmp_path: Path) -> None:
    result = scan(tmp_path / "nowhere")
    assert result.versions == []
    assert "not found" in result.errors[0]


def test_broken_onnx_with_correct_sha256_is_refused_by_the_registry(store: Path) -> None:
    """scan does not parse ONNX, so garbage with a matching digest passes it; loading refuses."""
    onnx_path = store / "victim" / "1" / "model.onnx"
    onnx_path.write_bytes(b"this is not an onnx model")
    data = _manifest(store, "victim")
    data["sha256"] = sha256_file(onnx_path)
    _write_manifest(store, "victim", data)
    assert len(scan(store).versions) == 3
    registry = ModelRegistry(store)
    registry.load()
    assert registry.names() == ["good_gru", "good_lstm"]
    assert len(registry.errors) == 1
    assert str(onnx_path) in registry.errors[0]
    assert "onnxruntime cannot load" in registry.errors[0]


def test_graph_not_matching_the_manifest_is_refused_by_the_registry(store: Path) -> None:
    data = _manifest(store, "victim")
    graph = data["graph"]
    assert isinstance(graph, dict)
    graph["input"] = "features"
    _write_manifest(store, "victim", data)
    registry = ModelRegistry(store)
    registry.load()
    assert "victim" not in registry.names()
    assert "do not match the manifest" in registry.errors[0]


def test_write_version_refuses_to_overwrite(store: Path) -> None:
    stored = read_version(store / "good_lstm" / "1")
    with pytest.raises(ModelStoreError, match="already exists"):
        write_version(store, stored.manifest, stored.onnx_path.read_bytes())


def test_write_version_sets_the_digest_and_next_version_counts_up(store: Path) -> None:
    stored = read_version(store / "good_lstm" / "1")
    assert next_version(store, "good_lstm") == 2
    assert next_version(store, "brand_new") == 1
    manifest = stored.manifest.model_copy(update={"version": 2, "sha256": "0" * 64})
    target = write_version(store, manifest, stored.onnx_path.read_bytes())
    again = read_version(target)
    assert again.manifest.sha256 == stored.manifest.sha256
    assert next_version(store, "good_lstm") == 3
    assert not [p for p in (store / "good_lstm").iterdir() if p.name.startswith(".")]
