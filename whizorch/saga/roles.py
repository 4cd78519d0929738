"""Least privilege per region: the etcd roles of a deployment, as data (no IO).

The key schema (docs/design.md, "Key schema") puts everything a region's workers read
or write under a prefix of that region, so one etcd role per region confines them:

=========================  ==========================================================
``<ns>-worker-<region>``   READWRITE ``task/<region>/``, ``run/<region>/``,
                           ``region/<region>/``; READ ``run/``
``<ns>-orchestrator``      READWRITE ``<ns>/``
``<ns>-client``            READWRITE ``submit/``, ``cancel/``, ``def/``; READ ``saga/``,
                           ``run/``
``<ns>-viewer``            READ ``<ns>/``
``<ns>-console``           READ ``<ns>/``; READWRITE ``submit/``, ``cancel/``
=========================  ==========================================================

The viewer role is what a read-only ``whizorch console`` needs (its reads and its one
watch on ``<ns>/``); the console role adds the two writes of its actions (cancel a
saga, resubmit a finished one as a new submission).

Why each worker permission (every prefix is ``<ns>/...`` and ends with ``/``, so region
``eu`` never reaches ``eu-west``):

* ``task/<region>/`` READWRITE: the worker reads and watches its tasks, compares a
  task's create_revision (the fencing token; ``fenced_txn`` too) and deletes the task
  in its result txn. Write is needed beyond the delete: etcd's LeaseRevoke, and a put
  on a lease, require write permission on *every* key attached to the lease
  (``checkLeasePuts`` in etcd's server/etcdserver/apply_auth.go), and the leader puts
  tasks on the worker's own lease, so without it the worker could neither revoke its
  lease on close nor refresh its registration while it holds a task.
* ``run/<region>/`` READWRITE: its results, create-if-absent (the compare
  ``create_revision(result) == 0`` needs read).
* ``run/`` READ: a task's ``output_refs`` name earlier steps' results, which other
  regions' workers wrote.
* ``region/<region>/`` READWRITE: its registration and load reports.

Saga records, submissions, cancels, the leader key, ``ids``, ``latency`` and
``quarantine`` stay out of a worker's reach, as does every other region's prefix.
Keys that user code writes from a step (its own effects) are the user's to grant, on a
role of their own: ``whizorch roles apply`` owns only the roles it names.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

import attrs

from whizorch.errors import ConfigError
from whizorch.etcd import Permission, PermType, prefix_end
from whizorch.saga._keys import Keys

__all__ = [
    "RoleKind",
    "RoleSpec",
    "allows",
    "check_namespace",
    "check_region",
    "deployment_roles",
    "describe",
    "role_name",
]


class RoleKind(enum.Enum):
    """Which process of a deployment a role is for."""

    WORKER = "worker"
    ORCHESTRATOR = "orchestrator"
    CLIENT = "client"
    VIEWER = "viewer"
    CONSOLE = "console"


@attrs.frozen
class RoleSpec:
    """One etcd role: its name, what it is for and its exact permissions."""

    name: str
    """The etcd role name (``<ns>-worker-<region>``, ``<ns>-orchestrator`` ...)."""
    kind: RoleKind
    """The process it is for."""
    region: str | None
    """The region of a worker role; None for the others."""
    permissions: tuple[Permission, ...]
    """Every permission the role has, nothing else."""


def check_namespace(namespace: str) -> str:
    """``namespace`` if it is a valid saga namespace (as :class:`Keys` checks it), else
    a ConfigError naming it."""
    return Keys(namespace).ns


def check_region(region: str) -> str:
    """``region`` if it can name a region's key prefix and role, else a ConfigError."""
    if not isinstance(region, str) or not region:
        raise ConfigError("a region name must be a non-empty string", field="region", value=region)
    bad = [c for c in region if c == "/" or c == "," or c.isspace() or not c.isprintable()]
    if bad:
        raise ConfigError(
            f"region {region!r} contains {bad[0]!r}: a region name has no '/', ',', spaces or control characters",
            field="region",
            value=region,
        )
    return region


def role_name(namespace: str, kind: RoleKind, region: str | None = None) -> str:
    """The etcd role (and user) name of ``kind``: ``<ns>-worker-<region>`` or ``<ns>-<kind>``."""
    if (kind is RoleKind.WORKER) != (region is not None):
        raise ConfigError("a worker role names a region, and only a worker role does", field="region", value=region)
    if region is not None:
        return f"{namespace}-{kind.value}-{region}"
    return f"{namespace}-{kind.value}"


def _prefix(perm: PermType, key: bytes) -> Permission:
    return Permission(perm, key, prefix_end(key))


def _worker(keys: Keys, region: str) -> tuple[Permission, ...]:
    return (
        _prefix(PermType.READWRITE, keys.region_tasks(region)),
        _prefix(PermType.READWRITE, keys.region_results(region)),
        _prefix(PermType.READ, keys.prefix("run")),
        _prefix(PermType.READWRITE, keys.region_workers(region)),
    )


def deployment_roles(namespace: str, regions: Iterable[str]) -> tuple[RoleSpec, ...]:
    """The roles of a deployment: the orchestrator's, the client's, the viewer's, the
    console's (with actions), and one worker role per region (in the order given; a region named twice is an error)."""
    keys = Keys(namespace)
    ns = keys.ns
    listed: list[str] = [check_region(r) for r in regions]
    if not listed:
        raise ConfigError("name at least one region", field="regions", value=listed)
    seen: set[str] = set()
    for region in listed:
        if region in seen:
            raise ConfigError(f"region {region!r} is named twice", field="regions", value=listed)
        seen.add(region)
    specs = [
        RoleSpec(role_name(ns, RoleKind.ORCHESTRATOR), RoleKind.ORCHESTRATOR, None, (_prefix(PermType.READWRITE, keys.root),)),
        RoleSpec(
            role_name(ns, RoleKind.CLIENT),
            RoleKind.CLIENT,
            None,
            (
                _prefix(PermType.READWRITE, keys.prefix("submit")),
                _prefix(PermType.READWRITE, keys.prefix("cancel")),
                # submitting a Saga object publishes its definition (create-if-absent)
                _prefix(PermType.READWRITE, keys.prefix("def")),
                _prefix(PermType.READ, keys.prefix("saga")),
                _prefix(PermType.READ, keys.prefix("run")),
                # an id submitted again: its input, once adopted, is compared with the new one
                _prefix(PermType.READ, keys.prefix("input")),
            ),
        ),
        RoleSpec(role_name(ns, RoleKind.VIEWER), RoleKind.VIEWER, None, (_prefix(PermType.READ, keys.root),)),
        RoleSpec(
            role_name(ns, RoleKind.CONSOLE),
            RoleKind.CONSOLE,
            None,
            (
                _prefix(PermType.READ, keys.root),
                _prefix(PermType.READWRITE, keys.prefix("submit")),
                _prefix(PermType.READWRITE, keys.prefix("cancel")),
            ),
        ),
    ]
    specs += [RoleSpec(role_name(ns, RoleKind.WORKER, r), RoleKind.WORKER, r, _worker(keys, r)) for r in listed]
    return tuple(specs)


def allows(permissions: Sequence[Permission], key: bytes, *, write: bool) -> bool:
    """Whether ``permissions`` let a user read (or write) ``key``, as etcd decides it:
    some permission of the right type whose range holds the key."""
    wanted = (PermType.WRITE, PermType.READWRITE) if write else (PermType.READ, PermType.READWRITE)
    for p in permissions:
        if p.type not in wanted:
            continue
        if (p.range_end == b"" and key == p.key) or (p.range_end and p.key <= key < p.range_end):
            return True
    return False


def describe(perm: Permission) -> dict[str, str]:
    """A permission as text: ``{"type": "READWRITE", "prefix": "ns/task/eu/"}`` (or
    ``"key"`` for one key, ``"key"`` and ``"range_end"`` for any other range)."""
    doc = {"type": perm.type.name}
    key = perm.key.decode(errors="backslashreplace")
    if perm.range_end == b"":
        doc["key"] = key
    elif perm.range_end == prefix_end(perm.key):
        doc["prefix"] = key
    else:
        doc["key"] = key
        doc["range_end"] = perm.range_end.decode(errors="backslashreplace")
    return doc
