"""Autoregressive roll-out as an async generator; the HTTP layer decides JSON or SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import InvalidInput
from service.inference.runner import Runner
from service.models.encoding import decode_steps, denormalise, softmax
from service.models.manifest import FeaturesInput, RegressionOutput, TextInput
from service.models.registry import LoadedModel, State


@dataclass(frozen=True)
class GenerateOptions:
    steps: int
    temperature: float = 1.0
    top_k: int | None = None
    seed: int | None = None


@dataclass
class GenStep:
    index: int
    output: Any
    """The wire output: ``{"token", "p"}`` for text models, a vector for regression."""


@dataclass
class Rollout:
    """Where the roll-out ended: the state after feeding every generated step back."""

    state: State
    last_output: np.ndarray
    fed_steps: int
    text: str = ""


def _sample(
    logits: np.ndarray, opts: GenerateOptions, rng: np.random.Generator
) -> tuple[int, float]:
    if opts.temperature == 0:
        probs = softmax(logits)
        tok = int(np.argmax(probs))
        return tok, float(probs[tok])
    probs = softmax(logits, opts.temperature)
    if opts.top_k is not None and opts.top_k < probs.shape[-1]:
        cut = np.argpartition(-probs, opts.top_k - 1)[: opts.top_k]
        masked = np.zeros_like(probs)
        masked[cut] = probs[cut]
        probs = masked / masked.sum()
    tok = int(rng.choice(probs.shape[-1], p=probs))
    return tok, float(probs[tok])


async def rollout(
    runner: Runner,
    model: LoadedModel,
    state: State,
    last_output: np.ndarray | None,
    context: np.ndarray | None,
    opts: GenerateOptions,
    result: Rollout,
    key: str | None = None,
) -> AsyncIterator[GenStep]:
    """Feed ``context`` (data units, or token ids) from ``state``, then generate
    ``opts.steps`` steps.

    Each generated step is fed back as the next input. When the generator finishes,
    ``result`` holds the state after the last generated step was fed back, so a session
    can advance exactly as if the client had stepped the context and every generated step.
    ``key`` (a session id) keeps the runs in order with the session's other runs.
    """
    m = model.manifest
    fed = 0
    if context is not None:
        (res,) = await runner.run(model, [context], [state], key=key)
        state, last_output, fed = res.state, res.outputs[-1], fed + int(context.shape[0])
    if last_output is None:
        raise InvalidInput("nothing to generate from: give a context", code="missing_context")
    rng = np.random.default_rng(opts.seed)
    text_parts: list[str] = []
    for i in range(opts.steps):
        if isinstance(m.input, TextInput):
            tok, p = _sample(last_output, opts, rng)
            ch = m.input.vocab[tok]
            text_parts.append(ch)
            yield GenStep(i, {"token": ch, "p": p})
            nxt = np.asarray([tok], dtype=np.int64)
        else:
            assert isinstance(m.output, RegressionOutput) and isinstance(m.input, FeaturesInput)
            yield GenStep(i, decode_steps(m, last_output[None, :], 1)[0])
            data = denormalise(m.output, last_output)[m.feedback.output_index]
            nxt = data[None, :].astype(np.float32)  # data units, as a client would send
        (res,) = await runner.run(model, [nxt], [state], key=key)
        state, last_output, fed = res.state, res.outputs[-1], fed + 1
    result.state, result.last_output, result.fed_steps = state, last_output, fed
    result.text = "".join(text_parts)


def check_generate_options(
    model: LoadedModel, body: dict[str, Any], max_steps: int
) -> GenerateOptions:
    """Validate ``steps``, ``temperature``, ``top_k`` and ``seed`` of a generate body."""
    m = model.manifest
    if m.task == "regression" and not m.feedback.autoregressive:
        raise InvalidInput(
            f"model {m.name!r} is not autoregressive; use predict", code="not_autoregressive"
        )
    steps = body.get("steps", 1)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise InvalidInput("steps must be a positive integer")
    if steps > max_steps:
        raise InvalidInput(f"steps {steps} exceed the limit of {max_steps}", code="too_many_steps")
    temperature = body.get("temperature", 1.0)
    if temperature is None:
        temperature = 1.0
    if (
        not isinstance(temperature, int | float)
        or isinstance(temperature, bool)
        or not np.isfinite(temperature)
        or temperature < 0
        or temperature > 100
    ):
        raise InvalidInput("temperature must be a number between 0 and 100")
    top_k = body.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise InvalidInput("top_k must be a positive integer or null")
    seed = body.get("seed")
    if seed is not None and (
        not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63
    ):
        raise InvalidInput("seed must be a non-negative integer or null")
    return GenerateOptions(steps=steps, temperature=float(temperature), top_k=top_k, seed=seed)
