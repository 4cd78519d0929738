"""What a shard leader makes of what it reads: pure functions, no IO.

A result key becomes the machine's ``Result``; a successful run's output is learnt into
the saga's cache (the next steps' tasks carry it); a saga with no known definition gets
the reason it cannot be driven.
"""

from __future__ import annotations

from whizorch.errors import DecodeError
from whizorch.etcd import KeyValue
from whizorch.saga import _machine as m
from whizorch.saga._keys import Keys
from whizorch.saga._model import ResultPayload
from whizorch.saga.leader._cache import LeaderSaga

__all__ = ["learn_output", "result_event", "unknown_definition"]


def result_event(keys: Keys, kv: KeyValue) -> m.Result:
    """The machine's event for a result key (DecodeError when it does not parse)."""
    payload = ResultPayload.from_json(kv.value)
    region, _sid, step, kind, attempt = keys.run_key(kv.key)
    return m.Result(
        step, kind, attempt, payload.ok, kv.key.decode(), payload.error, payload.retryable, region,
        payload.error_type, payload.traceback,
    )


def learn_output(keys: Keys, entry: LeaderSaga, kv: KeyValue) -> None:
    """Keep a successful run's output in the saga's cache (a result that does not parse
    is skipped here: the result event quarantines it)."""
    try:
        payload = ResultPayload.from_json(kv.value)
        _region, _sid, index, kind, _attempt = keys.run_key(kv.key)
    except DecodeError:
        return
    if payload.ok and kind == m.RUN and entry.definition is not None:
        if 0 <= index < len(entry.definition.steps):
            name = entry.definition.steps[index].name
            entry.outputs[name] = payload.output
            entry.output_sizes[name] = len(kv.value)


def unknown_definition(name: str, version: str) -> str:
    """Why a saga cannot be driven: no definition of it is known."""
    if version:
        return (
            f"saga {name!r} version {version!r} is not published: no orchestrator's App holds it and no client "
            "submitted it with its Saga object"
        )
    return f"no saga type {name!r} is registered: add it to the App of your orchestrators (or submit it with its Saga object)"
