"""Deployment configuration: one TOML file, overridden by ``WHIZORCH_*`` variables.

::

    from whizorch.config import load_config

    cfg = load_config("whizorch.toml")          # or $WHIZORCH_CONFIG, or defaults
    client = EtcdClient(cfg.etcd_config(region="eu"))
    session = Session(client, timing=cfg.consensus.lease)
    router, settings = cfg.router(), cfg.settings()

Sits beside ``whizorch.observe``, above the saga engine and below the CLI. Every field,
its default and its environment variable: ``docs/configuration.md``.
"""

from whizorch.config._load import load_config
from whizorch.config._schema import (
    ConsensusConfig,
    EtcdSection,
    FailoverConfig,
    MonitoringConfig,
    RegionConfig,
    WhizorchConfig,
)

__all__ = [
    "ConsensusConfig",
    "EtcdSection",
    "FailoverConfig",
    "MonitoringConfig",
    "RegionConfig",
    "WhizorchConfig",
    "load_config",
]
