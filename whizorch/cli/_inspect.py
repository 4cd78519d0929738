"""``whizorch status`` and ``whizorch sagas list|show``: read-only views of a deployment."""

from __future__ import annotations
