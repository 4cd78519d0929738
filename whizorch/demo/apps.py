"""The demo's sagas: ``--app whizorch.demo.apps:app`` (the saga demo and compose/ use it).

Two saga types across three regions:

* ``order``: ``reserve`` stock at the US warehouse, ``charge`` the card (in the US,
  only where a region is PCI-compliant), ``ship`` from the AP hub. A failed step
  releases the stock and refunds the charge.
* ``transfer``: ``debit`` an EU account (GDPR: only in a GDPR region), ``credit`` a US
  account, ``notify`` from AP. A failed step reverses the credit and refunds the debit.

Handlers sleep a few tens of milliseconds to look like work (``work_ms`` in their
output says how long, so the demo can tell orchestration time from work). The input steers them:
``{"fail_at": "ship"}`` makes that step fail on every attempt (the saga runs past its
retries and compensates); ``{"flaky": ["charge"]}`` makes that step fail its first
attempt only (a transient error the retry absorbs). `workload` draws a deterministic
stream of inputs, a share of them designed to compensate.

Steps name their data's home region; when a region has no live worker, a step moves to
the closest healthy region that has the compliance tags it needs (`LATENCY_MS`,
`WORKERS`).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Iterator
from typing import Any

import attrs

from whizorch.saga import App, Retry, Saga, StepContext

__all__ = [
    "LATENCY_MS",
    "WORKERS",
    "Job",
    "StepFailed",
    "TransientError",
    "app",
    "order",
    "transfer",
    "workload",
]

LATENCY_MS: dict[str, dict[str, int]] = {
    "eu": {"us": 80, "ap": 200},
    "us": {"eu": 80, "ap": 150},
    "ap": {"eu": 200, "us": 150},
}
"""Round-trip latency between the regions (ms): the orchestrator's ``--latency`` file.
A step leaving ``us`` goes to ``eu`` (80 ms) before ``ap`` (150 ms)."""

WORKERS: dict[str, tuple[tuple[str, ...], int]] = {
    "eu": (("gdpr", "pci"), 1),
    "us": (("pci",), 2),
    "ap": ((), 1),
}
"""Region -> (compliance tags its workers offer, number of worker processes)."""

# attempts count every run: a transient failure plus a run lost with a killed worker
# still leave one to spare, so only the designed failures compensate
_RETRY = Retry(attempts=4, backoff_s=0.05, max_delay_s=0.5)


class StepFailed(Exception):
    """A designed, permanent failure (``fail_at``): retried in vain, then compensated."""


class TransientError(Exception):
    """A designed, one-off failure (``flaky``): the retry succeeds."""


async def _work(ctx: StepContext, cmd: Any, what: str) -> dict[str, Any]:
    """Look busy, fail as the input says, return a small JSON-serialisable output."""
    work_s = random.uniform(0.02, 0.06)
    await asyncio.sleep(work_s)  # ok: simulated work
    if not ctx.compensating:
        plan = cmd if isinstance(cmd, dict) else {}
        if plan.get("fail_at") == ctx.step:
            raise StepFailed(f"designed failure (fail_at={ctx.step!r}), attempt {ctx.attempt}")
        if ctx.step in plan.get("flaky", ()) and ctx.attempt == 1:
            raise TransientError(f"{ctx.step}: upstream timeout on attempt 1")
    return {
        "step": ctx.step, "done": what, "region": ctx.region, "attempt": ctx.attempt, "key": ctx.idempotency_key,
        "work_ms": round(work_s * 1000, 3),
    }


order = Saga("order")
"""Reserve stock (US warehouse), charge the card (PCI), ship (AP hub)."""


@order.step(region="us", retry=_RETRY)
async def reserve(ctx: StepContext, cmd: Any) -> dict[str, Any]:
    """Reserve the items at the warehouse."""
    return await _work(ctx, cmd, f"reserved {cmd.get('qty', 1)} x {cmd.get('sku', '?')}")


@reserve.compensate
async def release(ctx: StepContext, cmd: Any) -> dict[str, Any]:
    """Put the items back."""
    return await _work(ctx, cmd, "released the stock")


@order.step(region="us", compliance={"pci"}, retry=_RETRY)
async def charge(ctx: StepContext, cmd: Any) -> dict[str, Any]:
    """Charge the card (a PCI region only)."""
    return await _work(ctx, cmd, f"charged {cmd.get('amount', 0)}")


@charge.compensate
async def refund(ctx: StepContext, cmd: Any) -> dict[str, Any]:
    """Refund the charge."""
    return await _work(ctx, cmd, f"refunded {cmd.get('amount', 0)}")


@order.step(region="ap", retry=_RETRY)
async def ship(ctx: StepContext, cmd: Any) -> dict[str, Any]:
    """Hand the parcel to the carrier."""
    return await _work(ctx, cmd, "shipped")


transfer = Saga("transfer")
"""Debit an EU account (GDPR), credit a US account, notify from AP."""


@transfer.step(region="eu", compliance={"gdpr"}, retry=_RETRY)
async def debit(ctx: StepContext, cmd: Any) -> dict[str, Any]:
    """Take the amount from the source account."""
    return await _work(ctx, cmd, f"debited {cmd.get('amount', 0)} from {cmd.get('src', '?')}")


@debit.compensate
async def undo_debit(ctx: StepContext, cmd: Any) -> dict[str, Any]:
    """Give the amount back."""
    return await _work(ctx, cmd, "debit reversed")


@transfer.step(region="us", retry=_RETRY)
async def credit(ctx: StepContext, cmd: Any) -> dict[str, Any]:
    """Add the amount to the destination account."""
    return await _work(ctx, cmd, f"credited {cmd.get('amount', 0)} to {cmd.get('dst', '?')}")


@credit.compensate
async def undo_credit(ctx: StepContext, cmd: Any) -> dict[str, Any]:
    """Take the credited amount back."""
    return await _work(ctx, cmd, "credit reversed")


@transfer.step(region="ap", retry=_RETRY)
async def notify(ctx: StepContext, cmd: Any) -> dict[str, Any]:
    """Tell both account holders."""
    return await _work(ctx, cmd, "notified")


app = App([order, transfer])
"""Every demo saga; ``whizorch worker|orchestrator --app whizorch.demo.apps:app``."""


@attrs.frozen(kw_only=True)
class Job:
    """One saga the demo submits, and the outcome it is designed to have."""

    saga: Saga
    """The saga type."""
    input: dict[str, Any]
    """Its input (JSON)."""
    expect: str
    """``completed``, or ``compensated`` when a step is made to fail."""


def workload(seed: int, *, fail_share: float = 0.12, flaky_share: float = 0.15) -> Iterator[Job]:
    """An endless, deterministic stream of jobs: orders and transfers in turn;
    ``fail_share`` of them fail a step past its retries, ``flaky_share`` have a step
    that fails once and succeeds on retry."""
    rng = random.Random(seed)
    for n in itertools.count():
        saga = order if n % 2 == 0 else transfer
        steps = [s.name for s in saga.steps]
        if saga is order:
            cmd: dict[str, Any] = {"sku": f"sku-{rng.randrange(100):02d}", "qty": rng.randint(1, 3), "amount": rng.randint(5, 500)}
        else:
            cmd = {"src": f"eu-{rng.randrange(1000):03d}", "dst": f"us-{rng.randrange(1000):03d}", "amount": rng.randint(1, 900)}
        expect = "completed"
        if rng.random() < fail_share:
            cmd["fail_at"] = rng.choice(steps[1:])  # a later step: something to compensate
            expect = "compensated"
        if rng.random() < flaky_share:
            cmd["flaky"] = [rng.choice(steps)]
        yield Job(saga=saga, input=cmd, expect=expect)
