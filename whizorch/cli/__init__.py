"""Layer 5: the ``whizorch`` command line (click).

``whizorch dev`` runs a local etcd cluster, ``whizorch lab`` a region lab (a member
per region, regions apart by a round-trip matrix); ``whizorch worker`` and ``whizorch
orchestrator`` run the real roles for your own sagas (``--app module:object``);
``whizorch status`` and ``whizorch sagas`` inspect a deployment; ``whizorch roles``
shows and creates the etcd roles that confine each process; ``whizorch console``
serves a live web console; ``whizorch demo`` shows it all on a local cluster.
"""

from whizorch.cli import _console_cmd, _demo, _inspect, _roles_cmd, _submit  # noqa: F401  (they register their commands)
from whizorch.cli._main import main

__all__ = ["main"]
