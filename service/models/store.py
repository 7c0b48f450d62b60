"""Finding model versions on disk: discovery, manifest parsing, sha256 verification, writing.

This module never loads onnxruntime; ``service.models.registry`` holds loaded models.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from service.errors import ModelStoreError
from service.models.manifest import MANIFEST_FILE, Manifest, is_valid_model_name, is_version_number

log = logging.getLogger(__name__)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class StoredVersion:
    """A verified version on disk: its manifest and the path of its ONNX file."""

    manifest: Manifest
    onnx_path: Path


@dataclass
class ScanResult:
    versions: list[StoredVersion] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def read_version(directory: Path) -> StoredVersion:
    """Read and verify one ``<name>/<version>/`` directory, or raise ModelStoreError."""
    manifest_path = directory / MANIFEST_FILE
    try:
        raw = manifest_path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelStoreError(f"{manifest_path}: cannot read manifest ({exc.strerror})") from exc
    try:
        manifest = Manifest.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise ModelStoreError(f"{manifest_path}: invalid manifest: {problems}") from exc
    if manifest.name != directory.parent.name or str(manifest.version) != directory.name:
        raise ModelStoreError(
            f"{manifest_path}: manifest says {manifest.name}/{manifest.version}, "
            f"directory is {directory.parent.name}/{directory.name}"
        )
    onnx_path = directory / manifest.onnx_file
    if not onnx_path.is_file():
        raise ModelStoreError(f"{onnx_path}: ONNX file missing")
    actual = sha256_file(onnx_path)
    if actual != manifest.sha256:
        raise ModelStoreError(
            f"{onnx_path}: sha256 mismatch (manifest {manifest.sha256[:12]}…, file {actual[:12]}…)"
        )
    return StoredVersion(manifest=manifest, onnx_path=onnx_path)


def scan(root: Path) -> ScanResult:
    """Every valid version under ``root``; broken ones are reported, never fatal."""
    result = ScanResult()
    if not root.is_dir():
        result.errors.append(f"{root}: model store directory not found")
        return result
    for model_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if model_dir.name.startswith("."):
            continue
        if not is_valid_model_name(model_dir.name):
            result.errors.append(f"{model_dir}: not a valid model name, skipped")
            continue
        for version_dir in sorted(p for p in model_dir.iterdir() if p.is_dir()):
            if not is_version_number(version_dir.name):
                result.errors.append(f"{version_dir}: not a version number, skipped")
                continue
            try:
                result.versions.append(read_version(version_dir))
            except ModelStoreError as exc:
                result.errors.append(str(exc))
    for err in result.errors:
        log.warning("model store: %s", err)
    return result


def next_version(root: Path, name: str) -> int:
    model_dir = root / name
    if not model_dir.is_dir():
        return 1
    numbers = [int(p.name) for p in model_dir.iterdir() if p.is_dir() and is_version_number(p.name)]
    return max(numbers, default=0) + 1


def write_version(
    root: Path, manifest: Manifest, onnx_bytes: bytes, files: dict[str, bytes] | None = None
) -> Path:
    """Write a new version atomically (temp dir + rename); the manifest's sha256 is set here.

    ``files``: further plain files of the version (the held-out sample the manifest names).
    Refuses to overwrite an existing version.
    """
    if not is_valid_model_name(manifest.name):
        raise ModelStoreError(f"invalid model name {manifest.name!r}")
    target = root / manifest.name / str(manifest.version)
    if target.exists():
        raise ModelStoreError(f"{target}: version already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    final = manifest.model_copy(update={"sha256": digest})
    tmp = Path(tempfile.mkdtemp(prefix=f".{manifest.name}-", dir=target.parent))
    try:
        (tmp / final.onnx_file).write_bytes(onnx_bytes)
        for file_name, content in (files or {}).items():
            if "/" in file_name or file_name.startswith(".") or file_name == MANIFEST_FILE:
                raise ModelStoreError(f"{file_name!r}: not a plain extra file name")
            (tmp / file_name).write_bytes(content)
        (tmp / MANIFEST_FILE).write_text(
            json.dumps(final.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8"
        )
        os.replace(tmp, target)
    except BaseException:
        for p in tmp.iterdir():
            p.unlink()
        tmp.rmdir()
        raise
    read_version(target)
    return target
