"""The package's layout rules, read from the source with ``ast``: no private name imported
across modules, modules of a readable size, torch only in training, and no web framework
in the protocol-free core."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SERVICE = Path(__file__).resolve().parents[2] / "service"
MAX_LINES = 450
"""About 400 lines is the aim; a module over this is split."""
CORE = ("sessions", "inference", "models")
"""Subpackages that speak no protocol: every door (HTTP, WebSocket, /v2, ...) calls them."""
WEB = {"fastapi", "starlette", "uvicorn", "granian", "httptools", "h11", "websockets"}


def modules(root: Path) -> list[Path]:
    return sorted(root.rglob("*.py"))


def dotted(root: Path, path: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(root: Path, path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """Each import in ``path``: line, absolute module, names taken from it (none for
    ``import x``)."""
    tree = ast.parse(path.read_text(), str(path))
    here = dotted(root, path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, module] if module else base)
            yield node.lineno, module, [alias.name for alias in node.names]


def private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def where(root: Path, path: Path, line: int) -> str:
    return f"{path.relative_to(root.parent)}:{line}"


def private_imports(root: Path) -> list[str]:
    """``from service.x import _y`` reaches into another module's internals. A private
    module (``service.client._wire``) may be imported by its own package only."""
    found = []
    for path in modules(root):
        here = dotted(root, path)
        for line, module, names in imports(root, path):
            if module != "service" and not module.startswith("service."):
                continue
            found += [f"{where(root, path, line)}: {module}.{n}" for n in names if private(n)]
            parts = module.split(".")
            for i, part in enumerate(parts):
                owner = ".".join(parts[:i])
                if private(part) and not (here == owner or here.startswith(owner + ".")):
                    found.append(f"{where(root, path, line)}: {module}")
    return found


def long_modules(root: Path) -> list[str]:
    found = []
    for path in modules(root):
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            found.append(f"{path.relative_to(root.parent)}: {lines} lines")
    return found


def torch_imports(root: Path) -> list[str]:
    return [
        where(root, path, line)
        for path in modules(root)
        if path.relative_to(root).parts[0] != "training"
        for line, module, _ in imports(root, path)
        if module.split(".")[0] == "torch"
    ]


def web_imports(root: Path, package: str) -> list[str]:
    return [
        f"{where(root, path, line)}: {module}"
        for path in modules(root / package)
        for line, module, _ in imports(root, path)
        if module.split(".")[0] in WEB
    ]


def test_the_checks_see_the_tree() -> None:
    """The walk finds the package (a wrong root would make every check below pass)."""
    names = {dotted(SERVICE, p) for p in modules(SERVICE)}
    assert {"service.cli", "service.inference.batcher", "service.sessions.manager"} <= names


def test_no_private_name_is_imported_across_modules() -> None:
    found = private_imports(SERVICE)
    assert not found, "private names imported across modules:\n" + "\n".join(found)


def test_modules_stay_readable() -> None:
    found = long_modules(SERVICE)
    assert not found, f"modules over {MAX_LINES} lines (split them):\n" + "\n".join(found)


def test_torch_only_in_training() -> None:
    found = torch_imports(SERVICE)
    assert not found, "torch imported outside service/training:\n" + "\n".join(found)


@pytest.mark.parametrize("package", CORE)
def test_the_core_imports_no_web_framework(package: str) -> None:
    found = web_imports(SERVICE, package)
    assert not found, f"service/{package} imports a web framework:\n" + "\n".join(found)


def test_the_checks_catch_what_they_look_for(tmp_path: Path) -> None:
    """Each check finds a module that breaks its rule, and passes one that keeps them."""
    root = tmp_path / "service"
    (root / "client").mkdir(parents=True)
    (root / "client" / "_wire.py").write_text("def encode() -> None: ...\n")
    (root / "client" / "sync.py").write_text("from service.client._wire import encode\n")
    (root / "training").mkdir()
    (root / "training" / "train.py").write_text("import torch\n")
    (root / "inference").mkdir()
    bad = root / "inference" / "bad.py"
    assert not private_imports(root) and not torch_imports(root) and not long_modules(root)
    bad.write_text(
        "from service.inference.batcher import _hidden\n"
        "from .runner import _also\n"
        "from service.client._wire import encode\n"
        "def later() -> None:\n"
        "    import torch.nn\n"
        "from starlette.requests import Request\n"
    )
    assert private_imports(root) == [
        "service/inference/bad.py:1: service.inference.batcher._hidden",
        "service/inference/bad.py:2: service.inference.runner._also",
        "service/inference/bad.py:3: service.client._wire",
    ]
    assert torch_imports(root) == ["service/inference/bad.py:5"]
    assert web_imports(root, "inference") == ["service/inference/bad.py:6: starlette.requests"]
    bad.write_text("x = 1\n" * (MAX_LINES + 1))
    assert long_modules(root) == [f"service/inference/bad.py: {MAX_LINES + 1} lines"]
