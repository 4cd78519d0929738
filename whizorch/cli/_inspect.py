"""``whizorch status`` and ``whizorch sagas list|show``: read-only views of a deployment.

Each command connects through :func:`_connect` (endpoints and namespace; the one place
new connection options go), reads a snapshot, and hands it to the pure views in
``_views``; this module draws them with rich or prints them as JSON. An etcd failure
is one line on stderr and exit status 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import attrs
import click
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from whizorch.cli._main import (
    CONFIG_HELP,
    ENDPOINTS_HELP,
    ETCD_FIX,
    NAMESPACE_HELP,
    friendly_errors,
    load_settings,
    main,
)
from whizorch.cli._views import (
    Pending,
    SagaDetails,
    failover_rows,
    fmt_duration,
    fmt_time,
    latency_doc,
    list_rows,
    quarantine_notes,
    record_document,
    step_rows,
    summarize_cluster,
    summarize_status,
    tasks_by_region,
    timeline_rows,
    workers_by_region,
)
from whizorch.config import WhizorchConfig
from whizorch.errors import (
    ConfigError,
    DecodeError,
    EtcdUnavailableError,
    RequestTooLargeError,
    WhizorchError,
)
from whizorch.etcd import EtcdClient, Member, Status, parse_endpoints
from whizorch.saga import (
    SAGA_ID,
    STATUSES,
    Keys,
    Listing,
    SagaClient,
    SagaRecord,
    SubmissionPayload,
    Submitted,
    scan_sagas,
)

__all__ = ["render_list", "render_show", "render_status"]

T = TypeVar("T")
SAGA_ID_RE = re.compile(SAGA_ID)
F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_ENDPOINTS = "127.0.0.1:2379"
MEMBER_TIMEOUT_S = 2.0
"""How long ``status`` waits for each member's own status."""
STATUS_READ = 2000
"""``status`` reads every saga record up to this many; beyond, it counts the statuses
of this many (the first by id) and says so."""
LIST_SCAN = 5_000
"""``sagas list`` reads at most this many records and submissions per call by default
(``--scan``), so a filter that matches little still answers at once, with a cursor."""

STYLES = {
    "pending": "dim", "running": "cyan", "compensating": "yellow", "completed": "green", "compensated": "magenta",
    "failed": "bold red", "done": "green", "dispatched": "cyan", "comp_failed": "bold red", "skipped": "dim",
}


# -- connecting ------------------------------------------------------------------------


@attrs.frozen
class Target:
    """What a command reads: an open client and the namespace's key layout."""

    client: EtcdClient
    keys: Keys


@contextlib.asynccontextmanager
async def _connect(cfg: WhizorchConfig) -> AsyncIterator[Target]:
    """An open client on the configured etcd and the keys of its namespace.

    A short retry deadline: an operator waits seconds, not a minute, to learn that
    etcd is unreachable.
    """
    keys = Keys(cfg.namespace)
    config = attrs.evolve(cfg.etcd_config(), timeout_s=5.0, connect_timeout_s=1.5, retry_deadline_s=2.0)
    async with EtcdClient(config) as client:
        yield Target(client, keys)


def target_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--config``, ``--etcd`` and ``--namespace``, resolved into one ``target`` argument
    (a WhizorchConfig: defaults < TOML file < WHIZORCH_* env < these flags)."""

    @functools.wraps(fn)
    @friendly_errors  # a bad configuration: one line, exit 2
    def wrapper(*args: Any, config_path: str | None, endpoints: str | None, namespace: str | None, **kwargs: Any) -> Any:
        target = load_settings(config_path, endpoints=endpoints, namespace=namespace)
        return fn(*args, target=target, **kwargs)

    wrapper = click.option("--namespace", default=None, help=NAMESPACE_HELP)(wrapper)
    wrapper = click.option("--etcd", "endpoints", default=None, metavar="ENDPOINTS", help=ENDPOINTS_HELP)(wrapper)
    return click.option(
        "--config", "config_path", envvar="WHIZORCH_CONFIG", default=None, metavar="FILE", help=CONFIG_HELP
    )(wrapper)


def _run(cfg: WhizorchConfig, body: Callable[[Target], Awaitable[T]]) -> T:
    """Run ``body`` on a connected target; a whizorch error exits 2 with one line."""

    async def go() -> T:
        async with _connect(cfg) as target:
            return await body(target)

    try:
        return asyncio.run(go())
    except WhizorchError as exc:
        endpoints = ",".join(cfg.etcd.endpoints)
        detail = " ".join(str(exc).split())
        if isinstance(exc, (ConfigError, RequestTooLargeError, DecodeError)):
            line = f"whizorch: {detail}"
        elif isinstance(exc, EtcdUnavailableError):
            line = f"whizorch: cannot reach etcd at {endpoints} ({' '.join(exc.message.split())}); to fix: {ETCD_FIX}"
        else:
            line = f"whizorch: etcd at {endpoints}: {detail}"
        click.echo(line, err=True)
        raise SystemExit(2) from None


PIPE_WIDTH = 100_000
"""The width tables are drawn at when stdout is not a terminal: as wide as their
content (rich would squeeze them into 80 columns, cutting words)."""


def console() -> Console:
    """A console for stdout: the terminal's width, or unbounded when piped."""
    out = Console(highlight=False)
    return out if out.is_terminal else Console(highlight=False, width=PIPE_WIDTH)


def _echo(doc: Any, renderable: Callable[[], RenderableType], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        console().print(renderable())


# -- reading -----------------------------------------------------------------------------


async def _records(t: Target, revision: int = 0) -> tuple[list[SagaRecord], int]:
    """Every decodable saga record (at ``revision``; 0: now) and the revision read."""
    res = await t.client.get(t.keys.prefix("saga"), prefix=True, revision=revision)
    out = []
    for kv in res.kvs:
        with contextlib.suppress(DecodeError):  # skipped as SagaClient.list skips it
            out.append(SagaRecord.from_json(kv.value))
    return out, res.header.revision


async def _pending(
    t: Target, revision: int, records: list[SagaRecord], *, saga_id: str | None = None
) -> list[Pending]:
    """Submissions without a record at ``revision`` (only ``saga_id``'s when given)."""
    known = {r.id for r in records}
    if saga_id is None:
        res = await t.client.get(t.keys.prefix("submit"), prefix=True, revision=revision)
    else:
        res = await t.client.get(t.keys.submit(saga_id), revision=revision)
    out = []
    for kv in res.kvs:
        try:
            sid = t.keys.saga_id(kv.key, "submit")
        except DecodeError:
            continue  # quarantined by the leader: listed by status
        if sid not in known:
            out.append(Submitted.from_kv(sid, kv))
    return out


async def _details(t: Target, client: SagaClient, rec: SagaRecord) -> SagaDetails:
    """The saga's input (where the adoption moved it, else still in its submission) and
    its completed steps' outputs."""
    moved, sub = await asyncio.gather(t.client.get(t.keys.input(rec.id)), t.client.get(t.keys.submit(rec.id)))
    has_input, value = False, None
    if moved.kvs:
        with contextlib.suppress(ValueError):  # not JSON: shown as missing
            has_input, value = True, json.loads(moved.kvs[0].value)
    elif sub.kvs:
        has_input, value = True, SubmissionPayload.from_json_lenient(sub.kvs[0].value).input
    result = await client._result(rec)
    return SagaDetails(input=value, has_input=has_input, outputs=result.outputs)


async def _member_status(client: EtcdClient, member: Member) -> Status | str | None:
    if not member.client_urls:
        return None  # added, not started yet
    try:
        return await client.status(parse_endpoints(member.client_urls[0])[0], timeout_s=MEMBER_TIMEOUT_S)
    except WhizorchError as exc:
        return " ".join(str(exc).split())


async def _saga_counts(t: Target, rev: int) -> tuple[list[SagaRecord], int, int | None]:
    """Records to count statuses of, the pending count, and the number of records when
    the records read are only the first ``STATUS_READ`` of them.

    Two count-only reads size the namespace. Up to ``STATUS_READ`` records and
    submissions everything is read (exact counts, as before); beyond, the statuses of
    the first ``STATUS_READ`` records by id are counted and pending is submissions less
    records (exact while every record keeps its submission, as the leader does), so
    ``status`` answers in the same time at 100 or 100,000 sagas.
    """
    c, k = t.client, t.keys
    n_records, n_submits = await asyncio.gather(
        c.get(k.prefix("saga"), prefix=True, revision=rev, count_only=True),
        c.get(k.prefix("submit"), prefix=True, revision=rev, count_only=True),
    )
    if n_records.count <= STATUS_READ and n_submits.count <= STATUS_READ:
        records, _ = await _records(t, rev)
        return records, len(await _pending(t, rev, records)), None
    first = await c.get(k.prefix("saga"), prefix=True, revision=rev, limit=STATUS_READ)
    records = []
    for kv in first.kvs:
        with contextlib.suppress(DecodeError):
            records.append(SagaRecord.from_json(kv.value))
    return records, max(0, n_submits.count - n_records.count), n_records.count


async def _status(t: Target) -> dict[str, Any]:
    c, k = t.client, t.keys
    leaders = await c.get(k.leader + "/", prefix=True)
    rev = leaders.header.revision
    orchestrators, live, meta = await asyncio.gather(
        c.get(k.prefix("orch"), prefix=True, revision=rev),
        c.get(k.prefix("live"), prefix=True, revision=rev),
        c.get(k.meta, revision=rev),
    )
    regions = await c.get(k.prefix("region"), prefix=True, revision=rev)
    tasks = await c.get(k.prefix("task"), prefix=True, revision=rev, keys_only=True)
    records, pending, total_records = await _saga_counts(t, rev)
    members = await c.member_list()
    status = await c.status()
    own = await asyncio.gather(*(_member_status(c, m) for m in members))
    notes = await c.get(k.prefix("quarantine"), prefix=True, revision=rev)
    latency = await c.get(k.latency, revision=rev)
    return summarize_status(
        quarantined=quarantine_notes(notes.kvs),
        latency=latency_doc(latency.kvs[0].value if latency.kvs else None),
        namespace=k.ns, revision=rev, candidates=leaders.kvs, workers=workers_by_region(regions.kvs, k),
        tasks=tasks_by_region(tasks.kvs, k), records=records, pending=pending, total_records=total_records,
        members=orchestrators.kvs, live=live.kvs, shard_count=_shard_count(meta.kvs[0].value if meta.kvs else None), keys=k,
        cluster=summarize_cluster(members, status, {m.id: s for m, s in zip(members, own, strict=True) if s is not None}),
    )  # fmt: skip


def _shard_count(meta: bytes | None) -> int:
    """The namespace's shard count from ``<ns>/meta`` (0: no namespace yet, or unreadable)."""
    try:
        count = json.loads(meta or b"{}").get("shards", 0)
    except (ValueError, AttributeError):
        return 0
    return count if isinstance(count, int) and not isinstance(count, bool) else 0


# -- commands ----------------------------------------------------------------------------


@main.command()
@target_options
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def status(target: WhizorchConfig, as_json: bool) -> None:
    """The orchestrator leader, regions, sagas by status and the etcd cluster.

    \b
    --json prints one document:
    {"namespace": str, "revision": int (etcd revision the snapshot was read at),
     "leader": {"node": str, "term": int, "lease": hex str, "key": str} | null (shard 0's),
     "candidates": int (live orchestrators),
     "shards": [{"shard": int, "node": str | null, "term": int | null, "lease": hex str | null,
                 "candidates": int, "in_flight": int (sagas in flight, from the index)}],
     "orchestrators": [{"node": str, "lease": hex str, "leads": [shard]}],
     "regions": [{"name": str, "healthy": bool, "workers": int, "worker_ids": [str],
                  "capacity": int, "load": float (0..1, capacity-weighted),
                  "compliance": [str] (tags every worker has), "cost": float | null,
                  "tasks": int (steps dispatched to the region)}],
     "sagas": {"pending": int, "in_flight": {"running": int, "compensating": int},
               "final": {"completed": int, "compensated": int, "failed": int}, "total": int,
               "exact": bool, "scanned": int}
              (over 2,000 records, in_flight and final count the first "scanned" records
              by id only, "exact" is false, and pending is submissions less records),
     "definitions": [{"saga": str, "version": str, "in_flight": int, "waiting": int (steps
                      waiting for a worker with this version), "workers": {region: int},
                      "warning": str | null}] (per saga type and version: what is in flight
                     on it and which live workers can run it),
     "quarantined": [{"kind": str, "key": str, "reason": str, "revision": int, "at": float}]
                   (input the leader could not parse and skipped; oldest first),
     "latency": {"from": region | null, "at": float, "measured_ms": {region: ms},
                 "configured_ms": {region: ms | null}} | null (the leader's latency monitor),
     "etcd": {"endpoint": str, "version": str, "warnings": [str] (versions unfit for
              production, e.g. 3.5.0-3.5.2), "leader": member name | null,
              "leader_id": hex str | null, "raft_term": int, "revision": int, "db_size": int,
              "members": [{"id": hex str, "name": str, "client_urls": [str], "is_leader": bool,
                           "is_learner": bool, "reachable": bool | null, "version": str | null,
                           "db_size": int | null, "raft_index": int | null, "error": str | null}]}}
    """
    doc = _run(target, _status)
    _echo(doc, lambda: render_status(doc), as_json)


@main.group()
def sagas() -> None:
    """Sagas: ``list`` them, ``show`` one, ``submit`` one, ``cancel`` one."""


@sagas.command("list")
@target_options
@click.option("--status", "status_", type=click.Choice(STATUSES), default=None, help="only sagas in this status")
@click.option("--type", "saga_type", default=None, help="only sagas of this type")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="at most N rows per page")
@click.option("--after", default=None, metavar="ID", help="start after this saga id (the cursor a page printed)")
@click.option(
    "--scan", type=click.IntRange(min=1), default=LIST_SCAN, show_default=True,
    help="read at most N records per page while filtering",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def list_sagas(
    target: WhizorchConfig, status_: str | None, saga_type: str | None, limit: int, after: str | None, scan: int,
    as_json: bool,
) -> None:
    """One page of sagas in saga-id order; without --status, pending submissions too.

    A page holds at most --limit sagas after --after (default: from the first id) and
    ends with the cursor of the next page. With --status or --type, records are read
    until --limit match, the end, or --scan records were read; the page says how many
    it scanned. Only the records a page needs are read, however many are retained.

    \b
    --json prints {"namespace": str, "revision": int, "matched": int (rows on this page),
    "scanned": int (records and submissions read), "next": str | null (pass as --after;
    null at the end),
    "sagas": [{"id": str, "type": str, "status": str, "txid": int, "step": str | null,
               "regions": [str], "failovers": int, "created": float | null,
               "finished": float | null, "age_s": float | null, "duration_s": float | null,
               "error": str | null}]}
    """
    if after is not None and not SAGA_ID_RE.match(after):
        raise click.BadParameter(f"{after!r} is not a saga id (use the cursor a page printed)", param_hint="--after")

    async def body(t: Target) -> Listing:
        return await scan_sagas(
            t.client, t.keys, limit=limit, after=after, status=status_, saga_type=saga_type, max_scan=scan
        )

    page = _run(target, body)
    records = [e for e in page.entries if isinstance(e, SagaRecord)]
    pending = [e for e in page.entries if not isinstance(e, SagaRecord)]
    rows = list_rows(records, pending, now=time.time(), newest_first=False)
    doc = {
        "namespace": target.namespace, "revision": page.revision, "matched": len(rows), "scanned": page.scanned,
        "next": page.next_after, "sagas": rows,
    }  # fmt: skip
    _echo(doc, lambda: render_list(rows, scanned=page.scanned, next_after=page.next_after), as_json)


@sagas.command("show")
@click.argument("saga_id")
@target_options
@click.option("--json", "as_json", is_flag=True, help="print the record as JSON")
def show(saga_id: str, target: WhizorchConfig, as_json: bool) -> None:
    """One saga: its input, steps (with their outputs, errors and tracebacks),
    compensations, failovers and history.

    A step without a compensation shows "done, not compensated" when the saga
    compensated: nothing was undone.

    \b
    --json prints the saga record (as stored: docs/sagas.md) with, added:
    "input" (the saga's input; null once its submission is gone), "outputs" ({step:
    output} of the completed steps), "duration_s" on the saga and on each step, and on
    each step "compensation": null (none needed) | "none" (the step has none) |
    "compensated" | "compensating" | "gave up". A submission no leader has adopted
    yet prints {"id", "saga", "status": "pending", "txid"}. An unknown id exits with
    status 1.
    """

    async def body(t: Target) -> tuple[SagaRecord, SagaDetails] | Pending | dict[str, Any] | None:
        async with SagaClient(t.client, namespace=t.keys.ns) as client:
            try:
                rec = await client.get(saga_id)
                if rec is not None:
                    return rec, await _details(t, client, rec)
            except DecodeError as exc:  # a record this whizorch cannot read
                notes = await t.client.get(t.keys.prefix("quarantine"), prefix=True)
                key = t.keys.saga(saga_id).decode()
                note = next((n for n in quarantine_notes(notes.kvs) if n["key"] == key), None)
                return {"id": saga_id, "status": "quarantined", "reason": str(exc), "note": note}
        pending = await _pending(t, 0, [], saga_id=saga_id)
        return pending[0] if pending else None

    found = _run(target, body)
    if found is None:
        click.echo(f"whizorch: no saga {saga_id!r} in namespace {target.namespace!r}", err=True)
        raise SystemExit(1)
    if isinstance(found, dict):
        line = f"saga {saga_id} is quarantined: {found['reason']} (the leader skips it; see its logs)"
        _echo(found, lambda: Text(line), as_json)
        return
    if isinstance(found, Pending):
        doc: dict[str, Any] = {"id": found.saga_id, "saga": found.saga, "status": "pending", "txid": found.txid}
        line = f"saga {saga_id} ({found.saga}, txid {found.txid}) is pending: no leader has adopted it yet"
        _echo(doc, lambda: Text(line), as_json)
        return
    record, details = found
    _echo(record_document(record, details), lambda: render_show(record, time.time(), details), as_json)


# -- rich --------------------------------------------------------------------------------



def _t(value: Any, style: str = "") -> Text:
    """A cell: user data is never parsed as rich markup."""
    return Text("-" if value is None or value == "" else str(value), style=style)


def _styled(status: str) -> Text:
    return _t(status, STYLES.get(status.split(" ")[0], ""))


def render_status(doc: dict[str, Any]) -> RenderableType:
    """Human view of a ``summarize_status`` document."""
    leader = doc["leader"]
    head = Text(f"namespace {doc['namespace']} at revision {doc['revision']}\n")
    shards = doc.get("shards") or []
    if len(shards) > 1:
        led = [sh for sh in shards if sh["node"]]
        style = "bold green" if len(led) == len(shards) else "bold red"
        head.append(f"{len(led)} of {len(shards)} shards led", style=style)
        for o in doc.get("orchestrators") or []:
            head.append(f"  {o['node']}: {len(o['leads'])}")
    elif leader is None:
        head.append("no leader", style="bold red")
    else:
        head.append(f"leader {leader['node']}", style="bold green")
        head.append(f"  term {leader['term']}  lease {leader['lease']}")
    head.append(f"  ({doc['candidates']} candidate{'s' if doc['candidates'] != 1 else ''})")

    regions = Table(title="regions", title_justify="left")
    for col in ("region", "health", "workers", "load", "compliance", "cost", "tasks"):
        regions.add_column(col)
    for r in doc["regions"]:
        regions.add_row(
            _t(r["name"]), _t("healthy", "green") if r["healthy"] else _t("down", "bold red"), _t(r["workers"]),
            _t(f"{r['load']:.0%}"), _t(",".join(r["compliance"])), _t(r["cost"]), _t(r["tasks"]),
        )

    s = doc["sagas"]
    sagas = Table(title="sagas", title_justify="left")
    counts = {"pending": s["pending"], **s["in_flight"], **s["final"], "total": s["total"]}
    for name in counts:
        sagas.add_column(name)
    sagas.add_row(*(_t(n, STYLES.get(name, "") if n else "") for name, n in counts.items()))
    if not s.get("exact", True):
        sagas.caption = (
            f"running to failed: the first {s['scanned']:,} records by id only; "
            f"total and pending from counts ({s['total']:,} sagas)"
        )

    e = doc["etcd"]
    etcd = Table(
        title=f"etcd {e['version']}: raft term {e['raft_term']}, revision {e['revision']}, "
        f"db {e['db_size']:,} bytes (from {e['endpoint']})",
        title_justify="left",
    )
    for col in ("member", "id", "client urls", "role", "db size", "raft index"):
        etcd.add_column(col)
    for m in e["members"]:
        role = "leader" if m["is_leader"] else ("learner" if m["is_learner"] else "follower")
        if m["reachable"] is False:
            role += " (unreachable)"
        etcd.add_row(
            _t(m["name"]), _t(m["id"]), _t(", ".join(m["client_urls"])),
            _t(role, "bold" if m["is_leader"] else ("red" if m["reachable"] is False else "")),
            _t(f"{m['db_size']:,}" if m["db_size"] is not None else None), _t(m["raft_index"]),
        )
    if e.get("warnings"):
        etcd.caption = Text("\n".join(f"warning: {w}" for w in e["warnings"]), style="bold red")
    parts: list[RenderableType] = [head, regions, sagas]
    if len(doc.get("shards") or ()) > 1:
        shards = Table(title=f"shards ({len(doc['shards'])})", title_justify="left")
        for col in ("shard", "leader", "term", "in flight"):
            shards.add_column(col)
        for sh in doc["shards"]:
            shards.add_row(
                _t(sh["shard"]), _t(sh["node"] or "none", "" if sh["node"] else "bold red"), _t(sh["term"]),
                _t(sh["in_flight"]),
            )
        parts.append(shards)
    if doc.get("definitions"):
        defs = Table(title="saga definitions", title_justify="left")
        for col in ("saga", "version", "in flight", "waiting", "workers"):
            defs.add_column(col)
        for d in doc["definitions"]:
            workers = ", ".join(f"{region} {n}" for region, n in sorted(d["workers"].items()))
            defs.add_row(
                _t(d["saga"]), _t(d["version"] or "-"), _t(d["in_flight"]), _t(d["waiting"], "yellow" if d["waiting"] else ""),
                _t(workers or "none", "" if workers else "bold red" if d["in_flight"] else "dim"),
            )
        warnings = [d["warning"] for d in doc["definitions"] if d.get("warning")]
        if warnings:
            defs.caption = Text("\n".join(f"warning: {w}" for w in warnings), style="bold red")
        parts.append(defs)
    lat = doc.get("latency")
    if lat and (lat.get("measured_ms") or lat.get("configured_ms")):
        table = Table(title=f"latency from {lat.get('from') or 'the leader'} (ms)", title_justify="left")
        for col in ("region", "measured", "configured"):
            table.add_column(col)
        names = sorted(set(lat.get("measured_ms") or {}) | set(lat.get("configured_ms") or {}))
        for name in names:
            m, c = (lat.get("measured_ms") or {}).get(name), (lat.get("configured_ms") or {}).get(name)
            table.add_row(_t(name), _t(f"{m:.1f}" if isinstance(m, (int, float)) else None), _t(c))
        parts.append(table)
    if doc["quarantined"]:
        q = Table(title=f"quarantined input ({len(doc['quarantined'])}): skipped by the leader", title_justify="left")
        for col in ("kind", "key", "reason"):
            q.add_column(col, overflow="fold")
        for n in doc["quarantined"][-10:]:
            q.add_row(_t(n["kind"]), _t(n["key"]), _t(n["reason"], "red"))
        parts.append(q)
    return Group(*parts, etcd)


def render_list(
    rows: Sequence[dict[str, Any]], *, scanned: int | None = None, next_after: str | None = None
) -> RenderableType:
    """The ``sagas list`` table, and a line with the scan and the next page's cursor."""
    table = Table()
    for col in ("id", "type", "status", "txid", "step", "regions", "failovers", "age", "duration", "error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        error = r["error"] or ""
        table.add_row(
            _t(r["id"]), _t(r["type"]), _styled(r["status"]), _t(r["txid"]), _t(r["step"]),
            _t(" ".join(r["regions"])), _t(r["failovers"]), _t(fmt_duration(r["age_s"])),
            _t(fmt_duration(r["duration_s"])), _t(error[:60] + ("..." if len(error) > 60 else "")),
        )
    if scanned is None:
        return table
    line = Text(f"{len(rows)} shown, {scanned:,} scanned; ")
    if next_after is None:
        line.append("end of the list")
    else:
        line.append(f"next page: --after {next_after}", style="bold")
    return Group(table, line)


SHOWN_JSON = 500
"""Characters of an input or output ``sagas show`` prints (``--json`` prints all)."""


def _json_text(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), default=str)
    if len(text) > SHOWN_JSON:
        return f"{text[:SHOWN_JSON]}... ({len(text):,} characters; --json shows all)"
    return text


def render_show(rec: SagaRecord, now: float, details: SagaDetails | None = None) -> RenderableType:
    """The ``sagas show`` view: summary, input, steps with outputs, tracebacks,
    failovers, history timeline."""
    head = Text()
    head.append(f"saga {rec.id}", style="bold")
    head.append(f"  type {rec.saga}  version {rec.version or '-'}  txid {rec.txid}  leader term {rec.leader_term}\nstatus ")
    head.append(rec.status, style=STYLES.get(rec.status, ""))
    head.append(f"  created {fmt_time(rec.created)}  finished {fmt_time(rec.finished)}  ")
    head.append(f"duration {fmt_duration((rec.finished or now) - rec.created)}")
    if not rec.is_final:
        head.append(" (so far)")
    if rec.cancel_requested:
        head.append("  cancel requested", style="yellow")
    if rec.error:
        head.append(f"\nerror: {rec.error}", style="red")
    if details is not None:
        head.append("\ninput: ")
        head.append(_json_text(details.input) if details.has_input else "- (its submission is gone)")

    steps = Table(title="steps", title_justify="left")
    columns = ("#", "step", "state", "region", "runs", "failures", "duration", "compensation", "output", "error")
    for col in columns:
        steps.add_column(col, overflow="fold")
    rows = step_rows(rec, now)
    for r in rows:
        duration = fmt_duration(r["duration_s"])
        if r["running_s"] is not None:
            duration = f"{fmt_duration(r['running_s'])} so far"
        errors = "; ".join(e for e in (r["error"], r["comp_error"] and f"compensation: {r['comp_error']}") if e)
        output = "-"
        if details is not None and r["name"] in details.outputs:
            output = _json_text(details.outputs[r["name"]])
        steps.add_row(
            _t(r["index"]), _t(r["name"]), _styled(r["state"]), _t(r["route"]), _t(r["runs"]), _t(r["failures"]),
            _t(duration), _t(r["compensation"]), _t(output), _t(errors, "red"),
        )
    parts: list[RenderableType] = [head, steps]
    for r in rows:
        for kind, trace in (("run", r["traceback"]), ("compensation", r["comp_traceback"])):
            if trace:
                parts.append(Text(f"traceback of step {r['name']!r} ({kind}, its last failure):", style="bold"))
                parts.append(Text(trace.rstrip(), style="red"))

    if rec.failovers:
        fo = Table(title="failovers", title_justify="left")
        for col in ("+s", "step", "move", "reason"):
            fo.add_column(col)
        for f in failover_rows(rec):
            fo.add_row(_t(f"{f['t']:.3f}"), _t(f["step"]), _t(f"{f['from']} -> {f['to']}"), _t(f["reason"]))
        parts.append(fo)
    else:
        parts.append(Text("no failovers"))

    timeline = Table(title="history", title_justify="left")
    for col in ("+s", "event", "step"):
        timeline.add_column(col, no_wrap=True)  # names are read whole: only the detail folds
    timeline.add_column("detail", overflow="fold")
    for h in timeline_rows(rec):
        timeline.add_row(_t(f"{h['t']:.3f}"), _t(h["event"]), _t(h["step"]), _t(h["detail"]))
    parts.append(timeline)
    return Group(*parts)
