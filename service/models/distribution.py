"""A probabilistic forecaster's outputs: mean, scale, quantiles, sample draws and fans.

The one place they are computed; every door (``/v1`` predict and session steps, the
WebSocket stream, ``generate``, ``/v2`` and gRPC) encodes what this module gives.

A probabilistic model's outputs in the data's units (``SeqResult.wire``) are rows of
``2 * F`` values: the mean of each of the ``F`` output features, then each one's scale (for
``gaussian``, the standard deviation). A point model has no distribution: every function
here is for models whose manifest has one.
"""

from __future__ import annotations

from functools import cache
from statistics import NormalDist
from typing import Any

import numpy as np

from service.models.encoding import in_data_units
from service.models.manifest import Distribution, Manifest


def split(wire: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[..., 2F]`` → the mean ``[..., F]`` and the scale ``[..., F]``."""
    half = wire.shape[-1] // 2
    return wire[..., :half], wire[..., half:]


@cache
def _standard(family: str, levels: tuple[float, ...]) -> np.ndarray:
    """The standard distribution's quantiles at ``levels`` (``[L]``, float64)."""
    if family != "gaussian":  # the manifest admits no other family
        raise ValueError(f"no quantile function for {family!r}")
    unit = NormalDist()
    return np.asarray([unit.inv_cdf(q) for q in levels], dtype=np.float64)


def quantiles(spec: Distribution, wire: np.ndarray) -> np.ndarray:
    """``[..., 2F]`` → ``[..., L, F]``: each level's quantile of every feature, float32.

    Increasing along the level axis (the levels increase and the scale is positive)."""
    mean, scale = split(wire.astype(np.float64, copy=False))
    z = _standard(spec.family, tuple(spec.quantiles))
    q: np.ndarray = mean[..., None, :] + z[:, None] * scale[..., None, :]
    return q.astype(np.float32)


def step_view(spec: Distribution, wire: np.ndarray) -> list[dict[str, Any]]:
    """``[T, 2F]`` → one ``/v1`` distribution per step:
    ``{"scale": [F], "quantiles": {"0.1": [F], ...}}`` (the mean is the step's output)."""
    q = quantiles(spec, wire).tolist()
    _, scale = split(wire)
    levels = spec.levels
    return [
        {"scale": s, "quantiles": dict(zip(levels, row, strict=True))}
        for s, row in zip(scale.tolist(), q, strict=True)
    ]


def steps_view(manifest: Manifest, y: np.ndarray, wire: np.ndarray | None) -> list[Any] | None:
    """A probabilistic model's outputs ``y`` (``[T, 2F]``, model units; ``wire``: the same in
    data units when the runner gave them) → one ``/v1`` distribution per step; None for a
    point model."""
    spec = manifest.distribution
    if spec is None:
        return None
    return step_view(spec, in_data_units(manifest, y, wire))


def sequence_view(manifest: Manifest, y: np.ndarray, wire: np.ndarray | None, mode: str) -> Any:
    """One sequence's distributions as ``return`` asks: the last step's, or one per step."""
    if mode == "last":
        views = steps_view(manifest, y[-1:], None if wire is None else wire[-1:])
        return None if views is None else views[0]
    return steps_view(manifest, y, wire)


def draw(spec: Distribution, wire: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One sample of every row of ``wire`` (``[N, 2F]`` → ``[N, F]``, float64)."""
    mean, scale = split(wire.astype(np.float64, copy=False))
    if spec.family != "gaussian":
        raise ValueError(f"no sampler for {spec.family!r}")
    noise: np.ndarray = rng.standard_normal(mean.shape)
    out: np.ndarray = mean + scale * noise
    return out


def fan(spec: Distribution, draws: np.ndarray) -> dict[str, list[float]]:
    """The quantiles of ``draws`` (``[N, F]``, N sample paths at one horizon) at the
    model's levels, per feature: ``{"0.1": [F], ...}`` (empirical, linear interpolation)."""
    q = np.quantile(draws, spec.quantiles, axis=0)
    return dict(zip(spec.levels, q.tolist(), strict=True))
