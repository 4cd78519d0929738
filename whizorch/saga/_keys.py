"""The key layout under one namespace (docs/design.md, "Key schema").

Pure functions of the namespace: the keys each role reads, writes and watches, and
the parsers that turn a watched key back into what it names.
"""

from __future__ import annotations

import re

import attrs

from whizorch.errors import ConfigError, DecodeError
from whizorch.saga._model import StepKind, step_kind

__all__ = ["SAGA_ID", "Keys"]

SAGA_ID = r"^[A-Za-z0-9_.:\-]{1,200}$"
_SAGA_ID = re.compile(SAGA_ID)
_HEX = re.compile(r"^[0-9a-f]{1,16}$")


@attrs.frozen
class Keys:
    """The key layout under one namespace."""

    ns: str = "whizorch"

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.ns, str) or not self.ns or self.ns.endswith("/"):
            raise ConfigError("namespace must be a non-empty string without a trailing '/'", field="namespace", value=self.ns)

    @property
    def leader(self) -> str:
        """Prefix of every shard's election (``<ns>/leader/<shard>/<lease hex>``)."""
        return f"{self.ns}/leader"

    @property
    def root(self) -> bytes:
        """The prefix of every key of the namespace (``<ns>/``)."""
        return f"{self.ns}/".encode()

    def shard_leader(self, shard: int) -> str:
        """The election of one shard (``etcdctl elect -l <ns>/leader/<shard>`` follows it)."""
        return f"{self.ns}/leader/{shard}"

    @property
    def meta(self) -> bytes:
        """The namespace's fixed settings (``{"schema": 3, "shards": N}``), written once."""
        return f"{self.ns}/meta".encode()

    def orchestrator(self, lease: int) -> bytes:
        """A live orchestrator's membership key, on its session's lease."""
        return f"{self.ns}/orch/{lease:x}".encode()

    def input(self, saga_id: str) -> bytes:
        """The saga's input, moved from its submission by the adoption."""
        return f"{self.ns}/input/{saga_id}".encode()

    def live(self, shard: int, saga_id: str) -> bytes:
        """The in-flight index entry of a saga (created by the adoption, deleted by the
        write that makes the saga final)."""
        return f"{self.ns}/live/{shard}/{saga_id}".encode()

    def live_shard(self, shard: int) -> bytes:
        """Prefix of one shard's sagas in flight."""
        return f"{self.ns}/live/{shard}/".encode()

    def done(self, shard: int, finished_ms: int, saga_id: str) -> bytes:
        """The retention index entry of a finished saga, ordered by its end time."""
        return f"{self.ns}/done/{shard}/{finished_ms:015d}/{saga_id}".encode()

    def done_shard(self, shard: int) -> bytes:
        """Prefix of one shard's finished sagas, oldest first."""
        return f"{self.ns}/done/{shard}/".encode()

    def definition(self, saga: str, version: str) -> bytes:
        """A published saga definition (``_spec.py``), create-if-absent, immutable."""
        return f"{self.ns}/def/{saga}/{version}".encode()

    def definitions(self, saga: str) -> bytes:
        """Prefix of every published version of ``saga``."""
        return f"{self.ns}/def/{saga}/".encode()

    def prefix(self, kind: str) -> bytes:
        return f"{self.ns}/{kind}/".encode()

    def submit(self, saga_id: str) -> bytes:
        return f"{self.ns}/submit/{saga_id}".encode()

    def saga(self, saga_id: str) -> bytes:
        return f"{self.ns}/saga/{saga_id}".encode()

    def cancel(self, saga_id: str) -> bytes:
        return f"{self.ns}/cancel/{saga_id}".encode()

    def task(self, region: str, worker: str, saga_id: str, step: int, kind: StepKind, attempt: int) -> bytes:
        """A run put on the chosen worker's lease (``worker``: the lease in hex): the
        task is the claim, and its create revision the run's fencing token."""
        return f"{self.ns}/task/{region}/{worker}/{saga_id}/{step}/{kind}-{attempt}".encode()

    def region_tasks(self, region: str) -> bytes:
        return f"{self.ns}/task/{region}/".encode()

    def worker_tasks(self, region: str, lease: int) -> bytes:
        """Prefix of the tasks put on one worker's lease (what that worker watches)."""
        return f"{self.ns}/task/{region}/{lease:x}/".encode()

    def result(self, region: str, saga_id: str, step: int, kind: StepKind, attempt: int) -> bytes:
        return f"{self.ns}/run/{region}/{saga_id}/{step}/{kind}-{attempt}".encode()

    def results(self, region: str, saga_id: str) -> bytes:
        """Prefix of every result the saga's runs in ``region`` recorded."""
        return f"{self.ns}/run/{region}/{saga_id}/".encode()

    def region_results(self, region: str) -> bytes:
        return f"{self.ns}/run/{region}/".encode()

    def region(self, region: str, lease: int) -> bytes:
        return f"{self.ns}/region/{region}/{lease:x}".encode()

    def region_workers(self, region: str) -> bytes:
        """Prefix of the registrations of a region's workers."""
        return f"{self.ns}/region/{region}/".encode()

    @property
    def latency(self) -> bytes:
        return f"{self.ns}/latency".encode()

    def quarantine(self, digest: str) -> bytes:
        return f"{self.ns}/quarantine/{digest}".encode()

    def region_of(self, key: bytes) -> str:
        """The region of a ``region/<region>/<lease>`` key."""
        parts = self.split(key, "region")
        if len(parts) != 2 or not parts[0]:
            raise DecodeError(f"{key!r} is not a region/<region>/<lease> key", field="key", value=key)
        return parts[0]

    def split(self, key: bytes, kind: str) -> list[str]:
        """The parts of a key after ``<ns>/<kind>/`` (a DecodeError for a key that is
        not UTF-8 or not of that kind: such keys are quarantined, never fatal)."""
        try:
            text = key.decode()
        except UnicodeDecodeError:
            raise DecodeError(f"key {key!r} is not UTF-8", field="key", value=key) from None
        head = f"{self.ns}/{kind}/"
        if not text.startswith(head):
            raise DecodeError(f"{text!r} is not a {kind} key", field="key", value=key)
        return text[len(head) :].split("/")

    def saga_id(self, key: bytes, kind: str) -> str:
        """The saga id of a ``<kind>/<saga id>`` key, checked like SagaClient checks it."""
        parts = self.split(key, kind)
        if len(parts) != 1 or not _SAGA_ID.fullmatch(parts[0]):
            raise DecodeError(f"{key!r} does not name a valid saga id", field="key", value=key)
        return parts[0]

    def run_key(self, key: bytes) -> tuple[str, str, int, StepKind, int]:
        """(region, saga id, step index, kind, attempt) of a result key
        ``run/<region>/<saga>/<step>/<kind>-<attempt>``."""
        parts = self.split(key, "run")
        if len(parts) != 4 or not parts[0]:
            raise DecodeError(f"{key!r} is not a run/<region>/<saga>/<step>/<kind>-<attempt> key", field="key", value=key)
        region, sid, step, tag = parts
        return (region, sid, *self._run_parts(key, sid, step, tag))

    def task_key(self, key: bytes) -> tuple[str, str, str, int, StepKind, int]:
        """(region, worker lease hex, saga id, step index, kind, attempt) of a task key
        ``task/<region>/<lease hex>/<saga>/<step>/<kind>-<attempt>``."""
        parts = self.split(key, "task")
        if len(parts) != 5 or not parts[0] or not _HEX.fullmatch(parts[1]):
            raise DecodeError(
                f"{key!r} is not a task/<region>/<lease hex>/<saga>/<step>/<kind>-<attempt> key", field="key", value=key
            )
        region, worker, sid, step, tag = parts
        return (region, worker, sid, *self._run_parts(key, sid, step, tag))

    @staticmethod
    def _run_parts(key: bytes, sid: str, step: str, tag: str) -> tuple[int, StepKind, int]:
        text, _, attempt = tag.rpartition("-")
        kind = step_kind(text)
        if (
            not _SAGA_ID.fullmatch(sid) or not (step.isascii() and step.isdigit())
            or kind is None or not (attempt.isascii() and attempt.isdigit())
        ):
            raise DecodeError(f"{key!r} does not name a saga, a step and a <run|compensate>-<attempt>", field="key", value=key)
        return int(step), kind, int(attempt)
