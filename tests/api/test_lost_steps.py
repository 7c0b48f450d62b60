"""A step lost by Redis after it was acknowledged (a failover without ``WAIT``) is never
silent: the client's next step answers 409 with the session's true step count, and the
lost steps sent again give the same outputs.

The app runs in process on a Redis database of the test's own; the loss is re-enacted by
putting back the record as it was two steps earlier (``DUMP``/``RESTORE``), which is what
a promoted replica that had not received those two steps holds. The replica's own copy of
the record (one round trip per step) is newer than Redis's then: its compare-and-set
fails and the step is refused on a fresh load.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.asyncio as aioredis

from tests.api.test_store_errors import ONE, A, _create, serving

pytestmark = pytest.mark.redis


async def test_steps_lost_by_redis_answer_409_with_the_true_count(
    tiny_store: Path, redis_url: str
) -> None:
    raw = aioredis.Redis.from_url(redis_url)
    async with serving(tiny_store, session_store=redis_url) as (_, http):
        sid = await _create(http)
        path = f"/v1/sessions/{sid}/step"
        acked = []
        for offset in range(3):
            r = await http.post(path, json={**ONE, "offset": offset}, headers=A)
            assert r.status_code == 200, r.text
        key = f"lstm:s:{sid}"
        before = await raw.dump(key)
        assert before is not None
        for offset in (3, 4):
            r = await http.post(path, json={**ONE, "offset": offset}, headers=A)
            assert r.status_code == 200, r.text
            acked.append(r.json()["outputs"])
        await raw.restore(key, await raw.pttl(key), before, replace=True)

        r = await http.post(path, json={**ONE, "offset": 5}, headers=A)
        assert r.status_code == 409, r.text
        assert r.json()["steps"] == 3
        again = []
        for offset in (3, 4):
            r = await http.post(path, json={**ONE, "offset": offset}, headers=A)
            assert r.status_code == 200, r.text
            assert r.json()["steps"] == offset + 1
            again.append(r.json()["outputs"])
        assert again == acked
    await raw.aclose()
