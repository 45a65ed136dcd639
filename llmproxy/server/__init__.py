"""The server's own furniture: what runs the stages as a service.

:mod:`~llmproxy.server.app` (the Flask app factory: ``/health``, ``/health/loki``, ``/metrics``,
then the proxy view), :mod:`~llmproxy.server.runtime` (one worker's state, built after fork: the
upstream session, session log, exporter), :mod:`~llmproxy.server.gunicorn_config` (gunicorn's
settings and hooks), :mod:`~llmproxy.server.metrics`, :mod:`~llmproxy.server.accesslog`,
:mod:`~llmproxy.server.saturation`, and operations: :mod:`~llmproxy.server.systemd` (its units in
``systemd_units/``) and :mod:`~llmproxy.server.prune` (retention of the log tree and the spool).

May import: common, providers, settings, proxy, record, loki.
Must not be imported by: common, providers, settings, proxy, record, loki.
"""
