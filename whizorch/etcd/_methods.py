"""etcd's gRPC method paths and the message types they carry.

Our .proto packages carry a ``whizorch.`` prefix (so they never clash with another etcd
client's descriptors in the same process); the wire paths below are etcd's own.
``tests/test_proto.py`` checks this table against the service descriptors.
"""

from __future__ import annotations

from typing import Any

import attrs

from whizorch.etcd._proto import rpc_pb2, v3election_pb2, v3lock_pb2

__all__ = ["METHODS", "Method"]


@attrs.frozen
class Method:
    """One gRPC method: its wire path, message classes and streaming shape."""

    path: str
    request: Any
    response: Any
    streaming: bool = False

    @property
    def name(self) -> str:
        """The method's short name (``Range``, ``Txn`` ...)."""
        return self.path.rsplit("/", 1)[-1]

    def bind(self, channel: Any) -> Any:
        """The gRPC multi-callable of this method on ``channel``."""
        make = channel.stream_stream if self.streaming else channel.unary_unary
        return make(
            self.path,
            request_serializer=self.request.SerializeToString,
            response_deserializer=self.response.FromString,
        )


def _m(service: str, name: str, module: Any, req: str, resp: str, streaming: bool = False) -> Method:
    return Method(f"/{service}/{name}", getattr(module, req), getattr(module, resp), streaming)


_R = rpc_pb2
METHODS: dict[str, Method] = {
    "Range": _m("etcdserverpb.KV", "Range", _R, "RangeRequest", "RangeResponse"),
    "Put": _m("etcdserverpb.KV", "Put", _R, "PutRequest", "PutResponse"),
    "DeleteRange": _m("etcdserverpb.KV", "DeleteRange", _R, "DeleteRangeRequest", "DeleteRangeResponse"),
    "Txn": _m("etcdserverpb.KV", "Txn", _R, "TxnRequest", "TxnResponse"),
    "Compact": _m("etcdserverpb.KV", "Compact", _R, "CompactionRequest", "CompactionResponse"),
    "Watch": _m("etcdserverpb.Watch", "Watch", _R, "WatchRequest", "WatchResponse", True),
    "LeaseGrant": _m("etcdserverpb.Lease", "LeaseGrant", _R, "LeaseGrantRequest", "LeaseGrantResponse"),
    "LeaseRevoke": _m("etcdserverpb.Lease", "LeaseRevoke", _R, "LeaseRevokeRequest", "LeaseRevokeResponse"),
    "LeaseKeepAlive": _m(
        "etcdserverpb.Lease", "LeaseKeepAlive", _R, "LeaseKeepAliveRequest", "LeaseKeepAliveResponse", True
    ),
    "LeaseTimeToLive": _m(
        "etcdserverpb.Lease", "LeaseTimeToLive", _R, "LeaseTimeToLiveRequest", "LeaseTimeToLiveResponse"
    ),
    "LeaseLeases": _m("etcdserverpb.Lease", "LeaseLeases", _R, "LeaseLeasesRequest", "LeaseLeasesResponse"),
    "MemberList": _m("etcdserverpb.Cluster", "MemberList", _R, "MemberListRequest", "MemberListResponse"),
    "Status": _m("etcdserverpb.Maintenance", "Status", _R, "StatusRequest", "StatusResponse"),
    "Alarm": _m("etcdserverpb.Maintenance", "Alarm", _R, "AlarmRequest", "AlarmResponse"),
    "MoveLeader": _m("etcdserverpb.Maintenance", "MoveLeader", _R, "MoveLeaderRequest", "MoveLeaderResponse"),
    "Authenticate": _m("etcdserverpb.Auth", "Authenticate", _R, "AuthenticateRequest", "AuthenticateResponse"),
    "AuthEnable": _m("etcdserverpb.Auth", "AuthEnable", _R, "AuthEnableRequest", "AuthEnableResponse"),
    "AuthStatus": _m("etcdserverpb.Auth", "AuthStatus", _R, "AuthStatusRequest", "AuthStatusResponse"),
    "UserAdd": _m("etcdserverpb.Auth", "UserAdd", _R, "AuthUserAddRequest", "AuthUserAddResponse"),
    "UserGet": _m("etcdserverpb.Auth", "UserGet", _R, "AuthUserGetRequest", "AuthUserGetResponse"),
    "UserGrantRole": _m("etcdserverpb.Auth", "UserGrantRole", _R, "AuthUserGrantRoleRequest", "AuthUserGrantRoleResponse"),
    "RoleAdd": _m("etcdserverpb.Auth", "RoleAdd", _R, "AuthRoleAddRequest", "AuthRoleAddResponse"),
    "RoleGet": _m("etcdserverpb.Auth", "RoleGet", _R, "AuthRoleGetRequest", "AuthRoleGetResponse"),
    "RoleGrantPermission": _m(
        "etcdserverpb.Auth", "RoleGrantPermission", _R, "AuthRoleGrantPermissionRequest", "AuthRoleGrantPermissionResponse"
    ),
    "RoleRevokePermission": _m(
        "etcdserverpb.Auth", "RoleRevokePermission", _R, "AuthRoleRevokePermissionRequest", "AuthRoleRevokePermissionResponse"
    ),
    "Campaign": _m("v3electionpb.Election", "Campaign", v3election_pb2, "CampaignRequest", "CampaignResponse"),
    "Proclaim": _m("v3electionpb.Election", "Proclaim", v3election_pb2, "ProclaimRequest", "ProclaimResponse"),
    "Leader": _m("v3electionpb.Election", "Leader", v3election_pb2, "LeaderRequest", "LeaderResponse"),
    "Resign": _m("v3electionpb.Election", "Resign", v3election_pb2, "ResignRequest", "ResignResponse"),
    "Lock": _m("v3lockpb.Lock", "Lock", v3lock_pb2, "LockRequest", "LockResponse"),
    "Unlock": _m("v3lockpb.Lock", "Unlock", v3lock_pb2, "UnlockRequest", "UnlockResponse"),
}
