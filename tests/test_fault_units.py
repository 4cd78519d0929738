"""Unit tests (no etcd) for what keeps roles alive under faults: the error seam for
broken gRPC calls, transient vs fatal errors, backoff, the guard that never resumes a
stale run, and the checks that turn poison input into DecodeErrors."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc.aio
import pytest

from whizorch.errors import (
    AuthError,
    ClosedError,
    ConfigError,
    DecodeError,
    EtcdUnavailableError,
    FencedError,
    OutcomeUnknownError,
    RequestTooLargeError,
    SessionLostError,
)
from whizorch.etcd import _errors
from whizorch.saga._fencing import run_fenced
from whizorch.saga._keys import Keys
from whizorch.saga._model import NewerRecordError, ResultPayload, SagaRecord, TaskPayload
from whizorch.saga._supervise import BackgroundTasks, Backoff, is_transient
from whizorch.saga._view import capabilities

# -- the seam ------------------------------------------------------------------------------


@pytest.mark.parametrize("exc", [asyncio.InvalidStateError("RPC already finished."), grpc.aio.UsageError("closed")])
async def test_broken_call_becomes_unavailable_for_reads_and_unknown_for_writes(exc: BaseException) -> None:
    """What grpc.aio raises from a call whose stream died is translated, never leaked:
    a read may be resent, a write's outcome is unknown."""
    read = _errors.broken_call(exc, endpoint="e:1", write=False, method="/m")
    write = _errors.broken_call(exc, endpoint="e:1", write=True, method="/m")
    assert isinstance(read, EtcdUnavailableError) and _errors.is_safe_to_retry(read) and _errors.endpoint_failed(read)
    assert isinstance(write, OutcomeUnknownError) and not _errors.is_safe_to_retry(write)
    assert "RPC already finished" in str(read) or "closed" in str(read)


async def test_transport_cancellation_is_translated_but_a_real_cancel_is_not() -> None:
    """A CancelledError raised while the task is not being cancelled came from a torn-down
    call (translated); inside a task being cancelled it is the caller's (passed on)."""
    err = _errors.broken_call(asyncio.CancelledError(), endpoint=None, write=False, method="/m")
    assert isinstance(err, EtcdUnavailableError)
    seen: list[Any] = []

    async def victim() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError as exc:
            seen.append(_errors.broken_call(exc, endpoint=None, write=False, method="/m"))
            raise

    task = asyncio.ensure_future(victim())
    await asyncio.sleep(0)  # ok: let the task start waiting
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == [None]


def test_other_exceptions_are_not_the_seams_business() -> None:
    """A bug (any other exception) is not dressed up as an etcd error."""
    assert _errors.broken_call(ValueError("bug"), endpoint=None, write=False, method="/m") is None


# -- transient or fatal ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (EtcdUnavailableError("no leader"), True),
        (OutcomeUnknownError("lost answer"), True),
        (SessionLostError("lease gone"), True),
        (TimeoutError(), True),
        (ConfigError("bad"), False),
        (RequestTooLargeError("big"), False),
        (DecodeError("not JSON"), False),
        (AuthError("denied"), False),
        (ClosedError("closed"), False),
        (KeyError("bug"), False),
        (asyncio.InvalidStateError("leaked"), False),
    ],
)
def test_what_a_role_waits_out_and_what_ends_it(exc: BaseException, transient: bool) -> None:
    """etcd and network trouble are waited out; configuration, credentials, a closed
    client and bugs end the role."""
    assert is_transient(exc) is transient


def test_backoff_doubles_with_jitter_up_to_its_cap_and_resets() -> None:
    """Delays stay within [d/2, d] for d = 50 ms, 100 ms, ... capped at max_s; reset
    starts over."""
    b = Backoff(first_s=0.05, max_s=0.4)
    bounds = [0.05, 0.1, 0.2, 0.4, 0.4]
    for d in bounds:
        assert d / 2 <= b.next_s() <= d
    b.reset()
    assert 0.025 <= b.next_s() <= 0.05


async def test_background_tasks_log_failures_and_are_cancelled_on_close() -> None:
    """A failing background job does not raise; close cancels what still runs."""
    bg = BackgroundTasks("t")
    started = asyncio.Event()

    async def fails() -> None:
        raise RuntimeError("boom")

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    bg.start(fails, "fails")
    bg.start(forever, "forever")
    await started.wait()
    await bg.aclose()
    assert not bg._tasks


# -- the guard ----------------------------------------------------------------------------


async def test_a_handler_is_never_resumed_once_its_claim_may_be_gone() -> None:
    """After ``alive()`` turns False, the handler's next line never runs; its finally
    does; the run ends with FencedError."""
    lines: list[str] = []
    state = {"alive": True}

    async def handler() -> str:
        lines.append("before")
        try:
            await asyncio.sleep(0.01)  # ok: the point where the process "pauses"
            state["alive"] = False
            await asyncio.sleep(0.01)  # ok: resumption after the claim is gone
            lines.append("after")
            return "done"
        finally:
            lines.append("finally")

    with pytest.raises(FencedError):
        await run_fenced(handler(), lambda: state["alive"])
    assert lines == ["before", "finally"]


async def test_a_live_handler_runs_to_its_result_and_sees_sends_and_throws() -> None:
    """The guard is transparent while alive: results, exceptions and cancellation pass."""

    async def ok() -> int:
        await asyncio.sleep(0)  # ok: one resumption
        return 7

    async def bad() -> None:
        await asyncio.sleep(0)  # ok: one resumption
        raise ValueError("handler error")

    assert await run_fenced(ok(), lambda: True) == 7
    with pytest.raises(ValueError, match="handler error"):
        await run_fenced(bad(), lambda: True)
    task = asyncio.ensure_future(run_fenced(asyncio.Event().wait(), lambda: True))
    await asyncio.sleep(0)  # ok: let it start
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# -- poison: each kind becomes a DecodeError ------------------------------------------------

K = Keys("ns")


@pytest.mark.parametrize(
    "key",
    [b"ns/submit/\xff", b"ns/submit/a/b", b"ns/submit/" + b"x" * 201, b"ns/submit/bad id", b"ns/saga/"],
)
def test_bad_saga_id_keys_are_decode_errors(key: bytes) -> None:
    """Keys that are not UTF-8 or do not name a valid saga id raise DecodeError."""
    kind = key.split(b"/")[1].decode()
    with pytest.raises(DecodeError):
        K.saga_id(key, kind)


@pytest.mark.parametrize(
    "key",
    [
        b"ns/run/eu/s/\xfe/run-1", b"ns/run/eu/s/x/run-1", b"ns/run/eu/s/1", b"ns/run/eu/s/\xc2\xb2/run-1",
        b"ns/run/eu/s/1/a/b", b"ns/run/s/1/run-1", b"ns/run//s/1/run-1", b"ns/run/eu/s/1/claim",
        b"ns/run/eu/s/1/run-x", b"ns/run/eu/s/1/undo-1", b"ns/run/eu/s s/1/run-1",
    ],
)
def test_bad_run_keys_are_decode_errors(key: bytes) -> None:
    """run/<region>/<saga>/<step>/<kind>-<attempt> with a non-numeric step or attempt,
    an unknown kind, a missing part or bad bytes."""
    with pytest.raises(DecodeError):
        K.run_key(key)


@pytest.mark.parametrize(
    "key",
    [
        b"ns/task/eu/xyz/s/1/run-1", b"ns/task/eu/ABC/s/1/run-1", b"ns/task/eu/abc/s/1", b"ns/task/eu/s/1/run-1",
        b"ns/task/eu/abc/s/-1/run-1", b"ns/task//abc/s/1/run-1", b"ns/task/eu/abc/s/1/run-1/x",
    ],
)
def test_bad_task_keys_are_decode_errors(key: bytes) -> None:
    """task/<region>/<lease hex>/<saga>/<step>/<kind>-<attempt>, checked part by part."""
    with pytest.raises(DecodeError):
        K.task_key(key)


def test_good_keys_parse() -> None:
    """The layout's own keys parse back to their parts."""
    assert K.saga_id(K.submit("order-42"), "submit") == "order-42"
    assert K.run_key(K.result("eu", "s", 3, "run", 2)) == ("eu", "s", 3, "run", 2)
    assert K.task_key(K.task("us", "1a2b", "s", 0, "compensate", 4)) == ("us", "1a2b", "s", 0, "compensate", 4)
    assert K.worker_tasks("us", 0x1A2B) == b"ns/task/us/1a2b/" and K.task("us", "1a2b", "s", 0, "run", 1).startswith(
        K.worker_tasks("us", 0x1A2B)
    )
    assert K.region_of(K.region("eu", 0xABC)) == "eu"


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (b"[1]", "not a JSON object"),
        (b'{"ok": "yes"}', "result.ok must be bool"),
        (b'{"ok": true, "fence": true}', "result.fence must be int"),
        (b'{"ok": true, "surprise": 1}', "unknown field"),
        (b'{"error": "x"}', "lacks ok"),
        (b"\xff", "not valid JSON"),
    ],
)
def test_bad_results_are_decode_errors(value: bytes, match: str) -> None:
    """A result payload of the wrong shape or types names what is wrong."""
    with pytest.raises(DecodeError, match=match):
        ResultPayload.from_json(value)


def test_bad_tasks_are_decode_errors() -> None:
    """A task with a wrong type, a missing field or a kind that is no StepKind names it."""
    good = TaskPayload(
        saga_id="s", saga="t", txid=1, step=0, step_name="a", kind="run", attempt=1, region="eu", input=None,
        outputs={}, timeout_s=None,
    )
    assert TaskPayload.from_json(good.to_json()) == good
    raw = json.loads(good.to_json())
    with pytest.raises(DecodeError, match="task.step must be int"):
        TaskPayload.from_json(json.dumps({**raw, "step": "0"}).encode())
    with pytest.raises(DecodeError, match="lacks attempt"):
        TaskPayload.from_json(json.dumps({k: v for k, v in raw.items() if k != "attempt"}).encode())
    with pytest.raises(DecodeError, match="task.kind must be one of run, compensate"):
        TaskPayload.from_json(json.dumps({**raw, "kind": "undo"}).encode())


def test_newer_records_are_told_apart_from_broken_ones() -> None:
    """A higher schema version is NewerRecordError (left untouched by the leader)."""
    with pytest.raises(NewerRecordError):
        SagaRecord.from_json(b'{"v": 4, "id": "x"}')
    with pytest.raises(DecodeError) as info:
        SagaRecord.from_json(b'{"v": 2, "id": "x"}')
    assert not isinstance(info.value, NewerRecordError)


@pytest.mark.parametrize(
    "value",
    [b"nope", b"[]", b'{"compliance": "pci"}', b'{"compliance": [1]}', b'{"concurrency": "lots"}',
     b'{"cost": -1}', b'{"load": NaN}', b'{"concurrency": true}'],
)
def test_bad_worker_registrations_are_decode_errors(value: bytes) -> None:
    """Capabilities the router could not use raise DecodeError (quarantined, not fatal)."""
    with pytest.raises(DecodeError):
        capabilities(value)


# -- split-brain detection -------------------------------------------------------------------


async def test_contact_monitor_enters_safe_mode_within_its_deadline_and_leaves_it() -> None:
    """Probes that stop answering put the monitor in safe mode within deadline +
    one probe period; answers again end it; each change is reported once."""
    from whizorch.saga._contact import ContactMonitor

    answering = asyncio.Event()
    answering.set()
    changes: list[tuple[bool, float]] = []

    async def probe(timeout_s: float) -> None:
        await answering.wait()

    mon = ContactMonitor(probe, deadline_s=0.2, on_change=lambda ok, s: changes.append((ok, s)))
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(mon.run())
    try:
        await asyncio.sleep(0.3)  # ok: contact holds for a while
        assert mon.ok.is_set() and changes == []
        answering.clear()
        cut = loop.time()
        async with asyncio.timeout(2):
            while mon.ok.is_set():
                await asyncio.sleep(0.005)  # ok: polling the monitor
        detected = loop.time() - cut
        assert 0.15 <= detected <= 1.0, detected  # deadline 0.2 + a probe period; loose: a shared machine
        answering.set()
        async with asyncio.timeout(2):
            await mon.ok.wait()
        assert [ok for ok, _ in changes] == [False, True]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_contact_monitor_gives_the_first_answer_twice_the_deadline() -> None:
    """The first probe answer of a term may wait two of etcd's read-index rounds: a
    first answer after 1.5 x the deadline is no safe mode; after that, the deadline
    holds again; a monitor that never hears an answer enters safe mode."""
    from whizorch.saga._contact import ContactMonitor

    loop = asyncio.get_running_loop()
    opens_at = loop.time() + 0.3  # deadline 0.2: the first answer comes at 1.5 x
    answering = asyncio.Event()

    async def probe(timeout_s: float) -> None:
        await asyncio.sleep(max(0.0, opens_at - loop.time()))  # ok: etcd's slow first round
        await answering.wait()

    answering.set()
    changes: list[bool] = []
    mon = ContactMonitor(probe, deadline_s=0.2, on_change=lambda ok, s: changes.append(ok))
    task = asyncio.ensure_future(mon.run())
    try:
        async with asyncio.timeout(10):
            while not mon._answered:
                await asyncio.sleep(0.005)  # ok: polling the monitor
        assert changes == [], changes
        answering.clear()  # from now on the plain deadline applies
        async with asyncio.timeout(10):
            while mon.ok.is_set():
                await asyncio.sleep(0.005)  # ok: polling the monitor
        assert changes == [False]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    async def silent(timeout_s: float) -> None:
        await asyncio.Event().wait()

    changes.clear()
    mon = ContactMonitor(silent, deadline_s=0.2, on_change=lambda ok, s: changes.append(ok))
    started = loop.time()
    task = asyncio.ensure_future(mon.run())
    try:
        async with asyncio.timeout(10):
            while mon.ok.is_set():
                await asyncio.sleep(0.005)  # ok: polling the monitor
        assert loop.time() - started >= 0.4  # twice the deadline before the first answer
        assert changes == [False]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
