"""The record: what a captured exchange becomes, and the JSONL tree it is written to.

:mod:`~llmproxy.record.sessionlog` (the :class:`~llmproxy.proxy.capture.ExchangeLogger`: session,
seq, thread) with :mod:`~llmproxy.record.sessions` (``sessions.db``, its
:mod:`~llmproxy.record.writelock` and :mod:`~llmproxy.record.journal`: what a killed writer
left undone) → :mod:`~llmproxy.record.entries` (the JSON lines, masked) →
:mod:`~llmproxy.record.multiwriter` → :mod:`~llmproxy.record.filelog` (one file per session) and
the Loki exporter handed in; :mod:`~llmproxy.record.websocket_log` (a WebSocket's messages as
entries). The readers of the tree: :mod:`~llmproxy.record.logtree` (plain and compressed files),
:mod:`~llmproxy.record.tail` (what a session's files gained since a reader last looked) and
:mod:`~llmproxy.record.transcript` (a session as a conversation).

May import: common, providers, settings, proxy.
Must not be imported by: common, providers, settings, proxy.
"""
