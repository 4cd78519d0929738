"""One run of a step on a worker: call the handler under its fence and timeout, then
record the result at most once (see ``_worker.py`` for the worker around it).

``execute`` reads the earlier outputs a task carries by reference, builds the
``StepContext``, runs the middleware and the handler (never resumed once the session
is known lost) and says how it ended; ``record`` puts the result and deletes the
task in one txn guarded by the task's create revision (the run's fencing token).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from whizorch.coord import Session
from whizorch.errors import DecodeError, FencedError, RequestTooLargeError, WhizorchError
from whizorch.etcd import Compare, EtcdClient, Op, RangeResult, TxnBatcher
from whizorch.saga._definition import App, StepContext, call_handler
from whizorch.saga._fencing import run_fenced
from whizorch.saga._middleware import Middleware, run_pipeline
from whizorch.saga._model import COMPENSATE, ResultPayload, TaskPayload
from whizorch.saga._outcome import RunOutcome, bounded, handler_traceback
from whizorch.saga._supervise import is_transient

__all__ = ["StepRunner"]

log = logging.getLogger("whizorch.saga.worker")


class StepRunner:
    """What a worker needs to run one task and record its result."""

    def __init__(
        self, client: EtcdClient, app: App, *, region: str, worker_id: str, middleware: tuple[Middleware, ...]
    ) -> None:
        self.client = client
        self.app = app
        self.region = region
        self.worker_id = worker_id
        self.middleware = middleware
        self._results = TxnBatcher(client, idempotent=True, max_in_flight=4)
        """Results of runs that end together go in one txn."""

    def failure_result(self, error: str, error_type: str, started: float, fence: int) -> bytes:
        """A small, final failure result (the real one could not be recorded)."""
        return ResultPayload(
            ok=False, error=error, error_type=error_type, retryable=False,
            worker=self.worker_id, region=self.region, started=started, ended=time.time(), fence=fence,
        ).to_json()

    async def record(
        self, session: Session, task_key: bytes, token: int, result_key: bytes, data: bytes, started: float
    ) -> Any:
        """Put the result and drop the task, in one txn guarded by the task.

        The txn is safe to repeat (a second try finds the result there and changes
        nothing), so etcd trouble is waited out while the session lives: given up, the
        task would stay on a live lease and strand the step until its deadline. A
        result etcd refuses for good (over its request limit) is replaced by a small
        failure that says so: the step fails clearly instead of hanging.
        """
        delay = 0.05
        while True:
            try:
                return await self._results.txn(
                    [Compare.create_revision(task_key, "==", token), Compare.create_revision(result_key, "==", 0)],
                    [Op.put(result_key, data), Op.delete(task_key)],
                )
            except RequestTooLargeError as exc:
                if b'"ok":false' in data[:12]:
                    raise
                data = self.failure_result(
                    f"the step's result could not be recorded: {exc}", type(exc).__name__, started, token
                )
                continue
            except WhizorchError as exc:
                if session.is_lost or not is_transient(exc):
                    raise
                log.warning("worker %s: could not record %r yet: %s; retrying", self.worker_id, result_key, exc)
                await asyncio.sleep(delay)  # ok: back off before trying again
                delay = min(delay * 2, 1.0)

    async def execute(
        self, session: Session, task: TaskPayload, task_key: bytes, token: int
    ) -> RunOutcome | None:
        """How running the handler ended; None when the run was stopped because the
        session is lost (nothing is recorded then)."""
        saga = self.app.get(task.saga, task.version or None)
        if saga is None or not 0 <= task.step < len(saga.steps):
            # the leader gives a run only to a worker that advertises its definition
            return RunOutcome.failure(
                f"worker {self.worker_id} in region {self.region} does not have saga {task.saga!r} "
                f"version {task.version!r} step {task.step} (its App has: {self.app.served()})",
                "UnknownSaga",
            )
        step = saga.steps[task.step]
        compensating = task.kind == COMPENSATE
        fn = step.compensation if compensating else step.fn
        if fn is None:
            return RunOutcome.success()
        policy = step.compensation_retry if compensating else step.retry
        outputs = task.outputs
        if task.output_refs:
            delay = 0.05
            while True:
                try:
                    outputs = {**outputs, **await self.read_outputs(task.output_refs)}
                    break
                except DecodeError as exc:
                    return RunOutcome.failure(str(exc), type(exc).__name__)
                except WhizorchError as exc:
                    # etcd trouble: given up, the task would stay on a live lease and
                    # strand the step; wait it out while the session lives
                    if session.is_lost or not is_transient(exc):
                        raise
                    log.warning("worker %s: could not read earlier outputs yet: %s; retrying", self.worker_id, exc)
                    await asyncio.sleep(delay)  # ok: back off before reading again
                    delay = min(delay * 2, 1.0)
        ctx = StepContext(
            saga_id=task.saga_id,
            transaction_id=task.txid,
            saga=task.saga,
            version=saga.version,
            step=step.name,
            step_index=task.step,
            attempt=task.attempt,
            region=self.region,
            compensating=compensating,
            idempotency_key=f"{task.saga_id}:{step.name}",
            outputs=outputs,
            worker=self.worker_id,
            trace=task.trace,
            fence_token=token,
            fence_key=task_key,
            deadline=None if task.timeout_s is None else time.time() + task.timeout_s,
            claim_left=lambda: session.remaining_s,
            etcd=self.client,
        )
        handler = fn

        async def final() -> Any:
            # the timeout bounds the handler; middleware around it sees its TimeoutError
            async with asyncio.timeout(task.timeout_s):
                return await call_handler(handler, ctx, task.input)

        try:
            # never resumed once the session is known lost (after a pause, too)
            output = await run_fenced(run_pipeline(self.middleware, ctx, final), lambda: not session.is_lost)
        except FencedError:
            if session.is_lost:
                log.warning(
                    "worker %s: stopped %s step %d (%s #%d): session lost", self.worker_id, task.saga_id, task.step,
                    task.kind, task.attempt,
                )
                return None
            raise
        except TimeoutError as exc:
            return RunOutcome.failure(f"timed out after {task.timeout_s}s", "TimeoutError", retryable=policy.retryable(exc))
        except Exception as exc:
            retryable = policy.retryable(exc)
            trace = handler_traceback(exc)
            error = bounded(f"{type(exc).__name__}: {exc}")
            log.warning(
                "worker %s: saga %s (%s) step %r %s #%d raised %s (%s)\n%s",
                self.worker_id, task.saga_id, task.saga, step.name, "compensation" if compensating else "run",
                task.attempt, bounded(error, 300), "retryable" if retryable else "not retried: give_up_on/retry_on",
                trace.rstrip(),
            )
            return RunOutcome.failure(error, type(exc).__name__, retryable=retryable, traceback=trace)
        return RunOutcome.success(output)

    async def read_outputs(self, refs: dict[str, str]) -> dict[str, Any]:
        """Earlier steps' outputs the task carries by reference (their result keys)."""
        names = list(refs)
        outputs: dict[str, Any] = {}
        for i in range(0, len(names), 64):  # within etcd's ops-per-txn limit
            chunk = names[i : i + 64]
            res = await self.client.txn([], [Op.get(refs[n].encode()) for n in chunk])
            for name, got in zip(chunk, res.responses, strict=True):
                if not (isinstance(got, RangeResult) and got.kvs):
                    raise DecodeError(f"the output of step {name!r} is gone ({refs[name]})", field="output_refs")
                outputs[name] = ResultPayload.from_json(got.kvs[0].value).output
        return outputs
