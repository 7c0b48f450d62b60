"""Bounds on what a session record may hold, shared by the core and the published schemas."""

from __future__ import annotations

MAX_RESTORED_STEPS = 2**53 - 1
"""The largest step count a client may give when it restores a state (``POST /v1/sessions``
with ``state`` and ``steps``): the largest integer every JSON client represents exactly."""

MAX_STORED_STEPS = 2**63 - 1
"""The largest step count a stored record may hold (a restored session keeps stepping)."""
