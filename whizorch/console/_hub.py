"""The hub: one read of the namespace, one watch on it, and the pages it wakes.

:class:`Hub` reads the namespace at one revision (the records in pages, the rest at
that revision), then watches ``<ns>/`` from the next revision. Each event updates the
in-memory mirror (the saga index, leaders, workers, tasks, latency, quarantine
notes) and marks *topics* dirty: ``overview``, ``sagas`` and ``saga/<id>``. A short
coalescing pause later every subscriber of a dirty topic is woken with the newest
revision. A subscriber is a flag and a number, never a queue, so a slow browser costs
nothing more. A watch whose history was compacted reads the namespace again and wakes
every page. The etcd members' own status is polled (it is not a key).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Iterable
from typing import Any

from whizorch.console._index import SagaIndex
from whizorch.console._settings import ConsoleSettings
from whizorch.errors import AuthError, CompactedError, DecodeError, WhizorchError
from whizorch.etcd import (
    EtcdClient,
    EventType,
    KeyValue,
    Member,
    Status,
    WatchEvent,
    parse_endpoints,
)
from whizorch.saga import (
    Keys,
    capabilities,
    latency_doc,
    leaders_of,
    quarantine_notes,
    read_many,
    summarize_cluster,
    summarize_regions,
    workers_by_region,
)

__all__ = ["OVERVIEW", "SAGAS", "Hub", "Subscriber", "saga_topic"]

log = logging.getLogger("whizorch.console")

OVERVIEW = "overview"
SAGAS = "sagas"
RECORD_PAGE = 5000
"""Saga records per page of the first read (as a new leader's rebuild reads them)."""
COALESCE_S = 0.05
"""Events this close together wake a page once."""
TOPICS_KEPT = 20_000
"""Topics whose last revision is remembered (older ones count as changed at the floor)."""
NOTES_KEPT = 100
RECENT_KEPT = 50
WORKER_NAMES_KEPT = 10_000
MEMBER_TIMEOUT_S = 2.0


def saga_topic(saga_id: str) -> str:
    return f"saga/{saga_id}"


class Subscriber:
    """One open page: woken (``event``) with the newest revision of its topic."""

    __slots__ = ("event", "rev", "topic")

    def __init__(self, topic: str, rev: int) -> None:
        self.topic = topic
        self.rev = rev
        self.event = asyncio.Event()


class Hub:
    """The console's mirror of one namespace, kept current by one watch."""

    def __init__(
        self, client: EtcdClient, keys: Keys, settings: ConsoleSettings, *, regions: Iterable[str] = ()
    ) -> None:
        self.client = client
        self.keys = keys
        self.settings = settings
        self.configured_regions = tuple(regions)
        self.index = SagaIndex()
        self.revision = 0
        """The revision the mirror is current at."""
        self.loaded_at: float | None = None
        self.load_seconds: float | None = None
        self.leaders: dict[bytes, KeyValue] = {}
        self.workers: dict[bytes, KeyValue] = {}
        self.tasks: dict[bytes, str] = {}
        self.task_counts: collections.Counter[str] = collections.Counter()
        self.latency: bytes | None = None
        self.notes: dict[bytes, KeyValue] = {}
        self.cluster: dict[str, Any] | None = None
        self.cluster_error: str | None = None
        self.worker_names: dict[str, str] = {}
        """Worker lease (hex) -> the worker's name, for every registration seen (bounded):
        a lost run's task named only the lease."""
        self.recent: collections.deque[dict[str, Any]] = collections.deque(maxlen=RECENT_KEPT)
        """Leader changes and regions going down or back, as this console saw them."""
        self._seen_regions: set[str] = set()
        self._last_record_write: float | None = None
        self._leader_since: dict[str | None, tuple[int, float | None]] = {}
        self._leader_lost: dict[str | None, float] = {}
        self._region_down: dict[str, float] = {}
        self._subs: dict[str, set[Subscriber]] = {}
        self._topic_rev: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._floor = 0
        self._dirty: dict[str, int] = {}
        self._dirty_event = asyncio.Event()
        self._ready = asyncio.Event()

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """Read, watch and poll until cancelled; etcd trouble is waited out, refused
        credentials end it (AuthError)."""
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._follow(), name="whizorch-console-watch")
            tg.create_task(self._flush(), name="whizorch-console-flush")
            tg.create_task(self._poll_cluster(), name="whizorch-console-cluster")

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Until the first read is done (the pages have something to show)."""
        await asyncio.wait_for(self._ready.wait(), timeout_s)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def _follow(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._load()
                backoff = 0.1
                async with self.client.watch(
                    self.keys.ns + "/", prefix=True, start_revision=self.revision + 1, progress_notify=True
                ) as watch:
                    async for ev in watch:
                        self._apply(ev)
            except CompactedError as exc:
                log.info("console: the watch's history was compacted (%s); reading the namespace again", exc)
            except AuthError:
                raise
            except (WhizorchError, TimeoutError) as exc:
                log.warning("console: reading the namespace failed: %s; trying again in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)  # ok: backoff before reading again
                backoff = min(backoff * 2, 5.0)

    async def _load(self) -> None:
        started = time.monotonic()
        c, k = self.client, self.keys
        index = SagaIndex()
        rev = 0
        n = 0
        async for page in c.get_pages(k.prefix("saga"), prefix=True, page_size=RECORD_PAGE):
            rev = page.revision
            for kv in page.kvs:
                sid = self._sid(kv.key, "saga")
                if sid is not None:
                    index.put_record(sid, kv.value)
                n += 1
                if n % 2000 == 0:
                    await asyncio.sleep(0)  # ok: a long parse must not starve the server
        if rev == 0:
            rev = (await c.get(k.prefix("saga"), prefix=True, count_only=True)).header.revision
        submits: list[KeyValue] = []
        async for page in c.get_pages(k.prefix("submit"), prefix=True, page_size=RECORD_PAGE, keys_only=True,
                                      revision=rev):  # fmt: skip
            submits.extend(page.kvs)
        missing = []
        for kv in submits:
            sid = self._sid(kv.key, "submit")
            if sid is None:
                continue
            found = index.get(sid)
            if found is not None:
                found.has_submission = True
            else:
                missing.append(kv.key)
        values = await read_many(c, missing, rev) if missing else {}
        for key, kvs in values.items():
            sid = self._sid(key, "submit")
            if sid is not None and kvs:
                index.put_submission(sid, kvs[0])
        leaders, regions, tasks, latency, notes = await asyncio.gather(
            c.get(k.leader + "/", prefix=True, revision=rev),
            c.get(k.prefix("region"), prefix=True, revision=rev),
            c.get(k.prefix("task"), prefix=True, revision=rev, keys_only=True),
            c.get(k.latency, revision=rev),
            c.get(k.prefix("quarantine"), prefix=True, revision=rev),
        )
        self.index = index
        self.leaders = {kv.key: kv for kv in leaders.kvs}
        self.workers = {kv.key: kv for kv in regions.kvs}
        for kv in regions.kvs:
            self._name_worker(kv)
        self._seen_regions |= self._healthy()
        self.tasks = {}
        self.task_counts = collections.Counter()
        for kv in tasks.kvs:
            self._task(kv.key, put=True)
        self.latency = latency.kvs[0].value if latency.kvs else None
        self.notes = {kv.key: kv for kv in sorted(notes.kvs, key=lambda kv: kv.mod_revision)[-NOTES_KEPT:]}
        self.revision = rev
        self.loaded_at = time.time()
        self.load_seconds = time.monotonic() - started
        for leader in leaders_of(list(self.leaders.values()), self.keys):
            self._leader_since.setdefault(leader["shard"], (leader["term"], None))
        # everything may have changed: every page refreshes
        self._topic_rev.clear()
        self._floor = rev
        for topic in self._subs:
            self._dirty[topic] = rev
        self._dirty_event.set()
        if not self._ready.is_set():
            log.info("console: read %d sagas at revision %d in %.2fs", len(index), rev, self.load_seconds)
        self._ready.set()

    def _sid(self, key: bytes, kind: str) -> str | None:
        try:
            return self.keys.saga_id(key, kind)
        except DecodeError:
            return None  # not a key whizorch wrote: the leader quarantines it

    # -- events ------------------------------------------------------------------------

    def _apply(self, ev: WatchEvent) -> None:
        key, rev, put = ev.kv.key, ev.revision, ev.type is EventType.PUT
        self.revision = max(self.revision, rev)
        ns = self.keys.ns.encode() + b"/"
        if not key.startswith(ns):
            return
        kind, _, rest = key[len(ns) :].partition(b"/")
        if kind == b"saga":
            sid = self._sid(key, "saga")
            if sid is not None:
                if put:
                    self.index.put_record(sid, ev.kv.value)
                    self._last_record_write = time.time()  # only a leader writes records
                else:
                    self.index.delete_record(sid)
                self._mark(rev, OVERVIEW, SAGAS, saga_topic(sid))
        elif kind == b"submit":
            sid = self._sid(key, "submit")
            if sid is not None:
                if put:
                    self.index.put_submission(sid, ev.kv)
                else:
                    self.index.delete_submission(sid)
                self._mark(rev, OVERVIEW, SAGAS, saga_topic(sid))
        elif kind in (b"cancel", b"run", b"task"):
            parts = rest.split(b"/")
            # cancel/<id>, run/<region>/<id>/..., task/<region>/<lease>/<id>/...
            at = {b"cancel": 0, b"run": 1, b"task": 2}[kind]
            if kind == b"task":
                self._task(key, put=put)
                self._mark(rev, OVERVIEW)
            if len(parts) > at:
                self._mark(rev, saga_topic(parts[at].decode(errors="replace")))
        elif kind == b"leader":
            before = {d["shard"]: d for d in leaders_of(list(self.leaders.values()), self.keys)}
            if put:
                self.leaders[key] = ev.kv
            else:
                self.leaders.pop(key, None)
            self._leader_change(before)
            self._mark(rev, OVERVIEW)
        elif kind == b"region":
            healthy = self._healthy()
            if put:
                self.workers[key] = ev.kv
                self._name_worker(ev.kv)
            else:
                self.workers.pop(key, None)
            self._region_change(healthy)
            self._mark(rev, OVERVIEW)
        elif kind == b"latency" and not rest:
            self.latency = ev.kv.value if put else None
            self._mark(rev, OVERVIEW)
        elif kind == b"quarantine":
            if put:
                self.notes[key] = ev.kv
                while len(self.notes) > NOTES_KEPT:
                    self.notes.pop(next(iter(self.notes)))
            else:
                self.notes.pop(key, None)
            self._mark(rev, OVERVIEW)

    def _name_worker(self, kv: KeyValue) -> None:
        try:
            name = capabilities(kv.value).get("worker")
        except DecodeError:
            return
        if isinstance(name, str):
            if len(self.worker_names) >= WORKER_NAMES_KEPT:
                self.worker_names.pop(next(iter(self.worker_names)))
            self.worker_names[kv.key.rpartition(b"/")[2].decode(errors="replace")] = name

    def _task(self, key: bytes, *, put: bool) -> None:
        if put:
            if key in self.tasks:
                return
            try:
                region = self.keys.split(key, "task")[0]
            except DecodeError:
                return
            self.tasks[key] = region
            self.task_counts[region] += 1
        else:
            region_of = self.tasks.pop(key, None)
            if region_of is not None:
                self.task_counts[region_of] -= 1
                if self.task_counts[region_of] <= 0:
                    del self.task_counts[region_of]

    def _leader_change(self, before: dict[str | None, dict[str, Any]]) -> None:
        now = time.time()
        after = {d["shard"]: d for d in leaders_of(list(self.leaders.values()), self.keys)}
        for shard in set(before) | set(after):
            old, new = before.get(shard), after.get(shard)
            if old is not None and (new is None or new["term"] != old["term"]):
                self._leader_lost.setdefault(shard, now)
            if new is not None and (old is None or new["term"] != old["term"]):
                lost = self._leader_lost.pop(shard, None)
                self._leader_since[shard] = (new["term"], now)
                counts = self.index.counts
                in_flight = counts.get("running", 0) + counts.get("compensating", 0)
                last = self._last_record_write
                self.recent.appendleft({
                    "at": now, "kind": "leader", "shard": shard, "node": new["node"], "term": new["term"],
                    "previous": old["node"] if old else None,
                    "leaderless_s": round(now - lost, 3) if lost is not None else None,
                    # a dead leader's key stays until its lease ends: the time sagas waited is the
                    # gap since the old term's last record write, while sagas were in flight
                    "stalled_s": round(now - last, 3) if old is not None and in_flight and last is not None else None,
                })  # fmt: skip
            elif new is None and old is not None:
                self.recent.appendleft({"at": now, "kind": "no_leader", "shard": shard, "previous": old["node"]})

    def _healthy(self) -> set[str]:
        return set(workers_by_region(self.workers.values(), self.keys))

    def _region_change(self, before: set[str]) -> None:
        now = time.time()
        after = self._healthy()
        if len(self._seen_regions) < 1000:
            self._seen_regions |= after
        for region in before - after:
            self._region_down[region] = now
            self.recent.appendleft({"at": now, "kind": "region_down", "region": region})
        for region in after - before:
            down = self._region_down.pop(region, None)
            self.recent.appendleft({
                "at": now, "kind": "region_up", "region": region,
                "down_s": round(now - down, 3) if down is not None else None,
            })  # fmt: skip

    # -- topics ------------------------------------------------------------------------

    def _mark(self, rev: int, *topics: str) -> None:
        for t in topics:
            self._dirty[t] = rev
        self._dirty_event.set()

    async def _flush(self) -> None:
        while True:
            await self._dirty_event.wait()
            await asyncio.sleep(COALESCE_S)  # ok: events this close together wake a page once
            self._dirty_event.clear()
            dirty, self._dirty = self._dirty, {}
            for topic, rev in dirty.items():
                self._topic_rev[topic] = rev
                self._topic_rev.move_to_end(topic)
                for sub in self._subs.get(topic, ()):
                    sub.rev = max(sub.rev, rev)
                    sub.event.set()
            while len(self._topic_rev) > TOPICS_KEPT:
                _, old = self._topic_rev.popitem(last=False)
                self._floor = max(self._floor, old)

    def topic_revision(self, topic: str) -> int:
        """The revision of the topic's last change (the floor when not remembered)."""
        return self._topic_rev.get(topic, self._floor)

    @contextlib.contextmanager
    def subscribe(self, topic: str, since: int) -> Any:
        """A subscriber for ``topic``; woken at once if it changed after ``since``."""
        sub = Subscriber(topic, since)
        if self.topic_revision(topic) > since:
            sub.rev = self.topic_revision(topic)
            sub.event.set()
        self._subs.setdefault(topic, set()).add(sub)
        try:
            yield sub
        finally:
            subs = self._subs.get(topic)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[topic]

    @property
    def subscribers(self) -> int:
        return sum(len(s) for s in self._subs.values())

    # -- the etcd members ------------------------------------------------------------------

    async def _poll_cluster(self) -> None:
        while True:
            doc: dict[str, Any] | None
            try:
                doc = await self._cluster()
                error = None
            except (WhizorchError, TimeoutError) as exc:
                doc, error = self.cluster, " ".join(str(exc).split())
            if doc != self.cluster or error != self.cluster_error:
                self.cluster, self.cluster_error = doc, error
                self._mark(self.revision, OVERVIEW)
            await asyncio.sleep(self.settings.cluster_poll_s)  # ok: members are polled, not watched

    async def _cluster(self) -> dict[str, Any]:
        c = self.client
        members = await c.member_list(timeout_s=MEMBER_TIMEOUT_S)
        status = await c.status(timeout_s=MEMBER_TIMEOUT_S)
        own = await asyncio.gather(*(self._member_status(m) for m in members))
        doc = summarize_cluster(members, status, {m.id: s for m, s in zip(members, own, strict=True) if s is not None})
        # what changes with every write is not a change of the members' view
        doc.pop("revision", None)
        for m in doc["members"]:
            m.pop("raft_index", None)
        return doc

    async def _member_status(self, member: Member) -> Status | str | None:
        if not member.client_urls:
            return None
        try:
            return await self.client.status(parse_endpoints(member.client_urls[0])[0], timeout_s=MEMBER_TIMEOUT_S)
        except WhizorchError as exc:
            return " ".join(str(exc).split())

    # -- views -----------------------------------------------------------------------------

    def overview(self) -> dict[str, Any]:
        """The overview page's document (from the mirror; no IO)."""
        leaders = leaders_of(list(self.leaders.values()), self.keys)
        for d in leaders:
            term, since = self._leader_since.get(d["shard"], (d["term"], None))
            d["since"] = since if term == d["term"] else None
        workers = workers_by_region(self.workers.values(), self.keys)
        for name in (*self.configured_regions, *self._seen_regions):
            workers.setdefault(name, [])  # a region seen before and now without workers is down
        return {
            "namespace": self.keys.ns,
            "revision": self.revision,
            "leaders": leaders,
            "candidates": len(self.leaders),
            "regions": summarize_regions(workers, self.task_counts),
            "sagas": self.index.status_counts(),
            "etcd": self.cluster,
            "etcd_error": self.cluster_error,
            "latency": latency_doc(self.latency),
            "quarantined": quarantine_notes(self.notes.values())[-20:],
            "quarantined_total": len(self.notes),
            "recent": list(self.recent)[:20],
            "loaded_at": self.loaded_at,
            "load_seconds": self.load_seconds,
        }

    def region_names(self) -> list[str]:
        """Every region known: configured, with workers, or with tasks."""
        seen = set(workers_by_region(self.workers.values(), self.keys)) | set(self.task_counts) | set(self.index.regions)
        return [*self.configured_regions, *sorted(seen - set(self.configured_regions))]
