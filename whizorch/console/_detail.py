"""What a saga's page reads, on request, at one revision.

The record, its submission (the input) and its cancel key in one txn; then at that
revision the results of its runs (``run/<region>/<id>/`` for each region it used)
and the record's past versions, read back from its mod revision to its create
revision (etcd keeps them until compaction). Payloads are read leniently (fields
with defaults), so a result or record of a newer schema still shows.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import attrs

from whizorch._check import is_int, is_number
from whizorch.errors import CompactedError, DecodeError
from whizorch.etcd import EtcdClient, EventType, KeyValue, Op, RangeResult
from whizorch.saga import Keys, SagaRecord, Submitted

__all__ = ["SHOW_BYTES", "Detail", "Payload", "RunResult", "payload", "read_detail"]

SHOW_BYTES = 64 * 1024
"""An input, output or traceback is shown up to this many bytes (the rest is cut, and
the page says how large it was)."""
MAX_VERSIONS = 400
"""Records written more often than this are shown without their past versions."""
VERSIONS_TIMEOUT_S = 3.0
WALK_VERSIONS = 60
"""Records with up to this many versions are read walking back (see ``_versions``)."""


@attrs.frozen(kw_only=True)
class Payload:
    """A JSON value as the page shows it: indented, cut at ``SHOW_BYTES``."""

    text: str
    size: int
    """Bytes of its compact JSON."""
    cut: bool


def payload(value: Any) -> Payload:
    compact = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=repr)
    text = json.dumps(value, indent=2, ensure_ascii=False, default=repr)
    size = len(compact.encode())
    cut = len(text.encode()) > SHOW_BYTES
    if cut:
        text = text.encode()[:SHOW_BYTES].decode(errors="ignore")
    return Payload(text=text, size=size, cut=cut)


def _text(value: Any) -> str | None:
    if value is None or value == "":
        return None
    text = str(value)
    return text if len(text) <= SHOW_BYTES else text[:SHOW_BYTES] + "\n... (cut)"


def _num(value: Any) -> float | None:
    return float(value) if is_number(value, finite=False) else None


@attrs.frozen(kw_only=True)
class RunResult:
    """One run's recorded result (``run/<region>/<id>/<step>/<kind>-<attempt>``)."""

    key: str
    region: str
    step: int
    kind: str
    attempt: int
    ok: bool | None
    worker: str | None
    started: float | None
    ended: float | None
    fence: int | None
    error: str | None
    error_type: str | None
    traceback: str | None
    output: Payload | None
    revision: int


def _result(keys: Keys, kv: KeyValue) -> RunResult | None:
    try:
        region, _, step, kind, attempt = keys.run_key(kv.key)
    except DecodeError:
        return None
    try:
        raw = json.loads(kv.value)
    except (UnicodeDecodeError, ValueError):
        raw = None
    raw = raw if isinstance(raw, dict) else {}
    ok = raw.get("ok")
    fence = raw.get("fence")
    return RunResult(
        key=kv.key.decode(errors="replace"), region=region, step=step, kind=kind, attempt=attempt,
        ok=ok if isinstance(ok, bool) else None, worker=_text(raw.get("worker")),
        started=_num(raw.get("started")), ended=_num(raw.get("ended")),
        fence=fence if is_int(fence, minimum=1) else None,
        error=_text(raw.get("error")), error_type=_text(raw.get("error_type")),
        traceback=_text(raw.get("traceback")),
        output=payload(raw["output"]) if ok is True and "output" in raw else None, revision=kv.mod_revision,
    )  # fmt: skip


@attrs.frozen(kw_only=True)
class Detail:
    """Everything a saga's page shows, read at ``revision``."""

    saga_id: str
    revision: int
    record: SagaRecord | None
    record_error: str | None
    """Why the record could not be read as a saga record (it is shown raw)."""
    record_raw: str | None
    record_revision: int | None
    pending: Submitted | None
    saga_type: str | None
    input: Payload | None
    has_input: bool
    submitted_at: float | None
    cancel_requested: bool
    results: list[RunResult]
    versions: list[tuple[int, dict[str, Any]]] | None
    """The record's versions (revision, decoded JSON), oldest first; None when etcd no
    longer has them (``versions_note`` says why)."""
    versions_note: str | None

    @property
    def found(self) -> bool:
        return self.record is not None or self.pending is not None or self.record_raw is not None

    @property
    def is_final(self) -> bool:
        return self.record is not None and self.record.is_final


async def read_detail(client: EtcdClient, keys: Keys, saga_id: str) -> Detail:
    """The saga's page data (an unknown id: a Detail whose ``found`` is False)."""
    res = await client.txn([], [
        Op.get(keys.saga(saga_id)), Op.get(keys.submit(saga_id)), Op.get(keys.cancel(saga_id)), Op.get(keys.input(saga_id)),
    ])  # fmt: skip
    rev = res.header.revision
    got = [r.kvs[0] if isinstance(r, RangeResult) and r.kvs else None for r in res.responses]
    rec_kv, sub_kv, cancel_kv, input_kv = got
    record: SagaRecord | None = None
    record_error = record_raw = None
    if rec_kv is not None:
        try:
            record = SagaRecord.from_json(rec_kv.value)
        except DecodeError as exc:
            record_error = str(exc)
            record_raw = _text(rec_kv.value.decode(errors="replace"))
    sub: dict[str, Any] = {}
    if sub_kv is not None:
        try:
            decoded = json.loads(sub_kv.value)
        except (UnicodeDecodeError, ValueError):
            decoded = None
        sub = decoded if isinstance(decoded, dict) else {}
    if input_kv is not None:  # an adopted saga's input (its submission is gone)
        try:
            sub["input"] = json.loads(input_kv.value)
        except (UnicodeDecodeError, ValueError):
            sub["input"] = input_kv.value.decode(errors="replace")
    pending = Submitted.from_kv(saga_id, sub_kv) if sub_kv is not None and rec_kv is None else None
    regions: list[str] = []
    if record is not None:
        for st in record.steps:
            for r in (*st.regions, *([st.region] if st.region else [])):
                if r not in regions:
                    regions.append(r)
    results: list[RunResult] = []
    versions: list[tuple[int, dict[str, Any]]] | None = None
    note = None

    async def read_results() -> None:
        if not regions:
            return
        res = await client.txn([], [Op.get(keys.results(r, saga_id), prefix=True, revision=rev) for r in regions])
        for r in res.responses:
            for kv in r.kvs if isinstance(r, RangeResult) else ():
                found = _result(keys, kv)
                if found is not None:
                    results.append(found)

    async def read_versions() -> None:
        nonlocal versions, note
        if rec_kv is not None:
            versions, note = await _versions(client, keys.saga(saga_id), rec_kv)

    await asyncio.gather(read_results(), read_versions())
    saga_type = record.saga if record is not None else (str(sub["saga"]) if "saga" in sub else None)
    at = sub.get("submitted")
    return Detail(
        saga_id=saga_id, revision=rev, record=record, record_error=record_error, record_raw=record_raw,
        record_revision=rec_kv.mod_revision if rec_kv is not None else None, pending=pending,
        saga_type=saga_type, input=payload(sub.get("input")) if "input" in sub else None, has_input="input" in sub,
        submitted_at=_num(at), cancel_requested=cancel_kv is not None or bool(record and record.cancel_requested),
        results=sorted(results, key=lambda r: (r.step, r.kind, r.attempt)), versions=versions, versions_note=note,
    )  # fmt: skip


def _decoded(value: bytes) -> dict[str, Any] | None:
    try:
        raw = json.loads(value)
    except (UnicodeDecodeError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


async def _versions(
    client: EtcdClient, key: bytes, kv: KeyValue
) -> tuple[list[tuple[int, dict[str, Any]]] | None, str | None]:
    """The record's versions from its create revision to ``kv.mod_revision``.

    Up to ``WALK_VERSIONS`` versions are read walking back, one serializable read each
    at the revision before the last one found (about a millisecond apiece); more are
    read with one watch from the create revision (etcd sends a watch's past events
    from a loop that runs every 100 ms, so that costs 100 ms flat).
    """
    if kv.version > MAX_VERSIONS:
        return None, f"the record was written {kv.version} times: its past versions are not read"
    try:
        if kv.version <= WALK_VERSIONS:
            return await _walk_back(client, key, kv), None
        return await _watch_versions(client, key, kv), None
    except CompactedError:
        return None, "etcd compacted the record's past versions: no revisions, fence tokens of lost runs or leader changes"
    except TimeoutError:
        return None, f"the record's past versions did not arrive within {VERSIONS_TIMEOUT_S:g}s"


async def _walk_back(client: EtcdClient, key: bytes, kv: KeyValue) -> list[tuple[int, dict[str, Any]]]:
    found = [kv]
    while found[-1].version > 1:
        res = await client.get(key, revision=found[-1].mod_revision - 1, serializable=True)
        if not res.kvs or res.kvs[0].create_revision != kv.create_revision:
            break
        found.append(res.kvs[0])
    return [(v.mod_revision, raw) for v in reversed(found) if (raw := _decoded(v.value)) is not None]


async def _watch_versions(client: EtcdClient, key: bytes, kv: KeyValue) -> list[tuple[int, dict[str, Any]]]:
    out: list[tuple[int, dict[str, Any]]] = []
    async with asyncio.timeout(VERSIONS_TIMEOUT_S), client.watch(key, start_revision=kv.create_revision) as watch:
        async for ev in watch:
            if ev.type is EventType.PUT and (raw := _decoded(ev.kv.value)) is not None:
                out.append((ev.revision, raw))
            if ev.revision >= kv.mod_revision:
                break
    return out
