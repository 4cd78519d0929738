"""Fencing a step's external effects with its claim.

A worker runs a step only while its claim lives, but execution is not exclusive: a
worker paused or cut off past its lease may resume and run handler code after the
step was dispatched again (and even finished) elsewhere. Only the *recorded* result
is exactly once. Effects that must not happen twice at once are fenced with the run's
token (``ctx.fence_token``): strictly larger for every later run of the step.

* etcd effects: :func:`fenced_txn` adds ``create_revision(task) == token`` to the txn
  (the run's task, put on its worker's lease, is its claim), so it commits only while
  this run still holds its claim;
* other stores: keep the largest token seen per resource and refuse smaller ones, in
  the same statement as the effect, e.g.
  ``UPDATE account SET balance = balance - :amount, fence = :token
  WHERE id = :id AND fence < :token`` (0 rows: a newer run already acted).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Generator, Sequence
from typing import Any, TypeVar

from whizorch.errors import FencedError
from whizorch.etcd import Compare, EtcdClient, Op, RangeResult, TxnResult
from whizorch.saga._definition import StepContext

__all__ = ["fenced_txn", "run_fenced"]

T = TypeVar("T")


async def fenced_txn(
    client: EtcdClient,
    ctx: StepContext,
    compare: Sequence[Compare] = (),
    success: Sequence[Op] = (),
    failure: Sequence[Op] = (),
    *,
    idempotent: bool = False,
) -> TxnResult:
    """Run a txn that commits only while this run holds its claim.

    ``compare``/``success``/``failure`` are as in :meth:`EtcdClient.txn`; the claim's
    compare is added first. Returns the result when the txn ran (``succeeded`` tells
    which branch, as usual); raises :class:`FencedError` when the run no longer holds
    its claim, before sending if the worker already knows, else from etcd's answer.
    """
    ctx.check()
    res = await client.txn(
        [ctx.fence.compare(), *compare], success, [Op.get(ctx.fence_key), *failure], idempotent=idempotent
    )
    if not res.succeeded:
        held = res.responses[0]
        if not (isinstance(held, RangeResult) and held.kvs and held.kvs[0].create_revision == ctx.fence_token):
            raise FencedError(
                "a stale run's write was refused: the step's claim is gone or newer",
                saga_id=ctx.saga_id, step=ctx.step, attempt=ctx.attempt, token=ctx.fence_token,
            )
        res = TxnResult(res.header, False, res.responses[1:])
    return res


class _Guarded:
    """Drives a coroutine, checking before each resumption that it may still act.

    asyncio resumes a task when what it awaits is ready. After the process was paused
    (SIGSTOP, a long GC, a VM freeze), the first thing to run may be the handler's own
    continuation, before the worker's keepalive task notices the lease is gone. This
    proxy sits between the task and the handler: it asks ``alive()`` (a clock check,
    no IO) before every resumption and, once it answers False, throws CancelledError
    into the handler instead of resuming it, so handler code after an await never runs
    past the claim (only its ``finally``/``except`` clean-ups do).
    """

    def __init__(self, coro: Coroutine[Any, Any, T], alive: Callable[[], bool]) -> None:
        self._coro = coro
        self._alive = alive
        self.stopped = False

    def __await__(self) -> Generator[Any, Any, T]:
        coro = self._coro
        value: Any = None
        error: BaseException | None = None
        while True:
            if not self.stopped and not self._alive():
                self.stopped = True
                error = asyncio.CancelledError("the run's claim may be gone (its worker's session is lost)")
            try:
                yielded = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            try:
                value, error = (yield yielded), None
            except BaseException as exc:
                value, error = None, exc


async def run_fenced(coro: Coroutine[Any, Any, T], alive: Callable[[], bool]) -> T:
    """Await ``coro``, never resuming it once ``alive()`` is False (see :class:`_Guarded`).

    Raises :class:`FencedError` if it was stopped that way.
    """
    guarded = _Guarded(coro, alive)
    try:
        return await guarded
    except asyncio.CancelledError:
        if guarded.stopped and not _being_cancelled():
            raise FencedError("the run was stopped: its worker's session is lost") from None
        raise


def _being_cancelled() -> bool:
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
