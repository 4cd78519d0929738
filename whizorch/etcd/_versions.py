"""etcd versions with published defects that break what whizorch rests on."""

from __future__ import annotations

import re

__all__ = ["version_warning"]

_INCONSISTENT = {(3, 5, 0), (3, 5, 1), (3, 5, 2)}


def version_warning(version: str) -> str | None:
    """Why etcd ``version`` (``"3.5.1"``, as Status reports it) is unfit for production,
    or None when no such defect is known to whizorch.

    etcd 3.5.0-3.5.2 can diverge after a member is killed under write load: the
    restarted member's store no longer matches the others', and clients it serves see
    revisions, keys and txn outcomes the cluster does not have (etcd-io/etcd#13766, fixed
    in 3.5.3). Fencing tokens and revision compares cannot protect against that.
    """
    m = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", version.strip())
    if m is None:
        return None
    parsed = (int(m[1]), int(m[2]), int(m[3]))
    if parsed in _INCONSISTENT:
        return (
            f"etcd {'.'.join(map(str, parsed))} can diverge after a member is killed under load "
            f"(data-inconsistency bug of 3.5.0-3.5.2, etcd-io/etcd#13766, fixed in 3.5.3): "
            f"run 3.5.3 or newer in production"
        )
    return None
