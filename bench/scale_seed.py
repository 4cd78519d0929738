"""Seeding for bench_scale.py: sagas written as the engine leaves them (key schema 3).

For the 3-step saga ``bench_apps.scale`` (reserve@eu, charge@us, ship@ap; each step
allowed an hour, so a seeded saga in flight is not timed out while the bench runs):

- the namespace's ``<ns>/meta`` (schema 3, N shards) and the saga's definition;
- a finished saga: ``saga/<id>`` (completed, pinned to the definition's version, every
  step done, 8 history entries), ``input/<id>``, one result per step and its retention
  entry ``done/<shard>/<finished ms>/<id>``; no ``submit/`` key (the adoption consumed
  it);
- a saga in flight: its record (step 0 done, step 1 dispatched to a worker),
  ``input/<id>``, step 0's result, step 1's task on that worker's lease, and its
  in-flight index entry ``live/<shard>/<id>``;
- one live worker's registration in each region, on a lease granted here (its
  ``sagas`` list names the definition), as a running worker would keep it.

What the engine writes is in ``whizorch/saga/leader/_writes.py``; docs/design.md, "Key
schema (schema 3)", lists it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import bench_apps as apps

from whizorch import EtcdClient
from whizorch.etcd import Op
from whizorch.saga import SagaRecord, StepState, shard_of
from whizorch.saga._keys import Keys
from whizorch.saga._model import ResultPayload, TaskPayload, encode_json
from whizorch.saga._spec import SagaSpec

SAGA = apps.scale.name
VERSION = apps.scale.version
SPEC: SagaSpec = apps.scale.spec
STEPS = tuple((st.name, st.region or "") for st in SPEC.steps)
OPS_PER_TXN = 125  # etcd's --max-txn-ops is 128


def done_id(i: int) -> str:
    return f"{i:08x}-done"


def live_id(i: int) -> str:
    return f"{i:08x}-live"


class Seeder:
    """Writes one namespace's sagas (``shards`` shards) as schema 3 leaves them."""

    def __init__(self, keys: Keys, shards: int) -> None:
        self.keys = keys
        self.shards = shards

    # -- the namespace ------------------------------------------------------------------

    def namespace_ops(self) -> list[Op]:
        """``<ns>/meta`` and the saga's definition (orchestrators publish it too)."""
        meta = json.dumps({"schema": 3, "shards": self.shards}).encode()
        return [Op.put(self.keys.meta, meta), Op.put(self.keys.definition(SAGA, VERSION), SPEC.to_json())]

    def worker_ops(self, lease: int) -> list[Op]:
        """One live worker's registration in each region, on ``lease``."""
        ops = []
        for _, region in STEPS:
            caps = {
                "worker": f"bench-{region}", "region": region, "compliance": [], "cost": 0.0, "concurrency": 1000,
                "load": 0.0, "draining": False, "sagas": {SAGA: [VERSION]},
            }  # fmt: skip
            ops.append(Op.put(self.keys.region(region, lease), encode_json(caps, what="caps"), lease=lease))
        return ops

    # -- sagas --------------------------------------------------------------------------

    def finished(self, i: int, at: float) -> list[Op]:
        """A completed saga: record, input, 3 results, its retention entry."""
        sid, keys = done_id(i), self.keys
        rec = self._record(sid, 1000 + i, at, done=3, lease=0)
        assert rec.finished is not None
        ops = [Op.put(keys.saga(sid), rec.to_json()), Op.put(keys.input(sid), self._input(sid))]
        for step, (_, region) in enumerate(STEPS):
            ops.append(Op.put(self._result_key(sid, step, region), self._result(region, at, 2000 + i)))
        regions = encode_json({"regions": rec.regions}, what="index")
        ops.append(Op.put(keys.done(shard_of(sid, self.shards), int(rec.finished * 1000), sid), regions))
        return ops

    def in_flight(self, i: int, at: float, lease: int) -> list[Op]:
        """A saga at step 1 (dispatched on ``lease``): record, input, step 0's result,
        step 1's task, its in-flight index entry."""
        sid, keys = live_id(i), self.keys
        txid = 5_000_000 + i
        rec = self._record(sid, txid, at, done=1, lease=lease)
        name, region = STEPS[1]
        task = TaskPayload(
            saga_id=sid, saga=SAGA, txid=txid, step=1, step_name=name, kind="run", attempt=1, region=region,
            input={"order": sid}, outputs={STEPS[0][0]: None}, timeout_s=SPEC.steps[1].timeout_s, version=VERSION,
        )  # fmt: skip
        index = encode_json({"saga": SAGA, "version": VERSION}, what="index")
        return [
            Op.put(keys.saga(sid), rec.to_json()),
            Op.put(keys.input(sid), self._input(sid)),
            Op.put(self._result_key(sid, 0, STEPS[0][1]), self._result(STEPS[0][1], at, 3000 + i)),
            Op.put(keys.task(region, f"{lease:x}", sid, 1, "run", 1), task.to_json(), lease=lease),
            Op.put(keys.live(shard_of(sid, self.shards), sid), index),
        ]

    # -- values -------------------------------------------------------------------------

    def _result_key(self, sid: str, step: int, region: str) -> bytes:
        return self.keys.result(region, sid, step, "run", 1)

    @staticmethod
    def _input(sid: str) -> bytes:
        return encode_json({"order": sid}, what="saga input")

    @staticmethod
    def _result(region: str, at: float, fence: int) -> bytes:
        return ResultPayload(
            ok=True, output=None, worker=f"bench-{region}", region=region, started=at, ended=at + 0.0005, fence=fence
        ).to_json()

    def _record(self, sid: str, txid: int, at: float, *, done: int, lease: int) -> SagaRecord:
        """A record with ``done`` steps done and the next one dispatched on ``lease``
        (completed when every step is done)."""
        steps: list[StepState] = []
        history: list[dict[str, object]] = [{"at": round(at, 4), "event": "adopted", "txid": txid, "version": VERSION}]
        t = at
        for i, (name, region) in enumerate(STEPS):
            if i < done:
                steps.append(StepState(
                    name=name, state="done", region=region, run=1, result=self._result_key(sid, i, region).decode(),
                    started=t, ended=t + 0.003, regions=[region], dispatched_at=t, worker=f"{lease or 0x7e57:x}",
                ))  # fmt: skip
                history += [
                    {"at": round(t, 4), "event": "dispatched", "step": i, "region": region, "attempt": 1},
                    {"at": round(t + 0.003, 4), "event": "step_done", "step": i, "region": region, "attempt": 1},
                ]
                t += 0.003
            elif i == done:
                steps.append(StepState(
                    name=name, state="dispatched", region=region, run=1, started=t, regions=[region], dispatched_at=t,
                    worker=f"{lease:x}",
                ))  # fmt: skip
                history.append({"at": round(t, 4), "event": "dispatched", "step": i, "region": region, "attempt": 1})
            else:
                steps.append(StepState(name=name))
        final = done == len(STEPS)
        if final:
            history.append({"at": round(t, 4), "event": "completed"})
        return SagaRecord(
            id=sid, saga=SAGA, txid=txid, status="completed" if final else "running", steps=steps, created=at,
            updated=t, finished=t if final else None, step=min(done, len(STEPS) - 1), history=history, leader_term=3,
            version=VERSION,
        )  # fmt: skip


async def write_all(client: EtcdClient, ops: Iterator[list[Op]], concurrency: int = 16) -> int:
    """Every saga's ops in txns of at most OPS_PER_TXN ops, ``concurrency`` at a time
    (a saga's ops never split over two txns); returns the ops written."""
    queue: asyncio.Queue[list[Op] | None] = asyncio.Queue(maxsize=concurrency * 2)
    written = 0

    async def writer() -> None:
        nonlocal written
        while (batch := await queue.get()) is not None:
            await client.txn([], batch, idempotent=True)
            written += len(batch)

    tasks = [asyncio.create_task(writer()) for _ in range(concurrency)]
    batch: list[Op] = []
    for saga_ops in ops:
        if len(batch) + len(saga_ops) > OPS_PER_TXN:
            await queue.put(batch)
            batch = []
        batch += saga_ops
    if batch:
        await queue.put(batch)
    for _ in tasks:
        await queue.put(None)
    await asyncio.gather(*tasks)
    return written
