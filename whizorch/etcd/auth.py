"""etcd's auth administration, thin: roles, their key permissions, users, auth on/off.

Each function is one etcd Auth call through :meth:`EtcdClient._call` (so errors come
through the one seam, :mod:`whizorch.etcd._errors`). Every call here is idempotent in
effect, so each is resent after a transport failure like a read:

* adding a role or user that exists returns ``False`` instead of raising;
* etcd replaces a permission granted again for the same ``[key, range_end)`` (its type
  included) and ignores a role granted again to a user.

All of them need an admin (a user with etcd's ``root`` role) once auth is on.
"""

from __future__ import annotations

import enum

import attrs

from whizorch.errors import ConfigError, EtcdError
from whizorch.etcd import _errors
from whizorch.etcd._client import EtcdClient
from whizorch.etcd._methods import METHODS
from whizorch.etcd._proto import auth_pb2, rpc_pb2

__all__ = [
    "PermType",
    "Permission",
    "auth_enable",
    "auth_status",
    "role_add",
    "role_get",
    "role_grant_permission",
    "role_revoke_permission",
    "user_add",
    "user_get",
    "user_grant_role",
]


class PermType(enum.Enum):
    """What a permission allows on its keys (etcd's ``authpb.Permission.Type``)."""

    READ = 0
    WRITE = 1
    READWRITE = 2


_PROTO_TYPE = {
    PermType.READ: auth_pb2.Permission.READ,
    PermType.WRITE: auth_pb2.Permission.WRITE,
    PermType.READWRITE: auth_pb2.Permission.READWRITE,
}


@attrs.frozen
class Permission:
    """Access to the keys ``[key, range_end)``; an empty ``range_end`` means ``key`` alone."""

    type: PermType
    """READ, WRITE or READWRITE."""
    key: bytes
    """The first key."""
    range_end: bytes = b""
    """One past the last key (``prefix_end(key)`` for a prefix); empty: ``key`` only."""

    def _to_proto(self) -> auth_pb2.Permission:
        return auth_pb2.Permission(permType=_PROTO_TYPE[self.type], key=self.key, range_end=self.range_end)

    @classmethod
    def _from_proto(cls, perm: auth_pb2.Permission) -> Permission:
        return cls(PermType(perm.permType), bytes(perm.key), bytes(perm.range_end))


async def role_add(client: EtcdClient, name: str) -> bool:
    """Create role ``name``; False when it already exists."""
    _check_name("role", name)
    try:
        await client._call(METHODS["RoleAdd"], rpc_pb2.AuthRoleAddRequest(name=name), write=False)
    except EtcdError as exc:
        if _errors.is_already_exists(exc):
            return False
        raise
    return True


async def role_get(client: EtcdClient, name: str) -> tuple[Permission, ...] | None:
    """The permissions of role ``name``, or None when there is no such role."""
    _check_name("role", name)
    try:
        resp = await client._call(METHODS["RoleGet"], rpc_pb2.AuthRoleGetRequest(role=name), write=False)
    except EtcdError as exc:
        if _errors.is_not_found(exc):
            return None
        raise
    return tuple(Permission._from_proto(p) for p in resp.perm)


async def role_grant_permission(client: EtcdClient, role: str, permission: Permission) -> None:
    """Grant ``permission`` to ``role`` (replacing one on the same key range)."""
    _check_name("role", role)
    req = rpc_pb2.AuthRoleGrantPermissionRequest(name=role, perm=permission._to_proto())
    await client._call(METHODS["RoleGrantPermission"], req, write=False)


async def role_revoke_permission(client: EtcdClient, role: str, key: bytes, range_end: bytes = b"") -> bool:
    """Revoke the permission of ``role`` on exactly ``[key, range_end)``; False when
    the role had none there."""
    _check_name("role", role)
    req = rpc_pb2.AuthRoleRevokePermissionRequest(role=role, key=key, range_end=range_end)
    try:
        await client._call(METHODS["RoleRevokePermission"], req, write=False)
    except EtcdError as exc:
        if _errors.is_not_granted(exc):
            return False
        raise
    return True


async def user_add(client: EtcdClient, name: str, *, password: str | None) -> bool:
    """Create user ``name``; False when it already exists (its password is left alone).

    ``password=None`` makes a user without a password (etcd 3.4+), who can only
    authenticate by a TLS client certificate whose common name is ``name``.
    """
    _check_name("user", name)
    if password is not None and not password:
        raise ConfigError("an empty password is not a password; pass None for a certificate-only user", field="password")
    if password is None:
        req = rpc_pb2.AuthUserAddRequest(name=name, options=auth_pb2.UserAddOptions(no_password=True))
    else:
        req = rpc_pb2.AuthUserAddRequest(name=name, password=password)
    try:
        await client._call(METHODS["UserAdd"], req, write=False)
    except EtcdError as exc:
        if _errors.is_already_exists(exc):
            return False
        raise
    return True


async def user_get(client: EtcdClient, name: str) -> tuple[str, ...] | None:
    """The roles of user ``name``, or None when there is no such user."""
    _check_name("user", name)
    try:
        resp = await client._call(METHODS["UserGet"], rpc_pb2.AuthUserGetRequest(name=name), write=False)
    except EtcdError as exc:
        if _errors.is_not_found(exc):
            return None
        raise
    return tuple(resp.roles)


async def user_grant_role(client: EtcdClient, user: str, role: str) -> None:
    """Grant ``role`` to ``user`` (granting it again is a no-op)."""
    _check_name("user", user)
    _check_name("role", role)
    req = rpc_pb2.AuthUserGrantRoleRequest(user=user, role=role)
    await client._call(METHODS["UserGrantRole"], req, write=False)


async def auth_enable(client: EtcdClient) -> None:
    """Turn etcd's auth on (a no-op when it is on). etcd refuses unless a ``root`` user
    with the ``root`` role exists; from then on every call needs a user."""
    await client._call(METHODS["AuthEnable"], rpc_pb2.AuthEnableRequest(), write=False)


async def auth_status(client: EtcdClient) -> bool:
    """Whether etcd's auth is on (etcd 3.5+; a 3.4 server raises EtcdError, unimplemented)."""
    resp = await client._call(METHODS["AuthStatus"], rpc_pb2.AuthStatusRequest(), write=False)
    return bool(resp.enabled)


def _check_name(what: str, name: str) -> None:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"a {what} name is a non-empty string", field=what, value=name)
