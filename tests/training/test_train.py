"""Training each recipe on a tiny slice, end to end into a temporary store."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest

from service.models.store import read_version, scan
from service.onnx_import.verify import GraphPorts, StatePort, ort_session, step_vs_whole
from service.training.cli import train_main
from service.training.recipes import RECIPES, CharLMRecipe, ForecastRecipe
from service.training.text import build_vocab, encode
from service.training.train import BaselineNotBeaten, Evaluation, run_recipe

pytestmark = [pytest.mark.train]

TINY_FORECAST = {
    "limit_rows": 300,
    "test_rows": 60,
    "epochs": 2,
    "hidden": 8,
    "window": 30,
    "burn_in": 5,
    "windows_per_epoch": 64,
    "seasonal_lag": 7,
}
TINY_CHARLM = {
    "limit_rows": 6000,
    "epochs": 1,
    "hidden": 16,
    "embed": 8,
    "window": 32,
    "batch_size": 16,
    "windows_per_epoch": 64,
}


def tiny(name: str) -> ForecastRecipe | CharLMRecipe:
    recipe = RECIPES[name]
    if isinstance(recipe, ForecastRecipe):
        return dataclasses.replace(recipe, **TINY_FORECAST)  # type: ignore[arg-type]
    return dataclasses.replace(recipe, **TINY_CHARLM)  # type: ignore[arg-type]


def _ports_of(directory: Path) -> tuple[GraphPorts, bytes, str]:
    stored = read_version(directory)
    m = stored.manifest
    ports = GraphPorts(
        input=m.graph.input,
        output=m.graph.output,
        states=tuple(
            StatePort(s.input, s.output, (s.shape[0], 1, s.shape[1]), s.batch_axis) for s in m.state
        ),
    )
    return ports, stored.onnx_path.read_bytes(), m.graph.input_dtype


@pytest.mark.parametrize("name", ["weather_lstm", "temps_gru", "pydoc_char_lstm"])
def test_tiny_recipe_writes_a_verified_version(tmp_path: Path, name: str) -> None:
    result = run_recipe(tiny(name), tmp_path, progress=False)
    assert result.path == tmp_path / name / "1"
    stored = read_version(result.path)
    m = stored.manifest
    assert m.name == name and m.version == 1
    assert m.parity.step_vs_whole is not None and m.parity.step_vs_whole <= 1e-5
    assert m.parity.torch_vs_onnx is not None and m.parity.torch_vs_onnx <= 1e-5
    assert m.training is not None and m.training.rows > 0 and "held-out" in m.training.split
    assert {"torch", "onnx", "onnxruntime"} <= m.libraries.keys()
    assert m.headline_metric in m.metrics
    if m.task == "regression":
        assert m.cell == RECIPES[name].cell
        baselines = {"rmse_persistence", "rmse_seasonal_naive", "rmse_linear_ar"}
        assert {"rmse", "linear_ar_order", *baselines} <= m.metrics.keys()
        assert set(result.evaluation.baseline_keys) == baselines
        assert m.feedback.autoregressive and m.feedback.output_index == list(range(m.input_size))
        assert [s.name for s in m.state] == (["h", "c"] if m.cell == "lstm" else ["h"])
    else:
        baselines = {"perplexity_unigram", "perplexity_bigram", "perplexity_kneser_ney"}
        assert {"perplexity", "kneser_ney_order", *baselines} <= m.metrics.keys()
        assert set(result.evaluation.baseline_keys) == baselines
        assert m.graph.input_dtype == "int64"

    ports, onnx_bytes, dtype = _ports_of(result.path)
    rng = np.random.default_rng(0)
    if dtype == "int64":
        probe: np.ndarray = rng.integers(0, m.output.size, size=(2, 17), dtype=np.int64)
    else:
        probe = rng.standard_normal((2, 17, m.input_size)).astype(np.float32)
    zeros = [np.zeros((p.shape[0], 2, p.shape[2]), dtype=np.float32) for p in ports.states]
    assert step_vs_whole(ort_session(onnx_bytes), ports, probe, zeros) <= 1e-5


def test_training_is_deterministic(tmp_path: Path) -> None:
    first = run_recipe(tiny("temps_gru"), tmp_path / "a", progress=False)
    second = run_recipe(tiny("temps_gru"), tmp_path / "b", progress=False)
    assert first.manifest.metrics == second.manifest.metrics
    assert first.path is not None and second.path is not None
    assert read_version(first.path).manifest.sha256 == read_version(second.path).manifest.sha256


def test_a_second_run_writes_the_next_version(tmp_path: Path) -> None:
    run_recipe(tiny("weather_lstm"), tmp_path, progress=False)
    again = run_recipe(tiny("weather_lstm"), tmp_path, progress=False)
    assert again.manifest.version == 2
    assert scan(tmp_path).errors == []


def test_cli_trains_into_a_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["weather_lstm", "--store", str(tmp_path), "--quiet", "--epochs", "1"]
    args += ["--hidden", "8", "--layers", "1", "--limit-rows", "500", "--test-rows", "100"]
    assert train_main(args) == 0
    out = capsys.readouterr().out
    assert "rmse_persistence" in out and "written to" in out
    wind = [line for line in out.splitlines() if line.startswith("  wind: ")]
    assert len(wind) == 1 and "rmse " in wind[0] and "rmse_linear_ar " in wind[0]
    assert read_version(tmp_path / "weather_lstm" / "1").manifest.layers == 1


def test_cli_validates_on_the_end_of_the_training_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["weather_lstm", "--store", str(tmp_path), "--quiet", "--validate", "--epochs", "1"]
    args += ["--limit-rows", "400", "--test-rows", "100", "--set", "highway=true"]
    args += ["--set", "hidden=8", "--set", "layers=1"]
    assert train_main(args) == 0
    out = capsys.readouterr().out
    assert "rmse_linear_ar" in out and "dry run" in out
    assert not (tmp_path / "weather_lstm").exists()


def test_a_validation_run_never_sees_the_held_out_tail() -> None:
    recipe = dataclasses.replace(tiny("temps_gru"), validate=True)
    result = run_recipe(recipe, None, progress=False)
    assert result.manifest.training is not None
    assert result.manifest.training.rows == TINY_FORECAST["limit_rows"] - TINY_FORECAST["test_rows"]
    assert "validation tail" in result.manifest.training.split


def test_cli_set_rejects_unknown_fields_and_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    for bad in ("nonsense=1", "highway=maybe", "lr"):
        with pytest.raises(SystemExit):
            train_main(["weather_lstm", "--set", bad, "--dry-run"])
        assert "--set" in capsys.readouterr().err


def test_cli_rejects_options_that_do_not_apply(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train_main(["pydoc_char_lstm", "--test-rows", "5"])
    assert "does not apply" in capsys.readouterr().err


def test_a_model_losing_to_a_baseline_warns_or_is_refused_with_strict(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # One epoch of a 2-unit GRU on a short slice does not beat persistence on smooth temps.
    recipe = dataclasses.replace(
        tiny("temps_gru"), epochs=1, hidden=2, windows_per_epoch=32, lr=1e-4
    )
    with caplog.at_level(logging.WARNING):
        result = run_recipe(recipe, tmp_path / "lenient", progress=False)
    assert result.evaluation.not_beaten
    assert result.path is not None
    assert any("does NOT beat" in r.getMessage() for r in caplog.records)
    with pytest.raises(BaselineNotBeaten, match="not written"):
        run_recipe(recipe, tmp_path / "strict", strict=True, progress=False)
    assert not (tmp_path / "strict" / "temps_gru").exists()


def test_evaluation_lists_the_baselines_not_beaten() -> None:
    ev = Evaluation(
        metrics={"rmse": 2.0, "rmse_persistence": 3.0, "rmse_seasonal_naive": 1.5},
        headline="rmse",
        baseline_keys=["rmse_persistence", "rmse_seasonal_naive"],
    )
    ev.check()
    assert ev.not_beaten == ["rmse_seasonal_naive"]


def test_vocab_is_sorted_and_maps_rare_characters_to_unknown() -> None:
    vocab = build_vocab("aaabbbcccz", min_count=3)
    assert vocab == sorted(vocab) and "z" not in vocab and "\ufffd" in vocab
    ids = encode("abz", vocab)
    assert [vocab[i] for i in ids] == ["a", "b", "\ufffd"]
