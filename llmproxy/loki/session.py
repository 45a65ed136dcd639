"""``llm-proxy loki-session``: every entry of one session, from Loki or from the JSONL tree.

From Loki: ``query_range`` forward in time, paged past Loki's per-query line limit (a page that
comes back full continues from its last timestamp; what was already seen is skipped, as are
the duplicates Loki 3's stream sharding can return) and its answer size limit (4 MiB by default:
a page of long lines is asked again with fewer lines). Lines shipped in parts (longer than
Loki's ``max_line_size``) are joined back byte for byte. Output: the session file's lines in
timestamp order (the file's, but where calls overlapped), or with ``--transcript`` the
conversation as text.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, TextIO

from llmproxy.loki.client import PAGE, LokiClient
from llmproxy.loki.labels import APP_LABEL
from llmproxy.loki.split import join_parts
from llmproxy.record import logtree
from llmproxy.record.sessions import SESSION_ID
from llmproxy.settings import SettingsError, load_settings

MAX_RANGE_NS = 30 * 86400 * 10**9  # within Loki's default max_query_length (721h)
EARLY_NS = 5 * 60 * 10**9        # a session's first entry can precede its id's second by a little


def session_start_ns(session: str) -> int:
    stamp = datetime.strptime(session[:15], "%Y%m%d-%H%M%S").replace(tzinfo=timezone.utc)
    return int(stamp.timestamp()) * 10**9


def _quoted(text: str) -> str:
    return json.dumps(text)


def in_line(text: str) -> str:
    """A LogQL string that finds ``text`` in our lines, which spell it JSON-escaped (a quote as
    ``\\"``, the rest of Unicode as it is: record/entries.py)."""
    return _quoted(json.dumps(text, ensure_ascii=False)[1:-1])


def join_split(rows: Iterable[tuple[int, str]]) -> list[tuple[int, str]]:
    """Lines shipped in parts become their original line again, at the first part's place."""
    out: list[tuple[int, str]] = []
    pending: dict[tuple, list[str]] = {}
    for ts, line in rows:
        doc = None
        if '"chunk"' in line and '"parts"' in line:
            try:
                doc = json.loads(line)
            except ValueError:
                doc = None
        if not isinstance(doc, dict) or not {"part", "parts", "chunk"} <= doc.keys():
            out.append((ts, line))
            continue
        key = (ts - doc["part"] + 1, json.dumps(doc.get("_meta"), sort_keys=True), doc["parts"])
        parts = pending.setdefault(key, [])
        parts.append(line)
        if len(parts) == doc["parts"]:
            out.append((key[0], join_parts(pending.pop(key))))
    for key, parts in pending.items():  # incomplete: shown as they are, and said
        print(f"loki-session: {len(parts)} of {key[2]} parts of an entry at {key[0]} found", file=sys.stderr)
        out.extend((key[0], line) for line in parts)
    out.sort(key=lambda r: r[0])
    return out


def sessions_of_client(client: LokiClient, client_id: str, start_ns: int, end_ns: int,
                       page: int = PAGE) -> list[str]:
    query = (f'{{app="{APP_LABEL}", log_type="session_start"}} |= {in_line(client_id)} '
             f'| json client="client_session_id", session="_meta.session" | client={_quoted(client_id)}')
    found = []
    for _, line in client.query_all(query, start_ns, end_ns, page):
        session = json.loads(line).get("_meta", {}).get("session")
        if session and session not in found:
            found.append(session)
    return found


def from_loki(client: LokiClient, session: str, start_ns: int | None, end_ns: int,
              page: int = PAGE) -> list[str]:
    start = start_ns if start_ns is not None else session_start_ns(session) - EARLY_NS
    end = min(end_ns, start + MAX_RANGE_NS)
    query = (f'{{app="{APP_LABEL}"}} |= {in_line(session)} | json session="_meta.session" '
             f'| session={_quoted(session)}')
    return [line for _, line in join_split(client.query_all(query, start, end, page))]


def from_files(log_dir: Path, session: str) -> list[str]:
    files = logtree.find_session(log_dir, session)
    if files is None:
        return []
    return [line for line in logtree.read_session(files).decode("utf-8").split("\n") if line.strip()]


def client_sessions_in_files(log_dir: Path, client_id: str) -> list[str]:
    """Our sessions whose session_start names this client session id (a session's first line)."""
    found = []
    for files in logtree.sessions(log_dir):
        first = logtree.first_line(files)
        try:
            doc = json.loads(first)
        except ValueError:
            continue
        if doc.get("type") == "session_start" and doc.get("client_session_id") == client_id:
            found.append(files.session)
    return found


def _time(text: str) -> int:
    """``2026-11-28`` or ``2026-11-28T10:15:00`` (UTC) → Unix ns."""
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date or date-time such as 2026-11-28T10:15, got {text!r}")
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return int(stamp.timestamp() * 1e9)


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, environ: dict | None = None,
         prog: str = "loki-session") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Print every entry of one session (ours, or a client's session id) from Loki, "
                    "as JSONL in order or as a readable transcript.",
        epilog="exit status: 0 printed, 1 no such session, 2 bad arguments or settings, 3 Loki did not answer")
    parser.add_argument("session", help="our session id (YYYYMMDD-HHMMSS-xxxxxxxx) or a client session id")
    parser.add_argument("--transcript", action="store_true",
                        help="user turns, assistant text, tool calls and results, tokens per turn")
    parser.add_argument("--from-files", action="store_true", help="read the JSONL tree instead of Loki")
    parser.add_argument("--log-dir", type=Path, help="with --from-files; default LLM_PROXY_LOG_DIR")
    parser.add_argument("--since", type=_time, help="start of the time range (default: the session id's "
                        "time, or 30 days ago for a client session id)")
    parser.add_argument("--until", type=_time, help="end of the time range (default: now)")
    parser.add_argument("--page-size", type=int, default=PAGE,
                        help=f"lines per query: your Loki's max_entries_limit_per_query (default {PAGE})")
    args = parser.parse_args(argv)
    bad = (f"--page-size must be at least 1, got {args.page_size}" if args.page_size < 1 else
           "--since must be before --until" if args.since is not None and args.until is not None
           and args.since >= args.until else None)
    if bad:
        print(f"loki-session: {bad}", file=sys.stderr)
        return 2

    try:
        settings = load_settings(environ, create_dirs=False)
    except SettingsError as exc:
        print(f"loki-session: {exc}", file=sys.stderr)
        return 2
    ours = SESSION_ID.fullmatch(args.session) is not None
    now_ns = time.time_ns()
    end = args.until or now_ns
    try:
        if args.from_files:
            log_dir = args.log_dir or settings.log_dir
            sessions = [args.session] if ours else client_sessions_in_files(log_dir, args.session)
            lines = [line for s in sessions for line in from_files(log_dir, s)]
        else:
            if not settings.loki.url:
                print("loki-session: LLM_PROXY_LOKI_URL is not set (or use --from-files)", file=sys.stderr)
                return 2
            client = LokiClient(settings.loki)
            if ours:
                sessions = [args.session]
            else:
                start = args.since if args.since is not None else end - MAX_RANGE_NS
                sessions = sessions_of_client(client, args.session, start, end, args.page_size)
            lines = []
            for session in sessions:
                lines.extend(from_loki(client, session, args.since, end, args.page_size))
    except RuntimeError as exc:  # Loki said no, or did not answer
        print(f"loki-session: {exc}", file=sys.stderr)
        return 3
    except (OSError, ValueError) as exc:
        print(f"loki-session: {exc}", file=sys.stderr)
        return 1
    if not lines:
        print(f"loki-session: no entries of {args.session} found", file=sys.stderr)
        return 1
    if args.transcript:
        from llmproxy.record.transcript import render

        out.write(render(lines))
    else:
        for line in lines:
            out.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
