"""The lifecycle every harness shares (local, container and lab clusters) and its one
cleanup registry."""

from __future__ import annotations

import pytest

from whizorch.errors import ClosedError
from whizorch.testing import LocalClusterError, LocalEtcdCluster, RegionLab, _lifecycle
from whizorch.testing._docker import DockerEtcdCluster
from whizorch.testing._lifecycle import Harness, _close_all_at_exit, live


@pytest.fixture(autouse=True)
def own_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees a registry of its own (never the session's real clusters)."""
    monkeypatch.setattr(_lifecycle, "_live", {})


class Fake(Harness):
    WHAT = "fake"

    def __init__(self, *, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.events: list[str] = []

    def _start(self) -> None:
        self.events.append("start")
        if self.fail:
            raise RuntimeError("cannot start")

    def _stop(self) -> None:
        self.events.append("stop")


def test_every_harness_shares_the_lifecycle() -> None:
    """Local, container and lab clusters are Harnesses (one lifecycle, one registry)."""
    for cls in (LocalEtcdCluster, DockerEtcdCluster, RegionLab):
        assert issubclass(cls, Harness)


def test_starts_once_and_closes_twice() -> None:
    """start -> open, registered; close -> stopped once, unregistered; closing again is
    fine; starting again or using it after close raises ClosedError."""
    fake = Fake()
    with pytest.raises(ClosedError, match="has not been started"):
        fake._check_open()
    with fake:
        assert fake.is_open and fake in live()
        with pytest.raises(LocalClusterError, match="already started"):
            fake.start()
    fake.close()
    assert fake.events == ["start", "stop"] and fake not in live()
    with pytest.raises(ClosedError, match="make a new Fake"):
        fake.start()


def test_a_failed_start_leaves_nothing_behind() -> None:
    """A start that raises stops what it began and leaves the harness closed."""
    fake = Fake(fail=True)
    with pytest.raises(RuntimeError):
        fake.start()
    assert fake.events == ["start", "stop"] and not fake.is_open and fake not in live()
    fake.close()
    assert fake.events == ["start", "stop"]


async def test_async_forms_run_the_same_lifecycle() -> None:
    """``async with`` starts and closes in a worker thread."""
    async with Fake() as fake:
        assert fake.is_open
    assert fake.events == ["start", "stop"] and not fake.is_open


def test_exit_hook_abandons_what_is_still_open_newest_first() -> None:
    """The atexit hook stops every harness left open, the newest first, and empties the
    registry; closed ones are not touched."""
    order: list[str] = []

    class Named(Fake):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def _stop(self) -> None:
            order.append(self.name)

    first, second, done = Named("first").start(), Named("second").start(), Named("done").start()
    done.close()
    order.clear()
    _close_all_at_exit()
    assert order == ["second", "first"]
    assert not first.is_open and not second.is_open and live() == []
