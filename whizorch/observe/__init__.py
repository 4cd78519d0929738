"""Layer 4: observability as middleware: Prometheus metrics, OpenTelemetry tracing.

::

    from whizorch.observe import Metrics, Tracing, serve_metrics

    mw = [Tracing(), Metrics()]
    worker = Worker(client, app, region="eu", middleware=mw)
    serve_metrics("0.0.0.0:9464")      # GET /metrics

``Tracing`` needs ``pip install 'whizorch[otel]'`` (the OpenTelemetry API only).
"""

from whizorch.observe._http import MetricsServer, serve_metrics
from whizorch.observe._metrics import Metrics
from whizorch.observe._tracing import Tracing

__all__ = ["Metrics", "MetricsServer", "Tracing", "serve_metrics"]
