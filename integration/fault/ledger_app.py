"""The fault suite's workload: bank transfers whose effects land in etcd, fenced.

Loaded by the worker and orchestrator processes (``--app fault.ledger_app:app``).
Three saga types, ``transfer-eu-us``, ``transfer-us-ap`` and ``transfer-ap-eu``, each:

``debit``   (first region)   takes ``amount`` from ``from``;
``credit``  (second region)  gives it to ``to``; raises `AccountFrozen` (never retried)
                             when ``to`` is frozen, so the saga compensates by design;
``refund``  (debit's compensation) gives ``amount`` back to ``from``, only if the
                             debit happened, at most once.

Each effect is ONE txn through ``fenced_txn`` (it commits only while this run holds
its claim): create the effect key if absent (recording the run's token, attempt,
worker, pid) and compare-and-swap the balance on its mod_revision. A balance moved by
someone else is read again and the txn retried; an effect key already there means the
effect happened (by this run, when its outcome was unknown, or by an earlier one):
nothing more is done. Every effect attempt appends a line to
``$FAULT_LEDGER_DIR/effects-<pid>.jsonl``: ``start`` when the run begins, then
``committed`` (with the txn's revision), ``duplicate``, ``refused`` (by the fence),
``no_debit``, ``frozen`` or ``gave_up``. Small random delays around the effect let
faults land mid-step.

The handlers' etcd client is opened lazily, once per process, from
``$FAULT_LEDGER_ETCD`` (the same endpoints, in the same order, as the worker's).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from typing import Any

from whizorch import (
    ClosedError,
    Compare,
    ConfigError,
    DecodeError,
    EtcdClient,
    FencedError,
    Op,
    RequestTooLargeError,
    WhizorchError,
)
from whizorch.etcd import RangeResult
from whizorch.saga import App, Retry, Saga, StepContext
from whizorch.saga._fencing import fenced_txn

from .ledger import (
    DELAY_ENV,
    DIR_ENV,
    ETCD_ENV,
    PREFIX_ENV,
    ROUTES,
    account_key,
    effect_key,
    frozen_key,
    saga_name,
)

__all__ = ["AccountFrozen", "app"]

STEP_TIMEOUT_S = 10.0
RETRY = Retry(attempts=10, backoff_s=0.1, max_delay_s=1.0)
"""A step's runs: enough that one fault at a time never exhausts them."""


class AccountFrozen(Exception):
    """The designed failure: the target account is frozen (never retried)."""


_client: EtcdClient | None = None
_client_lock = asyncio.Lock()


async def _etcd() -> EtcdClient:
    global _client
    async with _client_lock:
        if _client is None or not _client.is_open:
            client = EtcdClient(os.environ[ETCD_ENV], timeout_s=1.5, connect_timeout_s=1.0, retry_deadline_s=3.0)
            await client.open()
            _client = client
    return _client


def _prefix() -> str:
    return os.environ.get(PREFIX_ENV, "ledger/")


def _note(ctx: StepContext, name: str, event: str, **extra: Any) -> None:
    """One JSONL line (one O_APPEND write, so a killed writer tears at most this line)."""
    where = os.environ.get(DIR_ENV)
    if not where:
        return
    line = {
        "t": round(time.time(), 4), "pid": os.getpid(), "worker": ctx.worker, "region": ctx.region,
        "saga_id": ctx.saga_id, "saga": ctx.saga, "name": name, "step": ctx.step_index,
        "kind": "compensate" if ctx.compensating else "run", "attempt": ctx.attempt, "token": ctx.fence_token,
        "event": event, **extra,
    }
    fd = os.open(os.path.join(where, f"effects-{os.getpid()}.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


async def _pause() -> None:
    await asyncio.sleep(random.uniform(0.0, float(os.environ.get(DELAY_ENV, "0.2"))))  # ok: simulated work, so faults land mid-step


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, WhizorchError) and not isinstance(exc, (FencedError, ConfigError, RequestTooLargeError, DecodeError, ClosedError))


async def _retrying(ctx: StepContext, name: str, what: str, call: Any) -> Any:
    """``await call()``, retried on etcd trouble while the run may still act."""
    delay = 0.05
    while True:
        try:
            return await call()
        except Exception as exc:
            if not _transient(exc):
                raise
            if ctx.remaining_s <= delay:
                _note(ctx, name, "gave_up", detail=f"{what}: {type(exc).__name__}: {exc}"[:300])
                raise
            await asyncio.sleep(delay)  # ok: back off before trying etcd again
            delay = min(delay * 2, 0.5)


async def _apply(ctx: StepContext, name: str, account: str, delta: int, *, requires: str | None = None) -> str:
    """Apply one effect exactly once, fenced; returns the event noted."""
    client = await _etcd()
    prefix = _prefix()
    effect = effect_key(prefix, ctx.saga_id, name)
    acct = account_key(prefix, account)
    record = json.dumps({
        "token": ctx.fence_token, "attempt": ctx.attempt, "worker": ctx.worker, "pid": os.getpid(),
        "account": account, "delta": delta, "kind": "compensate" if ctx.compensating else "run",
    })
    while True:
        cur = await _retrying(ctx, name, "read balance", lambda: client.get(acct))
        if not cur.kvs:
            raise RuntimeError(f"account {account!r} does not exist")
        kv = cur.kvs[0]
        compare = [Compare.create_revision(effect, "==", 0), Compare.mod_revision(acct, "==", kv.mod_revision)]
        failure = [Op.get(effect)]
        if requires is not None:
            compare.append(Compare.create_revision(requires, ">", 0))
            failure.append(Op.get(requires))
        success = [Op.put(effect, record), Op.put(acct, str(int(kv.value) + delta))]
        try:
            res = await _retrying(
                ctx, name, "effect txn", lambda c=compare, s=success, f=failure: fenced_txn(client, ctx, c, s, f, idempotent=True)
            )
        except FencedError as exc:
            _note(ctx, name, "refused", detail=str(exc)[:300])
            raise
        if res.succeeded:
            _note(ctx, name, "committed", revision=res.header.revision, account=account, delta=delta)
            return "committed"
        existing = res.responses[0]
        if isinstance(existing, RangeResult) and existing.kvs:
            other = json.loads(existing.kvs[0].value)
            if other.get("token") == ctx.fence_token:  # an earlier send of this very txn landed
                _note(ctx, name, "committed", revision=existing.kvs[0].create_revision, account=account, delta=delta,
                      detail="confirmed after a resend")
                return "committed"
            _note(ctx, name, "duplicate", detail=f"already applied by token {other.get('token')} "
                  f"(attempt {other.get('attempt')}, pid {other.get('pid')}) at rev {existing.kvs[0].create_revision}")
            return "duplicate"
        if requires is not None:
            needed = res.responses[1]
            if isinstance(needed, RangeResult) and not needed.kvs:
                _note(ctx, name, "no_debit")
                return "no_debit"
        # the balance moved under us: read it again and retry the compare-and-swap


async def debit(ctx: StepContext, t: dict[str, Any]) -> dict[str, Any]:
    _note(ctx, "debit", "start")
    await _pause()
    done = await _apply(ctx, "debit", t["from"], -int(t["amount"]))
    await _pause()
    return {"debit": done}


async def refund(ctx: StepContext, t: dict[str, Any]) -> dict[str, Any]:
    _note(ctx, "refund", "start")
    await _pause()
    done = await _apply(ctx, "refund", t["from"], int(t["amount"]), requires=effect_key(_prefix(), ctx.saga_id, "debit"))
    await _pause()
    return {"refund": done}


async def credit(ctx: StepContext, t: dict[str, Any]) -> dict[str, Any]:
    _note(ctx, "credit", "start")
    await _pause()
    client = await _etcd()
    frozen = await _retrying(ctx, "credit", "read frozen", lambda: client.get(frozen_key(_prefix(), t["to"])))
    if frozen.kvs:
        _note(ctx, "credit", "frozen")
        raise AccountFrozen(f"account {t['to']} is frozen")
    done = await _apply(ctx, "credit", t["to"], int(t["amount"]))
    await _pause()
    return {"credit": done}


def _transfer(source_region: str, target_region: str) -> Saga:
    saga = Saga(saga_name(source_region, target_region), max_failovers=10)
    retry = Retry(attempts=RETRY.attempts, backoff_s=RETRY.backoff_s, max_delay_s=RETRY.max_delay_s, give_up_on=(AccountFrozen,))
    step = saga.step(name="debit", region=source_region, retry=retry, timeout_s=STEP_TIMEOUT_S)(debit)
    step.compensate(retry=Retry(attempts=30, backoff_s=0.1, max_delay_s=1.0), timeout_s=STEP_TIMEOUT_S)(refund)
    saga.step(name="credit", region=target_region, retry=retry, timeout_s=STEP_TIMEOUT_S)(credit)
    return saga


app = App([_transfer(src, dst) for src, dst in ROUTES])
"""What every worker and orchestrator of the suite loads."""
