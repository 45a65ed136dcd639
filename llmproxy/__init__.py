"""llm-proxy: a transparent logging proxy for LLM API traffic.

One package per stage of the data's way (docs/architecture.rst has the picture)::

    proxy/      the request path: the Flask view, routing, forwarding, capture, WebSocket relay
    record/     the record: session log, entries, MultiWriter → JSONL files (and sessions.db)
    loki/       the export: exporter queue → pusher → Loki; the tools that read or check Loki
    server/     the server's furniture: app factory, gunicorn settings and hooks, runtime, metrics
    commands/   one module per ``llm-proxy`` subcommand

Below them ``common`` (what every stage shares), ``providers`` (what differs between LLM APIs)
and ``settings``. Imports run from later stages to earlier ones only (tests/test_layout.py).
"""

__version__ = "0.1.0"
