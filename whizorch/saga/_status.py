"""Pure reads of a deployment's state for ``whizorch status`` and the console.

Nothing here talks to etcd: callers read the keys (or keep them current from a watch)
and hand them over. The leader is parsed from the election keys in one place,
:func:`leaders_of`, so a change to the election's key layout changes one function.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from whizorch.errors import DecodeError
from whizorch.etcd import KeyValue, Member, Status, version_warning
from whizorch.saga._keys import Keys
from whizorch.saga._model import SagaRecord, decode_json
from whizorch.saga._view import capabilities

__all__ = [
    "latency_doc",
    "leader_summary",
    "leaders_of",
    "live_definitions",
    "quarantine_notes",
    "summarize_cluster",
    "summarize_definitions",
    "summarize_regions",
    "summarize_shards",
    "tasks_by_region",
    "workers_by_region",
]


def _shard_of(key: bytes, keys: Keys | None) -> str | None:
    """The shard of an election key: ``<ns>/leader/<lease hex>`` has none (None);
    ``<ns>/leader/<shard>/<lease hex>`` names one."""
    text = key.decode(errors="replace")
    if keys is not None and text.startswith(keys.leader + "/"):
        text = text[len(keys.leader) + 1 :]
    else:
        text = text.rpartition("/leader/")[2] or text
    head, sep, _ = text.rpartition("/")
    return head if sep and head else None


def leaders_of(candidates: Sequence[KeyValue], keys: Keys | None = None) -> list[dict[str, Any]]:
    """The leader of each election under ``<ns>/leader/``, by shard (one entry, shard
    None, for the single orchestrator election): the candidate key with the lowest
    create revision. Its value is the node id the orchestrator proclaimed, its create
    revision the term; ``candidates`` counts the keys of that election."""
    by_shard: dict[str | None, list[KeyValue]] = {}
    for kv in candidates:
        by_shard.setdefault(_shard_of(kv.key, keys), []).append(kv)
    out = []
    for shard in sorted(by_shard, key=lambda s: (s is not None, s or "")):
        group = by_shard[shard]
        kv = min(group, key=lambda c: c.create_revision)
        out.append(
            {
                "shard": shard,
                "node": kv.value.decode(errors="replace"),
                "term": kv.create_revision,
                "lease": f"{kv.lease:x}",
                "key": kv.key.decode(errors="replace"),
                "candidates": len(group),
            }
        )
    return out


def leader_summary(candidates: Sequence[KeyValue]) -> dict[str, Any] | None:
    """The orchestrator election's leader (``whizorch status``): node, term, lease,
    key; None without candidates. With several shards, the first shard's."""
    found = leaders_of(candidates)
    if not found:
        return None
    return {k: found[0][k] for k in ("node", "term", "lease", "key")}


def summarize_shards(
    candidates: Sequence[KeyValue], members: Sequence[KeyValue], live: Sequence[KeyValue], keys: Keys, shard_count: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each shard (its leader, term, candidates and sagas in flight, from the in-flight
    index) and each live orchestrator (node, lease, the shards it leads)."""
    leaders = {d["shard"]: d for d in leaders_of(candidates, keys) if d["shard"] is not None}
    in_flight: dict[str, int] = {}
    head = len(keys.prefix("live"))
    for kv in live:
        shard = kv.key[head:].partition(b"/")[0].decode(errors="replace")
        in_flight[shard] = in_flight.get(shard, 0) + 1
    shards = []
    for k in range(shard_count):
        d = leaders.get(str(k))
        shards.append({
            "shard": k, "node": d["node"] if d else None, "term": d["term"] if d else None,
            "lease": d["lease"] if d else None, "candidates": d["candidates"] if d else 0,
            "in_flight": in_flight.get(str(k), 0),
        })  # fmt: skip
    orchestrators = []
    mine_head = len(keys.prefix("orch"))
    for kv in members:
        lease = kv.key[mine_head:].decode(errors="replace")
        try:
            node = str(decode_json(kv.value, what="orchestrator")["node"])
        except (DecodeError, KeyError, TypeError):
            node = lease
        leads = [s["shard"] for s in shards if s["lease"] == lease]
        orchestrators.append({"node": node, "lease": lease, "leads": leads})
    return shards, sorted(orchestrators, key=lambda o: (o["node"], o["lease"]))


def live_definitions(live: Sequence[KeyValue]) -> dict[tuple[str, str], int]:
    """Sagas in flight per (saga type, version), from the in-flight index's values."""
    out: dict[tuple[str, str], int] = {}
    for kv in live:
        try:
            doc = decode_json(kv.value, what="index")
            key = (str(doc["saga"]), str(doc["version"]))
        except (DecodeError, KeyError, TypeError):
            continue
        out[key] = out.get(key, 0) + 1
    return out


def workers_by_region(kvs: Iterable[KeyValue], keys: Keys) -> dict[str, list[dict[str, Any]]]:
    """Each live worker's capabilities (``<ns>/region/<region>/<lease>``), by region."""
    out: dict[str, list[dict[str, Any]]] = {}
    for kv in kvs:
        try:
            # as the leader's router reads them: a registration it quarantines is skipped
            out.setdefault(keys.region_of(kv.key), []).append(capabilities(kv.value))
        except DecodeError:
            continue
    return out


def tasks_by_region(kvs: Iterable[KeyValue], keys: Keys) -> dict[str, int]:
    """How many steps are dispatched to each region (``<ns>/task/<region>/...`` keys)."""
    out: dict[str, int] = {}
    for kv in kvs:
        try:
            region = keys.split(kv.key, "task")[0]
        except DecodeError:
            continue  # not a task key whizorch wrote
        out[region] = out.get(region, 0) + 1
    return out


def latency_doc(value: bytes | None) -> dict[str, Any] | None:
    """The leader's published latencies (``<ns>/latency``), or None."""
    if value is None:
        return None
    try:
        doc = decode_json(value, what="latency")
    except DecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    return {k: doc.get(k) for k in ("from", "at", "measured_ms", "configured_ms")}


def quarantine_notes(kvs: Iterable[KeyValue]) -> list[dict[str, Any]]:
    """The leader's notes on quarantined input (``<ns>/quarantine/``), oldest first."""
    notes = []
    for kv in kvs:
        try:
            note = decode_json(kv.value, what="quarantine note")
        except DecodeError:
            continue
        if isinstance(note, dict):
            notes.append({k: note.get(k) for k in ("kind", "key", "reason", "revision", "at")})
    return sorted(notes, key=lambda n: n["revision"] if isinstance(n["revision"], int) else 0)


def summarize_regions(
    workers: Mapping[str, Sequence[Mapping[str, Any]]], tasks: Mapping[str, int] | None = None
) -> list[dict[str, Any]]:
    """One entry per region, by name, from the workers' capabilities (as the router sees
    them): healthy with at least one worker; load weighted by capacity (concurrency);
    compliance tags every worker has; the lowest cost. ``tasks`` counts dispatched steps
    per region, so a region with work and no worker shows up unhealthy."""
    tasks = tasks or {}
    out = []
    for name in sorted(set(workers) | set(tasks)):
        caps = list(workers.get(name, ()))
        capacity = sum(max(1, int(c.get("concurrency", 1))) for c in caps)
        busy = sum(float(c.get("load", 0.0)) * max(1, int(c.get("concurrency", 1))) for c in caps)
        tags: frozenset[str] = (
            frozenset.intersection(*(frozenset(c.get("compliance", ())) for c in caps)) if caps else frozenset()
        )
        out.append(
            {
                "name": name,
                "healthy": bool(caps),
                "workers": len(caps),
                "worker_ids": sorted(str(c.get("worker", "?")) for c in caps),
                "capacity": capacity,
                "load": round(busy / capacity, 3) if capacity else 0.0,
                "compliance": sorted(tags),
                "cost": min(float(c.get("cost", 0.0)) for c in caps) if caps else None,
                "tasks": int(tasks.get(name, 0)),
            }
        )
    return out


def summarize_cluster(
    members: Sequence[Member], status: Status, member_status: Mapping[int, Status | str] | None = None
) -> dict[str, Any]:
    """The etcd cluster as the answering member (``status``) reports it, with each
    member's own status where it answered (``member_status``: a Status or an error)."""
    member_status = member_status or {}
    leader = next((m for m in members if m.id == status.leader), None)
    rows = []
    for m in members:
        own = member_status.get(m.id)
        rows.append(
            {
                "id": f"{m.id:x}",
                "name": m.name,
                "client_urls": list(m.client_urls),
                "is_leader": m.id == status.leader,
                "is_learner": m.is_learner,
                "reachable": None if own is None else isinstance(own, Status),
                "version": own.version if isinstance(own, Status) else None,
                "db_size": own.db_size if isinstance(own, Status) else None,
                "raft_index": own.raft_index if isinstance(own, Status) else None,
                "error": own if isinstance(own, str) else None,
            }
        )
    versions = {status.version} | {s.version for s in member_status.values() if isinstance(s, Status)}
    return {
        "endpoint": status.endpoint,
        "version": status.version,
        "warnings": sorted({w for v in versions if (w := version_warning(v)) is not None}),
        "leader": leader.name if leader is not None else None,
        "leader_id": f"{status.leader:x}" if status.leader else None,
        "raft_term": status.raft_term,
        "revision": status.revision,
        "db_size": status.db_size,
        "members": rows,
    }


def summarize_definitions(
    records: Iterable[SagaRecord], workers: Mapping[str, Sequence[Mapping[str, Any]]],
    in_flight: Mapping[tuple[str, str], int] | None = None,
) -> list[dict[str, Any]]:
    """Per saga type and version: the sagas in flight pinned to it (``in_flight``, from
    the in-flight index; else counted in ``records``), the steps of those (in
    ``records``) waiting for a worker that has it, the live workers that can run it (by region), and
    a warning when sagas are in flight on it and no live worker can run it (their next
    step waits until one registers, up to ``no_worker_timeout_s``).

    A worker that advertises no list (an older whizorch) runs any version: it counts
    for every one, under ``any_version``."""
    table: dict[tuple[str, str], dict[str, Any]] = {}

    def row(name: str, version: str) -> dict[str, Any]:
        return table.setdefault(
            (name, version), {"saga": name, "version": version, "in_flight": 0, "waiting": 0, "workers": {}}
        )

    for rec in records:
        if not rec.is_final:
            r = row(rec.saga, rec.version)
            if in_flight is None:
                r["in_flight"] += 1
            r["waiting"] += sum(1 for st in rec.steps if st.waiting_region and st.waiting_for == "worker")
    for (name, version), n in (in_flight or {}).items():
        row(name, version)["in_flight"] = n
    any_version: dict[str, int] = {}
    for region, caps in workers.items():
        for c in caps:
            if c.get("draining"):
                continue
            sagas = c.get("sagas")
            if sagas is None:
                any_version[region] = any_version.get(region, 0) + 1
                continue
            for name, versions in sagas.items():
                for version in versions:
                    w = row(str(name), str(version))["workers"]
                    w[region] = w.get(region, 0) + 1
    out = []
    for (name, version), r in sorted(table.items()):
        for region, n in any_version.items():
            r["workers"][region] = r["workers"].get(region, 0) + n
        r["warning"] = (
            f"{r['in_flight']} saga(s) of {name} version {version or '(unversioned)'} in flight and no live worker "
            "can run it: deploy a worker whose App holds it"
            if r["in_flight"] and not r["workers"] and version else None
        )
        out.append(r)
    return out
