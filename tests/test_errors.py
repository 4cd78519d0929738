"""The gRPC -> whizorch error seam, and client-side checks made before anything is sent."""

from __future__ import annotations

import asyncio

import grpc
import grpc.aio
import pytest

from whizorch import (
    AuthError,
    ClosedError,
    CompactedError,
    ConfigError,
    DecodeError,
    EtcdClient,
    EtcdUnavailableError,
    LeaseNotFoundError,
    NoSpaceError,
    OutcomeUnknownError,
    RequestTooLargeError,
    WhizorchError,
)
from whizorch.errors import FencedError, SagaFailedError
from whizorch.etcd import CallTiming
from whizorch.etcd._errors import (
    endpoint_failed,
    is_safe_to_retry,
    is_token_expired,
    mapped,
    translate,
)


def rpc_error(code: grpc.StatusCode, details: str) -> grpc.RpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


def tr(code: grpc.StatusCode, details: str, *, write: bool) -> WhizorchError:
    return translate(rpc_error(code, details), endpoint="127.0.0.1:2379", write=write, method="/etcdserverpb.KV/Put")


def test_timeout_of_a_write_is_outcome_unknown_and_not_retried() -> None:
    """A write that timed out may have committed: OutcomeUnknownError, never resent."""
    err = tr(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", write=True)
    assert isinstance(err, OutcomeUnknownError)
    assert not is_safe_to_retry(err)
    assert err.endpoint == "127.0.0.1:2379"


def test_timeout_of_a_read_is_retryable() -> None:
    """A read that timed out is EtcdUnavailableError and safe to resend."""
    err = tr(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", write=False)
    assert isinstance(err, EtcdUnavailableError) and is_safe_to_retry(err)


def test_no_leader_refusal_is_safe_even_for_writes() -> None:
    """'no leader' (hasleader metadata) is refused before Raft: a write may be resent elsewhere."""
    err = tr(grpc.StatusCode.UNAVAILABLE, "etcdserver: no leader", write=True)
    assert isinstance(err, EtcdUnavailableError)
    assert is_safe_to_retry(err) and endpoint_failed(err)


def test_connection_refused_is_safe_even_for_writes() -> None:
    """A connection that never opened sent nothing: safe to resend."""
    err = tr(grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; Connection refused", write=True)
    assert is_safe_to_retry(err)


def test_etcd_request_timeout_of_a_write_is_unknown() -> None:
    """'request timed out' from etcd means the proposal may still commit."""
    err = tr(grpc.StatusCode.UNAVAILABLE, "etcdserver: request timed out", write=True)
    assert isinstance(err, OutcomeUnknownError)


@pytest.mark.parametrize(
    "code,details,cls",
    [
        (grpc.StatusCode.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted", CompactedError),
        (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: request is too large", RequestTooLargeError),
        (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: too many operations in txn request", ConfigError),
        (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password", AuthError),
        (grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty", AuthError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "grpc: received message larger than max (4718620 vs. 2097152)", RequestTooLargeError),
        (grpc.StatusCode.NOT_FOUND, "etcdserver: requested lease not found", LeaseNotFoundError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded", NoSpaceError),
        (grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied", AuthError),
        (grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token", AuthError),
    ],
)
def test_etcd_errors_map_to_the_tree(code, details, cls) -> None:  # type: ignore[no-untyped-def]
    """etcd's error strings map to the documented classes, carrying the gRPC code."""
    err = tr(code, details, write=True)
    assert type(err) is cls
    assert err.code == code.name
    assert details in str(err)


def test_message_over_grpc_limit_is_too_large_not_unknown() -> None:
    """gRPC's own size refusal is RequestTooLargeError for a write, not retried (never applied)."""
    err = tr(grpc.StatusCode.RESOURCE_EXHAUSTED, "grpc: received message larger than max (1 vs. 0)", write=True)
    assert isinstance(err, RequestTooLargeError) and not isinstance(err, OutcomeUnknownError)
    assert not is_safe_to_retry(err) and not endpoint_failed(err)


def test_expired_token_is_flagged_for_refresh() -> None:
    """An invalid auth token is recognised so the client authenticates again and resends."""
    err = tr(grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token", write=True)
    assert is_token_expired(err) and is_safe_to_retry(err)


async def test_oversized_request_is_refused_before_sending() -> None:
    """A put over max_request_bytes fails with RequestTooLargeError naming the size; nothing is sent."""
    async with EtcdClient("127.0.0.1:1", max_request_bytes=1024) as client:
        with pytest.raises(RequestTooLargeError, match="over etcd's limit") as info:
            await client.put("k", b"x" * 2048)
        assert info.value.size > 1024


async def test_closed_client_refuses_calls_and_cannot_reopen() -> None:
    """Using a client before open or after close raises ClosedError; reopening is refused."""
    client = EtcdClient("127.0.0.1:1")
    with pytest.raises(ClosedError, match="unopened"):
        await client.get("k")
    await client.open()
    await client.close()
    await client.close()  # closing twice is fine
    with pytest.raises(ClosedError, match="closed"):
        await client.get("k")
    with pytest.raises(ClosedError):
        await client.open()


async def test_unreachable_endpoint_is_unavailable_within_the_deadline() -> None:
    """With nothing listening, a read fails with EtcdUnavailableError once the retry deadline passes."""
    async with EtcdClient("127.0.0.1:1", connect_timeout_s=0.2, retry_deadline_s=0.5, timeout_s=0.3) as client:
        with pytest.raises(EtcdUnavailableError):
            await client.get("k")


# -- the tree and its declared fields -------------------------------------------------------


def test_three_permanent_errors_are_told_apart() -> None:
    """Misuse, a value over a size limit and undecodable data in etcd are three types:
    neither of the other two is a ConfigError (all three stay ValueErrors)."""
    for cls in (RequestTooLargeError, DecodeError):
        assert not issubclass(cls, ConfigError) and issubclass(cls, ValueError)
    assert issubclass(ConfigError, ValueError)


def test_declared_fields_are_attributes_and_the_rest_only_context() -> None:
    """Fields a class declares become attributes (None when not given); other context
    is in the message and in ``fields`` but is no attribute, so a typo cannot pass."""
    err = FencedError("refused", key="k", token=7, current_token=9, attempt=3)
    assert (err.key, err.token, err.current_token, err.saga_id) == ("k", 7, 9, None)
    assert err.fields == {"key": "k", "token": 7, "current_token": 9, "attempt": 3}
    assert "attempt=3" in str(err)
    assert not hasattr(err, "attempt")
    assert not hasattr(ConfigError("bad", field="x"), "current_token")


def test_saga_failed_error_carries_its_status() -> None:
    """SagaFailedError declares status, error and result."""
    err = SagaFailedError("ended compensated", saga_id="s", status="compensated", error="boom")
    assert (err.saga_id, err.status, err.error, err.result) == ("s", "compensated", "boom", None)


# -- one mapping for every call and stream, one place that times calls ----------------------


async def test_mapped_translates_every_failure_of_a_call() -> None:
    """Inside ``mapped`` an RpcError and a broken call's InvalidStateError both come out
    as whizorch errors raised from them; a whizorch error passes through unchanged."""
    with pytest.raises(OutcomeUnknownError) as info:
        with mapped(endpoint="e:1", method="/etcdserverpb.KV/Put", write=True):
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    assert isinstance(info.value.__cause__, grpc.RpcError) and info.value.endpoint == "e:1"
    with pytest.raises(EtcdUnavailableError) as broken:
        with mapped(endpoint="e:1", method="/etcdserverpb.Watch/Watch", write=False):
            raise asyncio.InvalidStateError("RPC already finished.")
    assert endpoint_failed(broken.value)
    mine = LeaseNotFoundError("gone")
    with pytest.raises(LeaseNotFoundError) as same:
        with mapped(endpoint="e:1", method="/m", write=False):
            raise mine
    assert same.value is mine


async def test_every_call_is_timed_once_for_the_observers() -> None:
    """An observer gets one CallTiming per call, failed ones too (retries inside one
    call are one timing); an observer that raises is logged, not the call's error."""
    seen: list[CallTiming] = []

    def broken(call: CallTiming) -> None:
        raise RuntimeError("observer bug")

    async with EtcdClient("127.0.0.1:1", connect_timeout_s=0.1, retry_deadline_s=0.3, timeout_s=0.2) as client:
        client.observers += [broken, seen.append]
        with pytest.raises(EtcdUnavailableError):
            await client.get("k")
        with pytest.raises(EtcdUnavailableError):
            await client.status("127.0.0.1:1", timeout_s=0.2)
    assert [(c.operation, c.ok) for c in seen] == [("Range", False), ("Status", False)]
    assert all(c.seconds > 0 for c in seen)


async def test_saga_client_refuses_use_after_close() -> None:
    """A closed SagaClient raises ClosedError on every call (a wait() never starts a new
    watch), and on ``async with``; closing twice is fine."""
    from whizorch.saga import SagaClient

    async with EtcdClient("127.0.0.1:1") as etcd:
        sagas = SagaClient(etcd)
        await sagas.aclose()
        await sagas.aclose()
        for call in (sagas.wait("s"), sagas.get("s"), sagas.cancel("s"), sagas.submit("order"), sagas.list()):
            with pytest.raises(ClosedError, match="SagaClient is closed"):
                await call
        with pytest.raises(ClosedError):
            async with sagas:
                pass
        assert sagas._hub is None
