"""whizorch's errors: one root, structured fields, never a raw ``grpc.RpcError``.

::

    WhizorchError
    ├── ConfigError (ValueError)              misuse: a bad argument or configuration
    │   └── SagaIdConflictError               a saga id reused with another type or input
    ├── RequestTooLargeError (ValueError)     a value or request past a size limit
    ├── DecodeError (ValueError)              data read from etcd that does not decode
    ├── ClosedError (RuntimeError)            object used before open or after close
    ├── EtcdError                             anything etcd or the transport reported
    │   ├── EtcdUnavailableError              no endpoint answered, or no etcd leader
    │   ├── OutcomeUnknownError               a write may or may not have committed
    │   ├── AuthError                         bad credentials, permission denied
    │   ├── CompactedError                    revision compacted: re-read, then resume
    │   ├── LeaseNotFoundError                lease expired or revoked at the server
    │   └── NoSpaceError                      etcd's quota alarm: only reads/deletes work
    └── CoordinationError                     a coordination primitive's promise broke
        ├── SessionLostError                  keepalive failed past its deadline
        ├── LockTimeoutError (TimeoutError)   lock/campaign not won in time
        ├── NotOwnerError                     lock or leadership no longer held
        │   └── FencedError                   a guarded write failed its fence
        ├── ConflictError                     compare-and-set lost to another writer
        └── QuorumError                       etcd could not commit within the deadline
    SagaFailedError                           a saga ended compensated or failed

Every error carries the structured fields that apply (``key``, ``revision``,
``lease``, ``endpoint`` ...) as declared attributes (None when they do not apply), and
a message that names them. Other context given to the constructor is shown in the
message and kept in ``fields``. Retrying can fix none of ``ConfigError``,
``RequestTooLargeError`` and ``DecodeError``: the engine fails what they stop, by type.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from whizorch.saga import SagaResult

__all__ = [
    "AuthError",
    "ClosedError",
    "CompactedError",
    "ConfigError",
    "ConflictError",
    "CoordinationError",
    "DecodeError",
    "EtcdError",
    "EtcdUnavailableError",
    "FencedError",
    "LeaseNotFoundError",
    "LockTimeoutError",
    "NoSpaceError",
    "NotOwnerError",
    "OutcomeUnknownError",
    "QuorumError",
    "RequestTooLargeError",
    "SagaFailedError",
    "SagaIdConflictError",
    "SessionLostError",
    "WhizorchError",
]


def _show(value: object) -> str:
    if isinstance(value, bytes):
        try:
            return repr(value.decode())
        except UnicodeDecodeError:
            return repr(value)
    if isinstance(value, int) and value > 0xFFFF:
        return f"{value} (0x{value:x})"
    return repr(value)


def _public_annotations(cls: type) -> frozenset[str]:
    """The attributes a class itself declares (its annotations), private ones left out."""
    return frozenset(name for name in inspect.get_annotations(cls) if not name.startswith("_"))


class WhizorchError(Exception):
    """Root of every error whizorch raises.

    Keyword fields given to the constructor are appended to the message, so logs show
    e.g. ``key='locks/a' lease=7587...``; those the class declares (below, and on the
    subclasses) are also attributes.
    """

    key: bytes | str | None = None
    """The etcd key (or saga key) concerned."""
    revision: int | None = None
    lease: int | None = None
    """The lease id concerned."""
    endpoint: str | None = None
    """The etcd endpoint that answered (or failed)."""
    code: str | None = None
    """The gRPC status name, for errors etcd or the transport reported."""
    method: str | None = None
    """The etcd method path (``/etcdserverpb.KV/Put``)."""
    saga_id: str | None = None
    step: str | int | None = None
    """A step's name or index."""
    region: str | None = None
    token: int | None = None
    """A fencing token (a lock's, a leader's or a run's)."""
    field: str | None = None
    """The argument, config field or payload field that is wrong."""
    value: object = None
    """The wrong value (when it can be shown)."""

    _declared: ClassVar[frozenset[str]] = frozenset()

    # set by the adapter's error seam (whizorch.etcd._errors) for its retry logic
    _safe_to_retry: bool = False
    _token_expired: bool = False
    _endpoint_failed: bool = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls._declared = cls._declared | _public_annotations(cls)

    def __init__(self, message: str, **fields: object) -> None:
        self.message = message
        self.fields = {k: v for k, v in fields.items() if v is not None}
        for name, value in fields.items():
            if name in self._declared:
                setattr(self, name, value)
        detail = " ".join(f"{k}={_show(v)}" for k, v in self.fields.items())
        super().__init__(f"{message} ({detail})" if detail else message)


WhizorchError._declared = _public_annotations(WhizorchError)


class ConfigError(WhizorchError, ValueError):
    """Misuse: a bad argument or configuration value; the message names the field."""

    source: str | None = None
    """Where a configuration value came from (a file, an environment variable)."""
    reason: str | None = None
    """Why the value is refused."""
    line: int | None = None
    """The line of a configuration file the error is on (when known)."""


class RequestTooLargeError(WhizorchError, ValueError):
    """A value or request is larger than its limit: etcd's request limit
    (``--max-request-bytes``, 1.5 MiB) or a payload limit such as ``max_payload_bytes``.
    Sending it again cannot succeed; ``size`` is its size in bytes when known."""

    size: int | None = None


class DecodeError(WhizorchError, ValueError):
    """Data read from etcd is not what whizorch writes there (not UTF-8, not the JSON
    expected, a key of the wrong shape, a schema this whizorch does not know).

    ``key`` names the etcd key when known and ``field`` the part that is wrong. The
    saga engine quarantines such input and goes on; reading it again cannot help.
    """


class SagaIdConflictError(ConfigError):
    """A submission reused a saga id that names a saga of another type, or with
    another input: submitting an id again is idempotent only with the same type and
    input (then it returns the existing saga's handle)."""

    saga: str | None = None
    """The saga type submitted now."""
    existing: str | None = None
    """The type the id was submitted with first."""
    txid: int | None = None
    """The first submission's transaction id."""


class ClosedError(WhizorchError, RuntimeError):
    """The object is not open: used before ``open()``/``async with`` or after close."""


class EtcdError(WhizorchError):
    """etcd or the transport to it reported an error.

    ``code`` is the gRPC status name and ``endpoint`` the member that answered, when
    known.
    """

    endpoints: tuple[str, ...] | None = None
    """Every endpoint tried, when none answered."""


class EtcdUnavailableError(EtcdError):
    """No endpoint answered in time, or the member answering has no leader."""


class OutcomeUnknownError(EtcdError):
    """A write was sent but its outcome is unknown: it may have committed.

    whizorch never replays such a write blindly; re-read the key to learn the outcome.
    """


class AuthError(EtcdError):
    """Authentication failed or the user lacks permission."""


class CompactedError(EtcdError):
    """The requested revision has been compacted away.

    ``compact_revision`` is the oldest revision still available: re-read the state,
    then resume watching from the re-read's revision + 1.
    """

    compact_revision: int | None = None
    requested_revision: int | None = None


class LeaseNotFoundError(EtcdError):
    """The lease does not exist at the server (expired or revoked)."""


class NoSpaceError(EtcdError):
    """etcd raised its space quota alarm: only reads and deletes are accepted."""


class CoordinationError(WhizorchError):
    """A coordination primitive (session, lock, election, state) cannot keep a promise."""


class SessionLostError(CoordinationError):
    """The session's lease may have expired: everything it guarded is lost."""


class LockTimeoutError(CoordinationError, TimeoutError):
    """A lock or a campaign was not won before its timeout."""

    timeout_s: float | None = None


class NotOwnerError(CoordinationError):
    """The lock or leadership is no longer held by this owner."""


class FencedError(NotOwnerError):
    """A write guarded by a fencing token was rejected: the owner changed."""

    current_token: int | None = None
    """The token that holds now (when known)."""
    fence_key: bytes | None = None
    """The key whose create revision is the fence."""


class ConflictError(CoordinationError):
    """A compare-and-set found a different revision than expected."""

    expected_revision: int | None = None
    actual_revision: int | None = None


class QuorumError(CoordinationError):
    """etcd could not commit (or confirm a quorum) within the deadline."""


class SagaFailedError(WhizorchError):
    """A saga ended without completing (``status`` compensated or failed).

    ``result`` holds the full :class:`~whizorch.saga.SagaResult`; ``error`` is the
    saga's error.
    """

    status: str | None = None
    error: str | None = None
    result: SagaResult | None = None
