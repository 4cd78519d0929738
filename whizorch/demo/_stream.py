"""The saga stream of the demo: submissions at a steady rate, a bound on the sagas in
flight, and each saga's latency and outcome as the demo's SagaClient sees it."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Callable

from whizorch.demo import apps
from whizorch.demo._report import SagaRun, Tally
from whizorch.errors import WhizorchError
from whizorch.saga import SagaClient

__all__ = ["Stream"]

_SUBMIT_FOR_S = 10.0
"""How long one submission is retried while etcd does not answer."""
_SHOWN_COMPENSATIONS = 2
"""Designed compensations logged one by one (the rest are counted)."""


class Stream:
    """Submits `apps.workload` sagas; ``stop()`` ends the submissions, `drain` waits for
    the sagas in flight."""

    def __init__(
        self, sagas: SagaClient, tally: Tally, log: Callable[..., None], *, rate: float, max_in_flight: int, seed: int
    ) -> None:
        self.sagas = sagas
        self.tally = tally
        self.log = log
        self.rate = rate
        self.max_in_flight = max_in_flight
        self.seed = seed
        self.inflight: set[asyncio.Task[None]] = set()
        self._stopped = False
        self._changed = asyncio.Event()
        self._shown = 0

    def stop(self) -> None:
        """No more submissions (the sagas in flight go on)."""
        self._stopped = True
        self._changed.set()

    def _done(self, task: asyncio.Task[None]) -> None:
        self.inflight.discard(task)
        self._changed.set()

    async def submit_until_stopped(self, tg: asyncio.TaskGroup) -> None:
        """Start a saga every 1/rate seconds while fewer than max_in_flight are in
        flight, each in its own task of ``tg``, until `stop`."""
        jobs = apps.workload(self.seed)
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        for n in itertools.count(1):
            while True:
                if self._stopped:
                    return
                now = time.monotonic()
                full = len(self.inflight) >= self.max_in_flight
                if now >= next_at and not full:
                    break
                self._changed.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if full else next_at - now):
                        await self._changed.wait()
            job = next(jobs)
            task = tg.create_task(self._one(f"{job.saga.name}-{n:05d}", job))
            self.inflight.add(task)
            task.add_done_callback(self._done)
            # a stall (at the in-flight bound) is not made up for with a burst afterwards
            next_at = max(next_at + interval, time.monotonic())

    async def drain(self, timeout_s: float) -> int:
        """Wait for the sagas in flight; cancel those still waiting after ``timeout_s``.
        Returns how many were cancelled (unfinished)."""
        if not self.inflight:
            return 0
        _, pending = await asyncio.wait(set(self.inflight), timeout=timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)

    async def _one(self, saga_id: str, job: apps.Job) -> None:
        run = SagaRun(saga_id, job.saga.name, job.expect, time.monotonic(), shard=self.tally.shards.shard_of(saga_id))
        self.tally.sagas[saga_id] = run
        deadline = time.monotonic() + _SUBMIT_FOR_S
        while not run.submitted:
            try:  # idempotent per saga id: resending after an unknown outcome is safe
                await self.sagas.submit(job.saga, job.input, saga_id=saga_id)
                run.submitted = True
            except WhizorchError as exc:
                if time.monotonic() > deadline:
                    run.submit_error = str(exc)
                    self.log(f"could not submit {saga_id}: {exc}", style="red")
                    return
                await asyncio.sleep(0.2)  # ok: back off before resubmitting
        while True:
            try:
                result = await self.sagas.wait(saga_id, raise_on_failure=False)
                break
            except WhizorchError:
                await asyncio.sleep(0.2)  # ok: back off; drain() cancels at its deadline
        self.tally.finish(run, result)
        if result.status != job.expect:
            self.log(f"saga {saga_id} ended {result.status}, designed to end {job.expect}: {result.error}", style="red")
        elif result.status == "compensated" and self._shown < _SHOWN_COMPENSATIONS:
            self._shown += 1
            self.log(f"saga {saga_id} compensated as designed: {result.error}")
