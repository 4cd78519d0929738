"""Published saga definitions: ``<ns>/def/<saga>/<version>``.

Orchestrators publish every version in their App when they start, and clients the
version they submit; a leader drives each saga with the version it is pinned to, from
its App when it has it, else from etcd, so any leader can drive any published version
(see docs/design.md, "Saga definitions and versions"). A definition is written
create-if-absent and never changed: the same version published with other steps is
refused with an error that says what to do.
"""

from __future__ import annotations

from whizorch.errors import ConfigError, DecodeError
from whizorch.etcd import Compare, EtcdClient, Op, RangeResult
from whizorch.saga._definition import App
from whizorch.saga._keys import Keys
from whizorch.saga._spec import SagaSpec

__all__ = ["Definitions", "publish"]


async def publish(client: EtcdClient, keys: Keys, spec: SagaSpec) -> None:
    """Write ``spec`` under its version unless it is there; a different definition
    already there under that version is a ConfigError naming the fix."""
    key = keys.definition(spec.name, spec.version)
    data = spec.to_json()
    res = await client.txn([Compare.create_revision(key, "==", 0)], [Op.put(key, data)], [Op.get(key)], idempotent=True)
    if res.succeeded:
        return
    got = res.responses[0]
    if isinstance(got, RangeResult) and got.kvs and got.kvs[0].value != data:
        try:
            same = SagaSpec.from_json(got.kvs[0].value) == spec
        except DecodeError:
            same = False
        if not same:
            raise ConfigError(
                f"saga {spec.name!r} version {spec.version!r} is already published with other steps or options: "
                "give the changed saga a new version (Saga(..., version=...)), or leave version= out to use a fingerprint",
                field="saga version", value=spec.version,
            )


class Definitions:
    """The definitions a leader drives sagas with: its App's, then etcd's (cached: a
    published definition never changes)."""

    def __init__(self, client: EtcdClient, keys: Keys, app: App) -> None:
        self.client = client
        self.keys = keys
        self.app = app
        self._cache: dict[tuple[str, str], SagaSpec] = {}

    async def publish_app(self) -> None:
        """Publish every saga and version of the App (create-if-absent)."""
        for saga in self.app.definitions():
            await publish(self.client, self.keys, saga.spec)

    async def get(self, name: str, version: str) -> SagaSpec | None:
        """The definition of ``name`` at ``version`` ("" : the App's current one, for
        records written before versions); None when nobody published it."""
        if not version:
            saga = self.app.get(name)
            return saga.spec if saga is not None else None
        saga = self.app.get(name, version)
        if saga is not None:
            return saga.spec
        spec = self._cache.get((name, version))
        if spec is None:
            res = await self.client.get(self.keys.definition(name, version))
            if not res.kvs:
                return None
            spec = SagaSpec.from_json(res.kvs[0].value)
            if (spec.name, spec.version) != (name, version):
                raise ConfigError(
                    f"the definition published as {name!r} version {version!r} names itself "
                    f"{spec.name!r} version {spec.version!r}", field="saga definition",
                )
            self._cache[(name, version)] = spec
        return spec

    async def current(self, name: str) -> SagaSpec | None:
        """The version a saga of type ``name`` submitted without one starts on: the
        App's current one, else the one published last; None when there is none."""
        saga = self.app.get(name)
        if saga is not None:
            return saga.spec
        res = await self.client.get(
            self.keys.definitions(name), prefix=True, sort_target="create", sort_order="descend", limit=1
        )
        if not res.kvs:
            return None
        version = res.kvs[0].key[len(self.keys.definitions(name)) :].decode(errors="replace")
        return await self.get(name, version)
