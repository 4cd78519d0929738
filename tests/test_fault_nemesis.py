"""The fault suite's nemesis (``integration/fault/nemesis.py``), its pure choices: the
schedule a seed draws, and which orchestrator a shard-leader fault hits."""

from __future__ import annotations

import importlib
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_INTEGRATION = str(Path(__file__).resolve().parents[1] / "integration")
if _INTEGRATION not in sys.path:
    sys.path.append(_INTEGRATION)
nemesis: Any = importlib.import_module("fault.nemesis")


def test_a_shard_leader_is_hit_in_proportion_to_the_shards_it_leads() -> None:
    """8 shards led 3/3/2: the draw picks a led shard, so o1 and o2 take 3/8 of the
    draws each and o3 2/8; an orchestrator leading nothing is never hit."""
    led = {"o1": [0, 1, 2], "o2": [3, 4, 5], "o3": [6, 7], "o4": []}
    hits = Counter(nemesis.pick_shard_leader(led, i / 800) for i in range(800))
    assert hits == {"o1": 300, "o2": 300, "o3": 200}
    assert nemesis.pick_shard_leader(led, 0.999999) == "o3"
    assert nemesis.pick_shard_leader({"o1": [], "o2": []}, 0.5) is None


def test_a_seed_draws_the_same_schedule_with_the_orchestrators_hit_4_times_in_9() -> None:
    """Two draws from one seed agree fault by fault; over many draws the kinds follow
    WEIGHTS (shard leaders 4 in 9, workers 2, etcd 3)."""
    rng_a, rng_b = random.Random("nemesis-7"), random.Random("nemesis-7")
    a = [nemesis.Draw.draw(rng_a, 2) for _ in range(900)]
    assert a == [nemesis.Draw.draw(rng_b, 2) for _ in range(900)]
    kinds = Counter(d.kind.split()[1] for d in a)
    assert set(kinds) == {"worker", "leader", "etcd"}
    assert abs(kinds["leader"] / 900 - 4 / 9) < 0.06 and abs(kinds["etcd"] / 900 - 3 / 9) < 0.06
