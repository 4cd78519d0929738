"""The console's pure parts: the saga index, the timeline, the bind and token settings."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("uvicorn", reason="the console extra is not installed (pip install -e '.[console]')")

from whizorch.console import ConsoleSettings, is_loopback, parse_bind
from whizorch.console._detail import RunResult, payload
from whizorch.console._index import Query, SagaIndex
from whizorch.console._timeline import COMPENSATION, build_timeline
from whizorch.errors import ConfigError
from whizorch.etcd import KeyValue
from whizorch.saga._model import SagaRecord, StepState


def _record(sid: str, status: str, txid: int, *, saga: str = "order", regions: tuple[str, ...] = ("eu",),
            created: float = 1000.0, error: str | None = None, **extra: Any) -> bytes:  # fmt: skip
    steps = [{"name": "a", "state": "done", "regions": list(regions)}]
    return json.dumps({"id": sid, "saga": saga, "txid": txid, "status": status, "steps": steps, "created": created,
                       "updated": created, "error": error, "failovers": [], "step": 0, "v": 2, **extra}).encode()  # fmt: skip


def _sub(sid: str, rev: int, saga: str = "order") -> KeyValue:
    return KeyValue(f"ns/submit/{sid}".encode(), json.dumps({"saga": saga, "input": {}, "submitted": 5.0}).encode(),
                    rev, rev, 1, 0)  # fmt: skip


def test_index_pages_newest_first_with_a_cursor_and_counts_every_match() -> None:
    """Pages of the index run newest (highest txid) first; 'before' is the next page's cursor; matched counts them all."""
    index = SagaIndex()
    for i in range(1, 8):
        index.put_record(f"s{i}", _record(f"s{i}", "failed" if i % 3 == 0 else "completed", txid=i * 10))
    first = index.page(Query(limit=3))
    assert [e.id for e in first.entries] == ["s7", "s6", "s5"] and first.matched == 7 and first.next_before == 50
    second = index.page(Query(limit=3, before=first.next_before))
    assert [e.id for e in second.entries] == ["s4", "s3", "s2"] and second.next_before == 20
    last = index.page(Query(limit=3, before=second.next_before))
    assert [e.id for e in last.entries] == ["s1"] and last.next_before is None
    failed = index.page(Query(status="failed", limit=10))
    assert [e.id for e in failed.entries] == ["s6", "s3"] and failed.matched == 2 and failed.next_before is None
    assert index.status_counts()["failed"] == 2 and index.status_counts()["total"] == 7


def test_index_filters_by_type_region_prefix_and_time() -> None:
    """Type, region, id prefix and a creation window each narrow the list."""
    index = SagaIndex()
    index.put_record("eu-1", _record("eu-1", "completed", 1, regions=("eu", "us"), created=100.0))
    index.put_record("ap-1", _record("ap-1", "completed", 2, saga="transfer", regions=("ap",), created=200.0))
    index.put_record("eu-2", _record("eu-2", "running", 3, regions=("eu",), created=300.0))
    assert [e.id for e in index.page(Query(region="us")).entries] == ["eu-1"]
    assert [e.id for e in index.page(Query(saga_type="transfer")).entries] == ["ap-1"]
    assert [e.id for e in index.page(Query(id_prefix="eu-")).entries] == ["eu-2", "eu-1"]
    assert [e.id for e in index.page(Query(since=150.0, until=250.0)).entries] == ["ap-1"]


def test_index_follows_a_saga_from_submission_to_purge() -> None:
    """A submission lists as pending, its record replaces it, a status change moves the counts, retention removes it."""
    index = SagaIndex()
    index.put_submission("s1", _sub("s1", 7))
    assert index.get("s1").status == "pending" and index.status_counts()["pending"] == 1  # type: ignore[union-attr]
    index.put_record("s1", _record("s1", "running", 7, version="v3"))
    entry = index.get("s1")
    assert entry is not None and entry.status == "running" and entry.version == "v3" and entry.has_submission
    index.put_record("s1", _record("s1", "failed", 7, error="boom " * 200))
    counts = index.status_counts()
    assert (counts["running"], counts["failed"], counts["pending"]) == (0, 1, 0)
    assert len(index.get("s1").error or "") == 300  # type: ignore[union-attr]
    index.delete_submission("s1")
    index.delete_record("s1")
    assert index.get("s1") is None and index.status_counts()["total"] == 0
    assert index.put_record("bad", b"not json") is False and index.get("bad") is None


def _tl_record() -> SagaRecord:
    """visit_us lost in us (region down), failed over to eu; a leader change between two versions."""
    history = [
        {"at": 10.0, "event": "adopted", "txid": 5},
        {"at": 10.0, "event": "dispatched", "step": 0, "region": "us", "attempt": 1},
        {"at": 12.0, "event": "failover", "step": 0, "from": "us", "to": "eu", "reason": "region down"},
        {"at": 12.0, "event": "dispatched", "step": 0, "region": "eu", "attempt": 2},
        {"at": 12.5, "event": "step_done", "step": 0, "region": "eu", "attempt": 2},
        {"at": 12.5, "event": "completed"},
    ]
    return SagaRecord(
        id="t", saga="tour", txid=5, status="completed", created=10.0, updated=12.5, finished=12.5,
        steps=[StepState(name="visit_us", state="done", region="eu", run=2, regions=["us", "eu"])],
        failovers=[{"step": 0, "from": "us", "to": "eu", "reason": "region down", "at": 12.0}], history=history,
        leader_term=9,
    )  # fmt: skip


def _versions(rec: SagaRecord) -> list[tuple[int, dict[str, Any]]]:
    full = rec.to_dict()
    out = []
    for rev, n, term, worker, updated in ((20, 2, 3, "aa", 10.0), (30, 4, 9, "bb", 12.0), (40, 6, 9, None, 12.5)):
        doc = json.loads(json.dumps(full))
        doc["history"], doc["leader_term"], doc["updated"] = full["history"][:n], term, updated
        doc["steps"][0]["worker"] = worker
        out.append((rev, doc))
    return out


def test_timeline_lanes_runs_fences_and_markers() -> None:
    """Lanes per region plus compensation; the lost us run ends at the eu dispatch; fences are dispatch revisions
    (the result's where there is one); a failover and a leader change are marked with what they cost."""
    rec = _tl_record()
    result = RunResult(key="ns/run/eu/t/0/run-2", region="eu", step=0, kind="run", attempt=2, ok=True, worker="w-eu",
                       started=12.1, ended=12.4, fence=30, error=None, error_type=None, traceback=None,
                       output=payload({"ok": 1}), revision=40)  # fmt: skip
    tl = build_timeline(rec, _versions(rec), [result], ["eu", "us", "ap"], now=99.0)
    assert tl.lanes == ["eu", "us", "ap", COMPENSATION]
    lost, ok = tl.bars
    assert (lost.lane, lost.outcome, lost.start, lost.end, lost.fence, lost.worker) == ("us", "lost", 10.0, 12.0, 20, "aa")
    assert (ok.lane, ok.outcome, ok.end, ok.fence, ok.worker, ok.revision) == ("eu", "ok", 12.4, 30, "w-eu", 30)
    kinds = {m.kind: m for m in tl.markers}
    assert kinds["failover"].cost_s == 2.0 and "us -> eu" in kinds["failover"].label
    assert kinds["leader"].label == "leader term 3 -> 9" and kinds["leader"].cost_s == 2.0
    assert [h.revision for h in tl.history] == [20, 20, 30, 30, 40, 40]
    assert tl.leader_terms == [3, 9]


def test_timeline_without_versions_still_draws_runs_from_the_history() -> None:
    """Compacted versions: runs and failovers from the record alone, no revisions or leader changes."""
    tl = build_timeline(_tl_record(), None, [], ["eu", "us"], now=99.0)
    assert [(b.lane, b.outcome, b.fence) for b in tl.bars] == [("us", "lost", None), ("eu", "ok", None)]
    assert [m.kind for m in tl.markers] == ["failover"] and all(h.revision is None for h in tl.history)


def test_payloads_are_cut_at_64_kib_and_say_their_size() -> None:
    """A large output is shown up to 64 KiB, with its full size."""
    big = payload({"blob": "x" * 100_000})
    assert big.cut and big.size > 100_000 and len(big.text.encode()) <= 64 * 1024
    small = payload({"a": "<b>"})
    assert not small.cut and small.text == '{\n  "a": "<b>"\n}'


@pytest.mark.parametrize(
    ("text", "expected"),
    [("127.0.0.1:8470", ("127.0.0.1", 8470)), (":0", ("127.0.0.1", 0)), ("localhost", ("localhost", 8470)),
     ("[::1]:9000", ("::1", 9000)), ("0.0.0.0:80", ("0.0.0.0", 80))],
)  # fmt: skip
def test_parse_bind(text: str, expected: tuple[str, int]) -> None:
    """--bind takes host:port, [v6]:port, a host alone or :port."""
    assert parse_bind(text) == expected


def test_bad_binds_and_tokens_are_refused_with_the_fix() -> None:
    """A bad port, a non-loopback bind without a token and a short token are ConfigErrors that say what to do."""
    with pytest.raises(ConfigError, match="port must be a number"):
        parse_bind("127.0.0.1:http")
    with pytest.raises(ConfigError, match="pass --token or set WHIZORCH_CONSOLE_TOKEN"):
        ConsoleSettings(host="10.0.0.5")
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")


_STATUSES = ("running", "completed", "failed", "compensated")


@settings(max_examples=200, deadline=None)
@given(
    sagas=st.lists(st.tuples(st.sampled_from(_STATUSES), st.sampled_from(("order", "transfer"))), max_size=40),
    pending=st.lists(st.integers(0, 60), max_size=5),
    status=st.none() | st.sampled_from((*_STATUSES, "pending")),
    saga_type=st.none() | st.sampled_from(("order", "transfer", "nothing")),
    region=st.none() | st.just("eu"),
    limit=st.integers(1, 7),
    before=st.none() | st.integers(0, 420),
)
def test_a_page_is_the_naive_walks_page(
    sagas: list[tuple[str, str]], pending: list[int], status: str | None, saga_type: str | None,
    region: str | None, limit: int, before: int | None,
) -> None:
    """Where the counters know the matches the walk stops at the page's end: the page,
    its count and its cursor are still what walking every saga gives."""
    index = SagaIndex()
    for i, (st_, saga) in enumerate(sagas):
        index.put_record(f"s{i}", _record(f"s{i}", st_, txid=i * 10, saga=saga, regions=("eu",) if i % 2 else ("us",)))
    for rev in pending:
        index.put_submission(f"p{rev}", _sub(f"p{rev}", rev * 7 + 1))
    q = Query(status=status, saga_type=saga_type, region=region, limit=limit, before=before)
    every = sorted(index, key=lambda e: (e.txid, e.id), reverse=True)
    matching = [e for e in every if q.matches(e)]
    eligible = [e for e in matching if before is None or e.txid < before]
    page = index.page(q)
    assert [e.id for e in page.entries] == [e.id for e in eligible[:limit]]
    assert page.matched == len(matching)
    assert page.next_before == (eligible[limit - 1].txid if len(eligible) > limit else None)


async def test_the_consoles_connections_send_without_nagles_delay() -> None:
    """Every connection the console accepts has TCP_NODELAY, as asyncio gives a socket
    that names IPPROTO_TCP: without it each response waited out Nagle and the client's
    delayed ACK (about 40 ms a page, measured by bench_console.py)."""
    import asyncio
    import socket

    from whizorch import EtcdClient
    from whizorch.console import ConsoleServer

    async with EtcdClient(["127.0.0.1:1"], timeout_s=1.0) as client:  # never asked: nothing is served from etcd here
        sock = ConsoleServer(client, ConsoleSettings(port=0))._bind()
    options: list[int] = []
    served = asyncio.Event()

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        options.append(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        served.set()
        writer.close()

    server = await asyncio.start_server(accepted, sock=sock)
    async with server:
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        async with asyncio.timeout(30):
            await served.wait()
        writer.close()
    assert options == [1]
