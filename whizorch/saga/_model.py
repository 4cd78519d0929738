"""The saga record, task and result payloads (the key layout is in ``_keys.py``; docs/sagas.md).

Everything here is plain data with a JSON codec; nothing talks to etcd.
"""

from __future__ import annotations

import json
from typing import Any, Final, Literal, get_args

import attrs

from whizorch._check import is_int, is_number
from whizorch.errors import ConfigError, DecodeError, RequestTooLargeError

__all__ = [
    "FINAL_STATUSES",
    "OPTIONAL_STEP_FIELDS",
    "NewerRecordError",
    "ResultPayload",
    "SagaRecord",
    "StepKind",
    "StepState",
    "SubmissionPayload",
    "TaskPayload",
    "decode_json",
    "encode_json",
    "step_kind",
]

RUNNING = "running"
COMPENSATING = "compensating"
COMPLETED = "completed"
COMPENSATED = "compensated"
FAILED = "failed"
STATUSES = (RUNNING, COMPENSATING, COMPLETED, COMPENSATED, FAILED)
FINAL_STATUSES = frozenset({COMPLETED, COMPENSATED, FAILED})

StepKind = Literal["run", "compensate"]
"""What a run of a step does: the step's handler, or its compensation."""
RUN: Final[StepKind] = "run"
COMPENSATE: Final[StepKind] = "compensate"
STEP_KINDS: tuple[StepKind, ...] = get_args(StepKind)

RECORD_VERSION = 3
# v1 records (before tasks went on workers' leases) read with no worker: a rebuild
# finds no task for their active runs and dispatches them again; v1 and v2 records
# (before versioned definitions) read with version "": driven by the leader's current
# definition of their saga type, as they were
READABLE_VERSIONS = (1, 2, 3)
MAX_HISTORY = 200


def encode_json(value: Any, *, what: str, limit: int | None = None) -> bytes:
    """Compact JSON; a ConfigError when the value is not JSON, a RequestTooLargeError
    when it is over ``limit`` bytes."""
    try:
        data = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} is not JSON-serialisable: {exc}", field=what) from exc
    if limit is not None and len(data) > limit:
        raise RequestTooLargeError(
            f"{what} is {len(data)} bytes, over the limit of {limit} bytes", field=what, size=len(data)
        )
    return data


def decode_json(data: bytes, *, what: str) -> Any:
    """Parse JSON read from etcd; a DecodeError naming what failed to parse."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise DecodeError(f"{what} is not valid JSON: {exc}", field=what) from exc


def step_kind(text: object) -> StepKind | None:
    """``text`` as a StepKind, or None when it is not one."""
    if text == RUN:
        return RUN
    if text == COMPENSATE:
        return COMPENSATE
    return None


class NewerRecordError(DecodeError):
    """A saga record written by a newer whizorch (a schema this one does not know):
    left untouched, never overwritten."""


StepStateName = Literal[
    "pending", "dispatched", "done", "failed", "compensating", "compensated", "comp_failed", "skipped"
]
"""A step's state in the record (``StepState.state``)."""
STEP_STATES: frozenset[str] = frozenset(get_args(StepStateName))


@attrs.define
class StepState:
    """One step's progress inside the saga record."""

    name: str
    state: StepStateName = "pending"
    region: str | None = None
    run: int = 0
    """How many times the step was dispatched (ctx.attempt of the latest run)."""
    failures: int = 0
    """Failed runs, counted against the retry policy."""
    comp_run: int = 0
    comp_failures: int = 0
    result: str | None = None
    """Key of the successful result (the output lives there, not in the record)."""
    started: float | None = None
    ended: float | None = None
    error: str | None = None
    comp_error: str | None = None
    regions: list[str] = attrs.Factory(list)
    """Every region that ran (or was sent) this step, in order."""
    dispatched_at: float | None = None
    retry_at: float | None = None
    waiting_region: bool = False
    """The step cannot be dispatched now and waits (see ``waiting_for``)."""
    waiting_for: str | None = None
    """While waiting: ``"region"`` (no healthy, compliant region) or ``"worker"`` (no
    live worker there has the saga's definition at its version)."""
    worker: str | None = None
    """The lease (hex) of the worker the active run's task was put on (its claim)."""
    error_type: str | None = None
    """The class name of the exception behind ``error``, when a handler raised one."""
    traceback: str | None = None
    """The handler's traceback behind ``error`` (bounded: its last frames), when it raised."""
    comp_error_type: str | None = None
    """As ``error_type``, for ``comp_error``."""
    comp_traceback: str | None = None
    """As ``traceback``, for ``comp_error``."""


OPTIONAL_STEP_FIELDS = ("error_type", "traceback", "comp_error_type", "comp_traceback")
"""StepState fields a record holds only when set (added after v2 records were first
written, so a record without them reads in an older whizorch)."""


@attrs.define
class SagaRecord:
    """The durable state of one saga (key ``<ns>/saga/<id>``)."""

    id: str
    saga: str
    txid: int
    status: str
    steps: list[StepState]
    created: float
    updated: float
    finished: float | None = None
    step: int = 0
    failovers: list[dict[str, Any]] = attrs.Factory(list)
    history: list[dict[str, Any]] = attrs.Factory(list)
    error: str | None = None
    cancel_requested: bool = False
    trace: dict[str, str] = attrs.Factory(dict)
    leader_term: int = 0
    version: str = ""
    """The version of the saga's definition this saga is pinned to ("" in records
    written before versions: driven by the leader's current definition)."""
    v: int = RECORD_VERSION

    @property
    def is_final(self) -> bool:
        """True once completed, compensated or failed."""
        return self.status in FINAL_STATUSES

    @property
    def regions(self) -> list[str]:
        """Every region that ran a step, in order of first use."""
        seen: list[str] = []
        for st in self.steps:
            for r in st.regions:
                if r not in seen:
                    seen.append(r)
        return seen

    def note(self, now: float, event: str, **fields: Any) -> None:
        """Append to the history (bounded: the oldest entries go first)."""
        self.history.append({"at": round(now, 4), "event": event, **fields})
        if len(self.history) > MAX_HISTORY:
            del self.history[: len(self.history) - MAX_HISTORY]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (history and failover entries are shared, never mutated). A step's
        error details are there only when set, so a record without them reads in a
        whizorch older than they are."""
        d = {f.name: getattr(self, f.name) for f in _RECORD_FIELDS}
        d["steps"] = [
            {f.name: v for f in _STEP_FIELDS if (v := getattr(st, f.name)) is not None or f.name not in OPTIONAL_STEP_FIELDS}
            for st in self.steps
        ]
        return d

    def to_json(self) -> bytes:
        return encode_json(self.to_dict(), what="saga record")

    def clone(self) -> SagaRecord:
        """A copy the state machine may change freely (cheaper than a JSON round trip)."""
        steps = [attrs.evolve(st, regions=list(st.regions)) for st in self.steps]
        return attrs.evolve(
            self, steps=steps, failovers=list(self.failovers), history=list(self.history), trace=dict(self.trace)
        )

    @classmethod
    def from_json(cls, data: bytes) -> SagaRecord:
        return cls.from_dict(decode_json(data, what="saga record"))

    @classmethod
    def from_dict(cls, raw: Any) -> SagaRecord:
        """A record from its decoded JSON (which it takes over: do not reuse ``raw``)."""
        v = raw.get("v") if isinstance(raw, dict) else None
        if is_int(v) and v > RECORD_VERSION:
            raise NewerRecordError(
                f"saga record has schema v{v}, newer than this whizorch's v{RECORD_VERSION}", field="saga record", value=v
            )
        try:
            if raw.get("v") not in READABLE_VERSIONS:
                raise ValueError(f"unknown record version {raw.get('v')!r}")
            raw["v"] = RECORD_VERSION
            steps = [StepState(**s) for s in raw.pop("steps")]
            for st in steps:
                if st.state not in STEP_STATES:
                    raise ValueError(f"unknown step state {st.state!r}")
            return cls(steps=steps, **raw)
        except (TypeError, ValueError, AttributeError, KeyError) as exc:
            raise DecodeError(f"saga record is not a valid v{RECORD_VERSION} record: {exc}", field="saga record") from exc


@attrs.frozen(kw_only=True)
class TaskPayload:
    """A dispatched run (key ``<ns>/task/<region>/<lease>/<saga>/<step>/<kind>-<attempt>``),
    read by the worker whose lease it is on."""

    saga_id: str
    saga: str
    txid: int
    step: int
    step_name: str
    kind: StepKind
    attempt: int
    region: str
    input: Any
    outputs: dict[str, Any]
    timeout_s: float | None
    trace: dict[str, str] = attrs.Factory(dict)
    output_refs: dict[str, str] = attrs.Factory(dict)
    """Earlier outputs too large to carry here: step name -> result key (the worker
    reads them before running the step), so a task stays small however large the
    outputs grow."""
    version: str = ""
    """The version of the saga's definition to run ("": the worker's current one)."""

    def to_json(self, limit: int | None = None) -> bytes:
        return encode_json(attrs.asdict(self), what="task", limit=limit)

    @classmethod
    def from_json(cls, data: bytes) -> TaskPayload:
        raw = _typed(decode_json(data, what="task"), _TASK_TYPES, "task")
        if step_kind(raw["kind"]) is None:
            raise DecodeError(f"task.kind must be one of {', '.join(STEP_KINDS)}", field="task.kind", value=raw["kind"])
        return cls(**raw)


@attrs.frozen(kw_only=True)
class ResultPayload:
    """The outcome of one run (key ``<ns>/run/<region>/<saga>/<step>/<kind>-<attempt>``)."""

    ok: bool
    output: Any = None
    error: str | None = None
    error_type: str | None = None
    retryable: bool = False
    worker: str = ""
    region: str = ""
    started: float = 0.0
    ended: float = 0.0
    fence: int = 0
    """The run's fencing token (its task's create revision)."""
    traceback: str | None = None
    """The handler's traceback when it raised (bounded: its last frames); only in the
    JSON when set, so a result without one reads in a whizorch older than this field."""

    def to_json(self, limit: int | None = None) -> bytes:
        doc = attrs.asdict(self)
        if doc["traceback"] is None:
            del doc["traceback"]
        return encode_json(doc, what="step output", limit=limit)

    @classmethod
    def from_json(cls, data: bytes) -> ResultPayload:
        return cls(**_typed(decode_json(data, what="result"), _RESULT_TYPES, "result"))


@attrs.frozen(kw_only=True)
class SubmissionPayload:
    """A submission (key ``<ns>/submit/<saga id>``): the saga type, its input, the W3C
    trace carrier, when it was submitted, and the definition version it is pinned to
    (None: the leader pins it to its current version). Every reader uses this codec: the leader
    adopts with the strict :meth:`from_json`; listings and views use
    :meth:`from_json_lenient`, which reads what it can of a value the leader would
    quarantine."""

    saga: str
    input: Any = None
    trace: dict[str, str] = attrs.Factory(dict)
    submitted: float | None = None
    """Seconds since the epoch, as the submitting client's clock read it."""
    version: str | None = None
    """The saga definition's version the saga is pinned to, when the client chose it."""

    def to_json(self, limit: int | None = None) -> bytes:
        """The stored form (a RequestTooLargeError naming "saga input" over ``limit``)."""
        doc: dict[str, Any] = {"saga": self.saga, "input": self.input, "trace": dict(self.trace)}
        if self.submitted is not None:
            doc["submitted"] = self.submitted
        if self.version is not None:
            doc["version"] = self.version
        return encode_json(doc, what="saga input", limit=limit)

    @classmethod
    def from_json(cls, data: bytes) -> SubmissionPayload:
        """Decode strictly: a DecodeError names what is wrong (not JSON, not an object,
        ``saga`` not a string, ``trace`` not strings to strings). Fields it does not
        know are ignored; a ``submitted`` that is not a number reads as None; a
        ``version`` must be a string."""
        raw = decode_json(data, what="submission")
        if not isinstance(raw, dict):
            raise DecodeError("submission is not a JSON object", field="submission")
        saga, trace = raw.get("saga"), raw.get("trace") or {}
        if not isinstance(saga, str):
            raise DecodeError(f"submission.saga must be a string, not {type(saga).__name__}", field="submission.saga")
        if not isinstance(trace, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in trace.items()):
            raise DecodeError("submission.trace must map strings to strings", field="submission.trace")
        version = raw.get("version")
        if version is not None and not isinstance(version, str):
            raise DecodeError("submission.version must be a string", field="submission.version")
        return cls(
            saga=saga, input=raw.get("input"), trace=trace, submitted=_seconds(raw.get("submitted")), version=version
        )

    @classmethod
    def from_json_lenient(cls, data: bytes) -> SubmissionPayload:
        """What a viewer can show of any value: the strict decode where it succeeds,
        else saga ``"?"``, no input, no trace and no time, as far as the value does not
        say (never raises)."""
        try:
            return cls.from_json(data)
        except DecodeError:
            pass
        try:
            raw = decode_json(data, what="submission")
        except DecodeError:
            raw = None
        raw = raw if isinstance(raw, dict) else {}
        saga, version = raw.get("saga"), raw.get("version")
        return cls(
            saga=saga if isinstance(saga, str) else "?", input=raw.get("input"), submitted=_seconds(raw.get("submitted")),
            version=version if isinstance(version, str) else None,
        )


def _seconds(value: object) -> float | None:
    return float(value) if is_number(value, finite=False) else None


_NUMBER = (int, float)
_TASK_TYPES: dict[str, tuple[type, ...]] = {
    "saga_id": (str,), "saga": (str,), "txid": (int,), "step": (int,), "step_name": (str,), "kind": (str,),
    "attempt": (int,), "region": (str,), "input": (object,), "outputs": (dict,), "timeout_s": (*_NUMBER, type(None)),
    "trace": (dict,), "output_refs": (dict,), "version": (str,),
}
_RESULT_TYPES: dict[str, tuple[type, ...]] = {
    "ok": (bool,), "output": (object,), "error": (str, type(None)), "error_type": (str, type(None)),
    "retryable": (bool,), "worker": (str,), "region": (str,), "started": _NUMBER, "ended": _NUMBER, "fence": (int,),
    "traceback": (str, type(None)),
}
_REQUIRED_TASK = frozenset(_TASK_TYPES) - {"trace", "output_refs", "version"}
_REQUIRED: dict[str, frozenset[str]] = {"task": _REQUIRED_TASK, "result": frozenset({"ok"})}


def _typed(raw: Any, types: dict[str, tuple[type, ...]], what: str) -> dict[str, Any]:
    """Check a decoded payload's shape: a JSON object with known fields of the right
    types (a bool is not an int here), every required field present."""
    if not isinstance(raw, dict):
        raise DecodeError(f"{what} is not a JSON object", field=what, value=type(raw).__name__)
    for name, value in raw.items():
        allowed = types.get(name)
        if allowed is None:
            raise DecodeError(f"{what} has an unknown field {name!r}", field=f"{what}.{name}")
        if object not in allowed and (
            not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed)
        ):
            raise DecodeError(
                f"{what}.{name} must be {' or '.join(t.__name__ for t in allowed)}, not {type(value).__name__}",
                field=f"{what}.{name}", value=value,
            )
    missing = _REQUIRED[what] - raw.keys()
    if missing:
        raise DecodeError(f"{what} lacks {', '.join(sorted(missing))}", field=what)
    return raw


_RECORD_FIELDS = attrs.fields(SagaRecord)
_STEP_FIELDS = attrs.fields(StepState)
"""Step fields written only when set (added after v2 records were first written)."""
