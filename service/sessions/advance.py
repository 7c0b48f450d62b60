"""What one ``SessionManager.advance`` takes and gives, in model terms."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from service.models.registry import LoadedModel, State

InputsOf = Callable[[LoadedModel], np.ndarray]
"""Reads a request's inputs for the session's model (an adapter's parser): the model is
known only once the record is loaded, so an adapter may pass this instead of an array."""


class Advance(NamedTuple):
    """What one ``advance`` did, in model terms (a named tuple: one is made per step).

    ``outputs`` are the raw model outputs, one row per step (``[steps, out]``, model
    units); ``wire`` the same in the data's units for regression models when the runner
    computed them (None otherwise: ``encoding.in_data_units`` derives them). A replay
    carries the outputs of the request it repeats and the session's current state.
    """

    session_id: str
    model: LoadedModel
    outputs: np.ndarray
    wire: np.ndarray | None
    state: State
    steps_before: int
    """The session's step count before the request (of a replay: before the original)."""
    steps: int
    """The step count after it."""
    replayed: bool = False
