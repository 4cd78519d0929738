"""The shop's order saga: stock in eu, payment in us, shipping from eu.

    reserve (eu)  ->  charge (us)  ->  ship (eu)
    release       <-  refund

Run it with ``whizorch worker --app shop.sagas:app ...`` (docs/guide/quickstart.md).
"""

from __future__ import annotations

import json
from typing import Any

from whizorch import Op
from whizorch.saga import App, Retry, Saga, StepContext, fenced_txn

from shop import ledger

order = Saga("order")

SHIPS_TO = {"fr", "de", "us"}
MAX_QTY = 10


class OutOfStock(Exception):
    """Retrying cannot help: the order asks for more than there is."""


class CannotShip(Exception):
    """No carrier serves the order's country."""


# A transient failure is retried (3 runs in all); OutOfStock is not.
@order.step(region="eu", retry=Retry(attempts=3, backoff_s=0.2, give_up_on=(OutOfStock,)))
async def reserve(ctx: StepContext, cmd: dict[str, Any]) -> dict[str, Any]:
    if cmd["qty"] > MAX_QTY:
        raise OutOfStock(f"only {MAX_QTY} of {cmd['sku']} in stock")
    if cmd.get("flaky") and ctx.attempt == 1:
        raise ConnectionError("the inventory service timed out")
    key = f"shop/reservations/{ctx.saga_id}"
    value = json.dumps({"sku": cmd["sku"], "qty": cmd["qty"]})
    # commits only while this run holds its claim: a stale run's write is refused
    await fenced_txn(ctx.etcd, ctx, [], [Op.put(key, value)])
    return {"reservation": key}


@reserve.compensate
async def release(ctx: StepContext, cmd: dict[str, Any]) -> None:
    await fenced_txn(ctx.etcd, ctx, [], [Op.delete(f"shop/reservations/{ctx.saga_id}")])


# A plain (sync) function: it runs in a worker thread, so blocking SQL is fine.
@order.step(region="us", timeout_s=10)
def charge(ctx: StepContext, cmd: dict[str, Any]) -> dict[str, Any]:
    left = ledger.charge(ctx, cmd["account"], cmd["amount"])
    return {"charged": cmd["amount"], "balance": left}


@charge.compensate
def refund(ctx: StepContext, cmd: dict[str, Any]) -> None:
    ledger.refund(ctx, cmd["account"])


@order.step(region="eu", retry=Retry(attempts=1))
async def ship(ctx: StepContext, cmd: dict[str, Any]) -> dict[str, Any]:
    if cmd["country"] not in SHIPS_TO:
        raise CannotShip(f"no carrier ships to {cmd['country']!r}")
    reservation = ctx.outputs["reserve"]["reservation"]  # earlier steps' outputs
    return {"parcel": f"{ctx.saga_id}-1", "from": reservation}


app = App([order])
