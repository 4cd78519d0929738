"""A shard's takeover on real etcd: a new term with many sagas in flight keeps the event
loop turning while it decodes them (the session's keepalives, the split-brain probe and
the process's other shards share that loop)."""

from __future__ import annotations

import asyncio

import pytest
import saga_apps as apps
from _engine import Engine

from whizorch.saga import SagaRecord, Settings
from whizorch.saga.leader import _resume
from whizorch.testing import eventually_async

WAITING = Settings(no_region_timeout_s=600.0)
"""No worker runs in these tests: the sagas wait for a region, in flight, all along."""


async def test_a_takeover_yields_to_the_event_loop_while_it_decodes_records(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new leader of a shard with 3 x YIELD_EVERY sagas in flight lets other tasks run
    between every YIELD_EVERY records it decodes, instead of decoding them all in one
    turn of the loop, and still takes every one of them over."""
    n = 3 * _resume.YIELD_EVERY
    first = await engine.leader(shards=1, settings=WAITING)
    await asyncio.gather(*(engine.sagas.submit(apps.trip, engine.plan(), saga_id=f"w-{i}") for i in range(n)))

    async def adopted() -> None:
        assert len(await engine.keys("live")) == n

    await eventually_async(adopted, timeout=60, message=f"{n} sagas adopted")
    await first.aclose()

    turns = 0

    async def ticker() -> None:
        nonlocal turns
        while True:
            await asyncio.sleep(0)  # ok: counts the loop's turns
            turns += 1

    seen: list[int] = []
    decode = SagaRecord.from_json

    class Spy:
        """The takeover's SagaRecord: notes the loop's turn at each record decoded."""

        @staticmethod
        def from_json(data: bytes) -> SagaRecord:
            seen.append(turns)
            return decode(data)

    monkeypatch.setattr(_resume, "SagaRecord", Spy)
    counting = asyncio.ensure_future(ticker())
    try:
        second = await engine.orchestrator(shards=1, settings=WAITING)
        await second.wait_leader(60)
    finally:
        counting.cancel()
    assert len(seen) == n
    assert len(set(seen)) >= n // _resume.YIELD_EVERY, "the records were decoded in fewer turns of the loop"
    assert second.in_flight() == {"running": n}
