"""No module of the service or the benchmarks imports another package's private names.

A third-party package's underscore names and internal modules (``from uvicorn.protocols…``,
``from granian._internal import …``, ``import x._y``) are not its published API: they
change without notice between releases. Only the documented entry points are allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("service", "benchmarks")
OWN = {"service", "benchmarks", "tests"}

INTERNAL_MODULES = {
    # modules of a dependency that are not its published API
    "uvicorn.protocols",
    "uvicorn.lifespan",
    "uvicorn.loops",
    "uvicorn.middleware",
    "starlette._utils",
    "fastapi.dependencies",
    "fastapi._compat",
    "pydantic._internal",
    "pydantic.v1",
    "granian._granian",
}


def private_imports(tree: ast.AST) -> list[str]:
    """Each import in ``tree`` of a third-party private name or internal module."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
            names: list[str] = []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            names = [alias.name for alias in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] in OWN:
                continue
            line = getattr(node, "lineno", 0)
            if any(p.startswith("_") and not p.startswith("__") for p in parts):
                found.append(f"{line}: {module} (private module)")
            elif any(module == m or module.startswith(m + ".") for m in INTERNAL_MODULES):
                found.append(f"{line}: {module} (internal module)")
            for name in names:
                if name.startswith("_") and not name.startswith("__"):
                    found.append(f"{line}: {name} from {module} (private name)")
    return found


def test_no_module_imports_a_private_name_of_another_package() -> None:
    offenders = {}
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            found = private_imports(ast.parse(path.read_text(), str(path)))
            if found:
                offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}


def test_the_check_catches_each_kind_of_private_import() -> None:
    source = "\n".join(
        [
            "from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol",
            "from granian._internal import load_env",
            "import httpx._client",
            "from starlette.routing import _something",
            "from service.http.state import AppState",
            "from starlette.routing import Route",
            "from __future__ import annotations",
        ]
    )
    found = private_imports(ast.parse(source))
    assert len(found) == 4
    assert [f.split(":")[0] for f in found] == ["1", "2", "3", "4"]
