"""The bundled model store: three verified models, each beating its naive baselines.

These read only manifests and run onnxruntime, so they need no torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.models.manifest import FeaturesInput, TextInput
from service.models.store import StoredVersion, scan

BUNDLED = Path(__file__).resolve().parents[2] / "model_store"
EXPECTED = {
    "weather_lstm": ("lstm", "regression"),
    "temps_gru": ("gru", "regression"),
    "pydoc_char_lstm": ("lstm", "language_model"),
}


def _bundled() -> dict[str, StoredVersion]:
    result = scan(BUNDLED)
    assert result.errors == []
    return {v.manifest.name: v for v in result.versions if v.manifest.version == 1}


def test_the_three_bundled_models_are_present() -> None:
    models = _bundled()
    for name, (cell, task) in EXPECTED.items():
        assert name in models, name
        assert (models[name].manifest.cell, models[name].manifest.task) == (cell, task)
        assert models[name].manifest.hidden_size <= 256


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_model_beats_every_baseline(name: str) -> None:
    m = _bundled()[name].manifest
    head = m.headline_metric
    assert head is not None
    baselines = {k: v for k, v in m.metrics.items() if k.startswith(head + "_") and "." not in k}
    assert len(baselines) >= 2, baselines
    assert all(m.metrics[head] < v for v in baselines.values()), (m.metrics[head], baselines)
    assert m.training is not None and m.training.rows > 0
    assert m.parity.step_vs_whole is not None and m.parity.step_vs_whole <= 1e-5
    assert m.parity.torch_vs_onnx is not None and m.parity.torch_vs_onnx <= 1e-5
    assert {"torch", "onnx", "onnxruntime"} <= m.libraries.keys()
    assert m.description


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_model_steps_like_a_whole_run(name: str) -> None:
    stored = _bundled()[name]
    m = stored.manifest
    session = ort.InferenceSession(str(stored.onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    batch, length = 3, 20
    x: np.ndarray
    if isinstance(m.input, TextInput):
        x = rng.integers(0, m.input.vocab_size, size=(batch, length), dtype=np.int64)
    else:
        assert isinstance(m.input, FeaturesInput)
        x = rng.standard_normal((batch, length, m.input.size)).astype(np.float32)
    zeros = {s.input: np.zeros([s.shape[0], batch, s.shape[1]], np.float32) for s in m.state}
    outputs = [m.graph.output, *(s.output for s in m.state)]
    whole = session.run(outputs, {m.graph.input: x, **zeros})
    feeds = dict(zeros)
    steps = []
    for t in range(length):
        got = session.run(outputs, {m.graph.input: x[:, t : t + 1], **feeds})
        steps.append(got[0])
        feeds = {s.input: v for s, v in zip(m.state, got[1:], strict=True)}
    np.testing.assert_allclose(np.concatenate(steps, axis=1), whole[0], atol=1e-5)
    for s, final in zip(m.state, whole[1:], strict=True):
        np.testing.assert_allclose(feeds[s.input], final, atol=1e-5)
