"""whizorch's errors: one root, structured fields, never a raw ``grpc.RpcError``.

::

    WhizorchError
    ├── ConfigError (ValueError)              bad argument or configuration
    │   ├── RequestTooLargeError              value/request past etcd's request limit
    │   └── SagaIdConflictError               a saga id reused with another type or input
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
``lease``, ``endpoint`` ...) as attributes, and a message that names them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "AuthError",
    "ClosedError",
    "CompactedError",
    "ConfigError",
    "ConflictError",
    "CoordinationError",
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


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        try:
            return repr(value.decode())
        except UnicodeDecodeError:
            return repr(value)
    if isinstance(value, int) and value > 0xFFFF:
        return f"{value} (0x{value:x})"
    return repr(value)


class WhizorchError(Exception):
    """Root of every error whizorch raises.

    Keyword fields given to the constructor become attributes and are appended to the
    message, so logs show e.g. ``key='locks/a' lease=7587...``.
    """

    # set by the adapter's error seam (whizorch.etcd._errors) for its retry logic
    _safe_to_retry: bool = False
    _token_expired: bool = False
    _endpoint_failed: bool = False

    def __init__(self, message: str, **fields: Any) -> None:
        self.message = message
        self.fields = {k: v for k, v in fields.items() if v is not None}
        for name, value in fields.items():
            setattr(self, name, value)
        detail = " ".join(f"{k}={_show(v)}" for k, v in self.fields.items())
        super().__init__(f"{message} ({detail})" if detail else message)

    if TYPE_CHECKING:
        # structured fields are set per instance (key, revision, lease, endpoint ...)
        def __getattr__(self, name: str) -> Any: ...


class ConfigError(WhizorchError, ValueError):
    """A bad argument or configuration value; the message names the field."""


class RequestTooLargeError(ConfigError):
    """The request is larger than etcd accepts (``--max-request-bytes``, 1.5 MiB)."""


class SagaIdConflictError(ConfigError):
    """A submission reused a saga id that names a saga of another type, or with
    another input: submitting an id again is idempotent only with the same type and
    input (then it returns the existing saga's handle). ``saga_id``, ``saga`` (the type
    submitted now), ``existing`` (the type submitted first) and ``txid`` (the first
    submission's) are attributes."""


class ClosedError(WhizorchError, RuntimeError):
    """The object is not open: used before ``open()``/``async with`` or after close."""


class EtcdError(WhizorchError):
    """etcd or the transport to it reported an error.

    ``code`` is the gRPC status name and ``endpoint`` the member that answered, when
    known.
    """


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


class NotOwnerError(CoordinationError):
    """The lock or leadership is no longer held by this owner."""


class FencedError(NotOwnerError):
    """A write guarded by a fencing token was rejected: the owner changed."""


class ConflictError(CoordinationError):
    """A compare-and-set found a different revision than expected."""


class QuorumError(CoordinationError):
    """etcd could not commit (or confirm a quorum) within the deadline."""


class SagaFailedError(WhizorchError):
    """A saga ended without completing (``status`` compensated or failed).

    ``result`` holds the full :class:`~whizorch.saga.SagaResult`.
    """
