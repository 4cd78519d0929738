"""Which seeds and how long: the fixed seeds of ``make test``, or the long mode.

Environment (read by the pytest module; the runner has flags of the same meaning):

``WHIZORCH_FAULT_SEED``        ``17`` or ``5,17,42``: exactly these seeds (a replay).
``WHIZORCH_FAULT_SEEDS``       N: N seeds from ``WHIZORCH_FAULT_FIRST_SEED`` on (default
                               1000); a comma-separated list works as SEED does.
                               Neither set: the fixed seeds, `FIXED_SEEDS`.
``WHIZORCH_FAULT_DURATION_S``  how long the nemesis runs per seed (default 25).
``WHIZORCH_FAULT_SAGAS``       transfers per seed (default 4 per second of duration).
"""

from __future__ import annotations

import os

__all__ = ["FIXED_SEEDS", "duration_s", "orchestrators", "sagas", "seeds", "shards", "timeout_s"]

FIXED_SEEDS = (1, 2, 3)
DEFAULT_DURATION_S = 25.0
DEFAULT_FIRST_SEED = 1000
DEFAULT_SHARDS = 8
DEFAULT_ORCHESTRATORS = 3


def seeds(env: dict[str, str] | None = None) -> list[int]:
    """The seeds to run."""
    env = dict(os.environ) if env is None else env
    exact = env.get("WHIZORCH_FAULT_SEED", "").strip()
    raw = env.get("WHIZORCH_FAULT_SEEDS", "").strip()
    if exact or "," in raw:
        return [int(s) for s in (exact or raw).split(",") if s.strip()]
    if not raw:
        return list(FIXED_SEEDS)
    count = int(raw)
    first = int(env.get("WHIZORCH_FAULT_FIRST_SEED", DEFAULT_FIRST_SEED))
    return list(range(first, first + count))


def duration_s(env: dict[str, str] | None = None) -> float:
    env = dict(os.environ) if env is None else env
    return float(env.get("WHIZORCH_FAULT_DURATION_S", DEFAULT_DURATION_S))


def sagas(env: dict[str, str] | None = None) -> int | None:
    env = dict(os.environ) if env is None else env
    raw = env.get("WHIZORCH_FAULT_SAGAS", "").strip()
    return int(raw) if raw else None


def shards(env: dict[str, str] | None = None) -> int:
    """The namespace's shard count (``--shards`` of the orchestrators)."""
    return _count(env, "WHIZORCH_FAULT_SHARDS", DEFAULT_SHARDS, 1024)


def orchestrators(env: dict[str, str] | None = None) -> int:
    """How many orchestrator processes share the shards."""
    return _count(env, "WHIZORCH_FAULT_ORCHESTRATORS", DEFAULT_ORCHESTRATORS, 16)


def _count(env: dict[str, str] | None, name: str, default: int, most: int) -> int:
    env = dict(os.environ) if env is None else env
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= most:
        raise ValueError(f"{name}={raw!r}: give a whole number from 1 to {most}, or unset it for {default}")
    return value


def timeout_s(duration: float) -> int:
    """A per-seed test timeout: start-up, the run, the settle time and teardown."""
    return int(150 + 1.5 * duration)
