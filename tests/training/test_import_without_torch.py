"""``lstm-serve import`` needs onnx and onnxruntime only: it runs where torch cannot be
imported (the runtime plus the ``import`` extra)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from service.models.store import read_version
from tests.tiny_models import write_tiny_model

REPO = Path(__file__).resolve().parents[2]

WITHOUT_TORCH = """
import sys


class NoTorch:
    '''torch as if not installed: every import of it fails.'''

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None


sys.meta_path.insert(0, NoTorch())
from service.cli import main

try:
    status = main(sys.argv[1:])
except SystemExit as exc:  # argparse's --help
    status = exc.code
loaded = sorted(m for m in sys.modules if m.split(".")[0] == "torch")
assert not loaded, loaded
sys.exit(status)
"""


def lstm_serve_without_torch(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LSTM_SERVE_")}
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_blocker_blocks_torch() -> None:
    """The harness itself: ``import torch`` fails under it (else the tests below prove
    nothing where torch is installed)."""
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_TORCH.split("from service.cli")[0] + "import torch"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "blocked" in done.stderr


def test_import_help_needs_no_torch() -> None:
    done = lstm_serve_without_torch("import", "--help")
    assert done.returncode == 0, done.stderr
    assert "--name" in done.stdout and "--state" in done.stdout


def test_import_of_an_onnx_model_needs_no_torch(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_tiny_model(source, "tiny_gru", "gru", seed=3)
    store = tmp_path / "store"
    onnx_file = source / "tiny_gru" / "1" / "model.onnx"
    assert onnx_file.exists()
    done = lstm_serve_without_torch(
        "import", str(onnx_file), "--name", "adopted", "--store", str(store)
    )
    assert done.returncode == 0, done.stderr
    assert "imported adopted v1 (gru, regression, stateful)" in done.stdout
    manifest = read_version(store / "adopted" / "1").manifest
    assert [(s.input, s.output) for s in manifest.state] == [("h0", "hn")]
    assert manifest.parity.step_vs_whole is not None
    assert manifest.parity.step_vs_whole <= 1e-5
