"""What local and container clusters share: waiting for a leader (a member's URLs:
``_member.MemberURLs``).

`LocalEtcdCluster` (processes) and `DockerEtcdCluster` (containers) offer tests the same
interface; the parts that do not depend on how a member runs live here once.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Generic, Protocol, TypeVar

from whizorch.errors import ClosedError
from whizorch.testing._member import ClusterUnhealthyError

__all__ = ["LeaderWaits"]

POLL_S = 0.05


class _Leads(Protocol):
    def is_leader(self, timeout: float = ...) -> bool: ...


M = TypeVar("M", bound=_Leads)


class LeaderWaits(Generic[M]):
    """``leader``/``wait_leader``/``await_leader`` over the members that serve."""

    _closing: threading.Event

    def _check_open(self) -> None:  # pragma: no cover - each cluster says
        raise NotImplementedError

    def _serving(self) -> Sequence[M]:  # pragma: no cover - each cluster says
        """The members that should be running and are not paused."""
        raise NotImplementedError

    def leader(self) -> M | None:
        """The member that is Raft leader now, if one is (paused members excluded)."""
        self._check_open()
        for member in self._serving():
            if member.is_leader():
                return member
        return None

    def wait_leader(self, timeout: float = 30.0) -> M:
        """Wait until a running member is leader, and return it."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.leader()
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                raise ClusterUnhealthyError(f"no etcd leader within {timeout:.1f}s")
            if self._closing.wait(POLL_S):
                raise ClosedError("the cluster was closed while waiting for a leader")

    async def await_leader(self, timeout: float = 30.0) -> M:  # noqa: ASYNC109
        """`wait_leader` without blocking the event loop."""
        return await asyncio.to_thread(self.wait_leader, timeout)
