"""``lstm-serve import`` on models exported by PyTorch and Keras (committed fixtures): each is
imported, its state found or exposed, its layout probed, and the proofs recorded."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.errors import ModelNotStateful
from service.models.manifest import Manifest
from service.models.registry import LoadedModel, ModelRegistry
from service.models.store import read_version
from service.onnx_import.cli import main as import_main
from tests.onnx_import.cases import CASES, FIXTURES, STATEFUL, Case


def _import(case: Case, store: Path, *extra: str) -> Manifest:
    assert import_main([str(case.path), "--name", case.name, "--store", str(store), *extra]) == 0
    return read_version(store / case.name / "1").manifest


def _loaded(store: Path, name: str) -> LoadedModel:
    registry = ModelRegistry(store)
    registry.load()
    assert registry.errors == []
    return registry.get(name)


def _features(model: LoadedModel, batch: int, steps: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, steps, model.manifest.input_size)).astype(np.float32)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_fixture_imports_with_its_layout_state_and_proofs(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = _import(case, tmp_path)
    out = capsys.readouterr().out
    assert "(found by probing)" in out and "SIGHUP" in out
    assert m.graph.time_major is case.time_major
    assert [s.name for s in m.state] == list(case.states)
    assert m.stateful is case.stateful
    assert m.imported is not None and m.imported.graph_rewritten is case.rewritten
    assert m.imported.decisions and m.imported.producer.split()[0] in ("pytorch", "tf2onnx")
    if case.rewritten:
        assert m.parity.rewritten_vs_original is not None
        assert m.parity.rewritten_vs_original <= 1e-5
        assert "graph rewritten" in out
    else:
        assert m.parity.rewritten_vs_original is None
    if case.stateful:
        assert m.parity.step_vs_whole is not None and m.parity.step_vs_whole <= 1e-5
    else:
        assert m.parity.step_vs_whole is None and "bidirectional" in out
    assert not m.feedback.autoregressive


@pytest.mark.parametrize("case", STATEFUL, ids=lambda c: c.name)
def test_served_chunks_equal_the_whole_sequence(case: Case, tmp_path: Path) -> None:
    """Through the serving registry: chunks carrying state equal one whole run, and the
    whole run from zero state equals the original file run by onnxruntime."""
    _import(case, tmp_path)
    model = _loaded(tmp_path, case.name)
    x = _features(model, 3, 11, seed=5)
    zero = [model.zero_state() for _ in range(3)]
    whole, whole_states = model.run_batch(x, zero)
    states, pieces = zero, []
    for start in (0, 1, 4, 5, 9):
        stop = {0: 1, 1: 4, 4: 5, 5: 9, 9: 11}[start]
        y, states = model.run_batch(x[:, start:stop], states)
        pieces.append(y)
    np.testing.assert_allclose(np.concatenate(pieces, axis=1), whole, atol=1e-5)
    for got, want in zip(states, whole_states, strict=True):
        for key in want:
            np.testing.assert_allclose(got[key], want[key], atol=1e-5)
    original = ort.InferenceSession(str(case.path), providers=["CPUExecutionProvider"])
    feed = x.swapaxes(0, 1) if case.time_major else x
    feeds = {original.get_inputs()[0].name: feed}
    for extra in original.get_inputs()[1:]:  # explicit state inputs: zeros
        shape = [d if isinstance(d, int) else 3 for d in extra.shape]
        feeds[extra.name] = np.zeros(shape, dtype=np.float32)
    want_y = original.run([original.get_outputs()[0].name], feeds)[0]
    np.testing.assert_allclose(
        want_y.swapaxes(0, 1) if case.time_major else want_y, whole, atol=1e-5
    )


def test_bidirectional_serves_whole_sequences_and_refuses_sessions(tmp_path: Path) -> None:
    case = next(c for c in CASES if not c.stateful)
    _import(case, tmp_path)
    model = _loaded(tmp_path, case.name)
    x = _features(model, 2, 7, seed=1)
    y, _ = model.run_batch(x, [model.zero_state(), model.zero_state()])
    original = ort.InferenceSession(str(case.path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(y, original.run(None, {"x": x})[0], atol=1e-5)
    with pytest.raises(ModelNotStateful) as exc:
        model.require_stateful()
    assert exc.value.code == "model_not_stateful" and "bidirectional" in exc.value.detail


def test_dry_run_prints_every_decision_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    path = FIXTURES / "keras_lstm_stacked.onnx"
    assert import_main([str(path), "--name", "k", "--store", str(store), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("would import k v1 (lstm, regression, stateful)")
    for words in ("recurrent node LSTM", "state c1", "batch-major", "step by step", "SIGHUP"):
        assert words in out
    assert f"dry run: would write {store / 'k' / '1'}" in out
    assert not store.exists()


def test_a_store_is_required(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = FIXTURES / "torch_gru.onnx"
    monkeypatch.delenv("LSTM_SERVE_MODEL_STORE", raising=False)
    assert import_main([str(path), "--name", "g"]) == 2
    assert "--store" in capsys.readouterr().err
    monkeypatch.setenv("LSTM_SERVE_MODEL_STORE", str(tmp_path))
    assert import_main([str(path), "--name", "g"]) == 0
    assert "written to" in capsys.readouterr().out
    assert read_version(tmp_path / "g" / "1").manifest.name == "g"


def test_feedback_only_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gru = FIXTURES / "torch_gru.onnx"
    base = [str(gru), "--name", "g", "--store", str(tmp_path)]
    assert import_main(base) == 0
    assert "not autoregressive" in capsys.readouterr().out
    assert import_main([*base, "--autoregressive"]) == 0
    assert "output 3 -> input 3" in capsys.readouterr().out
    m = read_version(tmp_path / "g" / "2").manifest
    assert m.feedback.autoregressive and m.feedback.output_index == [0, 1, 2, 3]
    assert import_main([*base, "--autoregressive", "3,2,1,0"]) == 0
    assert read_version(tmp_path / "g" / "3").manifest.feedback.output_index == [3, 2, 1, 0]
    capsys.readouterr()
    two_out = FIXTURES / "torch_lstm_batch_first.onnx"
    args = [str(two_out), "--name", "b", "--store", str(tmp_path), "--autoregressive"]
    assert import_main(args) == 1
    assert "needs as many outputs as inputs" in capsys.readouterr().err
    assert import_main([*args, "0,1,5"]) == 1
    assert "one output index (0..1) per input feature (3)" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_names_units_and_normalisation_from_a_file_and_options(tmp_path: Path) -> None:
    spec = {
        "input": {"names": ["t", "p", "h"], "units": ["degC", "hPa", "%"], "mean": [10, 1000, 50]},
        "output": {"names": ["t_next", "p_next"], "std": [2.0, 3.0]},
    }
    spec_file = tmp_path / "features.json"
    spec_file.write_text(json.dumps(spec))
    case = next(c for c in CASES if c.name == "torch_lstm_batch_first")
    m = _import(case, tmp_path / "store", "--features", str(spec_file), "--input-std", "2,4,8")
    assert m.input.kind == "features" and m.output.kind == "regression"
    assert m.input.names == ["t", "p", "h"] and m.input.units == ["degC", "hPa", "%"]
    assert m.input.mean == [10.0, 1000.0, 50.0] and m.input.std == [2.0, 4.0, 8.0]
    assert m.output.names == ["t_next", "p_next"] and m.output.units is None
    assert m.output.mean == [0.0, 0.0] and m.output.std == [2.0, 3.0]
    decisions = "\n".join(m.imported.decisions if m.imported else [])
    assert "input names ['t', 'p', 'h'] (--features file)" in decisions
    assert "std [2.0, 4.0, 8.0] (option)" in decisions
    assert m.public([1])["input"] == {
        "kind": "features",
        "size": 3,
        "names": ["t", "p", "h"],
        "units": ["degC", "hPa", "%"],
    }


def test_a_bad_features_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec_file = tmp_path / "features.json"
    spec_file.write_text(json.dumps({"input": {"names": ["a"], "colour": "red"}}))
    path = FIXTURES / "torch_gru.onnx"
    args = [str(path), "--name", "g", "--store", str(tmp_path), "--features", str(spec_file)]
    assert import_main(args) == 1
    assert "takes only the keys" in capsys.readouterr().err
    spec_file.write_text(json.dumps({"input": {"names": ["a"]}}))
    assert import_main(args) == 1
    assert "input names: expected 4 values, got 1" in capsys.readouterr().err


def test_a_bidirectional_model_cannot_be_autoregressive(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = FIXTURES / "torch_bidirectional.onnx"
    args = [str(path), "--name", "b", "--store", str(tmp_path), "--autoregressive", "0,1,0"]
    assert import_main(args) == 1
    assert "cannot do: import it without --autoregressive" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
