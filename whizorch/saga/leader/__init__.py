"""One shard's leadership, one term at a time (see docs/design.md, "Shards").

``ShardLeader`` is what a term owns and does; the orchestrator (``saga/_orchestrator.py``)
campaigns for shards and runs a ShardLeader for each it wins. Internal to the engine.
"""

from whizorch.saga.leader._cache import LeadershipLost
from whizorch.saga.leader._env import LeaderEnv
from whizorch.saga.leader._term import RegionChange, ShardLeader

__all__ = ["LeaderEnv", "LeadershipLost", "RegionChange", "ShardLeader"]
