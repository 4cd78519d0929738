"""``whizorch roles show|apply``: the etcd roles that confine each process to its keys.

``show`` prints the roles of :func:`whizorch.saga.roles.deployment_roles` (a dry run,
no etcd needed); ``apply`` creates them on the configured etcd, as the configured user
(an admin: etcd's ``root`` role, once auth is on), and optionally users of the same
names. Running ``apply`` again changes nothing that is already right.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
import click
from rich.console import Group, RenderableType
from rich.table import Table

from whizorch.cli._inspect import Target, _echo, _run, target_options
from whizorch.cli._main import main
from whizorch.config import WhizorchConfig
from whizorch.errors import ConfigError
from whizorch.etcd import EtcdClient
from whizorch.etcd.auth import (
    Permission,
    auth_enable,
    role_add,
    role_get,
    role_grant_permission,
    role_revoke_permission,
    user_add,
    user_grant_role,
)
from whizorch.saga.roles import RoleSpec, deployment_roles, describe

__all__ = ["PasswordPolicy", "apply_roles", "roles_document"]


@attrs.frozen
class PasswordPolicy:
    """How ``apply --users`` makes users: one password for new users, or none
    (certificate-only users, whose TLS client certificate's CN is the user name)."""

    password: str | None = attrs.field(default=None, repr=False)
    """The password of every user created; None: users without a password."""


def _regions(target: WhizorchConfig, regions: str | None) -> list[str]:
    if regions is None:
        named = [r.name for r in target.regions]
        if not named:
            raise ConfigError(
                "name the regions with --regions eu,us,... (the configuration has no [regions.<name>] table)", field="regions"
            )
        return named
    # every comma-separated part is checked, so "eu,,us" names the empty region
    return [part.strip() for part in regions.split(",")]


def roles_document(specs: tuple[RoleSpec, ...]) -> list[dict[str, Any]]:
    """The roles as JSON-ready dicts (``roles show --json``)."""
    return [
        {
            "role": s.name,
            "kind": s.kind.value,
            "region": s.region,
            "permissions": [describe(p) for p in s.permissions],
        }
        for s in specs
    ]


def _text(perm: Permission) -> str:
    doc = describe(perm)
    where = " ".join(f"{k} {v}" for k, v in doc.items() if k != "type")
    return f"{doc['type']:<9} {where}"


async def apply_roles(
    client: EtcdClient,
    specs: tuple[RoleSpec, ...],
    *,
    users: PasswordPolicy | None = None,
    prune: bool = False,
    enable_auth: bool = False,
) -> list[dict[str, Any]]:
    """Create or complete each role of ``specs`` on etcd; returns what was done, per role.

    A permission already granted is kept; one missing (or of another type on the same
    range) is granted. A permission the role has beyond its definition is reported as
    ``extra``, and revoked when ``prune``. With ``users``, a user of each role's name
    is created (an existing user keeps its password) and granted the role. With
    ``enable_auth``, etcd's auth is turned on at the end (etcd needs a ``root`` user).
    """
    report: list[dict[str, Any]] = []
    for spec in specs:
        created = await role_add(client, spec.name)
        have = set(await role_get(client, spec.name) or ())
        wanted = set(spec.permissions)
        ranges = {(p.key, p.range_end) for p in spec.permissions}
        granted = [p for p in spec.permissions if p not in have]
        for perm in granted:
            await role_grant_permission(client, spec.name, perm)
        # a grant on a range the role already has replaces that permission's type
        extra = sorted((p for p in have - wanted if (p.key, p.range_end) not in ranges), key=lambda p: p.key)
        revoked = []
        if prune:
            for perm in extra:
                if await role_revoke_permission(client, spec.name, perm.key, perm.range_end):
                    revoked.append(perm)
        row: dict[str, Any] = {
            "role": spec.name,
            "created": created,
            "granted": [describe(p) for p in granted],
            "kept": [describe(p) for p in spec.permissions if p in have],
            "extra": [describe(p) for p in extra if p not in revoked],
            "revoked": [describe(p) for p in revoked],
        }
        if users is not None:
            row["user"] = spec.name
            row["user_created"] = await user_add(client, spec.name, password=users.password)
            await user_grant_role(client, spec.name, spec.name)
        report.append(row)
    if enable_auth:
        await auth_enable(client)
    return report


def render_roles(specs: tuple[RoleSpec, ...]) -> RenderableType:
    """``roles show`` as a table: role, then one permission per line."""
    table = Table(box=None, header_style="bold", pad_edge=False)
    for column in ("role", "for", "permissions"):
        table.add_column(column)
    for s in specs:
        what = f"workers of {s.region}" if s.region is not None else s.kind.value
        table.add_row(s.name, what, "\n".join(_text(p) for p in s.permissions))
    return table


def render_applied(report: list[dict[str, Any]]) -> RenderableType:
    """``roles apply``: per role, what changed."""
    lines: list[str] = []
    for row in report:
        head = f"role {row['role']}: {'created' if row['created'] else 'exists'}"
        if "user" in row:
            head += f"; user {row['user']}: {'created' if row['user_created'] else 'exists'}, role granted"
        lines.append(head)
        for mark, key, note in (
            ("+", "granted", ""),
            ("=", "kept", ""),
            ("-", "revoked", ""),
            ("!", "extra", "  (not in the definition; --prune revokes it)"),
        ):
            for doc in row[key]:
                where = " ".join(f"{k} {v}" for k, v in doc.items() if k != "type")
                lines.append(f"  {mark} {doc['type']:<9} {where}{note}")
    return Group(*lines)


@main.group()
def roles() -> None:
    """etcd roles per process: a worker's reaches only its region's keys (docs/security.md)."""


_REGIONS_HELP = "regions, comma-separated (default: the names of the configuration's [regions.<name>] tables)"


@roles.command("show")
@target_options
@click.option("--regions", default=None, metavar="EU,US,...", help=_REGIONS_HELP)
@click.option("--json", "as_json", is_flag=True, help="print one JSON document")
def show_roles(target: WhizorchConfig, regions: str | None, as_json: bool) -> None:
    """Print the roles and permissions ``apply`` would create (no etcd needed).

    \b
    --json prints [{"role": str, "kind": "orchestrator"|"client"|"viewer"|"console"|"worker",
                    "region": str | null,
                    "permissions": [{"type": "READ"|"WRITE"|"READWRITE",
                                     "prefix": str} | {"type": ..., "key": str}]}]
    """
    specs = deployment_roles(target.namespace, _regions(target, regions))
    _echo(roles_document(specs), lambda: render_roles(specs), as_json)


@roles.command("apply")
@target_options
@click.option("--regions", default=None, metavar="EU,US,...", help=_REGIONS_HELP)
@click.option("--users", is_flag=True, help="also create a user per role, of the role's name, granted that role")
@click.option(
    "--password-from-env", "password_env", default=None, metavar="VAR",
    help="with --users: new users' password is this environment variable's value",
)
@click.option(
    "--no-password", is_flag=True,
    help="with --users: users without a password (they authenticate by a TLS client certificate whose CN is the name)",
)
@click.option("--prune", is_flag=True, help="revoke permissions a role has beyond its definition")
@click.option("--enable-auth", is_flag=True, help="turn etcd's auth on afterwards (needs a root user)")
@click.option("--json", "as_json", is_flag=True, help="print what was done as one JSON document")
def apply_roles_command(
    target: WhizorchConfig, regions: str | None, users: bool, password_env: str | None, no_password: bool,
    prune: bool, enable_auth: bool, as_json: bool,
) -> None:
    """Create the roles (and with --users the users) on etcd; re-running is safe.

    Connects as the configured etcd user ([etcd] username/password or
    WHIZORCH_ETCD_USERNAME/PASSWORD), which must be an admin once auth is on.
    """
    specs = deployment_roles(target.namespace, _regions(target, regions))
    policy: PasswordPolicy | None = None
    if users:
        if (password_env is None) == (not no_password):
            raise ConfigError("--users needs exactly one of --password-from-env VAR and --no-password", field="users")
        if password_env is not None:
            password = os.environ.get(password_env)
            if not password:
                raise ConfigError(
                    f"--password-from-env {password_env}: that environment variable is unset or empty",
                    field="password-from-env", value=password_env,
                )
            policy = PasswordPolicy(password)
        else:
            policy = PasswordPolicy(None)
    elif password_env is not None or no_password:
        raise ConfigError("--password-from-env and --no-password only apply with --users", field="users")

    async def body(t: Target) -> list[dict[str, Any]]:
        return await apply_roles(t.client, specs, users=policy, prune=prune, enable_auth=enable_auth)

    report = _run(target, body)
    _echo(report, lambda: render_applied(report), as_json)
