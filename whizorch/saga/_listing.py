"""One page of sagas in saga-id order: what ``SagaClient.list_page`` and
``whizorch sagas list`` read instead of every record.

Saga records live at ``<ns>/saga/<id>`` and submissions at ``<ns>/submit/<id>``, so
both are in id order in etcd. A page walks the two key ranges from a cursor (the last
id of the previous page) in bounded chunks, all at one revision, merges them (a
submission without a record is *pending*), filters, and stops at ``limit`` matches or
after ``max_scan`` entries, returning the cursor for the next page. The cost of a page
is the entries it scans, never the size of the namespace.
"""

from __future__ import annotations

import asyncio
import re

import attrs

from whizorch._check import is_int
from whizorch.errors import ConfigError, DecodeError
from whizorch.etcd import EtcdClient, KeyValue, prefix_end
from whizorch.saga._keys import SAGA_ID, Keys
from whizorch.saga._model import STATUSES, SagaRecord, SubmissionPayload

__all__ = ["Listing", "Submitted", "scan_sagas"]

_ID = re.compile(SAGA_ID)


@attrs.frozen(kw_only=True)
class Submitted:
    """A submission no leader has adopted yet (no saga record)."""

    saga_id: str
    saga: str
    txid: int
    submitted: float | None = None

    @classmethod
    def from_kv(cls, saga_id: str, kv: KeyValue) -> Submitted:
        """A pending submission as listed: its saga type and time, "?"/None where the
        value does not say (the leader quarantines what does not parse)."""
        sub = SubmissionPayload.from_json_lenient(kv.value)
        return cls(saga_id=saga_id, saga=sub.saga, txid=kv.create_revision, submitted=sub.submitted)


@attrs.frozen(kw_only=True)
class Listing:
    """One page: the matching entries in id order, the cursor of the next page (None
    at the end), how many entries were scanned to find them, and the revision read."""

    entries: list[SagaRecord | Submitted]
    next_after: str | None
    scanned: int
    revision: int


def check_page_args(limit: int, after: str | None, status: str | None, max_scan: int | None) -> None:
    """Refuse bad paging arguments with an error naming the argument."""
    if not is_int(limit, minimum=1):
        raise ConfigError(f"limit must be a positive int, not {limit!r}", field="limit", value=limit)
    if max_scan is not None and (not is_int(max_scan, minimum=1)):
        raise ConfigError(f"max_scan must be a positive int or None, not {max_scan!r}", field="max_scan", value=max_scan)
    if after is not None and (not isinstance(after, str) or not _ID.match(after)):
        raise ConfigError(
            f"after must be a saga id (the cursor a previous page returned), not {after!r}", field="after", value=after
        )
    if status is not None and status not in (*STATUSES, "pending"):
        raise ConfigError(f"status must be one of {', '.join((*STATUSES, 'pending'))}", field="status", value=status)


def _id_of(keys: Keys, kv: KeyValue, kind: str) -> str | None:
    try:
        return keys.saga_id(kv.key, kind)
    except DecodeError:
        return None  # not a key whizorch wrote (the leader quarantines it)


async def scan_sagas(
    client: EtcdClient,
    keys: Keys,
    *,
    limit: int,
    after: str | None = None,
    status: str | None = None,
    saga_type: str | None = None,
    max_scan: int | None = None,
    revision: int = 0,
) -> Listing:
    """Up to ``limit`` sagas with ids after ``after`` matching ``status`` (a record
    status or ``"pending"``) and ``saga_type``, scanning at most ``max_scan`` entries
    (None: until ``limit`` matches or the end). Read at ``revision`` (0: now)."""
    check_page_args(limit, after, status, max_scan)
    filtered = status is not None or saga_type is not None
    # unfiltered, a page is its first ``limit`` entries; filtered, read bigger chunks
    chunk = limit if not filtered else max(limit, 500)
    if max_scan is not None:
        chunk = min(chunk, max_scan)
    records_prefix, submit_prefix = keys.prefix("saga"), keys.prefix("submit")
    want_pending = status in (None, "pending")
    values = status != "pending"  # "pending" needs only which ids have records
    entries: list[SagaRecord | Submitted] = []
    scanned = 0
    cursor = after.encode() if after is not None else None  # bytes: a skipped key may not be UTF-8
    rev = revision
    while True:
        lo = (cursor + b"\0") if cursor is not None else b""
        recs = await client.get(
            records_prefix + lo, range_end=prefix_end(records_prefix), limit=chunk, revision=rev, keys_only=not values
        )
        rev = rev or recs.header.revision
        subs = None
        if want_pending:
            subs = await client.get(
                submit_prefix + lo, range_end=prefix_end(submit_prefix), limit=chunk, revision=rev, keys_only=True
            )
        # the window both reads cover completely: up to the smaller last id of a truncated read
        ends = [r.kvs[-1].key[len(p) :] for r, p in ((recs, records_prefix), (subs, submit_prefix)) if r and r.more]
        hi = min(ends) if ends else None  # bytes: ids are ASCII, so byte order is id order
        window: dict[str, KeyValue | None] = {}
        for kv in recs.kvs:
            sid = _id_of(keys, kv, "saga")
            if sid is not None and (hi is None or sid.encode() <= hi):
                window[sid] = kv
        missing = []
        if subs is not None:
            for kv in subs.kvs:
                sid = _id_of(keys, kv, "submit")
                if sid is not None and (hi is None or sid.encode() <= hi) and sid not in window:
                    window[sid] = None
                    missing.append(sid)
        pending = await _submissions(client, keys, missing, rev)
        ordered = sorted(window)
        for i, sid in enumerate(ordered):
            found = window[sid]
            entry: SagaRecord | Submitted | None
            if found is None:
                entry = pending.get(sid)
            elif values:
                try:
                    entry = SagaRecord.from_json(found.value)
                except DecodeError:
                    entry = None  # skipped, as the leader quarantines it
            else:
                entry = None  # status "pending": an adopted saga never matches
            scanned += 1
            if entry is not None and _matches(entry, status, saga_type):
                entries.append(entry)
            rest = i + 1 < len(ordered) or hi is not None
            if len(entries) >= limit or (max_scan is not None and scanned >= max_scan):
                return Listing(entries=entries, next_after=sid if rest else None, scanned=scanned, revision=rev)
        if hi is None:
            return Listing(entries=entries, next_after=None, scanned=scanned, revision=rev)
        cursor = hi


def _matches(entry: SagaRecord | Submitted, status: str | None, saga_type: str | None) -> bool:
    if isinstance(entry, Submitted):
        return status in (None, "pending") and saga_type in (None, entry.saga)
    return status in (None, entry.status) and saga_type in (None, entry.saga)


async def _submissions(client: EtcdClient, keys: Keys, ids: list[str], revision: int) -> dict[str, Submitted]:
    """The pending submissions' values (few: the leader adopts them within moments)."""
    reads = await asyncio.gather(*(client.get(keys.submit(sid), revision=revision) for sid in ids))
    out = {}
    for sid, res in zip(ids, reads, strict=True):
        if not res.kvs:
            continue
        out[sid] = Submitted.from_kv(sid, res.kvs[0])
    return out
