"""The one seam where gRPC errors become whizorch errors.

Nothing above this module sees ``grpc.RpcError``: every unary call and every stream
(watch, keepalive) runs inside :func:`mapped`, which translates what grpc.aio raises
(``RpcError``, and the non-``RpcError`` failures of a broken call) and raises the
whizorch error ``from`` it. The translation decides two things the retry logic needs:

* ``safe_to_retry``: the request certainly did not take effect (it never left, or etcd
  refused it before proposing it to Raft), so it may be sent again, writes included;
* whether a write's outcome is unknown (:class:`OutcomeUnknownError`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import grpc
import grpc.aio

from whizorch.errors import (
    AuthError,
    CompactedError,
    ConfigError,
    EtcdError,
    EtcdUnavailableError,
    LeaseNotFoundError,
    NoSpaceError,
    OutcomeUnknownError,
    RequestTooLargeError,
    WhizorchError,
)

__all__ = [
    "broken_call",
    "endpoint_failed",
    "is_already_exists",
    "is_not_found",
    "is_not_granted",
    "is_not_leader",
    "is_safe_to_retry",
    "is_token_expired",
    "mapped",
    "token_refused",
    "translate",
    "unavailable",
]

# Refusals etcd makes before a request reaches Raft: never applied.
_REFUSED_BEFORE_PROPOSE = (
    "etcdserver: no leader",  # with hasleader metadata the interceptor refuses up front
    "etcdserver: too many requests",
    "etcdserver: not capable",
    "etcdserver: rpc not supported for learner",
    "etcdserver: invalid auth token",
    "etcdserver: revision of auth store is old",
    "etcdserver: not leader",  # a leader-only call (MoveLeader) reached a follower
)
# Transport failures that mean the request never reached a server.
_NOT_SENT = (
    "failed to connect",
    "connection refused",
    "connect failed",
    "no such host",
    "dns resolution failed",
    "name resolution failure",
)


def _details(exc: grpc.RpcError) -> str:
    try:
        return str(exc.details() or "")
    except Exception:  # pragma: no cover - defensive: RpcError without details
        return str(exc)


def _code(exc: grpc.RpcError) -> grpc.StatusCode:
    try:
        code = exc.code()
    except Exception:  # pragma: no cover
        return grpc.StatusCode.UNKNOWN
    return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN


def translate(
    exc: grpc.RpcError, *, endpoint: str | None, write: bool, method: str
) -> WhizorchError:
    """Map a gRPC error to whizorch's tree.

    ``write`` says whether the request could change state: then a failure after sending
    becomes :class:`OutcomeUnknownError` (never replayed blindly).
    """
    code = _code(exc)
    details = _details(exc)
    low = details.lower()
    fields = {"endpoint": endpoint, "code": code.name, "method": method}
    not_applied = any(s in low for s in _REFUSED_BEFORE_PROPOSE) or any(s in low for s in _NOT_SENT)

    err: WhizorchError
    if code == grpc.StatusCode.OUT_OF_RANGE and "compacted" in low:
        err = CompactedError(f"etcd: {details}", **fields)
    elif code == grpc.StatusCode.INVALID_ARGUMENT:
        if "too large" in low:
            err = RequestTooLargeError(f"etcd refused the request: {details}", **fields)
        elif "authentication failed" in low or "user name is empty" in low:
            # "user name is empty": auth is on and the request carried no token
            err = AuthError(f"etcd: {details}", **fields)
        else:
            err = ConfigError(f"etcd refused the request: {details}", **fields)
    elif code == grpc.StatusCode.FAILED_PRECONDITION and "bad leader transferee" in low:
        # MoveLeader to a member id that is not a voting member (absent, or a learner)
        err = ConfigError(
            f"etcd refused the leader transfer: {details} (the target must be a voting member)",
            **fields,
        )
    elif code == grpc.StatusCode.FAILED_PRECONDITION and "not leader" in low:
        err = EtcdUnavailableError(f"etcd: {details}", **fields)
    elif code == grpc.StatusCode.NOT_FOUND and "lease" in low:
        err = LeaseNotFoundError(f"etcd: {details}", **fields)
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in low:
        # gRPC's own message limit (etcd's is --max-request-bytes + 512 KiB): refused
        # before any handler ran, and resending cannot help
        err = RequestTooLargeError(f"etcd refused the request: {details}", **fields)
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED and "space" in low:
        err = NoSpaceError(f"etcd: {details}", **fields)
    elif code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or (
        code == grpc.StatusCode.FAILED_PRECONDITION and "auth" in low
    ):
        err = AuthError(f"etcd: {details}", **fields)
    elif code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.CANCELLED,
    ):
        if write and not not_applied:
            err = OutcomeUnknownError(
                f"{method} may or may not have been applied: {details or code.name}", **fields
            )
        else:
            err = EtcdUnavailableError(f"etcd unavailable: {details or code.name}", **fields)
    else:
        err = EtcdError(f"etcd error: {details or code.name}", **fields)
    err._safe_to_retry = not_applied or (not write and isinstance(err, EtcdUnavailableError))
    err._token_expired = "invalid auth token" in low or "auth store is old" in low
    err._endpoint_failed = not_applied or code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    )
    return err


def is_safe_to_retry(err: BaseException) -> bool:
    """True when the failed request certainly did not take effect (or was a read)."""
    return isinstance(err, WhizorchError) and err._safe_to_retry


def is_not_leader(err: BaseException) -> bool:
    """True when a call only etcd's Raft leader serves (MoveLeader) reached a member
    that does not lead, or no longer does: find the leader again and resend."""
    return (
        isinstance(err, EtcdUnavailableError)
        and err.code == grpc.StatusCode.FAILED_PRECONDITION.name
        and "not leader" in err.message.lower()
    )


def _precondition(err: BaseException, *phrases: str) -> bool:
    if not isinstance(err, EtcdError) or err.code != grpc.StatusCode.FAILED_PRECONDITION.name:
        return False
    low = err.message.lower()
    return any(p in low for p in phrases)


def is_already_exists(err: BaseException) -> bool:
    """True when an auth admin call found its user or role already there ("user name
    already exists", "role name already exists"): what an idempotent re-run expects."""
    return _precondition(err, "name already exists")


def is_not_found(err: BaseException) -> bool:
    """True when an auth admin call named a user or role etcd does not have ("user name
    not found", "role name not found")."""
    return _precondition(err, "name not found")


def is_not_granted(err: BaseException) -> bool:
    """True when a revoke named a permission the role does not have ("permission is
    not granted to the role") or a role the user does not have."""
    return _precondition(err, "not granted to the")


def is_token_expired(err: BaseException) -> bool:
    """True when etcd rejected the auth token (expired): authenticate again, resend."""
    return isinstance(err, WhizorchError) and err._token_expired


def endpoint_failed(err: BaseException) -> bool:
    """True when the endpoint itself looks unhealthy and the next one should be tried."""
    return isinstance(err, WhizorchError) and err._endpoint_failed


def unavailable(message: str, **fields: object) -> EtcdUnavailableError:
    """A pre-send failure (no endpoint ready): always safe to retry."""
    err = EtcdUnavailableError(message, **fields)
    err._safe_to_retry = True
    err._endpoint_failed = True
    return err


def token_refused(message: str, **fields: object) -> AuthError:
    """etcd refused a request made with an auth token that may have expired (a watch
    create answered "invalid auth token", or on etcd 3.5.1 "permission denied"):
    authenticate again and resend; nothing was applied."""
    err = AuthError(message, **fields)
    err._safe_to_retry = True
    err._token_expired = True
    err._endpoint_failed = False
    return err


# what grpc.aio raises, besides grpc.RpcError, from a call whose stream or channel
# broke under it: "RPC already finished" from call.write() after the member serving the
# stream died, or a usage error from a call on a channel being torn down
_BROKEN_CALL = (asyncio.InvalidStateError, grpc.aio.UsageError)


def broken_call(
    exc: BaseException, *, endpoint: str | None, write: bool, method: str
) -> WhizorchError | None:
    """Translate a non-``RpcError`` failure of a gRPC call, or None to let it through.

    A ``CancelledError`` is the transport's only when the running task is not being
    cancelled (grpc.aio raises it to every awaiter of a call that was torn down);
    a real cancellation of the caller always propagates.
    """
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        if task is None or task.cancelling():
            return None
        reason = "the call was torn down by the transport"
    elif isinstance(exc, _BROKEN_CALL):
        reason = f"the call's stream broke ({type(exc).__name__}: {exc})"
    else:
        return None
    fields = {"endpoint": endpoint, "method": method}
    err: WhizorchError
    if write:
        err = OutcomeUnknownError(f"{method} may or may not have been applied: {reason}", **fields)
    else:
        err = EtcdUnavailableError(f"etcd unavailable: {reason}", **fields)
    err._safe_to_retry = not write
    err._token_expired = False
    err._endpoint_failed = True
    return err


@contextlib.contextmanager
def mapped(*, endpoint: str | None, method: str, write: bool) -> Iterator[None]:
    """Run one gRPC call (or a stream's reads and writes) with its errors translated:
    ``with mapped(endpoint=e, method=m.path, write=False): resp = await stub(req)``.

    ``write`` says whether the call could change state (a stream never does: a lost
    keepalive or watch message is sent again). A real cancellation of the caller
    passes through unchanged (see :func:`broken_call`).
    """
    try:
        yield
    except grpc.RpcError as exc:
        raise translate(exc, endpoint=endpoint, write=write, method=method) from exc
    except (asyncio.CancelledError, *_BROKEN_CALL) as exc:
        broken = broken_call(exc, endpoint=endpoint, write=write, method=method)
        if broken is None:
            raise
        raise broken from exc
