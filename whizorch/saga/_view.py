"""Two pieces of the leader's in-memory view: the registered workers by region (fed to
the Router) and the heap of saga timers. Plain data, no IO."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
import time
from collections.abc import Callable, Collection
from typing import Any

from whizorch.errors import DecodeError
from whizorch.saga import _machine as m
from whizorch.saga._model import decode_json
from whizorch.saga._router import RegionInfo

__all__ = ["Timers", "Workers", "capabilities", "serves"]


class Workers:
    """Registered workers (``<ns>/region/<region>/<lease>``), summarised per region."""

    def __init__(self) -> None:
        self._by_region: dict[str, dict[bytes, dict[str, Any]]] = {}

    def clear(self) -> None:
        self._by_region.clear()

    def put(self, region: str, key: bytes, value: bytes) -> None:
        """A worker registered or reported its load."""
        self._by_region.setdefault(region, {})[key] = capabilities(value)

    def delete(self, region: str, key: bytes) -> None:
        """A worker left (its lease ended or it deregistered)."""
        self._by_region.get(region, {}).pop(key, None)

    def workers(self, region: str) -> dict[str, dict[str, Any]]:
        """The region's live workers: lease (hex, the last part of the key) -> capabilities."""
        return {key.rpartition(b"/")[2].decode(): caps for key, caps in self._by_region.get(region, {}).items()}

    def pick(
        self, region: str, outstanding: dict[str, int], exclude: Collection[str] = frozenset(),
        need: tuple[str, str] | None = None,
    ) -> str | None:
        """The worker (lease hex) to put the region's next task on: among those that
        have the saga definition ``need`` (type, version), the least loaded by the tasks
        this leader has put on it per unit of its concurrency, draining workers last;
        None when the region has no such worker."""
        best: tuple[bool, float, str] | None = None
        for lease, caps in self.workers(region).items():
            if lease in exclude or (need is not None and not serves(caps, need)):
                continue
            score = (bool(caps.get("draining")), outstanding.get(lease, 0) / max(1, int(caps.get("concurrency", 1))), lease)
            if best is None or score < best:
                best = score
        return None if best is None else best[2]

    def regions(self) -> dict[str, RegionInfo]:
        """Each region with at least one worker: its compliance tags (every worker has
        them), lowest cost, capacity-weighted load and worker count."""
        view: dict[str, RegionInfo] = {}
        for region, workers in self._by_region.items():
            # a draining worker takes no new task: a region of draining workers only is down
            caps = [c for c in workers.values() if not c.get("draining")]
            if not caps:
                continue
            tags = frozenset.intersection(*(frozenset(c.get("compliance", ())) for c in caps))
            lists = [c.get("sagas") for c in caps]
            served = None if any(x is None for x in lists) else frozenset(
                (name, v) for x in lists if x is not None for name, versions in x.items() for v in versions
            )
            capacity = sum(max(1, int(c.get("concurrency", 1))) for c in caps)
            busy = sum(float(c.get("load", 0.0)) * max(1, int(c.get("concurrency", 1))) for c in caps)
            view[region] = RegionInfo(
                name=region,
                compliance=tags,
                cost=min(float(c.get("cost", 0.0)) for c in caps),
                load=busy / capacity if capacity else 0.0,
                workers=len(caps),
                serves=served,
            )
        return view


def serves(caps: dict[str, Any], definition: tuple[str, str]) -> bool:
    """A worker's registration lists this (saga type, version), or lists none (a worker
    from before versions runs anything)."""
    sagas = caps.get("sagas")
    return sagas is None or definition[1] in sagas.get(definition[0], ())


def capabilities(value: bytes) -> dict[str, Any]:
    """A worker's registration, checked (a DecodeError names what is wrong)."""
    caps = decode_json(value, what="worker capabilities")
    if not isinstance(caps, dict):
        raise DecodeError("worker capabilities are not a JSON object", field="worker capabilities")
    tags = caps.get("compliance", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise DecodeError("worker capabilities: compliance must be a list of strings", field="compliance", value=tags)
    sagas = caps.get("sagas")
    if sagas is not None and (
        not isinstance(sagas, dict)
        or not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in sagas.values())
    ):
        raise DecodeError("worker capabilities: sagas must map saga types to lists of versions", field="sagas", value=sagas)
    if not isinstance(caps.get("draining", False), bool):
        raise DecodeError("worker capabilities: draining must be true or false", field="draining", value=caps["draining"])
    for name, kinds in (("cost", (int, float)), ("load", (int, float)), ("concurrency", (int,))):
        v = caps.get(name, 1)
        if isinstance(v, bool) or not isinstance(v, kinds) or not math.isfinite(v) or v < 0:
            raise DecodeError(f"worker capabilities: {name} must be a finite number >= 0", field=name, value=v)
    return caps


class Timers:
    """Saga timers (retry, deadline, no_region), fired in time order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, str, m.Timer]] = []
        self._seq = itertools.count()
        self._wake = asyncio.Event()

    def clear(self) -> None:
        self._heap.clear()

    def arm(self, at: float, saga_id: str, timer: m.Timer) -> None:
        """Fire ``timer`` for ``saga_id`` at wall-clock time ``at``."""
        heapq.heappush(self._heap, (at, next(self._seq), saga_id, timer))
        self._wake.set()

    async def run(self, fire: Callable[[str, m.Timer], None]) -> None:
        """Call ``fire(saga_id, timer)`` for each timer as it falls due (forever)."""
        while True:
            now = time.time()
            while self._heap and self._heap[0][0] <= now:
                _, _, sid, timer = heapq.heappop(self._heap)
                fire(sid, timer)
            wait = self._heap[0][0] - now if self._heap else 3600.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, wait)):
                    await self._wake.wait()
