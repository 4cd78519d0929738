"""The latency monitor: measured round trips from the leader's region to each region.

The router's latency term comes from a configured matrix, which goes stale when a
link slows down. While it leads, the orchestrator measures instead: every
``interval_s`` it asks each region's own etcd member (the ``[regions.<name>]
endpoints``) for its status, over the same network the region's steps travel, and
keeps an exponentially weighted moving average of the round trip per region. The
router prefers the measurement for routes that start in the leader's region; the
configured matrix still serves every other pair, and any region not measured yet.
The leader publishes both under ``<ns>/latency`` for ``whizorch status``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from whizorch.coord import Fence
from whizorch.errors import WhizorchError
from whizorch.etcd import EtcdClient, Op
from whizorch.saga._router import Router
from whizorch.saga._supervise import is_transient

__all__ = ["LatencyMonitor"]

log = logging.getLogger("whizorch.saga.orchestrator")


class LatencyMonitor:
    """Measures the round trip to each region's member and feeds the router."""

    def __init__(
        self,
        client: EtcdClient,
        router: Router,
        region_endpoints: Mapping[str, Sequence[str]],
        *,
        interval_s: float = 1.0,
        alpha: float = 0.3,
        timeout_s: float = 2.0,
    ) -> None:
        self._client = client
        self._router = router
        self._endpoints = {r: list(eps) for r, eps in region_endpoints.items() if eps}
        self.interval_s = interval_s
        self.alpha = alpha
        self.timeout_s = timeout_s

    async def run(self) -> None:
        """Probe every region each interval until cancelled (owned by the leadership)."""
        while True:
            await asyncio.gather(*(self._probe(r, eps[0]) for r, eps in self._endpoints.items()))
            await asyncio.sleep(self.interval_s)  # ok: the probe period

    async def _probe(self, region: str, endpoint: str) -> None:
        started = time.perf_counter()
        try:
            await self._client.status(endpoint, timeout_s=self.timeout_s)
        except WhizorchError as exc:
            log.debug("latency probe of region %s (%s) failed: %s", region, endpoint, exc)
            return
        ms = (time.perf_counter() - started) * 1000.0
        old = self._router.measured_ms.get(region)
        self._router.measured_ms[region] = ms if old is None else old + self.alpha * (ms - old)

    async def publish(
        self, key: bytes, fence: Fence, *, node: str, paused: Callable[[], bool], every_s: float = 5.0
    ) -> None:
        """Every ``every_s``, the measured and configured round trips from the home
        region under ``key`` (``<ns>/latency``, fenced), for ``whizorch status``; not
        while ``paused()`` (safe mode, a takeover not done)."""
        while True:
            await asyncio.sleep(every_s)  # ok: the publishing period
            if paused():
                continue
            router = self._router
            home = router.home_region
            doc = {
                "from": home,
                "node": node,
                "at": round(time.time(), 3),
                "measured_ms": {r: round(ms, 2) for r, ms in sorted(router.measured_ms.items())},
                "configured_ms": {r: router.latency.get((home, r)) for r in sorted(self._endpoints) if home},
            }
            try:
                await self._client.txn([fence.compare()], [Op.put(key, json.dumps(doc).encode())], idempotent=True)
            except WhizorchError as exc:
                if not is_transient(exc):
                    raise
                log.info("could not publish latencies: %s", exc)
