"""Saga definitions (steps, compensations, retry policies, App) and the record model/codec."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from whizorch import ConfigError, DecodeError, RequestTooLargeError
from whizorch.saga._definition import App, Retry, Saga, Step, StepContext, call_handler
from whizorch.saga._keys import Keys
from whizorch.saga._model import (
    MAX_HISTORY,
    NewerRecordError,
    ResultPayload,
    SagaRecord,
    StepState,
    SubmissionPayload,
    TaskPayload,
    encode_json,
)


async def noop(ctx: Any, value: Any) -> None:
    return None


def ctx(**kw: Any) -> StepContext:
    base: dict[str, Any] = dict(
        saga_id="t-1", transaction_id=7, saga="s", step="a", step_index=0, attempt=1, region="eu",
        compensating=False, idempotency_key="t-1:a", outputs={},
    )
    return StepContext(**(base | kw))


# -- steps and compensations -------------------------------------------------------------


def test_bare_step_decorator() -> None:
    """@saga.step registers the function under its own name with the defaults."""
    saga = Saga("transfer")

    @saga.step
    async def debit(ctx: Any, cmd: Any) -> str:
        """Take the money."""
        return "ok"

    assert isinstance(debit, Step)
    assert (debit.name, debit.index, debit.timeout_s, debit.region) == ("debit", 0, 30.0, None)
    assert debit.retry == Retry()
    assert debit.compliance == frozenset() and debit.size_bytes == 0
    assert debit.__name__ == "debit" and debit.__doc__ == "Take the money."
    assert saga.steps == [debit]


def test_step_decorator_with_arguments() -> None:
    """@saga.step(...) keeps retry, timeout, region, compliance, size and an explicit name."""
    saga = Saga("transfer")
    policy = Retry(attempts=5)

    @saga.step(retry=policy, timeout_s=2.5, region="eu", compliance=["gdpr", "pci"], size_bytes=10, name="take")
    async def debit(ctx: Any, cmd: Any) -> None:
        return None

    assert (debit.name, debit.retry, debit.timeout_s, debit.region) == ("take", policy, 2.5, "eu")
    assert debit.compliance == frozenset({"gdpr", "pci"}) and debit.size_bytes == 10


def test_timeout_none_means_no_deadline() -> None:
    """timeout_s=None is accepted (no deadline)."""
    assert Saga("s").step(noop, timeout_s=None).timeout_s is None


def test_steps_keep_declaration_order() -> None:
    """Steps get consecutive indexes in declaration order."""
    saga = Saga("s")
    steps = [saga.step(noop, name=n) for n in ("a", "b", "c")]
    assert [(s.name, s.index) for s in saga.steps] == [("a", 0), ("b", 1), ("c", 2)]
    assert saga.steps == steps
    assert repr(steps[1]) == "<Step s.b #1>"


def test_duplicate_step_name_rejected() -> None:
    """Two steps of one saga cannot share a name."""
    saga = Saga("s")
    saga.step(noop, name="a")
    with pytest.raises(ConfigError) as info:
        saga.step(noop, name="a")
    assert info.value.field == "step name"
    assert len(saga.steps) == 1


def test_bare_compensate_decorator() -> None:
    """@step.compensate registers the function, returns it, and keeps the default policy and the step's timeout."""
    saga = Saga("s")
    debit = saga.step(noop, timeout_s=4)

    @debit.compensate
    async def refund(ctx: Any, cmd: Any) -> None:
        return None

    assert debit.compensation is refund
    assert debit.compensation_retry == Retry(attempts=5)
    assert debit.compensation_timeout_s == 4


def test_compensate_decorator_with_arguments() -> None:
    """@step.compensate(retry=..., timeout_s=...) sets the compensation's own policy and timeout."""
    debit = Saga("s").step(noop)
    policy = Retry(attempts=9)

    @debit.compensate(retry=policy, timeout_s=60)
    def refund(ctx: Any, cmd: Any) -> None:
        return None

    assert debit.compensation is refund
    assert (debit.compensation_retry, debit.compensation_timeout_s) == (policy, 60)


def test_second_compensation_rejected() -> None:
    """A step has at most one compensation."""
    debit = Saga("s").step(noop)
    debit.compensate(noop)
    with pytest.raises(ConfigError) as info:
        debit.compensate(noop)
    assert info.value.field == "compensate"


def test_decorated_function_attributes_do_not_clobber_the_step() -> None:
    """Attributes on the handler (tenacity sets fn.retry) do not overwrite the step's own fields."""

    async def work(ctx: Any, value: Any) -> None:
        return None

    work.retry = "tenacity's object"  # type: ignore[attr-defined]
    work.index = 42  # type: ignore[attr-defined]
    step = Saga("s").step(work, retry=Retry(attempts=2))
    assert step.retry == Retry(attempts=2) and step.index == 0
    assert step.__wrapped__ is work


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "a b", "x/y", "é", "a" * 101, 3, None])
def test_bad_saga_name(name: Any) -> None:
    """Saga names are 1-100 of [A-Za-z0-9_.-]; anything else is a ConfigError on 'saga name'."""
    with pytest.raises(ConfigError) as info:
        Saga(name)
    assert info.value.field == "saga name"


def test_bad_step_name() -> None:
    """A step name that is not key-safe (a lambda's '<lambda>', a '/') is a ConfigError on 'step name'."""
    saga = Saga("s")
    for bad in [dict(), dict(name="a/b")]:
        with pytest.raises(ConfigError) as info:
            saga.step(lambda c, v: None, **bad)
        assert info.value.field == "step name"


@pytest.mark.parametrize("bad", [0, -1, True, "10", float("nan"), float("inf")])
def test_bad_step_timeout(bad: Any) -> None:
    """timeout_s must be a positive finite number (or None): ConfigError on 'timeout_s'."""
    with pytest.raises(ConfigError) as info:
        Saga("s").step(timeout_s=bad)
    assert info.value.field == "timeout_s"


@pytest.mark.parametrize("bad", [0, -5, "1", float("nan")])
def test_bad_compensation_timeout(bad: Any) -> None:
    """A compensation's timeout is validated like a step's: ConfigError on 'compensate.timeout_s'."""
    step = Saga("s").step(noop)
    with pytest.raises(ConfigError) as info:
        step.compensate(timeout_s=bad)
    assert info.value.field == "compensate.timeout_s"
    assert step.compensation is None


def test_bad_retry_object() -> None:
    """retry= must be a whizorch Retry, for a step and for a compensation."""
    with pytest.raises(ConfigError) as info:
        Saga("s").step(retry=3)
    assert info.value.field == "retry"
    with pytest.raises(ConfigError) as info:
        Saga("s").step(noop).compensate(retry={"attempts": 3})
    assert info.value.field == "compensate.retry"


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(region="eu/west"), "region"),
        (dict(region=""), "region"),
        (dict(compliance="gdpr"), "compliance"),
        (dict(compliance=[1]), "compliance"),
        (dict(compliance=5), "compliance"),
        (dict(size_bytes=-1), "size_bytes"),
        (dict(size_bytes=1.5), "size_bytes"),
    ],
)
def test_bad_step_routing_fields(kw: dict[str, Any], field: str) -> None:
    """region must be key-safe, compliance a collection of tags (not a bare str), size_bytes an int >= 0."""
    with pytest.raises(ConfigError) as info:
        Saga("s").step(noop, **kw)
    assert info.value.field == field


@pytest.mark.parametrize("bad", [-1, True, 1.5, "3"])
def test_bad_max_failovers(bad: Any) -> None:
    """max_failovers is an int >= 0."""
    with pytest.raises(ConfigError) as info:
        Saga("s", max_failovers=bad)
    assert info.value.field == "max_failovers"


@pytest.mark.parametrize(
    "kw,field",
    [
        (dict(attempts=0), "retry.attempts"),
        (dict(attempts=True), "retry.attempts"),
        (dict(attempts=2.0), "retry.attempts"),
        (dict(backoff_s=-0.1), "retry.backoff_s"),
        (dict(backoff_s=float("nan")), "retry.backoff_s"),
        (dict(max_delay_s="1"), "retry.max_delay_s"),
        (dict(max_delay_s=float("inf")), "retry.max_delay_s"),
        (dict(multiplier=0.5), "retry.multiplier"),
        (dict(multiplier=True), "retry.multiplier"),
        (dict(multiplier=float("nan")), "retry.multiplier"),
        (dict(retry_on="ValueError"), "retry.retry_on"),
        (dict(retry_on=(ValueError, 3)), "retry.retry_on"),
        (dict(give_up_on=[int]), "retry.give_up_on"),
    ],
)
def test_bad_retry_fields(kw: dict[str, Any], field: str) -> None:
    """Each bad Retry field is a ConfigError naming it."""
    with pytest.raises(ConfigError) as info:
        Retry(**kw)
    assert info.value.field == field


# -- App -----------------------------------------------------------------------------------


def test_app_registration() -> None:
    """App registers sagas by unique name; the same object twice is fine; get() finds them."""
    a, b = Saga("a"), Saga("b")
    a.step(noop)
    b.step(noop)
    app = App([a])
    assert app.add(b) is b
    assert app.add(b) is b
    assert app.get("a") is a and app.get("b") is b and app.get("c") is None
    assert list(app.sagas) == ["a", "b"]


def test_app_rejects_duplicates_empty_and_non_sagas() -> None:
    """Another saga with a taken name, a saga with no steps, or a non-Saga is a ConfigError on 'saga'."""
    first, other, empty = Saga("a"), Saga("a"), Saga("e")
    first.step(noop)
    other.step(noop)
    app = App([first])
    for bad in (other, empty, "a"):
        with pytest.raises(ConfigError) as info:
            app.add(bad)  # type: ignore[arg-type]
        assert info.value.field == "saga"
    assert app.get("a") is first and app.get("e") is None


# -- handlers ------------------------------------------------------------------------------


async def test_sync_handler_runs_in_a_thread() -> None:
    """A sync handler runs off the loop: it can block on an Event that a coroutine sets meanwhile."""
    gate = threading.Event()
    loop_thread = threading.get_ident()

    def blocking(ctx: Any, value: Any) -> tuple[int, Any]:
        assert gate.wait(10), "the loop was blocked: the coroutine never ran"
        return threading.get_ident(), value

    step = Saga("s").step(blocking)

    async def opener() -> None:
        await asyncio.sleep(0)  # ok: one loop turn, not a wait for consistency
        gate.set()

    (thread, value), _ = await asyncio.gather(step(ctx(), "in"), opener())
    assert value == "in" and thread != loop_thread


async def test_async_handler_runs_on_the_loop() -> None:
    """An async handler is awaited on the loop's thread and gets (ctx, input)."""

    async def work(c: StepContext, value: Any) -> tuple[int, str, Any]:
        return threading.get_ident(), c.step, value

    assert await Saga("s").step(work)(ctx(), 5) == (threading.get_ident(), "a", 5)


async def test_sync_handler_returning_awaitable_is_awaited() -> None:
    """A sync callable returning an awaitable (e.g. a partial of an async def) has it awaited."""

    async def inner() -> str:
        return "done"

    assert await call_handler(lambda c, v: inner(), ctx(), None) == "done"


# -- Retry ---------------------------------------------------------------------------------


def test_delay_grows_and_is_capped() -> None:
    """delay_s(n) = backoff * multiplier**(n-1), capped at max_delay_s (no jitter)."""
    r = Retry(backoff_s=0.5, multiplier=3.0, max_delay_s=10.0, jitter=False)
    assert [r.delay_s(n) for n in (1, 2, 3, 4, 5)] == [0.5, 1.5, 4.5, 10.0, 10.0]
    assert r.delay_s(0) == 0.5


def test_delay_jitter_bounds() -> None:
    """With jitter each delay lies in [base/2, base]."""
    r = Retry(backoff_s=1.0, multiplier=2.0, max_delay_s=5.0, jitter=True)
    for n, base in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        samples = [r.delay_s(n) for _ in range(200)]
        assert all(base / 2 <= d <= base for d in samples)
        assert len(set(samples)) > 1


def test_delay_huge_attempt_is_capped_not_overflowing() -> None:
    """A delay past float range (attempt in the thousands) is the cap, not an OverflowError."""
    r = Retry(attempts=5000, multiplier=2.0, max_delay_s=7.0, jitter=False)
    assert r.delay_s(4999) == 7.0


def test_retryable_default_retries_exceptions_only() -> None:
    """By default any Exception is retryable; BaseExceptions like KeyboardInterrupt are not."""
    r = Retry()
    assert r.retryable(ValueError()) and r.retryable(TimeoutError())
    assert not r.retryable(KeyboardInterrupt())


def test_retryable_retry_on_and_give_up_on() -> None:
    """Only retry_on classes are retried, and give_up_on wins over retry_on."""
    r = Retry(retry_on=(OSError, ValueError), give_up_on=(FileNotFoundError,))
    assert r.retryable(ConnectionError()) and r.retryable(ValueError())
    assert not r.retryable(FileNotFoundError())
    assert not r.retryable(KeyError())


def test_retry_on_accepts_a_class_or_a_list() -> None:
    """A bare class or a list for retry_on/give_up_on is normalised to a tuple (isinstance needs one)."""
    r = Retry(retry_on=ValueError, give_up_on=[UnicodeError])
    assert r.retry_on == (ValueError,) and r.give_up_on == (UnicodeError,)
    assert r.retryable(ValueError()) and not r.retryable(UnicodeDecodeError("u", b"", 0, 1, "x"))


# -- the record model ------------------------------------------------------------------------


def record(**kw: Any) -> SagaRecord:
    steps = [
        StepState(name="a", state="done", region="eu", run=2, failures=1, result="whizorch/run/t-1/0/run-2",
                  started=1.5, ended=2.25, regions=["eu"]),
        StepState(name="b", state="dispatched", region="us", run=1, regions=["eu", "us"], dispatched_at=3.0,
                  retry_at=4.0, waiting_region=True, error="boom"),
    ]
    base: dict[str, Any] = dict(
        id="t-1", saga="transfer", txid=1234, status="running", steps=steps, created=1.0, updated=3.0, step=1,
        failovers=[{"step": 1, "from": "eu", "to": "us", "reason": "region down", "at": 3.0}],
        trace={"traceparent": "00-x"}, leader_term=987, cancel_requested=True,
    )
    rec = SagaRecord(**(base | kw))
    rec.note(1.0, "adopted", txid=1234)
    return rec


def test_record_json_round_trip() -> None:
    """to_json/from_json reproduce every field, steps included."""
    rec = record()
    back = SagaRecord.from_json(rec.to_json())
    assert back == rec
    assert isinstance(back.steps[0], StepState)
    assert back.regions == ["eu", "us"]


def test_record_clone_is_independent() -> None:
    """clone() gives a copy the machine may mutate without touching the original."""
    rec = record()
    before = rec.to_json()
    twin = rec.clone()
    assert twin == rec
    twin.steps[1].regions.append("ap")
    twin.steps[0].state = "compensating"
    twin.failovers.append({"step": 0})
    twin.note(9.0, "x")
    twin.trace["k"] = "v"
    assert rec.to_json() == before


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"\xff\xfe",
        b"[1, 2]",
        b'"text"',
        b'{"v": 2, "id": "t-1"}',
        b'{"id": "t-1"}',
        b'{"v": 1, "id": "t-1"}',
        b'{"v": 1, "steps": [{"nope": 1}]}',
    ],
)
def test_record_from_json_rejects_garbage(data: bytes) -> None:
    """Garbage, non-objects, a wrong version or wrong fields are a DecodeError naming 'saga record'."""
    with pytest.raises(DecodeError) as info:
        SagaRecord.from_json(data)
    assert info.value.field == "saga record"
    assert "saga record" in str(info.value)


def test_record_wrong_version_says_so() -> None:
    """A record of a newer schema raises NewerRecordError naming both versions; an
    unknown older one a plain DecodeError naming the version it found."""
    data = record().to_json().replace(b'"v":3', b'"v":4')
    with pytest.raises(NewerRecordError, match="schema v4, newer than this whizorch's v3"):
        SagaRecord.from_json(data)
    with pytest.raises(DecodeError, match="version 0") as info:
        SagaRecord.from_json(record().to_json().replace(b'"v":3', b'"v":0'))
    assert not isinstance(info.value, NewerRecordError)


def test_v1_record_reads_as_v3_with_no_worker() -> None:
    """A record from before tasks went on workers' leases (v1: its steps name no
    worker) reads as v3, each step's worker None and no version: the leader places those
    runs anew, with its current definition."""
    raw = json.loads(record().to_json())
    raw["v"] = 1
    for st in raw["steps"]:
        del st["worker"]
    rec = SagaRecord.from_json(json.dumps(raw).encode())
    assert rec.v == 3 and rec.version == "" and all(st.worker is None for st in rec.steps)
    assert json.loads(rec.to_json())["v"] == 3


def test_history_is_bounded() -> None:
    """note() keeps the newest MAX_HISTORY entries."""
    rec = record(history=[])
    for i in range(MAX_HISTORY + 50):
        rec.note(float(i), "tick", n=i)
    assert len(rec.history) == MAX_HISTORY
    assert rec.history[0]["n"] == 50 and rec.history[-1]["n"] == MAX_HISTORY + 49
    assert rec.history[-1] == {"at": float(MAX_HISTORY + 49), "event": "tick", "n": MAX_HISTORY + 49}


def test_record_is_final_and_regions() -> None:
    """is_final covers completed/compensated/failed; regions lists each region once, in first-use order."""
    assert not record().is_final
    for status in ("completed", "compensated", "failed"):
        assert record(status=status).is_final
    rec = record()
    rec.steps[0].regions = ["us", "eu", "us"]
    assert rec.regions == ["us", "eu"]


def test_encode_json_limit_names_the_size() -> None:
    """A value over the limit is a RequestTooLargeError (not misuse) giving its size and the limit."""
    with pytest.raises(RequestTooLargeError) as info:
        encode_json({"x": "y" * 100}, what="step output", limit=50)
    size = len(encode_json({"x": "y" * 100}, what="step output"))
    assert info.value.size == size and info.value.field == "step output"
    assert f"{size} bytes" in str(info.value) and "50 bytes" in str(info.value)


@pytest.mark.parametrize("value", [{1, 2}, float("nan"), object()])
def test_encode_json_rejects_non_json(value: Any) -> None:
    """A value that is not strict JSON (sets, NaN, objects) is a ConfigError naming what it was."""
    with pytest.raises(ConfigError) as info:
        encode_json({"v": value}, what="step input")
    assert info.value.field == "step input"


def test_task_and_result_payload_round_trip() -> None:
    """Task and result payloads survive their codecs; junk fields are a DecodeError."""
    task = TaskPayload(
        saga_id="t-1", saga="transfer", txid=7, step=1, step_name="b", kind="run", attempt=2, region="eu",
        input={"amount": 5}, outputs={"a": [1]}, timeout_s=3.0, trace={"traceparent": "x"},
    )
    assert TaskPayload.from_json(task.to_json()) == task
    res = ResultPayload(ok=False, error="E", error_type="ValueError", retryable=True, worker="w", region="eu")
    assert ResultPayload.from_json(res.to_json()) == res
    with pytest.raises(DecodeError):
        TaskPayload.from_json(b'{"saga_id": "t-1"}')
    with pytest.raises(DecodeError):
        ResultPayload.from_json(b'{"ok": true, "extra": 1}')
    with pytest.raises(RequestTooLargeError, match="step output"):
        ResultPayload(ok=True, output="x" * 100).to_json(limit=20)


def test_submission_codec_round_trips() -> None:
    """A submission survives its codec, strict and lenient alike."""
    sub = SubmissionPayload(saga="order", input={"sku": "x1"}, trace={"traceparent": "t"}, submitted=12.5)
    assert SubmissionPayload.from_json(sub.to_json()) == sub
    assert SubmissionPayload.from_json_lenient(sub.to_json()) == sub
    assert json.loads(sub.to_json()) == {"saga": "order", "input": {"sku": "x1"}, "trace": {"traceparent": "t"}, "submitted": 12.5}


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"\xff", "submission"),
        (b"[1]", "submission"),
        (b'{"saga": 5}', "submission.saga"),
        (b'{"input": 1}', "submission.saga"),
        (b'{"saga": "order", "trace": {"a": 1}}', "submission.trace"),
        (b'{"saga": "order", "trace": ["x"]}', "submission.trace"),
    ],
)
def test_submission_strict_decode_names_the_bad_field(data: bytes, field: str) -> None:
    """The leader's decode refuses a submission it cannot adopt, naming the field; a
    viewer's lenient read of the same bytes shows what it can, never raising."""
    with pytest.raises(DecodeError) as info:
        SubmissionPayload.from_json(data)
    assert info.value.field == field
    assert SubmissionPayload.from_json_lenient(data).trace == {}


def test_submission_lenient_read_keeps_what_the_value_says() -> None:
    """A lenient read takes the saga type, input and time where they are well formed,
    "?" and None where not; the strict decode ignores unknown fields and a bad time."""
    odd = b'{"saga": "order", "input": 3, "trace": {"a": 1}, "submitted": 7}'
    assert SubmissionPayload.from_json_lenient(odd) == SubmissionPayload(saga="order", input=3, submitted=7.0)
    assert SubmissionPayload.from_json_lenient(b'{"saga": 1, "submitted": true}') == SubmissionPayload(saga="?")
    extra = SubmissionPayload.from_json(b'{"saga": "order", "later": 1, "submitted": "noon"}')
    assert extra == SubmissionPayload(saga="order")


def test_submission_over_the_limit_is_request_too_large() -> None:
    """An input past ``max_payload_bytes`` is a RequestTooLargeError naming "saga input"."""
    with pytest.raises(RequestTooLargeError, match="saga input is"):
        SubmissionPayload(saga="order", input="x" * 100).to_json(50)


# -- keys ----------------------------------------------------------------------------------


def test_keys_layout_matches_the_documented_schema() -> None:
    """Every key is <ns>/<kind>/... as docs/design.md and docs/sagas.md draw it."""
    k = Keys("ns")
    assert k.leader == "ns/leader"
    assert k.submit("t-1") == b"ns/submit/t-1"
    assert k.saga("t-1") == b"ns/saga/t-1"
    assert k.cancel("t-1") == b"ns/cancel/t-1"
    assert k.task("eu", "abc", "t-1", 2, "run", 1) == b"ns/task/eu/abc/t-1/2/run-1"
    assert k.result("eu", "t-1", 2, "compensate", 3) == b"ns/run/eu/t-1/2/compensate-3"
    assert k.region("eu", 0xABC) == b"ns/region/eu/abc"
    assert k.prefix("task") == b"ns/task/"
    assert Keys().saga("x") == b"whizorch/saga/x"


def test_each_regions_keys_share_its_prefixes() -> None:
    """A region's tasks, results and registrations sit under prefixes of that region
    alone (what an etcd role per region grants); one worker's tasks under its lease's."""
    k = Keys()
    for key in (k.task("eu", "abc", "t-1", 0, "run", 1), k.task("eu", "abd", "t-1", 0, "compensate", 2)):
        assert key.startswith(k.region_tasks("eu")) and key.startswith(k.prefix("task"))
    assert k.task("eu", "abc", "t-1", 0, "run", 1).startswith(k.worker_tasks("eu", 0xABC))
    assert not k.task("eu", "abcd", "t-1", 0, "run", 1).startswith(k.worker_tasks("eu", 0xABC))
    assert not k.task("eu-2", "abc", "t-1", 0, "run", 1).startswith(k.region_tasks("eu"))
    for key in (k.result("eu", "t-1", 0, "run", 1), k.result("eu", "t-1", 3, "compensate", 2)):
        assert key.startswith(k.results("eu", "t-1")) and key.startswith(k.region_results("eu"))
    assert not k.results("eu", "t-1").startswith(k.results("eu", "t-10"))
    assert not k.results("eu", "t-10").startswith(k.results("eu", "t-1"))


def test_keys_split_and_region_of() -> None:
    """split() returns the parts after <ns>/<kind>/; region_of() reads a region key."""
    k = Keys()
    assert k.split(k.result("eu", "t-1", 3, "run", 2), "run") == ["eu", "t-1", "3", "run-2"]
    assert k.split(k.task("eu", "abc", "t-1", 0, "run", 1), "task") == ["eu", "abc", "t-1", "0", "run-1"]
    assert k.split(k.cancel("t-1"), "cancel") == ["t-1"]
    assert k.region_of(k.region("us-east", 77)) == "us-east"


@pytest.mark.parametrize(
    "key,kind",
    [(b"other/run/t-1/0/claim", "run"), (b"whizorch/saga/t-1", "run"), (b"whizorch/runner/x", "run")],
)
def test_keys_split_rejects_foreign_keys(key: bytes, kind: str) -> None:
    """A key outside <ns>/<kind>/ is a ValueError, never silently mis-split."""
    with pytest.raises(ValueError, match="not a run key"):
        Keys().split(key, kind)


@pytest.mark.parametrize("ns", ["", "a/", 5])
def test_keys_bad_namespace(ns: Any) -> None:
    """The namespace is a non-empty string without a trailing '/'."""
    with pytest.raises(ConfigError) as info:
        Keys(ns)
    assert info.value.field == "namespace"



def test_unknown_step_state_is_a_decode_error() -> None:
    """Step states are a closed set (``StepStateName``): a record with another is refused, naming it."""
    data = record().to_json().replace(b'"state":"done"', b'"state":"paused"', 1)
    assert b'"paused"' in data
    with pytest.raises(DecodeError, match="unknown step state 'paused'"):
        SagaRecord.from_json(data)


def test_a_context_built_without_a_client_says_so_when_asked_for_etcd() -> None:
    """ctx.etcd of a StepContext built by hand without etcd= is a ConfigError naming the fix (a worker always gives its client)."""
    ctx = StepContext(
        saga_id="s", transaction_id=1, saga="t", step="a", step_index=0, attempt=1, region="eu",
        compensating=False, idempotency_key="s:a", outputs={},
    )
    with pytest.raises(ConfigError, match="pass etcd= when you build one by hand"):
        _ = ctx.etcd
    assert "etcd" not in repr(ctx)


def test_a_handler_traceback_starts_at_the_users_code_and_is_bounded() -> None:
    """The traceback kept on a result shows the handler's frames and keeps the end of a long one (integration: without the engine's frames)."""
    from whizorch.saga._outcome import TRACEBACK_LIMIT, handler_traceback

    def handler(ctx: Any, cmd: dict[str, Any]) -> Any:
        return cmd["sku"]

    async def run() -> BaseException:
        try:
            await call_handler(handler, None, {})  # type: ignore[arg-type]
        except KeyError as exc:
            return exc
        raise AssertionError("no KeyError")

    text = handler_traceback(asyncio.run(run()))
    assert text.startswith("Traceback (most recent call last):\n") and text.rstrip().endswith("KeyError: 'sku'")
    assert "in handler" in text and 'return cmd["sku"]' in text

    def deep(n: int) -> None:
        if n == 0:
            raise ValueError("y" * 10 * TRACEBACK_LIMIT)
        deep(n - 1)

    try:
        deep(3)
    except ValueError as exc:
        text = handler_traceback(exc, limit=500)
    assert len(text) <= 500 and "parts cut)" in text
    assert text.startswith("Traceback (most recent call last):\n")
    assert "ValueError: yyy" in text and "characters cut)" in text  # the exception stays, its message cut
    assert 'raise ValueError("y" * 10 * TRACEBACK_LIMIT)' in text  # and the innermost frame
