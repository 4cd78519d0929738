"""Layer 5: the ``whizorch`` command line (click).

``whizorch dev`` runs a local etcd cluster, ``whizorch lab`` a region lab (a member
per region, regions apart by a round-trip matrix); ``whizorch worker`` and ``whizorch
orchestrator`` run the real roles for your own sagas (``--app module:object``), and
``whizorch check`` checks such an App against the configuration first;
``whizorch status`` and ``whizorch sagas`` inspect a deployment; ``whizorch roles``
shows and creates the etcd roles that confine each process; ``whizorch console``
serves a live web console; ``whizorch demo`` shows it all on a local cluster.
"""

from whizorch import dev as _dev
from whizorch import lab as _lab
from whizorch.cli import (  # noqa: F401  (they register their commands)
    _check,
    _console_cmd,
    _demo,
    _inspect,
    _roles_cmd,
    _run,
    _submit,
)
from whizorch.cli._main import main

main.add_command(_dev.command, "dev")
main.add_command(_lab.command, "lab")

__all__ = ["main"]
