"""The log explorer (``llm-proxy explore``): every session in a browser, live, searchable, with
what it cost. Its own gunicorn process, never the proxy's workers.

:mod:`~llmproxy.explorer.app` (the Flask app factory) with :mod:`~llmproxy.explorer.guard`
(loopback or token, read only, Content-Security-Policy) serves the pages:
:mod:`~llmproxy.explorer.sessionpages` (one session, read from its file through
:mod:`~llmproxy.explorer.reader` and arranged by :mod:`~llmproxy.explorer.conversation`),
the templates in ``templates/`` with :mod:`~llmproxy.explorer.formatting`, and ``static/``.

May import: common, providers, settings, record, catalog, usage.
Must not be imported by: any package but commands.
"""
