"""The randomized fault suite, one test per seed (see README.md in this folder).

Each seed runs real etcd members, workers and orchestrators (8 shards shared by 3 by
default: ``WHIZORCH_FAULT_SHARDS``, ``WHIZORCH_FAULT_ORCHESTRATORS``) under a seeded
nemesis and checks the ledger's and the shards' invariants at the end; a failure's message is the report
(seed, schedule, violations, the sagas involved). The fixed seeds run in ``make
test``, on etcd 3.5.1 and again in the etcd34 pass on 3.4.23; ``WHIZORCH_FAULT_SEEDS`` /
``WHIZORCH_FAULT_DURATION_S`` choose others. A seed whose etcd members diverged on a
version with that published bug (3.5.0-3.5.2) is skipped with the reason: its verdict
would be etcd's, not whizorch's (see consistency.py). On 3.4.23 that cannot happen.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from . import settings
from .suite import Options, main_log, run_seed

DURATION_S = settings.duration_s()
SHARDS = settings.shards()
ORCHESTRATORS = settings.orchestrators()

pytestmark = [pytest.mark.slow, pytest.mark.etcd_control, pytest.mark.etcd34]


@pytest.mark.timeout(settings.timeout_s(DURATION_S))
@pytest.mark.parametrize("seed", settings.seeds(), ids=lambda s: f"seed={s}")
async def test_seeded_faults_keep_every_invariant(seed: int, etcd_bin: str, tmp_path: Path) -> None:
    """Under one fault at a time (kills, pauses, restarts of roles, shard leaders and
    etcd members, dropped connections), every transfer reaches its designed outcome
    exactly once, money is conserved, no stale run's effect lands, every record write is
    its shard's leader's within its term, and every role and shard leader comes back."""
    opts = Options(seed=seed, duration_s=DURATION_S, sagas=settings.sagas(), shards=SHARDS, orchestrators=ORCHESTRATORS)
    outcome = await run_seed(opts, workdir=tmp_path, etcd_bin=etcd_bin, log=main_log)
    if outcome.void is not None:  # etcd's own published bug, found by comparing the members' KV hashes
        pytest.skip(f"seed {seed}: {outcome.void}")
    assert outcome.ok, "\n" + outcome.report
