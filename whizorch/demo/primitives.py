"""``python -m whizorch.demo.primitives``: the consensus layer alone on a local etcd cluster.

Starts a 3-member etcd cluster (local processes), then shows, for real:

1. global IDs from etcd revisions;
2. two leader candidates as separate processes; the leader is paused (SIGSTOP) past
   its lease, the other takes over, and the resumed old leader learns it lost and has
   its late fenced write rejected;
3. a global lock with fencing: 4 workers increment one counter under the lock, every
   write fenced; the total comes out exact;
4. an etcd member killed and restarted while writes go on.

The saga demo (``whizorch demo``) builds on these; this one shows the primitives alone.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

from whizorch import EtcdClient, GlobalIds, Lock, Session, VersionedStore
from whizorch.testing import LocalEtcdCluster


def say(section: str, text: str) -> None:
    print(f"[{section:>8}] {text}", flush=True)


class Candidate:
    """A candidate process and the JSON lines it printed."""

    def __init__(self, endpoints: str, ident: str, ttl: int) -> None:
        self.ident = ident
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "whizorch.demo.candidate", "--endpoints", endpoints, "--id", ident,
             "--ttl", str(ttl), "--once", "--name", "whizorch-demo/leader"],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.events: list[dict[str, Any]] = []

    async def next_event(self, kind: str, timeout_s: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = await asyncio.wait_for(
                asyncio.to_thread(self.proc.stdout.readline), max(0.01, deadline - time.monotonic())
            )
            if not line:
                break
            ev: dict[str, Any] = json.loads(line)
            self.events.append(ev)
            if ev["event"] == kind:
                return ev
        raise TimeoutError(f"{self.ident}: no {kind!r} event within {timeout_s}s")

    def stop(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def demo(ttl: int) -> None:
    async with LocalEtcdCluster(3, heartbeat_ms=100, election_ms=1000) as cluster:
        endpoints = ",".join(cluster.endpoints)
        say("etcd", f"3 members up, etcd {'.'.join(map(str, cluster.version))}: {endpoints}")
        async with EtcdClient(endpoints) as client:
            ids = GlobalIds(client, "whizorch-demo/ids")
            say("ids", "global IDs (etcd revisions): " + ", ".join([str(await ids.next()) for _ in range(5)]))

            # -- leader election, pause, takeover, fencing ------------------------------
            first = Candidate(endpoints, "candidate-1", ttl)
            await first.next_event("leader", 30)
            second = Candidate(endpoints, "candidate-2", ttl)
            try:
                await second.next_event("campaigning", 30)
                say("election", f"candidate-1 (pid {first.proc.pid}) leads; candidate-2 (pid {second.proc.pid}) waits")
                os.kill(first.proc.pid, signal.SIGSTOP)
                paused_at = time.monotonic()
                say("election", f"paused candidate-1 (SIGSTOP); its lease has a {ttl}s TTL")
                took = await second.next_event("leader", ttl + 10)
                say("election", f"candidate-2 leads after {time.monotonic() - paused_at:.2f}s (term {took['term']})")
                os.kill(first.proc.pid, signal.SIGCONT)
                lost = await first.next_event("lost", 10)
                late = await first.next_event("late_write", 10)
                say("fencing", f"candidate-1 resumed: knows it lost ({lost['reason']})")
                say("fencing", f"its late write with the old fence: {late.get('error', 'ACCEPTED?!')}")
            finally:
                first.stop()
                second.stop()

            # -- global lock with fencing --------------------------------------------------
            store = VersionedStore(client, "whizorch-demo/")
            await client.delete("whizorch-demo/counter")

            async def worker(n: int) -> None:
                async with Session(client, ttl_s=5) as session:
                    for _ in range(n):
                        async with Lock(session, "whizorch-demo/lock") as lock:
                            cur = await store.get("counter")
                            value = int(cur.value) if cur else 0
                            await store.compare_and_set(
                                "counter", str(value + 1), expected_revision=cur.mod_revision if cur else 0,
                                fence=lock.fence,
                            )

            t0 = time.monotonic()
            await asyncio.gather(*(worker(25) for _ in range(4)))
            final = await store.get("counter")
            say("lock", f"4 workers x 25 fenced increments under one lock: counter = {final.value.decode() if final else None}"
                f" in {time.monotonic() - t0:.2f}s")

            # -- an etcd member dies -------------------------------------------------------
            victim = cluster.members[0]
            victim.kill()
            say("etcd", f"killed member {victim.name}; writing on")
            revs = [await ids.next() for _ in range(3)]
            say("etcd", f"still committing with 2 of 3 members: IDs {revs}")
            await victim.arestart()
            say("etcd", f"restarted {victim.name}; cluster healthy")
    say("done", "all members stopped, data dirs removed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="whizorch consensus-layer demo on a local etcd cluster")
    parser.add_argument("--ttl", type=int, default=2, help="leader lease TTL in seconds")
    args = parser.parse_args(argv)
    asyncio.run(demo(args.ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
