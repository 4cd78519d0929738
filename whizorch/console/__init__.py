"""Layer 5b: the web console (``whizorch console``; ``pip install 'whizorch[console]'``).

A live, read-mostly view of one namespace served by Starlette on uvicorn: the
overview (leader, regions, sagas by status, etcd members, latency, quarantine), the
saga list (filters, paging over the whole namespace) and a saga's page (a timeline by
region, its runs, history with etcd revisions, input and outputs). Pages update from
one etcd watch through Server-Sent Events. Design and security: docs/console.md.
"""

from whizorch.console._server import ConsoleServer
from whizorch.console._settings import DEFAULT_PORT, ConsoleSettings, is_loopback, parse_bind

__all__ = ["DEFAULT_PORT", "ConsoleServer", "ConsoleSettings", "is_loopback", "parse_bind"]
