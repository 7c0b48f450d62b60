"""Messages and conveniences a new user meets in the first hour."""

from __future__ import annotations

import sys

import httpx
import pytest
from fastapi import FastAPI

from service.cli import main
from service.client import AsyncClient


async def test_text_context_on_a_feature_model_names_context(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/models/tiny_lstm/generate", json={"context": "x", "steps": 1})
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "wrong_input_kind"
    assert problem["detail"].startswith("context:")
    assert "tiny_lstm" in problem["detail"]


async def test_feature_context_on_a_text_model_names_context(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/models/tiny_char/generate", json={"context": [[1.0]], "steps": 1}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "wrong_input_kind"
    assert response.json()["detail"].startswith("context:")


async def test_a_bad_context_row_is_reported_as_context(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/models/tiny_lstm/generate", json={"context": [[1.0, 2.0]], "steps": 1}
    )
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "wrong_feature_count"
    assert problem["detail"].startswith("context"), problem["detail"]


async def test_client_predict_takes_a_plain_string_for_text_models(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with AsyncClient("http://test", transport=transport) as c:
        plain = await c.predict("tiny_char", "hello")
        keyword = await c.predict("tiny_char", text="hello")
        batch = await c.predict("tiny_char", ["hello", "hi"])
    assert plain == keyword
    assert len(plain["top"]) == 5
    assert len(batch) == 2 and batch[0] == plain


async def test_client_predict_needs_inputs_or_text(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with AsyncClient("http://test", transport=transport) as c:
        with pytest.raises(ValueError):
            await c.predict("tiny_char")
        with pytest.raises(ValueError):
            await c.predict("tiny_char", "hello", text="hello")


@pytest.mark.parametrize(
    ("command", "blocked", "extra"),
    [("train", ("torch",), "train"), ("import", ("torch", "onnx"), "import")],
)
def test_a_missing_extra_is_named_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
    blocked: tuple[str, ...],
    extra: str,
) -> None:
    # A None entry makes ``import <name>`` raise ModuleNotFoundError, as when not installed;
    # the delegated modules are dropped so they import afresh and meet it.
    for name in list(sys.modules):
        if (
            name.startswith(("service.training", "service.onnx_import"))
            or name.split(".")[0] in blocked
        ):
            monkeypatch.delitem(sys.modules, name)
    for name in blocked:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delenv("ORT_DISABLE_TELEMETRY", raising=False)  # main() sets it
    assert main([command, "--help"]) == 2
    err = capsys.readouterr().err
    assert f"lstm-serve[{extra}]" in err
    assert "Traceback" not in err


def test_models_listing_marks_the_default_version(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tiny_store: object
) -> None:
    monkeypatch.setenv("LSTM_SERVE_MODEL_STORE", str(tiny_store))
    monkeypatch.delenv("ORT_DISABLE_TELEMETRY", raising=False)  # main() sets it
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "DEFAULT" in lines[0]
    rows = {tuple(line.split()[:2]): line.split()[2] == "*" for line in lines[1:]}
    assert rows[("tiny_lstm", "2")] is True
    assert rows[("tiny_lstm", "1")] is False
    assert rows[("tiny_gru", "1")] is True
