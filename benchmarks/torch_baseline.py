"""The hand-written alternative: FastAPI + PyTorch eager with a dict of session states.

What one would write without lstm-serve: a pydantic request model, ``nn.LSTM``/``nn.GRU``
plus a linear head of the same shape as the served model (read from its manifest; the
weights are random, which costs the same), states in a dict keyed by session id, the
model run in the route (one thread, no grad). Sessions are created on first use.
Run: ``python benchmarks/torch_baseline.py --manifest model_store/weather_lstm/1/manifest.json``.
Needs the train extra (torch); nothing in the service imports this file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from torch import nn


class StepBody(BaseModel):
    inputs: list[list[float]]


class StepReply(BaseModel):
    id: str
    steps: int
    outputs: list[list[float]]


class Net(nn.Module):
    def __init__(self, cell: str, features: int, hidden: int, layers: int, out: int) -> None:
        super().__init__()
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, out)


def build_app(manifest: dict[str, object]) -> FastAPI:
    cell = str(manifest["cell"])
    hidden = int(manifest["hidden_size"])  # type: ignore[call-overload]
    layers = int(manifest["layers"])  # type: ignore[call-overload]
    features = int(manifest["input"]["size"])  # type: ignore[index]
    out = int(manifest["output"]["size"])  # type: ignore[index]
    torch.set_num_threads(1)
    net = Net(cell, features, hidden, layers, out).eval()
    states: dict[str, tuple[torch.Tensor, ...]] = {}
    steps: dict[str, int] = {}
    app = FastAPI()

    def zero() -> tuple[torch.Tensor, ...]:
        h = torch.zeros(layers, 1, hidden)
        return (h, torch.zeros(layers, 1, hidden)) if cell == "lstm" else (h,)

    @app.post("/v1/sessions/{session_id}/step", response_model=StepReply)
    async def step(session_id: str, body: StepBody) -> StepReply:
        x = torch.tensor(body.inputs, dtype=torch.float32).unsqueeze(0)
        state = states.get(session_id) or zero()
        with torch.no_grad():
            y, new = net.rnn(x, state if cell == "lstm" else state[0])
            outputs = net.head(y)[0]
        states[session_id] = new if cell == "lstm" else (new,)
        steps[session_id] = steps.get(session_id, 0) + len(body.inputs)
        return StepReply(id=session_id, steps=steps[session_id], outputs=outputs.tolist())

    @app.get("/readyz")
    async def ready() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8102)
    args = parser.parse_args()
    app = build_app(json.loads(args.manifest.read_text()))
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
