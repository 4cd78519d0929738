"""TLS, mTLS and etcd authentication against real etcd, each test on its own cluster."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
import grpc.aio
import pytest

from whizorch import AuthError, EtcdClient, EtcdUnavailableError
from whizorch.etcd import AuthConfig, EventType, TLSConfig
from whizorch.etcd._methods import METHODS
from whizorch.etcd._proto import rpc_pb2
from whizorch.testing import LocalEtcdCluster, eventually_async, make_client_cert

MakeCluster = Callable[..., LocalEtcdCluster]

# users made by _enable_auth: root, and alice who may read and write app/ only
ROOT = AuthConfig(username="root", password="rootpw")
ALICE = AuthConfig(username="alice", password="alicepw")

# a failed connection must surface as an error within this many seconds, not hang
FAIL_FAST_S = 5.0


async def _enable_auth(cluster: LocalEtcdCluster) -> None:
    """etcdctl: users root and alice, role app (readwrite on app/), then auth enable."""
    for args in (
        ("user", "add", "root:rootpw"),
        ("role", "add", "app"),
        ("role", "grant-permission", "app", "--prefix=true", "readwrite", "app/"),
        ("user", "add", "alice:alicepw"),
        ("user", "grant-role", "alice", "app"),
        ("auth", "enable"),
    ):
        await asyncio.to_thread(cluster.etcdctl, *args)


async def _round_trip(c: EtcdClient, key: str) -> None:
    """A put, a get, a watch event and a lease keepalive (unary calls and both streams)."""
    async with c.watch(key) as w:
        await w.wait_created()
        rev = (await c.put(key, "v")).header.revision
        kv = (await c.get(key)).first
        assert kv is not None and kv.value == b"v"
        async with asyncio.timeout(5):
            ev = await anext(w)
        assert (ev.type, ev.revision) == (EventType.PUT, rev)
    lease = await c.lease_grant(30)
    assert await c.lease_keepalive_once(lease.id) == 30
    await c.lease_revoke(lease.id)


async def _fails_unavailable(c: EtcdClient) -> EtcdUnavailableError:
    started = time.monotonic()
    with pytest.raises(EtcdUnavailableError) as caught:
        await c.get("k")
    assert time.monotonic() - started < FAIL_FAST_S
    return caught.value


# -- TLS -----------------------------------------------------------------------------


# The harness always passes --trusted-ca-file with TLS, and etcd then requires client
# certificates even without --client-cert-auth; an empty value (extra flags come last)
# gives server-only TLS.
SERVER_ONLY_TLS = ["--trusted-ca-file="]


@pytest.mark.etcd34
async def test_tls_with_the_ca_works(etcd_cluster_factory: MakeCluster) -> None:
    """A client trusting the cluster's CA talks TLS: unary calls, watch and keepalive streams."""
    cluster = etcd_cluster_factory(size=1, tls=True, extra_args=SERVER_ONLY_TLS)
    assert cluster.tls is not None
    async with EtcdClient(cluster.endpoints, tls=TLSConfig(ca_file=str(cluster.tls.ca_cert))) as c:
        await _round_trip(c, "tls/k")


@pytest.mark.etcd34
async def test_tls_without_the_ca_or_in_plain_text_fails_fast(
    etcd_cluster_factory: MakeCluster,
) -> None:
    """A client that cannot verify the server's certificate (system roots only), or that
    talks plain text to a TLS port, gets EtcdUnavailableError within seconds, no hang."""
    cluster = etcd_cluster_factory(size=1, tls=True, extra_args=SERVER_ONLY_TLS)
    options = {"timeout_s": 1.0, "connect_timeout_s": 0.3, "retry_deadline_s": 0.5}
    async with EtcdClient(cluster.endpoints, tls=TLSConfig(), **options) as c:
        err = await _fails_unavailable(c)
        assert err.endpoints == tuple(cluster.endpoints)
    async with EtcdClient(cluster.endpoints, **options) as c:
        await _fails_unavailable(c)


@pytest.mark.etcd34
async def test_mtls_needs_the_client_certificate(etcd_cluster_factory: MakeCluster) -> None:
    """With --client-cert-auth, a client with a CA-signed certificate works; one without
    a certificate gets EtcdUnavailableError within seconds."""
    cluster = etcd_cluster_factory(size=1, tls=True, client_cert_auth=True)
    tls = cluster.tls
    assert tls is not None
    mtls = TLSConfig(
        ca_file=str(tls.ca_cert), cert_file=str(tls.client_cert), key_file=str(tls.client_key)
    )
    async with EtcdClient(cluster.endpoints, tls=mtls) as c:
        await _round_trip(c, "mtls/k")
    no_cert = TLSConfig(ca_file=str(tls.ca_cert))
    async with EtcdClient(
        cluster.endpoints, tls=no_cert, timeout_s=1.0, connect_timeout_s=0.5, retry_deadline_s=1.0
    ) as c:
        await _fails_unavailable(c)


@pytest.mark.etcd34
async def test_mtls_certificate_common_name_is_the_etcd_user(
    etcd_cluster_factory: MakeCluster,
) -> None:
    """With client-cert auth and etcd auth on, a certificate's CN is the user: alice's
    certificate may use app/ and nothing else (AuthError), without a password."""
    cluster = etcd_cluster_factory(size=1, tls=True, client_cert_auth=True)
    tls = cluster.tls
    assert tls is not None
    await _enable_auth(cluster)  # etcdctl uses the CN=root certificate
    cert, key = make_client_cert(tls, "alice")
    as_alice = TLSConfig(ca_file=str(tls.ca_cert), cert_file=str(cert), key_file=str(key))
    async with EtcdClient(cluster.endpoints, tls=as_alice) as c:
        await _round_trip(c, "app/cert")
        with pytest.raises(AuthError, match="permission denied"):
            await c.put("elsewhere", "v")


# -- authentication ------------------------------------------------------------------


@pytest.mark.etcd34
async def test_auth_users_passwords_and_prefix_permissions(
    etcd_cluster_factory: MakeCluster,
) -> None:
    """With auth on: alice's password works inside her prefix; outside it reads, writes
    and watches raise AuthError; a wrong password or no credentials raise AuthError at
    once; root may use any key."""
    cluster = etcd_cluster_factory(size=1)
    await _enable_auth(cluster)
    endpoints = cluster.endpoints

    async with EtcdClient(endpoints, auth=ALICE) as c:
        await _round_trip(c, "app/k")
        for call in (
            lambda: c.get("other"),
            lambda: c.put("other", "v"),
            lambda: c.delete("other"),
        ):
            with pytest.raises(AuthError, match="permission denied") as caught:
                await call()
            assert caught.value.code == "PERMISSION_DENIED"
        async with c.watch("other") as w:
            with pytest.raises(AuthError, match="permission denied"):
                async with asyncio.timeout(5):
                    await anext(w)
        await _round_trip(c, "app/still-works")  # a refusal does not break the client

    started = time.monotonic()
    with pytest.raises(AuthError, match="authentication failed"):
        async with EtcdClient(endpoints, auth=AuthConfig(username="alice", password="wrong")):
            pass
    with pytest.raises(AuthError, match="authentication failed"):
        async with EtcdClient(endpoints, auth=AuthConfig(username="mallory", password="x")):
            pass
    assert time.monotonic() - started < FAIL_FAST_S  # refused, not retried

    async with EtcdClient(endpoints) as anonymous:
        with pytest.raises(AuthError):
            await anonymous.get("app/k")

    async with EtcdClient(endpoints, auth=ROOT) as root:
        await _round_trip(root, "anything")


async def _raw_token(endpoint: str, auth: AuthConfig) -> str:
    """A token of our own, outside any EtcdClient (to probe expiry without renewing the
    client's token: a simple token's TTL restarts each time it is used)."""
    method = METHODS["Authenticate"]
    async with grpc.aio.insecure_channel(endpoint) as ch:
        call = ch.unary_unary(
            method.path,
            request_serializer=method.request.SerializeToString,
            response_deserializer=method.response.FromString,
        )
        resp = await call(
            rpc_pb2.AuthenticateRequest(name=auth.username, password=auth.password), timeout=5
        )
    return str(resp.token)


async def _token_expired(endpoint: str, token: str) -> bool:
    """Whether etcd rejects ``token`` (a valid one is renewed by this very call)."""
    method = METHODS["Range"]
    async with grpc.aio.insecure_channel(endpoint) as ch:
        call = ch.unary_unary(
            method.path,
            request_serializer=method.request.SerializeToString,
            response_deserializer=method.response.FromString,
        )
        try:
            await call(
                rpc_pb2.RangeRequest(key=b"app/probe"), metadata=(("token", token),), timeout=5
            )
        except grpc.RpcError as exc:
            assert exc.code() is grpc.StatusCode.UNAUTHENTICATED, exc
            assert "invalid auth token" in (exc.details() or "")
            return True
    return False


async def _let_tokens_expire(endpoint: str) -> None:
    """Wait until every token last used before now has expired at etcd.

    A probe token made now expires no earlier than any token used before it, so once
    etcd rejects the probe, the client's token is gone too. Probing a live token renews
    it, hence the pauses longer than TTL + etcd's 1 s expiry tick between probes.
    """
    probe = await _raw_token(endpoint, ALICE)
    await asyncio.sleep(2.2)  # ok: a probe before TTL (1 s) + tick (1 s) would renew the token
    await eventually_async(lambda: _token_expired(endpoint, probe), timeout=15, interval=2.2)


@pytest.mark.etcd34
@pytest.mark.slow
async def test_an_expired_auth_token_is_refreshed(etcd_cluster_factory: MakeCluster) -> None:
    """With simple tokens expiring after 1 s unused (--auth-token-ttl=1), a call and a new
    watch stream made after the client's token expired still succeed: the client
    authenticates again."""
    cluster = etcd_cluster_factory(size=1, extra_args=["--auth-token=simple", "--auth-token-ttl=1"])
    await _enable_auth(cluster)
    (endpoint,) = cluster.endpoints
    options = {"auth": ALICE, "timeout_s": 2.0, "retry_deadline_s": 5.0}
    async with (
        EtcdClient(cluster.endpoints, **options) as unary,
        EtcdClient(cluster.endpoints, **options) as watching,
    ):
        await unary.put("app/before", "1")
        await watching.get("app/before")  # each client holds its own token now

        await _let_tokens_expire(endpoint)
        await unary.put("app/after", "2")
        kv = (await unary.get("app/after")).first
        assert kv is not None and kv.value == b"2"

        async with watching.watch("app/", prefix=True) as w:
            await w.wait_created()
            rev = (await unary.put("app/watched", "3")).header.revision
            async with asyncio.timeout(5):
                ev = await anext(w)
            assert (ev.kv.key, ev.revision) == (b"app/watched", rev)
