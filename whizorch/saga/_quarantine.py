"""Quarantine: what the leader does with input under the namespace it cannot parse.

A key that is not UTF-8 or not of the layout's shape, a value that is not the JSON
expected: logged once per key, counted by kind (``whizorch_quarantined_total``),
reported as an orchestrator event, and noted under ``<ns>/quarantine/<sha256 of the
key>`` (fenced, create-if-absent) so ``whizorch status`` lists it. Then skipped: such
input never stops the leader. A new leader learns the notes while it rebuilds, so a
key is reported once per deployment, not once per leadership.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from whizorch.errors import DecodeError
from whizorch.etcd import KeyValue
from whizorch.saga._events import InputQuarantined
from whizorch.saga._keys import Keys
from whizorch.saga._model import decode_json, encode_json

__all__ = ["Quarantine"]

log = logging.getLogger("whizorch.saga.orchestrator")


class Quarantine:
    """Keys quarantined so far, and their counts by kind."""

    def __init__(self, keys: Keys, node_id: str, emit: Callable[[InputQuarantined], None]) -> None:
        self._keys = keys
        self._node_id = node_id
        self._emit = emit
        self._seen: set[bytes] = set()
        self.counts: dict[str, int] = {}
        """Keys quarantined by this node, by kind (submit, saga, run, cancel, region)."""

    def reset(self) -> None:
        """A new leadership: forget the keys seen (the notes in etcd tell them again)."""
        self._seen.clear()

    def learn(self, note: KeyValue) -> None:
        """A note read while rebuilding: its key is not reported again."""
        with contextlib.suppress(DecodeError, KeyError, TypeError, AttributeError, UnicodeEncodeError):
            self._seen.add(str(decode_json(note.value, what="quarantine note")["raw_key"]).encode("latin-1"))

    def note(self, kind: str, kv: KeyValue, reason: str) -> tuple[bytes, bytes] | None:
        """Quarantine ``kv``: log, count and report it once; return the note to write
        (key, value), or None when the key was quarantined already."""
        if kv.key in self._seen:
            return None
        self._seen.add(kv.key)
        self.counts[kind] = self.counts.get(kind, 0) + 1
        shown = kv.key.decode(errors="backslashreplace")
        log.error("quarantined %s key %r (revision %d): %s", kind, kv.key, kv.mod_revision, reason)
        self._emit(InputQuarantined(what=kind, key=shown, reason=reason))
        value: dict[str, Any] = {
            "kind": kind,
            "key": shown,
            "raw_key": kv.key.decode("latin-1"),  # the exact bytes, for the next leader
            "revision": kv.mod_revision,
            "reason": reason[:2000],
            "at": round(time.time(), 3),
            "node": self._node_id,
        }
        return self._keys.quarantine(hashlib.sha256(kv.key).hexdigest()[:32]), encode_json(value, what="quarantine note")
