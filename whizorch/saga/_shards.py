"""Shards: which shard a saga is in, and which orchestrator leads each shard.

A namespace is cut into a fixed number of shards, stored in ``<ns>/meta`` by the first
orchestrator that opens it (see docs/design.md, "Shards"). Each shard has its own
election and fence. Every orchestrator computes the same assignment of shards to the
live orchestrators (:func:`assign`, a pure function of the shard count and the members)
and campaigns for its own; nothing here decides who leads, the elections do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Mapping

import attrs

from whizorch._check import is_int
from whizorch.errors import ConfigError, DecodeError
from whizorch.etcd import Compare, EtcdClient, Op, RangeResult
from whizorch.saga._keys import Keys

__all__ = ["SCHEMA", "Member", "ShardBoard", "assign", "members_from", "open_namespace", "shard_of"]

log = logging.getLogger("whizorch.saga.orchestrator")

SCHEMA = 3
"""The key schema this whizorch writes (docs/design.md, "Key schema")."""
MAX_SHARDS = 1024


def shard_of(saga_id: str, shards: int) -> int:
    """The shard of a saga: CRC-32 of its id modulo the shard count."""
    return zlib.crc32(saga_id.encode()) % shards


@attrs.frozen(order=True)
class Member:
    """A live orchestrator: its node id and its session's lease (hex)."""

    node: str
    lease: str


def _rank(shard: int, member: Member) -> bytes:
    return hashlib.sha256(f"{shard}/{member.node}".encode()).digest()


def assign(
    shards: int,
    members: Mapping[str, Member] | list[Member],
    current: Mapping[int, str] | None = None,
    *,
    since: Mapping[int, int] | None = None,
) -> dict[int, Member]:
    """Each shard's orchestrator among ``members``: every member gets ``shards //
    len(members)`` shards or one more; a shard stays with its current leader
    (``current``: shard -> the leader's lease) while that leader is a member within its
    share, so leadership never moves for nothing (an orchestrator that comes back does
    not take its shards back); the rest go by rendezvous hashing on the node id, so a
    join or a leave moves few shards. Same input, same answer, on every node.

    ``since`` (shard -> the create revision of its current leader's key): a member
    holding more than its share keeps the shards it has held longest. A node's view
    can be a moment out of step (its watches of members and of elections are apart):
    after a leave it may briefly hold, or queue for, more than its share; what it
    gives back is then the newest, never a shard it led before."""
    people = sorted(members.values() if isinstance(members, Mapping) else members)
    if not people:
        return {}
    by_lease = {m.lease: m for m in people}
    held_since = since or {}
    ages: dict[Member, list[int]] = {m: [] for m in people}
    """Each member's shards now, by how long it has held them (oldest first)."""
    for k, lease in (current or {}).items():
        if lease in by_lease and 0 <= k < shards:
            ages[by_lease[lease]].append(held_since.get(k, 0))
    for revs in ages.values():
        revs.sort()
    base, extra = divmod(shards, len(people))
    # the larger shares go to those that hold the most already (fewer moves): among
    # those holding a larger share or more, to whoever has held one longest
    order = sorted(people, key=lambda m: (
        -min(len(ages[m]), base + 1), ages[m][base] if len(ages[m]) > base else 0, m,
    ))  # fmt: skip
    quota = {m: base + (1 if i < extra else 0) for i, m in enumerate(order)}
    out: dict[int, Member] = {}
    for k in sorted(range(shards), key=lambda k: (held_since.get(k, 0), k)):
        leader = by_lease.get((current or {}).get(k, ""))
        if leader is not None and quota[leader] > 0:
            quota[leader] -= 1
            out[k] = leader
    for shard in range(shards):
        if shard in out:
            continue
        for m in sorted(people, key=lambda m: (_rank(shard, m), m), reverse=True):
            if quota[m] > 0:
                quota[m] -= 1
                out[shard] = m
                break
    return out


async def open_namespace(client: EtcdClient, keys: Keys, *, shards: int) -> int:
    """The namespace's shard count: written with ``shards`` when the namespace is new
    (create-if-absent), else the count it was created with. A namespace holding saga
    records from before shards (no ``<ns>/meta``) is refused with what to do."""
    if not is_int(shards, minimum=1) or shards > MAX_SHARDS:
        raise ConfigError(f"shards must be an int from 1 to {MAX_SHARDS}", field="shards", value=shards)
    got = await client.get(keys.meta)
    if not got.kvs:
        old = await client.get(keys.prefix("saga"), prefix=True, limit=1, keys_only=True)
        if old.kvs:
            raise ConfigError(
                f"namespace {keys.ns!r} holds saga records from a whizorch before key schema {SCHEMA} (it has no "
                f"{keys.meta.decode()!r}): let its sagas finish with that version, or use a new namespace",
                field="namespace", value=keys.ns,
            )
        doc = json.dumps({"schema": SCHEMA, "shards": shards}).encode()
        res = await client.txn(
            [Compare.create_revision(keys.meta, "==", 0)], [Op.put(keys.meta, doc)], [Op.get(keys.meta)], idempotent=True
        )
        if res.succeeded:
            log.info("namespace %s created with %d shards", keys.ns, shards)
            return shards
        first = res.responses[0]
        assert isinstance(first, RangeResult)
        got = first
    try:
        meta = json.loads(got.kvs[0].value)
        schema, count = meta["schema"], meta["shards"]
        if not is_int(count, minimum=1) or count > MAX_SHARDS:
            raise ValueError(f"shards is {count!r}")
    except (ValueError, KeyError, TypeError) as exc:
        raise DecodeError(f"{keys.meta.decode()!r} is not readable: {exc}", field="namespace", value=keys.ns) from exc
    if schema != SCHEMA:
        raise ConfigError(
            f"namespace {keys.ns!r} has key schema {schema}, this whizorch writes {SCHEMA}", field="namespace", value=keys.ns
        )
    if count != shards:
        log.info("namespace %s has %d shards (fixed when it was created); %d asked for", keys.ns, count, shards)
    return count


def members_from(kvs: list[tuple[bytes, bytes]], keys: Keys) -> dict[str, Member]:
    """The live orchestrators from their ``<ns>/orch/<lease hex>`` keys (a value that
    does not parse still counts, by its lease)."""
    out: dict[str, Member] = {}
    head = keys.prefix("orch")
    for key, value in kvs:
        lease = key[len(head) :].decode(errors="replace")
        try:
            node = str(json.loads(value)["node"])
        except (ValueError, KeyError, TypeError):
            node = lease
        out[lease] = Member(node, lease)
    return out


class ShardBoard:
    """One orchestrator's view of who may lead what: the live orchestrators
    (``<ns>/orch/``) and each shard's election keys (``<ns>/leader/<k>/``), kept from
    the process's watches, and the assignment they give (no IO: the orchestrator feeds
    it and acts on what it says)."""

    def __init__(self, keys: Keys, shards: int) -> None:
        self.keys = keys
        self.shards = shards
        self.members: dict[str, Member] = {}
        self._candidates: dict[int, dict[bytes, int]] = {}
        """Each shard's election keys (key -> create revision): the lowest leads."""

    def member(self, key: bytes, value: bytes | None) -> None:
        """An orchestrator registered (``value``) or left (None)."""
        if value is None:
            self.members.pop(key[len(self.keys.prefix("orch")) :].decode(errors="replace"), None)
        else:
            self.members.update(members_from([(key, value)], self.keys))

    def candidate(self, key: bytes, create_revision: int | None) -> bool:
        """A shard election key came (its create revision) or went (None); True when a
        shard's leader changed."""
        head, _, _ = key[len(self.keys.prefix("leader")) :].partition(b"/")
        if not head.isdigit():
            return False  # not a shard election key
        before = self.leaders()
        found = self._candidates.setdefault(int(head), {})
        if create_revision is None:
            found.pop(key, None)
        else:
            found[key] = create_revision
        return self.leaders() != before

    def leaders(self) -> dict[int, str]:
        """Each led shard's leader (its lease, hex)."""
        return {k: lease for k, (lease, _) in self._leads().items()}

    def _leads(self) -> dict[int, tuple[str, int]]:
        """Each led shard's leader: its lease (hex) and its key's create revision."""
        out = {}
        for k, found in self._candidates.items():
            if found:
                key = min(found, key=found.__getitem__)
                out[k] = (key.rpartition(b"/")[2].decode(errors="replace"), found[key])
        return out

    def held(self, lease: str) -> set[int]:
        """The shards whose election holds a key on ``lease`` (leading or queued)."""
        tail = b"/" + lease.encode()
        return {k for k, found in self._candidates.items() if any(key.endswith(tail) for key in found)}

    def mine(self, lease: str) -> set[int]:
        """The shards the assignment gives the orchestrator on ``lease`` (a member over
        its share gives back the shards it has held the shortest: ``assign``'s since)."""
        leads = self._leads()
        owners = assign(
            self.shards, self.members, {k: lease for k, (lease, _) in leads.items()},
            since={k: rev for k, (_, rev) in leads.items()},
        )  # fmt: skip
        return {k for k, owner in owners.items() if owner.lease == lease}
