"""Starting a stopped etcd member from a test while gRPC calls are in flight.

whizorch.testing spawns members with a Python ``preexec_fn`` (PR_SET_PDEATHSIG). While
a gRPC call is in flight in this process, gRPC's fork handlers are skipped ("Other
threads are currently calling into gRPC, skipping fork() handlers") and the forked
child sometimes dies before it can exec etcd: SIGSEGV, or SIGABRT after gRPC's poller
complains of a bad file descriptor (about 1 spawn in 7 with a busy client; never
without the ``preexec_fn``). Until the harness spawns without Python code in the
child, a start that died that way, and only that way, is tried again.
"""

from __future__ import annotations

import signal

from whizorch.testing import EtcdMember, LocalClusterError

__all__ = ["start_member"]

# etcd (Go) handles SIGSEGV and SIGABRT itself and exits with status 2: dying *of*
# these signals means the forked child never became etcd
_CHILD_CRASHED = (-signal.SIGSEGV, -signal.SIGABRT)


async def start_member(member: EtcdMember, *, attempts: int = 3) -> None:
    """``member.astart()``, again if the forked child crashed before exec."""
    for attempt in range(1, attempts + 1):
        try:
            await member.astart()
            return
        except LocalClusterError:
            if member.returncode not in _CHILD_CRASHED or attempt == attempts:
                raise
