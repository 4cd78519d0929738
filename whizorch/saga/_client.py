"""SagaClient: submit sagas from any process, await outcomes, cancel, inspect.

A submission is one create-if-absent txn on ``<ns>/submit/<id>``: submitting the same
id twice (even from two processes at once) starts one saga, and both callers get its
outcome. The key's create revision is the saga's global transaction id. The caller
awaits the outcome by watching the saga record, never by polling.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from typing import Any

import attrs

from whizorch.errors import ConfigError, SagaFailedError
from whizorch.etcd import Compare, EtcdClient, Op, RangeResult
from whizorch.saga._definition import Saga
from whizorch.saga._model import (
    COMPLETED,
    STATUSES,
    SAGA_ID,
    Keys,
    ResultPayload,
    SagaRecord,
    decode_json,
    encode_json,
)

__all__ = ["SagaClient", "SagaHandle", "SagaResult", "SagaSummary"]

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
    """Submit and inspect sagas. ``SagaClient(etcd_client, namespace="whizorch")``."""

    def __init__(
        self, client: EtcdClient, /, *, namespace: str = "whizorch", max_payload_bytes: int = 64 * 1024
    ) -> None:
        if not isinstance(client, EtcdClient):
            raise ConfigError("SagaClient needs an EtcdClient", field="client", value=type(client).__name__)
        self.client = client
        self.keys = Keys(namespace)
        self.max_payload_bytes = max_payload_bytes

    async def submit(
        self,
        saga: Saga | str,
        input: Any = None,
        /,
        *,
        saga_id: str | None = None,
        trace: dict[str, str] | None = None,
    ) -> SagaHandle:
        """Submit a saga (idempotent per ``saga_id``); returns a handle at once."""
        name = saga.name if isinstance(saga, Saga) else saga
        if not isinstance(name, str) or not name:
            raise ConfigError("saga must be a Saga or its name", field="saga", value=saga)
        sid = saga_id if saga_id is not None else uuid.uuid4().hex
        if not isinstance(sid, str) or not _ID.match(sid):
            raise ConfigError(
                "saga_id must be 1-200 characters of letters, digits, '_', '.', ':', '-'", field="saga_id", value=sid
            )
        data = encode_json(
            {"saga": name, "input": input, "trace": dict(trace or {}), "submitted": time.time()},
            what="saga input",
            limit=self.max_payload_bytes,
        )
        key = self.keys.submit(sid)
        res = await self.client.txn(
            [Compare.create_revision(key, "==", 0)], [Op.put(key, data)], [Op.get(key)], idempotent=True
        )
        if res.succeeded:
            return SagaHandle(self, sid, res.header.revision, name)
        existing = res.responses[0]
        assert isinstance(existing, RangeResult) and existing.kvs
        kv = existing.kvs[0]
        prior = decode_json(kv.value, what="submission")
        if prior.get("saga") != name:
            raise ConfigError(
                f"saga id {sid!r} is already used by a {prior.get('saga')!r} saga", field="saga_id", value=sid
            )
        return SagaHandle(self, sid, kv.create_revision, name)

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
        key = self.keys.cancel(saga_id)
        await self.client.txn(
            [Compare.create_revision(key, "==", 0)], [Op.put(key, encode_json({"at": time.time()}, what="cancel"))],
            idempotent=True,
        )

    async def get(self, saga_id: str) -> SagaRecord | None:
        """The saga record (None while pending or after retention removed it)."""
        res = await self.client.get(self.keys.saga(saga_id))
        return SagaRecord.from_json(res.kvs[0].value) if res.kvs else None

    async def wait(self, saga_id: str, *, timeout_s: float | None = None, raise_on_failure: bool = True) -> SagaResult:
        """Wait until the saga is final; watches the record (no polling)."""
        key = self.keys.saga(saga_id)
        async with asyncio.timeout(timeout_s):
            # watch from "now" first, then read: a watch that must replay history
            # waits for etcd's 100 ms resync of unsynced watchers, and nothing that
            # happens after the watch starts can be missed
            async with self.client.watch(key) as watch:
                await watch.wait_created()
                res = await self.client.get(key)
                rec = SagaRecord.from_json(res.kvs[0].value) if res.kvs else None
                seen = res.kvs[0].mod_revision if res.kvs else 0
                if rec is None or not rec.is_final:
                    async for ev in watch:
                        if ev.kv.value and ev.revision > seen:
                            rec = SagaRecord.from_json(ev.kv.value)
                            if rec.is_final:
                                break
        assert rec is not None
        result = await self._result(rec)
        if raise_on_failure and not result.ok:
            raise SagaFailedError(
                f"saga {rec.saga!r} {saga_id!r} ended {rec.status}: {rec.error}",
                saga_id=saga_id, status=rec.status, error=rec.error, result=result,
            )
        return result

    async def _result(self, rec: SagaRecord) -> SagaResult:
        outputs: dict[str, Any] = {}
        if any(st.result for st in rec.steps):
            res = await self.client.get(self.keys.results(rec.id), prefix=True)
            by_key = {kv.key.decode(): kv.value for kv in res.kvs}
            for st in rec.steps:
                if st.result and st.result in by_key:
                    outputs[st.name] = ResultPayload.from_json(by_key[st.result]).output
        return SagaResult(
            saga_id=rec.id, txid=rec.txid, saga=rec.saga, status=rec.status, outputs=outputs,
            regions=rec.regions, failovers=list(rec.failovers), error=rec.error, record=rec,
        )

    async def list(self, *, status: str | None = None, saga_type: str | None = None) -> list[SagaSummary]:
        """Sagas by status and type; ``status="pending"`` lists submissions not yet adopted.

        ``status="failed"`` is the dead-letter view: sagas whose compensation gave up,
        kept (not purged by retention) until an operator deals with them.
        """
        if status is not None and status not in (*STATUSES, "pending"):
            raise ConfigError(f"status must be one of {', '.join((*STATUSES, 'pending'))}", field="status", value=status)
        out: list[SagaSummary] = []
        records = await self.client.get(self.keys.prefix("saga"), prefix=True)
        seen = set()
        for kv in records.kvs:
            try:
                rec = SagaRecord.from_json(kv.value)
            except ConfigError:
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
                try:
                    name = decode_json(kv.value, what="submission").get("saga", "?")
                except ConfigError:
                    name = "?"
                if saga_type is None or name == saga_type:
                    out.append(
                        SagaSummary(
                            saga_id=sid, saga=name, status="pending", txid=kv.create_revision, step=0, regions=[],
                            failovers=0, updated=0.0, error=None,
                        )
                    )
        out.sort(key=lambda s: s.txid)
        return out

