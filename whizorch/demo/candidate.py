"""A leader candidate as its own process, reporting what it sees as JSON lines.

Used by ``python -m whizorch.demo`` and by the process-level integration tests (kill or
pause the leader's process, watch another take over, and see the old leader's late
fenced writes rejected)::

    python -m whizorch.demo.candidate --endpoints 127.0.0.1:2379 --name demo/leader \\
        --id cand-1 --ttl 2

Lines on stdout (one JSON object each, flushed):

* ``{"event": "campaigning"}`` then ``{"event": "leader", "term": T, "lease": L}``
* ``{"event": "write", "ok": true, "revision": R}`` for each fenced heartbeat write
  while it believes it leads (every ``--interval`` seconds, key ``<name>-state``); a
  write is given up when the session's lease may be gone, so ``lost`` follows in time
* ``{"event": "lost", "reason": "..."}`` once it learns it lost leadership
* ``{"event": "late_write", "error": "FencedError", ...}``: after losing, it tries one
  write with the old fence, as a stale leader would; etcd rejects it. While etcd
  cannot be reached it retries (for up to 30 s), printing ``late_write_retry`` lines
* then it campaigns again (``--once`` exits instead).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from whizorch import (
    Election,
    EtcdClient,
    EtcdUnavailableError,
    FencedError,
    OutcomeUnknownError,
    Session,
    VersionedStore,
    WhizorchError,
)

_LATE_WRITE_RETRY_S = 30.0


def emit(**fields: Any) -> None:
    fields["t"] = round(time.time(), 3)
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


async def run(args: argparse.Namespace) -> int:
    state_key = f"{args.name}-state"
    async with EtcdClient(args.endpoints, timeout_s=1.0, retry_deadline_s=2.0) as client:
        store = VersionedStore(client)
        while True:
            async with Session(client, ttl_s=args.ttl) as session, Election(session, args.name) as election:
                emit(event="campaigning", id=args.id)
                fence = await election.campaign(args.id)
                emit(event="leader", id=args.id, term=fence.token, lease=session.lease_id)
                seq = 0
                while election.is_leader:
                    seq += 1
                    try:
                        # a write stuck on an unreachable etcd must not keep a leader that
                        # lost its lease from stepping down (the fence makes it harmless)
                        async with asyncio.timeout(session.remaining_s):
                            cur = await store.get(state_key)
                            rev = await store.compare_and_set(
                                state_key,
                                json.dumps({"leader": args.id, "seq": seq}),
                                expected_revision=cur.mod_revision if cur else 0,
                                fence=fence,
                            )
                        emit(event="write", ok=True, revision=rev, seq=seq)
                    except (WhizorchError, TimeoutError) as exc:
                        message = str(exc) or "no answer before the session's deadline"
                        emit(event="write", ok=False, error=type(exc).__name__, message=message)
                    lost = asyncio.ensure_future(election.wait_lost())
                    try:
                        await asyncio.wait({lost}, timeout=args.interval)
                    finally:
                        lost.cancel()
                emit(event="lost", id=args.id, reason=session.lost_reason or "leader key gone")
                # what a stale leader would do next: write with its old fence, retrying
                # while etcd cannot be reached, until etcd answers
                retry_until = time.monotonic() + _LATE_WRITE_RETRY_S
                while True:
                    try:
                        cur = await store.get(state_key)
                        await store.compare_and_set(
                            state_key,
                            json.dumps({"leader": args.id, "stale": True}),
                            expected_revision=cur.mod_revision if cur else 0,
                            fence=fence,
                        )
                        emit(event="late_write", ok=True)
                    except FencedError as exc:
                        emit(event="late_write", ok=False, error="FencedError", current_token=exc.fields.get("current_token"))
                    except (EtcdUnavailableError, OutcomeUnknownError) as exc:
                        if time.monotonic() < retry_until:
                            emit(event="late_write_retry", error=type(exc).__name__, message=str(exc))
                            continue
                        emit(event="late_write", ok=False, error=type(exc).__name__, message=str(exc))
                    except WhizorchError as exc:
                        emit(event="late_write", ok=False, error=type(exc).__name__, message=str(exc))
                    break
            if args.once:
                return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="a whizorch leader candidate (JSON lines on stdout)")
    parser.add_argument("--endpoints", required=True)
    parser.add_argument("--name", default="whizorch-demo/leader")
    parser.add_argument("--id", required=True)
    parser.add_argument("--ttl", type=int, default=2)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--once", action="store_true")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(run(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
