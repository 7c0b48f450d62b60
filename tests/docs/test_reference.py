"""The API reference (docs/api.md) and what the service publishes and raises agree.

Every operation in ``/openapi.json`` is named in the reference as `` `METHOD /path` ``, and
every operation the reference names exists (the WebSocket route, which OpenAPI cannot
describe, excepted). Every error ``code`` the service can answer is in the reference's
error table, and every code in that table is one the service can answer.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.routing import WebSocketRoute

import service
from service import errors
from service.http import websocket
from service.http.app import create_app
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / "docs" / "api.md"
SERVICE = Path(service.__file__).resolve().parent

OPERATION = re.compile(r"`(GET|POST|PUT|PATCH|DELETE|WS) (/[^`\s?]*)`")


def reference() -> str:
    return REFERENCE.read_text(encoding="utf-8")


def documented_operations() -> set[tuple[str, str]]:
    return {(method, path) for method, path in OPERATION.findall(reference())}


def published_operations(tiny_store: Path) -> set[tuple[str, str]]:
    schema = create_app(Settings(model_store=tiny_store, request_log=False)).openapi()
    return {
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }


def documented_codes() -> set[str]:
    text = reference()
    section = text.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE))


def service_codes() -> set[str]:
    """Every problem ``code`` the service can answer, read from the code that sets them."""
    codes: set[str] = set()
    for cls in _subclasses(errors.ServeError):
        if cls is errors.SessionGone:
            codes |= {"session_expired", "session_evicted"}
        elif cls.__name__ == "SessionCorrupt":
            codes.add(cls("record").code)
        elif cls.code != errors.ServeError.code:
            codes.add(cls.code)
    sources = [p for p in SERVICE.rglob("*.py") if "client" not in p.relative_to(SERVICE).parts]
    for path in sources:
        src = path.read_text(encoding="utf-8")
        codes |= set(re.findall(r'\bcode="([a-z_]+)"', src))
        for constant in re.findall(r"\.code = ([A-Z_]+)\b", src):  # exc.code = A_CONSTANT
            codes |= set(re.findall(rf'^{constant} = "([a-z_]+)"', src, re.MULTILINE))
    problems = (SERVICE / "http" / "problems.py").read_text(encoding="utf-8")
    codes |= set(re.findall(r'^\s+\d{3}: "([a-z_]+)",', problems, re.MULTILINE))
    codes |= set(re.findall(r'\.get\(status, "([a-z_]+)"\)', problems))
    codes |= set(
        re.findall(r'problem_body\(\s*\d{3},\s*"[^"]*",\s*"[^"]*",\s*"([a-z_]+)"', problems)
    )
    return codes


def _subclasses(cls: type[errors.ServeError]) -> list[type[errors.ServeError]]:
    found: list[type[errors.ServeError]] = []
    for sub in cls.__subclasses__():
        found.append(sub)
        found.extend(_subclasses(sub))
    return found


def test_every_published_operation_is_in_the_reference(tiny_store: Path) -> None:
    missing = published_operations(tiny_store) - documented_operations()
    assert not missing, f"in /openapi.json but not in docs/api.md: {sorted(missing)}"


def test_every_operation_in_the_reference_is_published(tiny_store: Path) -> None:
    published = published_operations(tiny_store)
    extra = {
        (method, path)
        for method, path in documented_operations()
        if method != "WS" and (method, path) not in published
    }
    assert not extra, f"in docs/api.md but not in /openapi.json: {sorted(extra)}"


def test_the_websocket_route_in_the_reference_exists() -> None:
    ws_paths = {r.path for r in websocket.router.routes if isinstance(r, WebSocketRoute)}
    documented = {path for method, path in documented_operations() if method == "WS"}
    assert documented
    assert documented <= ws_paths


def test_every_error_code_is_in_the_reference() -> None:
    missing = service_codes() - documented_codes()
    assert not missing, f"codes the service answers but docs/api.md does not list: {missing}"


def test_every_error_code_in_the_reference_exists() -> None:
    extra = documented_codes() - service_codes()
    assert not extra, f"codes docs/api.md lists but the service never answers: {extra}"


@pytest.mark.parametrize("code", ["session_not_found", "offset_conflict", "invalid_input"])
def test_the_collection_finds_known_codes(code: str) -> None:
    assert code in service_codes()
    assert code in documented_codes()


def test_every_setting_is_in_the_configuration_table() -> None:
    table = (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `LSTM_SERVE_([A-Z0-9_]+)` \|", table, re.MULTILINE))
    fields = {name.upper() for name in Settings.model_fields}
    assert fields - documented == set(), "settings missing from docs/deployment.md"
    assert documented - fields == set(), "docs/deployment.md lists settings that do not exist"
