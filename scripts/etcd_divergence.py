"""Does this etcd diverge when a member is SIGKILLed under write load? (no whizorch roles)

    WHIZORCH_ETCD_BIN=... .venv/bin/python scripts/etcd_divergence.py [--kills 100] [--seed 1]

A 3-member cluster; 8 writers (txns of two puts, some deletes, some lease grants) spread
over the members; member 0 is SIGKILLed and restarted again and again. After each
restart the writers pause and every member's KV hash up to the lowest common revision
is compared (the fault suite's check, `integration/fault/consistency.py`). Prints one
line per kill and stops at the first divergence; exits 1 if the members diverged.
etcd 3.5.0-3.5.2 are known to (etcd-io/etcd#13766, fixed in 3.5.3).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from fault.consistency import check_members

from whizorch import Compare, EtcdClient, Op, WhizorchError
from whizorch.testing import LocalEtcdCluster


async def _writer(endpoint: str, stop: asyncio.Event, n: int) -> None:
    async with EtcdClient([endpoint], timeout_s=3.0) as client:
        i = 0
        while not stop.is_set():
            i += 1
            key = f"k/{n}/{i % 50}"
            try:
                if i % 10 == 0:
                    await client.lease_grant(5)
                await client.txn(
                    [Compare.create_revision(key, "<", 1 << 62)], [Op.put(key, str(i)), Op.put(f"t/{n}/{i % 30}", "x")]
                )
                if i % 7 == 0:
                    await client.delete(f"t/{n}/{(i * 3) % 30}")
            except WhizorchError:
                await asyncio.sleep(0.05)  # ok: the member is down; try again shortly


async def main(kills: int, seed: int) -> int:
    rng = random.Random(seed)
    async with LocalEtcdCluster(3) as cluster:
        print(f"etcd {'.'.join(map(str, cluster.version))}: {kills} kills of member 0 under write load", flush=True)
        eps = cluster.endpoints
        for kill in range(1, kills + 1):
            stop = asyncio.Event()
            writers = [asyncio.create_task(_writer(eps[j % 3], stop, j)) for j in range(8)]
            await asyncio.sleep(rng.uniform(0.3, 1.5))  # ok: load before the kill
            cluster.members[0].kill()
            await asyncio.sleep(rng.uniform(0.1, 0.8))  # ok: the member stays down a while
            cluster.members[0].restart()
            await asyncio.sleep(1.0)  # ok: load while it catches up
            stop.set()
            await asyncio.gather(*writers)
            found = await check_members(cluster)
            print(f"kill {kill}: {'DIVERGED: ' + found.describe() if found else 'members agree'}", flush=True)
            if found:
                return 1
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.kills, args.seed)))
