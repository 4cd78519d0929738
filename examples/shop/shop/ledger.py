"""The shop's payments: a SQLite database, fenced per step with the run's token.

``SHOP_DB`` names the file (default ``shop.db`` in the current directory), so every
worker process of a machine shares it. Each write keeps, per step (its idempotency
key), the largest fencing token that acted, and refuses a smaller one in the same
transaction: a stale run that wakes up after a newer run of the same step has acted
changes nothing.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from whizorch.errors import FencedError
from whizorch.saga import StepContext

OPENING_BALANCE = 100
"""Every account starts with this much (an example needs no sign-up)."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS account (id TEXT PRIMARY KEY, balance INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS payment (
    key TEXT PRIMARY KEY,        -- the step's idempotency key: one payment per order
    account TEXT NOT NULL,
    amount INTEGER NOT NULL,
    refunded INTEGER NOT NULL DEFAULT 0,
    fence INTEGER NOT NULL       -- the largest fencing token that acted on it
);
"""


@contextmanager
def transaction() -> Iterator[sqlite3.Connection]:
    """One write transaction on the shop's database (created on first use)."""
    conn = sqlite3.connect(os.environ.get("SHOP_DB", "shop.db"), timeout=30, isolation_level=None)
    try:
        conn.executescript(SCHEMA)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()


def _claim(conn: sqlite3.Connection, ctx: StepContext) -> tuple[int, int] | None:
    """The step's payment row as (amount, refunded), after checking that no newer run
    of this step acted on it; None when there is none yet."""
    row = conn.execute("SELECT amount, refunded, fence FROM payment WHERE key = ?", (ctx.idempotency_key,)).fetchone()
    if row is not None and row[2] > ctx.fence_token:
        raise FencedError(f"a newer run of {ctx.step} already acted", token=ctx.fence_token)
    return None if row is None else (row[0], row[1])


def charge(ctx: StepContext, account: str, amount: int) -> int:
    """Take ``amount`` from ``account`` once per order; return the balance left."""
    with transaction() as conn:
        conn.execute("INSERT OR IGNORE INTO account (id, balance) VALUES (?, ?)", (account, OPENING_BALANCE))
        if _claim(conn, ctx) is None:  # a retry after a success finds the row: no second charge
            conn.execute(
                "INSERT INTO payment (key, account, amount, fence) VALUES (?, ?, ?, ?)",
                (ctx.idempotency_key, account, amount, ctx.fence_token),
            )
            conn.execute("UPDATE account SET balance = balance - ? WHERE id = ?", (amount, account))
        else:
            conn.execute("UPDATE payment SET fence = ? WHERE key = ?", (ctx.fence_token, ctx.idempotency_key))
        (balance,) = conn.execute("SELECT balance FROM account WHERE id = ?", (account,)).fetchone()
        return int(balance)


def refund(ctx: StepContext, account: str) -> None:
    """Give back what ``charge`` took for this order, once; nothing if it took nothing."""
    with transaction() as conn:
        found = _claim(conn, ctx)
        if found is None or found[1]:
            return
        conn.execute("UPDATE payment SET refunded = 1, fence = ? WHERE key = ?", (ctx.fence_token, ctx.idempotency_key))
        conn.execute("UPDATE account SET balance = balance + ? WHERE id = ?", (found[0], account))


def balance(account: str) -> int:
    """The account's balance (the opening balance before its first order)."""
    with transaction() as conn:
        row = conn.execute("SELECT balance FROM account WHERE id = ?", (account,)).fetchone()
        return OPENING_BALANCE if row is None else int(row[0])
