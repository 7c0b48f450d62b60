"""Autoregressive roll-out as an async generator; the HTTP layer decides JSON or SSE."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.errors import InvalidInput
from service.inference.runner import Runner
from service.models import distribution
from service.models.encoding import decode_steps, denormalise, softmax
from service.models.manifest import FeaturesInput, RegressionOutput, TextInput
from service.models.registry import LoadedModel, State

DEFAULT_SAMPLES = 100
"""Sample paths a probabilistic forecaster's ``generate`` draws unless asked for another
number (fewer when the batch limit, ``max_batch_sequences``, is lower)."""


@dataclass(frozen=True)
class GenerateOptions:
    steps: int
    temperature: float = 1.0
    top_k: int | None = None
    seed: int | None = None
    samples: int = DEFAULT_SAMPLES
    """Probabilistic forecasters: sample paths drawn through the model's state."""
    return_paths: bool = False
    """Probabilistic forecasters: give every path's values, not only their fan."""


@dataclass
class GenStep:
    index: int
    output: Any
    """The wire output: ``{"token", "p"}`` for text models, a vector for regression (for a
    probabilistic forecaster, its mean path's: the mean fed back at every step)."""
    fan: dict[str, list[float]] | None = None
    """Probabilistic forecasters: the paths' quantiles at this horizon, per feature."""
    paths: list[list[float]] | None = None
    """With ``return_paths``: each path's value at this horizon (``[samples, F]``)."""

    def event(self) -> dict[str, Any]:
        """The step as an SSE ``step`` event gives it."""
        event: dict[str, Any] = {"step": self.index, "output": self.output}
        if self.fan is not None:
            event["fan"] = self.fan
        if self.paths is not None:
            event["paths"] = self.paths
        return event


async def collect(steps: AsyncIterator[GenStep]) -> dict[str, Any]:
    """A whole roll-out's response fields: ``outputs``, and for a probabilistic forecaster
    ``fan`` (one per horizon) and, when asked, ``paths`` (``[samples][horizon][F]``)."""
    done = [s async for s in steps]
    out: dict[str, Any] = {"outputs": [s.output for s in done]}
    if done and done[0].fan is not None:
        out["fan"] = [s.fan for s in done]
    if done and done[0].paths is not None:
        out["paths"] = [list(p) for p in zip(*(s.paths or [] for s in done), strict=True)]
    return out


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
    if m.distribution is not None:
        paths = sample_paths(runner, model, state, last_output, opts, result, key)
        async for step in paths:
            yield step
        result.fed_steps += fed
        return
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


async def sample_paths(
    runner: Runner,
    model: LoadedModel,
    state: State,
    last_output: np.ndarray,
    opts: GenerateOptions,
    result: Rollout,
    key: str | None,
) -> AsyncIterator[GenStep]:
    """A probabilistic forecaster's roll-out, all paths run together from ``state``: the
    mean path (each step's mean fed back, exactly as a point model's roll-out: the step's
    ``output``, and where ``result`` ends) and ``opts.samples`` sample paths (each step
    drawn from the model's distribution, seeded by ``opts.seed``, and fed back as that
    path's next input), whose quantiles are the step's ``fan``."""
    m = model.manifest
    d = m.distribution
    assert d is not None and isinstance(m.output, RegressionOutput)
    rng = np.random.default_rng(opts.seed)
    n = 1 + opts.samples
    states = [state] * n
    last = np.broadcast_to(last_output, (n, last_output.shape[-1]))
    feed = m.feedback.output_index
    for i in range(opts.steps):
        wire = denormalise(m.output, last, True)
        mean, _ = distribution.split(wire[:1])
        draws = distribution.draw(d, wire[1:], rng).astype(np.float32)
        yield GenStep(
            i,
            mean[0].tolist(),
            distribution.fan(d, draws),
            draws.tolist() if opts.return_paths else None,
        )
        nxt = np.concatenate([mean, draws])[:, feed]  # data units, as a client would send
        results = await runner.run(model, [row[None, :] for row in nxt], states, key=key)
        states = [r.state for r in results]
        last = np.stack([r.outputs[-1] for r in results])
    result.state, result.last_output, result.fed_steps = states[0], last[0], opts.steps


def check_generate_options(
    model: LoadedModel, body: dict[str, Any], max_steps: int, max_samples: int
) -> GenerateOptions:
    """Validate ``steps``, ``temperature``, ``top_k``, ``seed``, ``samples`` and
    ``return_paths`` of a generate body (``max_samples``: the most sequences of a batch)."""
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
    samples, return_paths = _sampling(model, body, max_samples)
    return GenerateOptions(
        steps=steps,
        temperature=float(temperature),
        top_k=top_k,
        seed=seed,
        samples=samples,
        return_paths=return_paths,
    )


def _sampling(model: LoadedModel, body: dict[str, Any], max_samples: int) -> tuple[int, bool]:
    samples = body.get("samples")
    return_paths = body.get("return_paths") or False
    if model.manifest.distribution is None:
        if samples is not None or return_paths:
            raise InvalidInput(
                f"model {model.manifest.name!r} gives no distribution: samples and "
                "return_paths are for probabilistic forecasters",
                code="not_probabilistic",
            )
        return DEFAULT_SAMPLES, False
    if samples is None:
        samples = min(DEFAULT_SAMPLES, max_samples)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise InvalidInput("samples must be a positive integer")
    if samples > max_samples:
        raise InvalidInput(
            f"{samples} sample paths exceed the limit of {max_samples}", code="batch_too_large"
        )
    if not isinstance(return_paths, bool):
        raise InvalidInput("return_paths must be true or false")
    return samples, return_paths
