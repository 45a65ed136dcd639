"""The request path: a client's call from the WSGI view to the upstream and back.

:mod:`~llmproxy.proxy.views` (the Flask view) → :mod:`~llmproxy.proxy.routing` (which provider,
which upstream, allowed?) → :mod:`~llmproxy.proxy.forwarding` (the upstream call with
``requests``, the relay of its answer) → :mod:`~llmproxy.proxy.capture` (what the exchange was,
handed to an :class:`~llmproxy.proxy.capture.ExchangeLogger`); :mod:`~llmproxy.proxy.decoding`
(bodies' content codings), :mod:`~llmproxy.proxy.websocket` (the WebSocket handshake and relay
thread), :mod:`~llmproxy.proxy.worker` (gunicorn's worker class, its parser errors as JSON).
It knows nothing of files or Loki: the logger is handed in by the server.

May import: common, providers, settings.
Must not be imported by: common, providers, settings.
"""
