"""A saga definition as data: what the leader needs to drive a saga, with no code.

A :class:`SagaSpec` holds a saga type's steps in order and each step's options (retry
timing, timeouts, region, compliance, size, whether it has a compensation). The
leader's state machine and router work on it alone, so a leader can drive a version of
a saga whose code it does not run: specs are published under ``<ns>/def/<saga>/<version>``
and read back from there (see docs/design.md, "Saga definitions and versions").

Its canonical JSON (sorted keys, no version) is what the default version fingerprints.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any

import attrs

from whizorch._check import is_int, is_number
from whizorch.errors import DecodeError

__all__ = ["RetryTiming", "SagaSpec", "StepSpec", "fingerprint"]


@attrs.frozen(kw_only=True)
class RetryTiming:
    """When a failed run is tried again (the data half of :class:`~whizorch.saga.Retry`;
    which exceptions are retried is the worker's to decide, with the code)."""

    attempts: int = 3
    backoff_s: float = 0.1
    multiplier: float = 2.0
    max_delay_s: float = 10.0
    jitter: bool = True

    def delay_s(self, attempt: int) -> float:
        """Seconds to wait before run ``attempt + 1``."""
        try:
            base = min(self.max_delay_s, self.backoff_s * self.multiplier ** max(0, attempt - 1))
        except OverflowError:  # multiplier**n past float range (attempts in the thousands)
            base = self.max_delay_s
        return random.uniform(base / 2, base) if self.jitter else base


@attrs.frozen(kw_only=True)
class StepSpec:
    """One step of a definition."""

    saga: str
    """The saga type's name (with ``version``: which workers can run this step)."""
    version: str
    name: str
    index: int
    retry: RetryTiming
    timeout_s: float | None
    region: str | None
    """The data's home region: a preference the router weighs, not a requirement."""
    compliance: frozenset[str]
    size_bytes: int
    compensable: bool
    """The step has a compensation (a step without one has nothing to undo)."""
    compensation_retry: RetryTiming
    compensation_timeout_s: float | None
    retry_on: tuple[str, ...] = ()
    """Names of the exception classes the worker retries, and never retries: the
    leader does not use them, but they are part of the fingerprint (changing them
    changes what a failure means)."""
    give_up_on: tuple[str, ...] = ()

    @property
    def definition(self) -> tuple[str, str]:
        """(saga type, version): what a worker must have to run this step."""
        return (self.saga, self.version)


@attrs.frozen(kw_only=True)
class SagaSpec:
    """A saga type at one version: its steps and limits."""

    name: str
    version: str
    max_failovers: int
    steps: tuple[StepSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the published form)."""
        return {
            "name": self.name,
            "version": self.version,
            "max_failovers": self.max_failovers,
            "steps": [_step_dict(s) for s in self.steps],
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()

    def canonical(self) -> bytes:
        """The definition without its version: what a fingerprint hashes."""
        d = self.to_dict()
        del d["version"]
        for s in d["steps"]:
            del s["saga"], s["version"]
        return json.dumps(d, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> SagaSpec:
        """A published definition (a DecodeError names what is wrong)."""
        try:
            raw = json.loads(data)
            name, version = raw["name"], raw["version"]
            if not isinstance(name, str) or not isinstance(version, str):
                raise TypeError("name and version must be strings")
            steps = tuple(_step_from(s, name, version, i) for i, s in enumerate(raw["steps"]))
            failovers = raw["max_failovers"]
            if not is_int(failovers, minimum=0):
                raise TypeError("max_failovers must be an int >= 0")
            return cls(name=name, version=version, max_failovers=failovers, steps=steps)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise DecodeError(f"saga definition is not valid: {exc}", field="saga definition") from exc


def fingerprint(spec: SagaSpec) -> str:
    """The default version of a definition: ``f`` and 10 hex digits of its hash."""
    return "f" + hashlib.sha256(spec.canonical()).hexdigest()[:10]


def _retry_dict(r: RetryTiming) -> dict[str, Any]:
    return {"attempts": r.attempts, "backoff_s": r.backoff_s, "multiplier": r.multiplier,
            "max_delay_s": r.max_delay_s, "jitter": r.jitter}  # fmt: skip


def _step_dict(s: StepSpec) -> dict[str, Any]:
    return {
        "saga": s.saga, "version": s.version, "name": s.name, "retry": _retry_dict(s.retry), "timeout_s": s.timeout_s,
        "region": s.region, "compliance": sorted(s.compliance), "size_bytes": s.size_bytes,
        "compensable": s.compensable, "compensation_retry": _retry_dict(s.compensation_retry),
        "compensation_timeout_s": s.compensation_timeout_s, "retry_on": list(s.retry_on),
        "give_up_on": list(s.give_up_on),
    }  # fmt: skip


def _number(raw: Any, name: str, *, optional: bool = False) -> Any:
    if raw is None and optional:
        return None
    if not is_number(raw, minimum=0, finite=False):
        raise TypeError(f"{name} must be a number >= 0")
    return raw


def _retry_from(raw: Any, name: str) -> RetryTiming:
    attempts = raw["attempts"]
    if not is_int(attempts, minimum=1):
        raise TypeError(f"{name}.attempts must be an int >= 1")
    if not isinstance(raw["jitter"], bool):
        raise TypeError(f"{name}.jitter must be true or false")
    return RetryTiming(
        attempts=attempts, backoff_s=_number(raw["backoff_s"], name), multiplier=_number(raw["multiplier"], name),
        max_delay_s=_number(raw["max_delay_s"], name), jitter=raw["jitter"],
    )


def _step_from(raw: Any, saga: str, version: str, index: int) -> StepSpec:
    region, tags, size = raw["region"], raw["compliance"], raw["size_bytes"]
    if not isinstance(raw["name"], str) or (region is not None and not isinstance(region, str)):
        raise TypeError("a step's name and region must be strings")
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise TypeError("compliance must be a list of strings")
    if not is_int(size, minimum=0) or not isinstance(raw["compensable"], bool):
        raise TypeError("size_bytes must be an int >= 0, compensable true or false")
    return StepSpec(
        saga=saga, version=version, name=raw["name"], index=index, retry=_retry_from(raw["retry"], "retry"),
        timeout_s=_number(raw["timeout_s"], "timeout_s", optional=True), region=region, compliance=frozenset(tags),
        size_bytes=size, compensable=raw["compensable"],
        compensation_retry=_retry_from(raw["compensation_retry"], "compensation_retry"),
        compensation_timeout_s=_number(raw["compensation_timeout_s"], "compensation_timeout_s", optional=True),
        retry_on=_names(raw.get("retry_on", [])), give_up_on=_names(raw.get("give_up_on", [])),
    )


def _names(raw: Any) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw):
        raise TypeError("retry_on/give_up_on must be lists of class names")
    return tuple(raw)
