"""The catalog of calls: ``{log_dir}/catalog.db`` (SQLite), one row per call and per session,
kept up with the JSONL tree by whoever reads it (``llm-proxy usage``, the explorer).

The files stay the truth. :meth:`Catalog.update` reads what each session file gained since the
last update (:mod:`llmproxy.record.tail`: plain and ``.zst`` alike, never a compressed frame
twice, safe while ``prune`` moves files), and an update with nothing new only lists and stats
the tree. Sessions that left the tree leave the catalog. The catalog can be deleted at any time
(the next update rebuilds it), and is rebuilt by itself when its schema or the set of indexers
changes. Several processes may update and read it at once (WAL; one session's increment is one
transaction). It is never written on the request path.

Tables (:mod:`~llmproxy.catalog.schema`): ``calls`` (session, seq, time, machine, provider,
upstream, client, model, status, stop reason, tokens by kind, cost and its parts, TTFB, total
time, bytes, tool calls, incomplete/error), ``sessions`` (their sums per session) and ``files``
(how far each session was read).

Indexers
--------
Readers that keep tables of their own in the same database (the explorer's full-text search)
register an indexer; every update hands it each new entry of the tree, in file order, inside
the transaction that catalogues it. An indexer is an object with:

``name: str``
    Unique and stable; prefix its tables with it.
``version: int``
    Bump it when what it stores changes: the catalog is then rebuilt from the files, and the
    indexer sees every entry again.
``create(db: sqlite3.Connection) -> None``
    Create its tables if they do not exist (``CREATE … IF NOT EXISTS``). Called on every open.
``add(db: sqlite3.Connection, entry: Entry) -> None``
    One new entry (:class:`~llmproxy.catalog.lines.Entry`: ``session``, ``upstream``, ``day``,
    ``kind``, ``seq``, the raw ``line`` and ``doc``, the line parsed on first use — a request is
    megabytes, so parse only what you need). Lines that are not JSON never reach it.
``forget(db: sqlite3.Connection, session: str) -> None``
    Drop what it holds of a session: the session left the tree, or is read again from its start.

Indexers are found through the ``llmproxy.catalog_indexers`` entry point group (an entry point
names a class or function that returns one, called without arguments), so every process that
updates the catalog hands entries to all of them; tests pass them to :class:`Catalog` instead.
They must not commit, and should not raise: an exception aborts the session's increment, which
is tried again on the next update.

May import: common, providers, pricing, settings, proxy, record.
Must not be imported by: common, providers, pricing, settings, proxy, record, loki, server.
"""

from llmproxy.catalog.lines import Entry
from llmproxy.catalog.update import Catalog, Indexer, Stats, catalog_path, installed_indexers

__all__ = ["Catalog", "Entry", "Indexer", "Stats", "catalog_path", "installed_indexers"]
