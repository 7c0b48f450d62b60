"""Bounds on what a session record may hold, shared by the core and the published schemas,
and the check that a record fits the model it names."""

from __future__ import annotations

from service.models.registry import LoadedModel
from service.sessions.record import SessionRecord

MAX_RESTORED_STEPS = 2**53 - 1
"""The largest step count a client may give when it restores a state (``POST /v1/sessions``
with ``state`` and ``steps``): the largest integer every JSON client represents exactly."""

MAX_STORED_STEPS = 2**63 - 1
"""The largest step count a stored record may hold (a restored session keeps stepping)."""


def record_fits(rec: SessionRecord, model: LoadedModel) -> bool:
    """Whether the record's state and outputs have the shapes ``model`` makes (a record
    written by something else may not: running it would fail inside the model)."""
    specs = model.manifest.state
    state = rec.state
    if len(state) != len(specs):
        return False
    for spec in specs:
        arr = state.get(spec.name)
        if arr is None or list(arr.shape) != spec.shape:
            return False
    size = model.manifest.output_width
    if rec.last_output is not None and rec.last_output.shape != (size,):
        return False
    last = rec.last
    return last is None or last.outputs.shape == (last.n_steps, size)
