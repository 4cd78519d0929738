"""SagaClient: submit sagas from any process, await outcomes, cancel, inspect.

A submission is one txn that puts ``<ns>/submit/<id>`` while neither it nor the saga's
record exists (the leader's adoption turns the submission into the record):
submitting the same id twice with the same type and input (even from two processes at
once) starts one saga, and both callers get its outcome; the same id with another type
or input is a ``SagaIdConflictError``. The submission's create revision is the saga's
global transaction id. The caller
awaits the outcome by watching the saga record, never by polling.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Sequence
from typing import Any

import attrs

from whizorch.errors import (
    ClosedError,
    ConfigError,
    DecodeError,
    SagaFailedError,
    SagaIdConflictError,
    WhizorchError,
)
from whizorch.etcd import Compare, EtcdClient, Op, RangeResult, TxnResult
from whizorch.saga._definition import Saga
from whizorch.saga._definitions import publish
from whizorch.saga._keys import SAGA_ID, Keys
from whizorch.saga._listing import Submitted, scan_sagas
from whizorch.saga._middleware import Middleware, Submission, check_middleware, run_pipeline
from whizorch.saga._model import (
    COMPLETED,
    STATUSES,
    ResultPayload,
    SagaRecord,
    SubmissionPayload,
    encode_json,
)
from whizorch.saga._spec import SagaSpec

__all__ = ["SagaClient", "SagaHandle", "SagaPage", "SagaResult", "SagaSummary"]

_ID = re.compile(SAGA_ID)


@attrs.frozen(kw_only=True)
class SagaResult:
    """A finished saga: status, outputs by step, regions used, failovers, error."""

    saga_id: str
    txid: int
    saga: str
    status: str
    outputs: dict[str, Any]
    regions: list[str]
    failovers: list[dict[str, Any]]
    error: str | None
    record: SagaRecord

    @property
    def ok(self) -> bool:
        """True when the saga completed."""
        return self.status == COMPLETED

    @property
    def failed_over(self) -> bool:
        """True when any step moved to another region."""
        return bool(self.failovers)


@attrs.frozen(kw_only=True)
class SagaSummary:
    """One line of ``SagaClient.list``."""

    saga_id: str
    saga: str
    status: str
    txid: int
    step: int
    regions: list[str]
    failovers: int
    updated: float
    error: str | None


@attrs.frozen(kw_only=True)
class SagaPage:
    """One page of ``SagaClient.list_page``: sagas in id order, and ``next_after``, the
    cursor of the next page (None when this page reached the end)."""

    sagas: list[SagaSummary]
    next_after: str | None
    scanned: int
    """Records and submissions read to find these (more than ``len(sagas)`` when filtering)."""
    revision: int
    """The etcd revision the page was read at."""


def _summary(entry: SagaRecord | Submitted) -> SagaSummary:
    if isinstance(entry, Submitted):
        return SagaSummary(
            saga_id=entry.saga_id, saga=entry.saga, status="pending", txid=entry.txid, step=0, regions=[],
            failovers=0, updated=0.0, error=None,
        )  # fmt: skip
    return SagaSummary(
        saga_id=entry.id, saga=entry.saga, status=entry.status, txid=entry.txid, step=entry.step,
        regions=entry.regions, failovers=len(entry.failovers), updated=entry.updated, error=entry.error,
    )  # fmt: skip


_GONE = object()
"""The input of a saga whose input key retention already removed: nothing to compare."""


def _canonical(value: Any) -> str:
    """A JSON value as one text, so equal inputs compare equal whatever their key order
    (tuples as lists, as JSON has them)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _conflict(message: str, saga_id: str, saga: str, existing: Any, txid: int) -> SagaIdConflictError:
    exc = SagaIdConflictError(message, field="saga_id", saga_id=saga_id, saga=saga, existing=existing, txid=txid)
    exc.args = (message,)  # the message names them all
    return exc


ERROR_SHOWN = 300
"""Characters of a saga's error that SagaFailedError's message shows (all of it is on
``exc.error`` and ``exc.result``)."""


def _failed(rec: SagaRecord, result: SagaResult) -> SagaFailedError:
    """One readable line: the saga, how it ended, why; the rest as attributes."""
    error = " ".join((rec.error or "no error recorded").split())
    if len(error) > ERROR_SHOWN:
        error = error[:ERROR_SHOWN] + "..."
    message = f"saga {rec.id!r} ({rec.saga}) ended {rec.status}: {error}"
    exc = SagaFailedError(message, saga_id=rec.id, saga=rec.saga, status=rec.status, error=rec.error, result=result)
    exc.args = (message,)  # the result's repr is kilobytes: never in the message
    return exc


class SagaHandle:
    """A submitted saga: ``await handle.result()``, ``await handle.cancel()``."""

    def __init__(self, client: SagaClient, saga_id: str, txid: int, saga: str) -> None:
        self._client = client
        self.saga_id = saga_id
        self.txid = txid
        """The global transaction id (the submission's etcd revision)."""
        self.saga = saga

    async def result(self, *, timeout_s: float | None = None, raise_on_failure: bool = True) -> SagaResult:
        """Wait for the outcome. Raises SagaFailedError unless it completed (by default)."""
        return await self._client.wait(self.saga_id, timeout_s=timeout_s, raise_on_failure=raise_on_failure)

    async def cancel(self) -> None:
        """Ask the leader to cancel: completed steps are compensated."""
        await self._client.cancel(self.saga_id)

    async def status(self) -> str:
        """The saga's current status (``pending`` until the leader adopts it)."""
        rec = await self._client.get(self.saga_id)
        return rec.status if rec is not None else "pending"

    def __repr__(self) -> str:
        return f"<SagaHandle {self.saga} {self.saga_id} txid={self.txid}>"


class SagaClient:
    """Submit and inspect sagas. ``SagaClient(etcd_client, namespace="whizorch")``.

    Usable as soon as it is made (``async with`` closes it at the end); after
    :meth:`aclose` every call raises :class:`~whizorch.errors.ClosedError`.
    """

    def __init__(
        self,
        client: EtcdClient,
        /,
        *,
        namespace: str = "whizorch",
        max_payload_bytes: int = 64 * 1024,
        middleware: Sequence[Middleware] = (),
    ) -> None:
        if not isinstance(client, EtcdClient):
            raise ConfigError("SagaClient needs an EtcdClient", field="client", value=type(client).__name__)
        self.client = client
        self.keys = Keys(namespace)
        self.max_payload_bytes = max_payload_bytes
        self.middleware = check_middleware(middleware)
        """Around every submission: ``async def mw(ctx: Submission, call_next)``."""
        # one watch on <ns>/saga/ serves every wait() of this client
        self._waiters: dict[str, list[asyncio.Future[tuple[SagaRecord, int]]]] = {}
        self._hub: asyncio.Task[None] | None = None
        self._hub_ready: asyncio.Future[None] | None = None
        self._published: set[tuple[str, str]] = set()
        """Definitions this client has published (``submit`` with a Saga object)."""
        self._closed = False

    async def __aenter__(self) -> SagaClient:
        self._check_open()
        return self

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the SagaClient is closed; make a new one")

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the shared outcome watch (waiters get ClosedError); the client is
        closed for good. Idempotent."""
        self._closed = True
        hub, self._hub = self._hub, None
        if hub is not None:
            hub.cancel()
            await asyncio.gather(hub, return_exceptions=True)
        for futures in self._waiters.values():
            for fut in futures:
                if not fut.done():
                    fut.set_exception(ClosedError("the SagaClient was closed"))
        self._waiters.clear()

    async def _ensure_hub(self) -> None:
        self._check_open()
        if self._hub is None or self._hub.done():
            self._hub_ready = asyncio.get_running_loop().create_future()
            self._hub = asyncio.get_running_loop().create_task(self._run_hub(self._hub_ready), name="whizorch-saga-outcomes")
        assert self._hub_ready is not None
        await asyncio.shield(self._hub_ready)

    async def _run_hub(self, ready: asyncio.Future[None]) -> None:
        """Watch every saga record from "now"; resolve waiters on final records."""
        while True:
            try:
                async with self.client.watch(self.keys.prefix("saga"), prefix=True) as watch:
                    await watch.wait_created()
                    if not ready.done():
                        ready.set_result(None)
                    else:  # a restarted watch may have missed events: re-read waiters
                        await self._recheck_waiters()
                    async for ev in watch:
                        sid = ev.kv.key.decode()[len(self.keys.prefix("saga")) :]
                        if sid in self._waiters and ev.kv.value:
                            try:
                                rec = SagaRecord.from_json(ev.kv.value)
                            except DecodeError:
                                continue
                            if rec.is_final:
                                self._resolve(sid, rec, ev.kv.mod_revision)
            except asyncio.CancelledError:
                raise
            except WhizorchError as exc:
                if not self.client.is_open:
                    if not ready.done():
                        ready.set_exception(exc)
                    return
                await asyncio.sleep(0.1)  # ok: back off before re-creating the watch

    def _resolve(self, saga_id: str, rec: SagaRecord, revision: int) -> None:
        for fut in self._waiters.pop(saga_id, []):
            if not fut.done():
                fut.set_result((rec, revision))

    async def _recheck_waiters(self) -> None:
        for sid in list(self._waiters):
            rec, revision = await self._get_at(sid)
            if rec is not None and rec.is_final:
                self._resolve(sid, rec, revision)

    async def _get_at(self, saga_id: str) -> tuple[SagaRecord | None, int]:
        """The record and the revision it was written at."""
        res = await self.client.get(self.keys.saga(saga_id))
        return (SagaRecord.from_json(res.kvs[0].value), res.kvs[0].mod_revision) if res.kvs else (None, 0)

    async def submit(
        self,
        saga: Saga | str,
        input: Any = None,
        /,
        *,
        saga_id: str | None = None,
        trace: dict[str, str] | None = None,
    ) -> SagaHandle:
        """Submit a saga; returns a handle at once.

        Idempotent per ``saga_id``: submitting an id again with the same type and input
        returns the existing saga's handle (same ``txid``); with another type or input
        it raises :class:`~whizorch.errors.SagaIdConflictError`.

        Given a :class:`Saga`, the saga is pinned to that definition's version (which
        this call publishes); given a name, the leader pins it to the current version
        of its App (see docs/design.md, "Saga definitions and versions")."""
        self._check_open()
        name = saga.name if isinstance(saga, Saga) else saga
        if not isinstance(name, str) or not name:
            raise ConfigError("saga must be a Saga or its name", field="saga", value=saga)
        sid = saga_id if saga_id is not None else uuid.uuid4().hex
        if not isinstance(sid, str) or not _ID.match(sid):
            raise ConfigError(
                "saga_id must be 1-200 characters of letters, digits, '_', '.', ':', '-'", field="saga_id", value=sid
            )
        ctx = Submission(saga_id=sid, saga=name, input=input, trace=dict(trace or {}))
        spec = saga.spec if isinstance(saga, Saga) else None

        async def final() -> SagaHandle:
            return await self._submit(ctx, spec)

        return await run_pipeline(self.middleware, ctx, final)

    async def _submit(self, ctx: Submission, spec: SagaSpec | None) -> SagaHandle:
        sid, name = ctx.saga_id, ctx.saga
        data = SubmissionPayload(
            saga=name, input=ctx.input, trace=dict(ctx.trace), submitted=time.time(),
            version=spec.version if spec is not None else None,
        ).to_json(self.max_payload_bytes)
        if spec is not None and (spec.name, spec.version) not in self._published:
            # the saga is pinned to this version: any leader can drive it once published
            await publish(self.client, self.keys, spec)
            self._published.add((spec.name, spec.version))
        key, record = self.keys.submit(sid), self.keys.saga(sid)
        # a submission lives until the leader adopts it (then the record stands for it)
        res = await self.client.txn(
            [Compare.create_revision(key, "==", 0), Compare.create_revision(record, "==", 0)],
            [Op.put(key, data)], [Op.get(key), Op.get(record)], idempotent=True,
        )
        if res.succeeded:
            return SagaHandle(self, sid, res.header.revision, name)
        pending, adopted = (r.kvs[0] if isinstance(r, RangeResult) and r.kvs else None for r in res.responses)
        if pending is not None:
            prior = SubmissionPayload.from_json_lenient(pending.value)
            kind, txid, first_input = prior.saga, pending.create_revision, prior.input
        else:
            assert adopted is not None
            rec = SagaRecord.from_json(adopted.value)
            kind, txid = rec.saga, rec.txid
            # the adoption moved the input from the submission to its own key
            stored = await self.client.get(self.keys.input(sid))
            first_input = json.loads(stored.kvs[0].value) if stored.kvs else _GONE
        if kind != name:
            raise _conflict(
                f"saga id {sid!r} is already used by a {kind!r} saga (txid {txid}): use another id for a new {name!r} saga",
                sid, name, kind, txid,
            )
        if first_input is not _GONE and _canonical(first_input) != _canonical(ctx.input):
            raise _conflict(
                f"saga id {sid!r} was submitted before with a different input (txid {txid}): submitting an id "
                "again returns the existing saga only with the same input; use another id for a new saga",
                sid, name, kind, txid,
            )
        return SagaHandle(self, sid, txid, name)

    async def execute(
        self,
        saga: Saga | str,
        input: Any = None,
        /,
        *,
        saga_id: str | None = None,
        timeout_s: float | None = None,
        raise_on_failure: bool = True,
        trace: dict[str, str] | None = None,
    ) -> SagaResult:
        """Submit and wait for the outcome."""
        handle = await self.submit(saga, input, saga_id=saga_id, trace=trace)
        return await handle.result(timeout_s=timeout_s, raise_on_failure=raise_on_failure)

    async def cancel(self, saga_id: str) -> None:
        """Request cancellation (create-if-absent; cancelling twice is fine)."""
        self._check_open()
        key = self.keys.cancel(saga_id)
        await self.client.txn(
            [Compare.create_revision(key, "==", 0)], [Op.put(key, encode_json({"at": time.time()}, what="cancel"))],
            idempotent=True,
        )

    async def get(self, saga_id: str) -> SagaRecord | None:
        """The saga record (None while pending or after retention removed it)."""
        self._check_open()
        res = await self.client.get(self.keys.saga(saga_id))
        return SagaRecord.from_json(res.kvs[0].value) if res.kvs else None

    async def wait(self, saga_id: str, *, timeout_s: float | None = None, raise_on_failure: bool = True) -> SagaResult:
        """Wait until the saga is final; watches the record (no polling)."""
        self._check_open()
        async with asyncio.timeout(timeout_s):
            await self._ensure_hub()
            fut: asyncio.Future[tuple[SagaRecord, int]] = asyncio.get_running_loop().create_future()
            self._waiters.setdefault(saga_id, []).append(fut)
            try:
                # the hub's watch started before this read: a final write is either
                # in the read or delivered by the watch
                rec, revision = await self._get_at(saga_id)
                if rec is None or not rec.is_final:
                    rec, revision = await fut
            finally:
                waiting = self._waiters.get(saga_id)
                if waiting is not None and fut in waiting:
                    waiting.remove(fut)
                    if not waiting:
                        del self._waiters[saga_id]
        assert rec is not None
        result = await self._result(rec, revision)
        if raise_on_failure and not result.ok:
            raise _failed(rec, result)
        return result

    async def _read_results(self, keys: list[bytes], revision: int) -> TxnResult:
        """The results a final record names. Every one was written before the record, so
        read at the record's revision they are what it names; a serializable read there
        needs no quorum round (one less round trip to etcd's leader, across a WAN) and is
        exact on any member that has applied that revision. A member that has not (or a
        compacted revision) is answered by a linearizable read instead."""
        if revision:
            try:
                return await self.client.txn([], [Op.get(k, revision=revision, serializable=True) for k in keys])
            except WhizorchError as exc:
                if isinstance(exc, ClosedError):
                    raise
        return await self.client.txn([], [Op.get(k) for k in keys])

    async def _result(self, rec: SagaRecord, revision: int = 0) -> SagaResult:
        outputs: dict[str, Any] = {}
        done = [st for st in rec.steps if st.result]
        for i in range(0, len(done), 64):  # within etcd's ops-per-txn limit
            chunk = done[i : i + 64]
            res = await self._read_results([st.result.encode() for st in chunk if st.result], revision)
            for st, got in zip(chunk, res.responses, strict=True):
                if isinstance(got, RangeResult) and got.kvs:
                    outputs[st.name] = ResultPayload.from_json(got.kvs[0].value).output
        return SagaResult(
            saga_id=rec.id, txid=rec.txid, saga=rec.saga, status=rec.status, outputs=outputs,
            regions=rec.regions, failovers=list(rec.failovers), error=rec.error, record=rec,
        )

    async def list_page(
        self,
        *,
        limit: int = 100,
        after: str | None = None,
        status: str | None = None,
        saga_type: str | None = None,
        max_scan: int | None = None,
    ) -> SagaPage:
        """One page of sagas in saga-id order, after the id ``after`` (None: from the
        first), filtered as :meth:`list` filters; at most ``limit`` of them.

        Reads only what the page needs: with filters, records are read in chunks until
        ``limit`` match, the end, or ``max_scan`` records and submissions were read
        (None: no bound). Pass ``page.next_after`` as ``after`` for the next page; it is
        None at the end. Every read of one page is at one revision.
        """
        self._check_open()
        listing = await scan_sagas(
            self.client, self.keys, limit=limit, after=after, status=status, saga_type=saga_type, max_scan=max_scan
        )
        return SagaPage(
            sagas=[_summary(e) for e in listing.entries], next_after=listing.next_after, scanned=listing.scanned,
            revision=listing.revision,
        )  # fmt: skip

    async def list(self, *, status: str | None = None, saga_type: str | None = None) -> list[SagaSummary]:
        """Every saga by status and type, oldest (lowest txid) first; ``status="pending"``
        lists submissions not yet adopted. This reads every record of the namespace: with
        many retained sagas use :meth:`list_page`.

        ``status="failed"`` is the dead-letter view: sagas whose compensation gave up,
        kept (not purged by retention) until an operator deals with them.
        """
        self._check_open()
        if status is not None and status not in (*STATUSES, "pending"):
            raise ConfigError(f"status must be one of {', '.join((*STATUSES, 'pending'))}", field="status", value=status)
        out: list[SagaSummary] = []
        records = await self.client.get(self.keys.prefix("saga"), prefix=True)
        seen = set()
        for kv in records.kvs:
            try:
                rec = SagaRecord.from_json(kv.value)
            except DecodeError:
                continue
            seen.add(rec.id)
            if (status is None or rec.status == status) and (saga_type is None or rec.saga == saga_type):
                out.append(
                    SagaSummary(
                        saga_id=rec.id, saga=rec.saga, status=rec.status, txid=rec.txid, step=rec.step,
                        regions=rec.regions, failovers=len(rec.failovers), updated=rec.updated, error=rec.error,
                    )
                )
        if status in (None, "pending"):
            subs = await self.client.get(self.keys.prefix("submit"), prefix=True, revision=records.header.revision)
            for kv in subs.kvs:
                sid = self.keys.split(kv.key, "submit")[0]
                if sid in seen:
                    continue
                name = SubmissionPayload.from_json_lenient(kv.value).saga
                if saga_type is None or name == saga_type:
                    out.append(
                        SagaSummary(
                            saga_id=sid, saga=name, status="pending", txid=kv.create_revision, step=0, regions=[],
                            failovers=0, updated=0.0, error=None,
                        )
                    )
        out.sort(key=lambda s: s.txid)
        return out

