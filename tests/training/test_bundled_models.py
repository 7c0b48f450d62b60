"""The bundled model store: verified models whose manifests carry every baseline's held-out
figure, each default version ahead of every baseline or saying where it is not.

These read only manifests and run onnxruntime, so they need no torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.models.manifest import FeaturesInput, TextInput
from service.models.store import StoredVersion, scan

REPO = Path(__file__).resolve().parents[2]
BUNDLED = REPO / "model_store"
EXPECTED = {
    "weather_lstm": ("lstm", "regression"),
    "temps_gru": ("gru", "regression"),
    "pydoc_char_lstm": ("lstm", "language_model"),
}
BASELINES = {
    "regression": ("rmse_persistence", "rmse_seasonal_naive", "rmse_linear_ar"),
    "language_model": ("perplexity_unigram", "perplexity_bigram", "perplexity_kneser_ney"),
}
NOT_BEATEN: dict[str, set[str]] = {"pydoc_char_lstm": {"perplexity_kneser_ney"}}
"""Baselines a bundled model's default version loses to on the held-out tail. Such a model
is not a headline model: the README's and docs/models.md's models tables say so."""


def _versions() -> list[StoredVersion]:
    result = scan(BUNDLED)
    assert result.errors == []
    return sorted(result.versions, key=lambda v: (v.manifest.name, v.manifest.version))


def _defaults() -> dict[str, StoredVersion]:
    """The highest version of each model: the one served when a request names none."""
    return {v.manifest.name: v for v in _versions()}


VERSIONS = [pytest.param(v, id=f"{v.manifest.name}-{v.manifest.version}") for v in _versions()]


def test_the_three_bundled_models_are_present() -> None:
    models = _defaults()
    for name, (cell, task) in EXPECTED.items():
        assert name in models, name
        assert (models[name].manifest.cell, models[name].manifest.task) == (cell, task)
        assert models[name].manifest.hidden_size <= 512


@pytest.mark.parametrize("stored", VERSIONS)
def test_every_version_carries_every_baseline(stored: StoredVersion) -> None:
    m = stored.manifest
    head = m.headline_metric
    assert head is not None and head in m.metrics
    assert set(BASELINES[m.task]) <= m.metrics.keys()
    order = "linear_ar_order" if m.task == "regression" else "kneser_ney_order"
    assert m.metrics[order] >= 1
    if isinstance(m.input, FeaturesInput):
        for name in m.input.names:
            assert {f"rmse.{name}", *(f"{b}.{name}" for b in BASELINES[m.task])} <= m.metrics.keys()
    assert m.training is not None and m.training.rows > 0
    assert m.parity.step_vs_whole is not None and m.parity.step_vs_whole <= 1e-5
    assert m.parity.torch_vs_onnx is not None and m.parity.torch_vs_onnx <= 1e-5
    assert {"torch", "onnx", "onnxruntime"} <= m.libraries.keys()
    assert m.description


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_default_version_beats_every_baseline_or_says_so(name: str) -> None:
    m = _defaults()[name].manifest
    head = m.headline_metric
    assert head is not None
    lost = {b for b in BASELINES[m.task] if not m.metrics[head] < m.metrics[b]}
    assert lost == NOT_BEATEN.get(name, set()), (m.version, m.metrics[head], lost)
    for doc in (REPO / "README.md", REPO / "docs" / "models.md"):
        rows = [line for line in doc.read_text().splitlines() if line.startswith(f"| `{name}`")]
        assert rows, (doc, name)
        assert any("not a headline model" in row for row in rows) == bool(lost), (doc, rows)


@pytest.mark.parametrize("stored", VERSIONS)
def test_bundled_model_steps_like_a_whole_run(stored: StoredVersion) -> None:
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
