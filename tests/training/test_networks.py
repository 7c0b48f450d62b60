"""The forecaster's highway, and seed ensembles merged into one recurrent network."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from service.models.manifest import GraphSpec
from service.models.store import read_version
from service.onnx_import.verify import GraphPorts, StatePort, ort_session, step_vs_whole
from service.training.baselines import fit_linear_ar
from service.training.forecasting import start_from_linear
from service.training.networks import Cell, Forecaster, merge_forecasters
from service.training.pipeline import export_and_verify
from service.training.rebaseline import add_baselines
from service.training.train import run_recipe
from tests.training.test_train import tiny

pytestmark = [pytest.mark.train]


def _members(cell: Cell, layers: int, count: int = 3) -> list[Forecaster]:
    members = []
    for seed in range(count):
        torch.manual_seed(seed)
        member = Forecaster(cell, 4, 5, layers, [0.5, 1.0, 1.0, 2.0], highway=True)
        torch.nn.init.normal_(member.highway.weight)  # type: ignore[union-attr]
        members.append(member.eval())
    return members


@pytest.mark.parametrize(("cell", "layers"), [("lstm", 1), ("lstm", 2), ("gru", 1), ("gru", 2)])
def test_a_merged_ensemble_outputs_the_mean_of_its_members(cell: Cell, layers: int) -> None:
    members = _members(cell, layers)
    merged = merge_forecasters(members)
    assert (merged.hidden, merged.layers, merged.cell) == (15, layers, cell)
    x = torch.randn(2, 9, 4)
    with torch.no_grad():
        expected = torch.stack([m.run(x, m.zero_state(2))[0] for m in members]).mean(0)
        got, state = merged.run(x, merged.zero_state(2))
        # Each member's units keep that member's state.
        _, first_state = members[1].run(x, members[1].zero_state(2))
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(state[0][:, :, 5:10].numpy(), first_state[0].numpy(), atol=1e-5)


def test_a_merged_ensemble_exports_as_one_steppable_graph() -> None:
    merged = merge_forecasters(_members("lstm", 2))
    probe = np.random.default_rng(0).standard_normal((3, 11, 4)).astype(np.float32)
    graph = GraphSpec(input="x", output="y")
    onnx_bytes, parity = export_and_verify(merged, torch.zeros(2, 5, 4), probe, graph)
    assert parity.torch_vs_onnx is not None and parity.torch_vs_onnx <= 1e-5
    ports = GraphPorts(
        "x", "y", (StatePort("h0", "hn", (2, 1, 15), 1), StatePort("c0", "cn", (2, 1, 15), 1))
    )
    zeros = [np.zeros((2, 3, 15), np.float32)] * 2
    assert step_vs_whole(ort_session(onnx_bytes), ports, probe, zeros) <= 1e-5


def test_the_highway_starts_at_zero() -> None:
    torch.manual_seed(0)
    plain = Forecaster("gru", 2, 4, 1)
    torch.manual_seed(0)
    highway = Forecaster("gru", 2, 4, 1, highway=True)
    x = torch.randn(1, 6, 2)
    with torch.no_grad():
        a = plain.run(x, plain.zero_state(1))[0]
        b = highway.run(x, highway.zero_state(1))[0]
    np.testing.assert_allclose(a.numpy(), b.numpy())


def test_a_highway_started_by_least_squares_is_the_linear_ar1() -> None:
    rng = np.random.default_rng(0)
    rows = np.zeros((300, 3))
    for t in range(1, len(rows)):
        rows[t] = 0.8 * rows[t - 1] + 0.1 * rows[t - 1, ::-1] + rng.standard_normal(3)
    z = torch.from_numpy(rows.astype(np.float32))
    torch.manual_seed(0)
    model = Forecaster("lstm", 3, 4, 2, [0.5, 1.0, 2.0], highway=True)
    start_from_linear(model, z)
    with torch.no_grad():
        pred = model.run(z[None], model.zero_state(1))[0][0].numpy()
    seen = z.numpy().astype(np.float64)
    ar = fit_linear_ar(seen, 1, len(rows))
    np.testing.assert_allclose(pred[:-1], ar.predict(seen, range(len(rows) - 1)), atol=1e-4)
    with pytest.raises(ValueError, match="highway"):
        start_from_linear(Forecaster("gru", 3, 4, 1), z)


def test_rebaseline_adds_missing_baselines_and_keeps_the_models_figures(tmp_path: Path) -> None:
    # a point forecaster (a probabilistic one's calibration figures name the AR too)
    recipe = dataclasses.replace(tiny("temps_gru"), likelihood="none")  # type: ignore[arg-type]
    result = run_recipe(recipe, tmp_path, progress=False)
    assert result.path is not None
    path = result.path / "manifest.json"
    raw = json.loads(path.read_text())
    complete = dict(raw["metrics"])
    raw["metrics"] = {k: v for k, v in complete.items() if "linear_ar" not in k}
    path.write_text(json.dumps(raw))
    added = add_baselines(result.path, recipe)
    assert added == sorted(k for k in complete if "linear_ar" in k)
    assert read_version(result.path).manifest.metrics == pytest.approx(complete)
    assert add_baselines(result.path, recipe) == []
