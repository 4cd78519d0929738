"""The ledger's key layout and the settings its handlers read from the environment.

Shared by the saga app the workers load (``ledger_app``) and by the suite that seeds
the accounts and reads the effects back; nothing here does IO or imports whizorch.

Keys, under a prefix (``ledger/`` by default)::

    <prefix>acct/<account>                  the balance, a decimal integer
    <prefix>frozen/<account>                present: credits to this account fail (by design)
    <prefix>effects/<saga id>/<effect>      debit | credit | refund: created once, in the
                                            same fenced txn that moves the balance
"""

from __future__ import annotations

__all__ = [
    "DELAY_ENV",
    "DIR_ENV",
    "ETCD_ENV",
    "PREFIX_ENV",
    "REGIONS",
    "ROUTES",
    "account_key",
    "effect_key",
    "frozen_key",
    "saga_name",
]

ETCD_ENV = "FAULT_LEDGER_ETCD"
"""Comma-separated endpoints the handlers' own etcd client uses (the worker's, same order)."""
PREFIX_ENV = "FAULT_LEDGER_PREFIX"
"""The ledger's key prefix (default ``ledger/``)."""
DIR_ENV = "FAULT_LEDGER_DIR"
"""Directory of the handlers' JSONL files (``effects-<pid>.jsonl``); unset: no lines."""
DELAY_ENV = "FAULT_LEDGER_DELAY_S"
"""Upper bound of the random delays around each effect (default 0.2 s)."""

REGIONS = ("eu", "us", "ap")
ROUTES = (("eu", "us"), ("us", "ap"), ("ap", "eu"))
"""(debit region, credit region) of the three transfer sagas."""


def saga_name(source_region: str, target_region: str) -> str:
    """The transfer saga that debits in one region and credits in another."""
    return f"transfer-{source_region}-{target_region}"


def account_key(prefix: str, account: str) -> str:
    return f"{prefix}acct/{account}"


def frozen_key(prefix: str, account: str) -> str:
    return f"{prefix}frozen/{account}"


def effect_key(prefix: str, saga_id: str, effect: str) -> str:
    return f"{prefix}effects/{saga_id}/{effect}"
