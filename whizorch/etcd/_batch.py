"""Group concurrent guarded txns into one etcd txn, each kept apart as a nested txn.

Many writers (a leader's per-saga drivers, a worker's runs) each have one small txn to
commit: ``compare -> success | failure``. Sent one by one, each costs a Raft round and
a gRPC call. A :class:`TxnBatcher` sends them at once (no added latency when idle),
up to ``max_in_flight`` txns at a time; while that many are in flight it gathers the
others, and when one returns they go together as ONE txn whose ops are the writers'
own txns, nested (etcd 3.3+):

    txn(outer_compare) -> [txn(c1 -> s1 | f1), txn(c2 -> s2 | f2), ...] | outer_failure

A nested txn's compares decide only its own branch, so a conflict on one item never
fails the others; every item gets its own :class:`TxnResult` (with the batch's
header). The outer compares (a leader's fence) guard them all: when they fail, every
item's caller gets :class:`BatchRefused` with the outer failure's responses.

A batch is bounded by etcd's limits: ``max_bytes`` of request, and etcd's
``--max-txn-ops`` (default 128), which it checks level by level with a shrinking
budget: a txn's op count is the largest of its compares, success ops and failure ops,
and each nested txn may have at most the budget left by its parents. So a batch of
``n`` items whose largest item counts ``k`` ops needs ``n + k <= max_ops`` (checked
against etcd 3.5: 127 nested txns of 1 op each pass, 128 do not, nor 127 of 5). An error
for the whole batch that one item can cause (a request over etcd's size limit, a
lease that does not exist) is retried item by item, so only that item's caller sees
it; an error no item causes alone (etcd unavailable, outcome unknown) reaches them
all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import attrs

from whizorch.errors import ConfigError, LeaseNotFoundError, RequestTooLargeError
from whizorch.etcd._client import EtcdClient
from whizorch.etcd._types import Compare, Op, TxnResult

__all__ = ["BatchRefused", "TxnBatcher"]

_SPLIT_ERRORS = (ConfigError, RequestTooLargeError, LeaseNotFoundError)
"""Errors one item can cause for a whole batch: retried item by item."""


class BatchRefused(Exception):
    """The batch's outer compares failed (e.g. the leader's fence)."""

    def __init__(self, result: TxnResult) -> None:
        super().__init__("the batch's outer compares failed")
        self.result = result


@attrs.define
class _Item:
    compare: Sequence[Compare]
    success: Sequence[Op]
    failure: Sequence[Op]
    size: int
    ops: int
    done: asyncio.Future[TxnResult]


class TxnBatcher:
    """``await batcher.txn(compare, success, failure)``: like ``EtcdClient.txn``, but
    concurrent calls share one etcd txn (see the module doc)."""

    def __init__(
        self,
        client: EtcdClient,
        *,
        outer_compare: Callable[[], Sequence[Compare]] = tuple,
        outer_failure: Callable[[], Sequence[Op]] = tuple,
        idempotent: bool = False,
        max_items: int = 64,
        max_ops: int = 128,
        max_bytes: int = 512 * 1024,
        max_in_flight: int = 1,
    ) -> None:
        if not 1 <= max_items < max_ops:
            raise ConfigError("max_items must be within 1..max_ops - 1", field="max_items", value=max_items)
        if max_in_flight < 1:
            raise ConfigError("max_in_flight must be >= 1", field="max_in_flight", value=max_in_flight)
        self.client = client
        self.outer_compare = outer_compare
        self.outer_failure = outer_failure
        self.idempotent = idempotent
        self.max_items = max_items
        self.max_ops = max_ops
        """etcd's ``--max-txn-ops`` (default 128)."""
        self.max_bytes = max_bytes
        self.max_in_flight = max_in_flight
        self._queue: list[_Item] = []
        self._in_flight = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        """Txns sent (for benches and tests)."""
        self.items = 0
        """Items committed through them."""

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op] = (), failure: Sequence[Op] = ()) -> TxnResult:
        """Commit one guarded txn, possibly together with others (the result is this
        item's own: ``succeeded`` and the responses of its branch)."""
        op = Op.txn(compare, success, failure)  # checks the arguments here, in the caller
        done: asyncio.Future[TxnResult] = asyncio.get_running_loop().create_future()
        ops = max(len(compare), len(success), len(failure))
        self._queue.append(_Item(compare, success, failure, op._pb.ByteSize(), ops, done))
        self._pump()
        return await done

    def _pump(self) -> None:
        while self._queue and self._in_flight < self.max_in_flight:
            batch: list[_Item] = []
            size = widest = 0
            outer = max(len(self.outer_compare()), len(self.outer_failure()))
            while self._queue and len(batch) < self.max_items:
                item = self._queue[0]
                n = max(outer, len(batch) + 1)
                if batch and (size + item.size > self.max_bytes or n + max(widest, item.ops) > self.max_ops):
                    break
                batch.append(self._queue.pop(0))
                size += item.size
                widest = max(widest, item.ops)
            self._in_flight += 1
            task = asyncio.get_running_loop().create_task(self._send(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[_Item]) -> None:
        try:
            live = [item for item in batch if not item.done.done()]  # a cancelled caller's item is dropped
            if live:
                await self._commit(live, split=len(live) > 1)
        finally:
            self._in_flight -= 1
            self._pump()

    async def _commit(self, batch: list[_Item], *, split: bool) -> None:
        try:
            if len(batch) == 1 and not self.outer_compare():
                one = batch[0]
                res = await self.client.txn(one.compare, one.success, one.failure, idempotent=self.idempotent)
                self.batches += 1
                self.items += 1
                _settle(one.done, res)
                return
            ops = [Op.txn(item.compare, item.success, item.failure) for item in batch]
            res = await self.client.txn(self.outer_compare(), ops, self.outer_failure(), idempotent=self.idempotent)
        except _SPLIT_ERRORS as exc:
            if split:
                for item in batch:  # which item caused it? each alone: only its caller sees the error
                    await self._commit([item], split=False)
                return
            for item in batch:
                _fail(item.done, exc)
            return
        except BaseException as exc:
            for item in batch:
                _fail(item.done, exc if isinstance(exc, Exception) else asyncio.CancelledError())
            if not isinstance(exc, Exception):
                raise
            return
        self.batches += 1
        if not res.succeeded:
            for item in batch:
                _fail(item.done, BatchRefused(res))
            return
        self.items += len(batch)
        for item, nested in zip(batch, res.responses, strict=True):
            assert isinstance(nested, TxnResult)
            _settle(item.done, TxnResult(res.header, nested.succeeded, nested.responses))

    async def aclose(self) -> None:
        """Wait for the batches in flight (callers still waiting get their outcome)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _settle(fut: asyncio.Future[TxnResult], res: TxnResult) -> None:
    if not fut.done():
        fut.set_result(res)


def _fail(fut: asyncio.Future[TxnResult], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
