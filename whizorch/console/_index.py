"""The saga index: one small entry per saga, kept current from the watch.

The list page and the overview's counts read it instead of etcd, so a page costs a
loop over the index, never a read of 100,000 records. An entry holds what a list row
shows (type, status, txid, times, regions, failovers, the current step, an error
line); inputs and outputs stay in etcd and are read by a saga's page.

Plain data, no IO: the hub feeds it the keys it reads and the events it watches.
"""

from __future__ import annotations

import bisect
import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

import attrs

from whizorch._check import is_int, is_number
from whizorch.etcd import KeyValue
from whizorch.saga import FINAL_STATUSES, STATUSES, Submitted

__all__ = ["Entry", "Page", "Query", "SagaIndex", "entry_from_record"]

PENDING = "pending"
ALL_STATUSES = (PENDING, *STATUSES)
ERROR_CHARS = 300
"""An entry keeps the first 300 characters of the saga's error (the page shows all)."""

_INTERNED: dict[Any, Any] = {}


def _intern(value: Any) -> Any:
    """One shared object per distinct saga type or region tuple (a deployment has few)."""
    if len(_INTERNED) > 10_000:
        return value
    return _INTERNED.setdefault(value, value)


@attrs.define(slots=True)
class Entry:
    """One saga as the list shows it."""

    id: str
    saga: str
    status: str
    """A record's status, or ``pending`` (a submission no leader adopted yet)."""
    txid: int
    created: float | None
    finished: float | None = None
    regions: tuple[str, ...] = ()
    failovers: int = 0
    step: str | None = None
    error: str | None = None
    version: str | None = None
    """The saga definition's version, where the record names one."""
    cancel_requested: bool = False
    has_submission: bool = False
    has_record: bool = False

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


def _num(value: Any) -> float | None:
    return float(value) if is_number(value, finite=False) else None


def entry_from_record(sid: str, raw: Any) -> Entry | None:
    """An entry from a decoded saga record (None when it is not a record this console
    can list: the leader quarantines such input). Every field is read with a default,
    so records of a newer schema still list."""
    if not isinstance(raw, dict) or not isinstance(raw.get("status"), str):
        return None
    found = raw.get("steps")
    steps: list[Any] = found if isinstance(found, list) else []
    regions: list[str] = []
    for st in steps:
        for r in st.get("regions", ()) if isinstance(st, dict) else ():
            if isinstance(r, str) and r not in regions:
                regions.append(r)
    index = raw.get("step")
    step = None
    if isinstance(index, int) and 0 <= index < len(steps) and isinstance(steps[index], dict):
        step = str(steps[index].get("name", "?"))
    error = raw.get("error")
    txid = raw.get("txid")
    version = raw.get("version")
    failovers = raw.get("failovers")
    return Entry(
        id=sid,
        saga=_intern(str(raw.get("saga", "?"))),
        status=_intern(raw["status"]),
        txid=txid if is_int(txid) else 0,
        created=_num(raw.get("created")),
        finished=_num(raw.get("finished")),
        regions=_intern(tuple(regions)),
        failovers=len(failovers) if isinstance(failovers, list) else 0,
        step=step,
        error=str(error)[:ERROR_CHARS] if error else None,
        version=None if version is None else _intern(str(version)),
        cancel_requested=bool(raw.get("cancel_requested")),
        has_record=True,
    )


@attrs.frozen(kw_only=True)
class Query:
    """The list's filters; None (or empty) matches everything."""

    status: str | None = None
    saga_type: str | None = None
    region: str | None = None
    id_prefix: str | None = None
    since: float | None = None
    """Created at or after this wall-clock time."""
    until: float | None = None
    before: int | None = None
    """The cursor: only sagas with a txid below this (the next page of a newest-first list)."""
    limit: int = 50

    def matches(self, e: Entry) -> bool:
        if self.status is not None and e.status != self.status:
            return False
        if self.saga_type is not None and e.saga != self.saga_type:
            return False
        if self.region is not None and self.region not in e.regions:
            return False
        if self.id_prefix and not e.id.startswith(self.id_prefix):
            return False
        if self.since is not None and (e.created is None or e.created < self.since):
            return False
        return not (self.until is not None and (e.created is None or e.created >= self.until))


@attrs.frozen(kw_only=True)
class Page:
    """One page of the list, newest (highest txid) first."""

    entries: list[Entry]
    matched: int
    """How many sagas match the filters in all (every page)."""
    next_before: int | None
    """The cursor of the next page (None at the end)."""


class SagaIndex:
    """Every saga of the namespace by id, in txid order, with counts by status."""

    def __init__(self) -> None:
        self._by_id: dict[str, Entry] = {}
        self._order: list[tuple[int, str]] = []  # (txid, id), ascending
        self.counts: Counter[str] = Counter()
        self.types: Counter[str] = Counter()
        self.regions: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._by_id)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._by_id.values())

    def get(self, sid: str) -> Entry | None:
        return self._by_id.get(sid)

    # -- changes -----------------------------------------------------------------------

    def _add(self, e: Entry) -> None:
        self._by_id[e.id] = e
        bisect.insort(self._order, (e.txid, e.id))
        self._count(e, 1)

    def _remove(self, sid: str) -> Entry | None:
        e = self._by_id.pop(sid, None)
        if e is not None:
            i = bisect.bisect_left(self._order, (e.txid, e.id))
            if i < len(self._order) and self._order[i] == (e.txid, e.id):
                del self._order[i]
            self._count(e, -1)
        return e

    def _count(self, e: Entry, n: int) -> None:
        for counter, keys in ((self.counts, (e.status,)), (self.types, (e.saga,)), (self.regions, e.regions)):
            for k in keys:
                counter[k] += n
                if counter[k] <= 0:
                    del counter[k]

    def put_record(self, sid: str, value: bytes) -> bool:
        """A saga record was written; False when it does not parse (not listed)."""
        try:
            raw = json.loads(value)
        except (UnicodeDecodeError, ValueError):
            raw = None
        entry = entry_from_record(sid, raw)
        old = self._remove(sid)
        if entry is None:
            if old is not None and old.has_submission:
                self._add(attrs.evolve(old, status=PENDING, has_record=False))
            return False
        if old is not None:
            entry.has_submission = old.has_submission
            if entry.txid == 0:
                entry.txid = old.txid
        self._add(entry)
        return True

    def put_submission(self, sid: str, kv: KeyValue) -> None:
        """A submission was written (a saga is pending until its record exists)."""
        old = self._by_id.get(sid)
        if old is not None:
            old.has_submission = True
            return
        sub = Submitted.from_kv(sid, kv)
        self._add(Entry(id=sid, saga=_intern(sub.saga), status=PENDING, txid=sub.txid, created=sub.submitted,
                        has_submission=True))  # fmt: skip

    def delete_record(self, sid: str) -> None:
        """Retention removed the record (its submission, if left, lists as pending)."""
        old = self._remove(sid)
        if old is not None and old.has_submission:
            self._add(Entry(id=sid, saga=old.saga, status=PENDING, txid=old.txid, created=old.created,
                            has_submission=True))  # fmt: skip

    def delete_submission(self, sid: str) -> None:
        old = self._by_id.get(sid)
        if old is None:
            return
        if old.has_record:
            old.has_submission = False
        else:
            self._remove(sid)

    # -- reads -------------------------------------------------------------------------

    def page(self, q: Query) -> Page:
        """The sagas matching ``q``, newest first, ``q.limit`` of them after ``q.before``.

        With no filter, or one on status or saga type alone, the count of matches is
        kept and the walk stops at the page's end (a page costs its rows); any other
        filter walks the whole index once to count its matches."""
        order = self._order
        top = len(order) if q.before is None else bisect.bisect_left(order, (q.before, ""))
        known = self._matches(q)
        if known == 0:
            return Page(entries=[], matched=0, next_before=None)
        out: list[Entry] = []
        matched = 0
        by_id = self._by_id
        more = False
        for i in range(top - 1 if known is not None else len(order) - 1, -1, -1):
            e = by_id[order[i][1]]
            if not q.matches(e):
                continue
            matched += 1
            if known is not None and q.before is None and matched == known and len(out) < q.limit:
                out.append(e)  # the last match there is: the rest of the walk finds none
                break
            if i < top:
                if len(out) < q.limit:
                    out.append(e)
                else:
                    more = True
                    if known is not None:
                        break
        return Page(entries=out, matched=matched if known is None else known, next_before=out[-1].txid if more else None)

    def _matches(self, q: Query) -> int | None:
        """How many sagas match ``q``, where the counters know it without a walk."""
        if q.region is not None or q.id_prefix or q.since is not None or q.until is not None:
            return None
        if q.status is None and q.saga_type is None:
            return len(self._by_id)
        if q.saga_type is None:
            return self.counts.get(q.status or "", 0)
        if q.status is None:
            return self.types.get(q.saga_type, 0)
        return None

    def status_counts(self) -> dict[str, int]:
        """Sagas by status (every status named, zeros included), and ``total``."""
        doc = {s: self.counts.get(s, 0) for s in ALL_STATUSES}
        doc["total"] = len(self._by_id)
        return doc
