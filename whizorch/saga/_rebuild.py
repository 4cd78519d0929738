"""What a new leader reads to take over: the namespace at one revision, read for size.

With 100,000 finished sagas retained, reading every key (records, submissions, each
step's result) is over half a million keys and hundreds of MB. A leader needs far
less: every record (to know what is final: only its end time, status and regions are
kept for those), and for the sagas in flight only, their submission (the input) and
their results. So :func:`read_snapshot` reads the records in pages at one revision,
then, at that same revision, the small prefixes (workers, tasks, quarantine notes),
the submission and cancel keys without values, and for the sagas in flight their
submissions and result prefixes, many per txn, several txns at a time.

Nothing here writes; the orchestrator turns the snapshot into its cache.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from typing import Any

import attrs

from whizorch.etcd import EtcdClient, KeyValue, Op, RangeResult
from whizorch.saga._model import FINAL_STATUSES, Keys
from whizorch.saga._snapshot import read_namespace

__all__ = ["Finished", "Snapshot", "read_many", "read_snapshot"]

RECORD_PAGE = 5000
"""Saga records per page (about 8 MB of finished records)."""
GETS_PER_TXN = 100
"""Reads per txn: within etcd's --max-txn-ops (128)."""
TXNS_AT_ONCE = 8


@attrs.frozen
class Finished:
    """What the leader keeps of a final saga: enough to purge it after retention."""

    status: str
    finished: float | None
    mod_revision: int
    regions: tuple[str, ...]


@attrs.define
class Snapshot:
    """The namespace at ``revision``, as a new leader needs it."""

    revision: int
    live: list[tuple[KeyValue, dict[str, Any]]]
    """Records not final (or not readable as such): the key-value and its decoded JSON
    (``None`` when it is not JSON: the orchestrator quarantines it)."""
    finished: dict[bytes, tuple[KeyValue, Finished]]
    """Final records by key."""
    submits: set[bytes]
    """Submission keys (no values)."""
    cancels: set[bytes]
    regions: list[KeyValue]
    tasks: list[KeyValue]
    quarantine: list[KeyValue]


async def read_snapshot(client: EtcdClient, keys: Keys) -> Snapshot:
    """Read the records in pages, then the rest at the records' revision."""
    records, rev = await read_namespace(client, keys.prefix("saga"), page_size=RECORD_PAGE)
    submits, cancels, regions, tasks, notes = await asyncio.gather(
        client.get(keys.prefix("submit"), prefix=True, keys_only=True, revision=rev),
        client.get(keys.prefix("cancel"), prefix=True, keys_only=True, revision=rev),
        client.get(keys.prefix("region"), prefix=True, revision=rev),
        client.get(keys.prefix("task"), prefix=True, revision=rev),
        client.get(keys.prefix("quarantine"), prefix=True, revision=rev),
    )
    live: list[tuple[KeyValue, Any]] = []
    finished: dict[bytes, tuple[KeyValue, Finished]] = {}
    for i, kv in enumerate(records):
        if i % 2000 == 1999:
            await asyncio.sleep(0)  # ok: a long parse must not starve the session's keepalives
        done = _summary(kv.value, kv.mod_revision)
        if done is not None:
            finished[kv.key] = (kv, done)
            continue
        try:
            raw = json.loads(kv.value)
        except (UnicodeDecodeError, ValueError):
            live.append((kv, None))
            continue
        done = _finished(raw, kv.mod_revision)
        if done is None:
            live.append((kv, raw))
        else:
            finished[kv.key] = (kv, done)
    return Snapshot(
        revision=rev, live=live, finished=finished, submits={kv.key for kv in submits.kvs},
        cancels={kv.key for kv in cancels.kvs}, regions=regions.kvs, tasks=tasks.kvs, quarantine=notes.kvs,
    )


# A final record as this whizorch writes it (SagaRecord.to_json: fields in that order,
# compact separators; quotes inside strings are escaped, so these never match inside
# one): its status, end time and regions without decoding the rest. Anything else
# (another writer's spacing, an older field order) is decoded in full instead.
_HEAD = re.compile(rb'\A\{"id":"(?:[^"\\]|\\.)*","saga":"(?:[^"\\]|\\.)*","txid":-?\d+,"status":"(completed|compensated|failed)",')
_END = re.compile(rb',"updated":-?[0-9.eE+-]+,"finished":(null|-?[0-9.eE+-]+),"step":')
_REGIONS = re.compile(rb'"regions":(\[[^\]]*\])')
_TAIL = re.compile(rb',"v":[123]\}\Z')
_SEEN: dict[bytes, Any] = {}
"""Region lists already decoded (a deployment has few distinct ones)."""


def _summary(data: bytes, mod_revision: int) -> Finished | None:
    """The summary of a final record read without decoding it (None: decode it)."""
    head = _HEAD.match(data)
    if head is None or _TAIL.search(data) is None:
        return None
    steps_end = data.find(b'],"created":', head.end())  # the steps array ends there (no string holds a bare quote)
    end = _END.search(data, steps_end)
    if steps_end < 0 or end is None or not data.startswith(b'"steps":[', head.end()):
        return None
    try:
        regions: list[str] = []
        for group in _REGIONS.findall(data, head.end(), steps_end):
            names = _SEEN.get(group)
            if names is None:
                names = json.loads(group)
                if len(_SEEN) < 4096:  # bounded: region lists of a deployment are few
                    _SEEN[group] = names
            for r in names:
                if isinstance(r, str) and r not in regions:
                    regions.append(r)
        finished = None if end.group(1) == b"null" else float(end.group(1))
    except ValueError:
        return None
    return Finished(head.group(1).decode(), finished, mod_revision, tuple(regions))


def _finished(raw: Any, mod_revision: int) -> Finished | None:
    """The summary of a final record of a schema this whizorch reads; None otherwise
    (the record is then read in full, and any flaw in it found and quarantined)."""
    if not isinstance(raw, dict) or raw.get("status") not in FINAL_STATUSES or raw.get("v") not in (1, 2, 3):
        return None
    try:
        end = raw.get("finished")
        regions: list[str] = []
        for st in raw["steps"]:
            for r in st.get("regions", ()):
                if isinstance(r, str) and r not in regions:
                    regions.append(r)
        return Finished(raw["status"], float(end) if end is not None else None, mod_revision, tuple(regions))
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


async def read_many(
    client: EtcdClient, keys: Sequence[bytes], revision: int, *, prefix: bool = False
) -> dict[bytes, list[KeyValue]]:
    """Each key (or prefix) read at ``revision``: many per txn, a few txns at once."""
    out: dict[bytes, list[KeyValue]] = {}
    chunks = [list(keys[i : i + GETS_PER_TXN]) for i in range(0, len(keys), GETS_PER_TXN)]
    gate = asyncio.Semaphore(TXNS_AT_ONCE)

    async def one(chunk: list[bytes]) -> None:
        async with gate:
            res = await client.txn([], [Op.get(k, prefix=prefix, revision=revision) for k in chunk])
        for k, got in zip(chunk, res.responses, strict=True):
            out[k] = got.kvs if isinstance(got, RangeResult) else []

    await asyncio.gather(*(one(c) for c in chunks))
    return out
