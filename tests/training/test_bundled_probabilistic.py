"""The bundled probabilistic forecasters: their graphs step like a whole run, mean and scale
both (onnxruntime only, no torch), and their manifests carry the calibration figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.models.manifest import FeaturesInput
from service.models.store import StoredVersion, scan

BUNDLED = Path(__file__).resolve().parents[2] / "model_store"
PROBABILISTIC = [v for v in scan(BUNDLED).versions if v.manifest.distribution is not None]


def test_temps_gru_has_a_probabilistic_version() -> None:
    assert any(v.manifest.name == "temps_gru" for v in PROBABILISTIC)


@pytest.mark.parametrize(
    "stored", PROBABILISTIC, ids=lambda v: f"{v.manifest.name}-{v.manifest.version}"
)
def test_mean_and_scale_step_like_a_whole_run(stored: StoredVersion) -> None:
    m = stored.manifest
    assert m.distribution is not None and isinstance(m.input, FeaturesInput)
    session = ort.InferenceSession(str(stored.onnx_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 20, m.input.size)).astype(np.float32)
    zeros = {s.input: np.zeros([s.shape[0], 3, s.shape[1]], np.float32) for s in m.state}
    names = [m.graph.output, m.distribution.scale_output, *(s.output for s in m.state)]
    whole = session.run(names, {m.graph.input: x, **zeros})
    feeds = dict(zeros)
    means, scales = [], []
    for t in range(x.shape[1]):
        got = session.run(names, {m.graph.input: x[:, t : t + 1], **feeds})
        means.append(got[0])
        scales.append(got[1])
        feeds = {s.input: v for s, v in zip(m.state, got[2:], strict=True)}
    np.testing.assert_allclose(np.concatenate(means, axis=1), whole[0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(scales, axis=1), whole[1], rtol=0, atol=1e-5)
    for s, final in zip(m.state, whole[2:], strict=True):
        np.testing.assert_allclose(feeds[s.input], final, rtol=0, atol=1e-5)
    assert (whole[1] > 0).all()


@pytest.mark.parametrize(
    "stored", PROBABILISTIC, ids=lambda v: f"{v.manifest.name}-{v.manifest.version}"
)
def test_calibration_figures_on_the_held_out_tail(stored: StoredVersion) -> None:
    metrics = stored.manifest.metrics
    assert 0.75 <= metrics["coverage_80"] <= 0.85
    assert metrics["crps"] < metrics["crps_linear_ar"]
    assert metrics["rmse"] < min(metrics["rmse_linear_ar"], metrics["rmse_persistence"])
    for h in (1, 3, 7):
        model = metrics[f"rollout_rmse_h{h}"]
        assert model < metrics[f"rollout_rmse_linear_ar_h{h}"]
        assert model < metrics[f"rollout_rmse_persistence_h{h}"]
