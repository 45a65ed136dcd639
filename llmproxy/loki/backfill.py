"""Backfill: push entries from the JSONL tree to Loki, as the exporter would have.

Same labels, same timestamps, same splitting of long lines, same push code. Loki 3 shards busy
streams, so an exact resend can be stored twice; the backfill therefore first asks Loki what it
holds for each session and pushes only what is missing, in time order across sessions (Loki
refuses an entry an hour behind its stream's newest). Entries Loki can no longer take into
their stream (too far behind its newest entry, or too old) are reported; ``--extra-label K=V``
pushes them into a stream of their own.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import re
import sys
from collections import deque
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator, TextIO

from llmproxy import providers
from llmproxy.loki import LokiEntry, LokiExporter
from llmproxy.loki.labels import APP_LABEL, LabelMaker
from llmproxy.loki.session import EARLY_NS, in_line, session_start_ns
from llmproxy.loki.split import split_entry
from llmproxy.record import logtree
from llmproxy.record.entries import entry_metadata
from llmproxy.record.logtree import SessionFiles
from llmproxy.record.sessions import SESSION_ID
from llmproxy.settings import LokiSettings, Settings, SettingsError, load_settings


def parse_ts(text: str) -> int:
    """``2026-11-28T10:15:00.123456789Z`` → Unix ns."""
    stamp, _, frac = text.rstrip("Z").partition(".")
    seconds = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp()
    return int(seconds) * 1_000_000_000 + int((frac or "0").ljust(9, "0")[:9])


@dataclass
class SessionReport:
    session: str
    read: int = 0
    present: int = 0
    pushed: int = 0
    refused: list[LokiEntry] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    extra_pushed: int = 0
    undelivered: int = 0     # Loki did not answer: run again later
    failure: str | None = None  # the session could not be read, or Loki not asked
    excluded: int = 0        # parts left out (on their way to Loki by another path)
    pushed_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.failure and not self.undelivered and len(self.refused) == self.extra_pushed


def session_files(log_dir: Path, session: str | None, since: str | None, until: str | None,
                  upstream: str | None) -> Iterator[SessionFiles]:
    """Sessions of the tree, plain or compressed by ``llm-proxy prune``."""
    for files in logtree.sessions(log_dir):
        if session and files.session != session:
            continue
        if upstream and files.upstream != upstream:
            continue
        if since and files.day < since or until and files.day > until:
            continue
        yield files


_META_TS = b'"_meta":{"ts":"'   # an entry's last key, and its time the first key in it
_SESSION_START = b'{"type":"session_start"'
_REQUEST = b'{"type":"request"'
_MODEL = re.compile(rb'"model":"((?:[^"\\]|\\.)*)"')     # a request's own, before its headers and body
_REQUEST_ID = re.compile(rb'"request_id":"([^"]*)"')


def _spans(data: bytes) -> Iterator[tuple[int, int]]:
    """(start, end) of each non-empty line, without copying any."""
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        if data[start:end].strip():   # a blank line is rare and short
            yield start, end
        start = end + 1


def _line_ts(data: bytes, start: int, end: int) -> int | None:
    """The entry's time, read from the end of its line without parsing it (None: not there)."""
    at = data.rfind(_META_TS, start, end)
    if at < 0:
        return None
    at += len(_META_TS)
    try:
        return parse_ts(data[at:data.find(b'"', at, end)].decode())
    except ValueError:
        return None


def read_entries(files: SessionFiles, labels: LabelMaker,
                 keep: Callable[[int], bool] | None = None) -> list[LokiEntry]:
    """The session's lines as Loki entries with the labels and structured metadata the exporter
    gave them (the metadata is read back from the lines: ids, the model, the status). With
    ``keep``, only the entries whose time it keeps: the other lines are not parsed (a recovery
    wants a few entries of sessions that may be hundreds of MB)."""
    data = logtree.read_session(files)
    spans = list(_spans(data))
    provider = next((json.loads(data[a:b]).get("provider") for a, b in spans
                     if data.startswith(_SESSION_START, a)), None)
    provider = provider or providers.provider_for_host(files.upstream) or providers.PREFIXES[0]
    requested: dict = {}   # request id → the request's model, for an answer that names none
    entries = []
    for start, end in spans:
        if keep is not None:
            ts = _line_ts(data, start, end)
            if ts is not None and not keep(ts):
                if data.startswith(_REQUEST, start):
                    model = _MODEL.search(data, start, min(end, start + 4096))
                    ids = _REQUEST_ID.findall(data, max(start, end - 4096), end)
                    if ids:
                        requested[ids[-1].decode()] = json.loads(b'"' + model.group(1) + b'"') if model else None
                continue
        line = data[start:end]
        doc = json.loads(line)
        meta = doc.get("_meta") or {}
        kind = doc.get("type", "unknown")
        if kind == "request":
            requested[meta.get("request_id")] = doc.get("model")
        maker = LabelMaker(labels.environment, meta.get("machine") or labels.machine)
        model = doc.get("model") or (requested.get(meta.get("request_id")) if kind == "response" else None)
        metadata = entry_metadata(meta.get("session") or files.session, meta.get("request_id"),
                                  meta.get("client_session_id"), model, doc.get("status"))
        entries.append(LokiEntry(parse_ts(meta["ts"]), line, maker(provider, kind), metadata))
    return entries


# Which entries of a session to push by their time (the recovery: those a dead worker held),
# all when None.
Select = Callable[[SessionFiles, int], bool]


class Backfill:
    def __init__(self, loki: LokiSettings, labels: LabelMaker, check: bool = True,
                 extra_label: tuple[str, str] | None = None):
        self.exporter = LokiExporter(replace(loki, spool_dir=None))
        self.labels = labels
        self.check = check
        self.extra_label = extra_label

    def held(self, session: str, parts: list[LokiEntry]) -> set[tuple[int, str]]:
        """(ts, line) of this session's entries Loki holds in the streams of this environment (an
        entry is there only if it is in the stream it would be pushed to)."""
        start, end = min(p.ts_ns for p in parts), max(p.ts_ns for p in parts) + 1
        query = f'{{app="{APP_LABEL}", environment={json.dumps(self.labels.environment)}}} |= {in_line(session)}'
        return set(self.exporter.client.query_all(query, start, end))

    def run(self, sessions: Iterable[SessionFiles], select: Select | None = None,
            exclude: frozenset[tuple[int, bytes]] | set = frozenset()) -> Iterator[SessionReport]:
        """Push what Loki lacks of these sessions, and say per session what became of it (in the
        sessions' order of start; a session with refused entries last, with ``extra_label``).
        Only the entries ``select`` picks, if given; no part whose ``(ts, line)`` is in
        ``exclude`` (it is on its way to Loki by another path: a spool file).

        Loki takes an entry into its stream only up to an hour behind the stream's newest, and
        sessions that ran at the same time share streams (a machine's, a provider's): the
        entries of all sessions go in time order, merged as the sessions are read in order of
        their start (an entry is pushed once no session still to come can hold an older one)."""
        waiting: list[tuple[int, int, LokiEntry, _Pending]] = []   # a heap, by time
        order = itertools.count()
        open_: deque[_Pending] = deque()
        refused: list[_Pending] = []
        for files in sorted(sessions, key=lambda f: f.session):  # our ids begin with their start
            try:
                pending = self._prepare(files, select, exclude)
            except (RuntimeError, ValueError, OSError) as exc:
                yield SessionReport(files.session, failure=str(exc))
                continue
            if SESSION_ID.fullmatch(files.session):  # no session to come has an entry older than this
                self._flush(waiting, below=session_start_ns(files.session) - EARLY_NS)
            for part in pending.missing:
                heapq.heappush(waiting, (part.ts_ns, next(order), part, pending))
            open_.append(pending)
            yield from self._finished(open_, refused)
        self._flush(waiting, below=None)
        yield from self._finished(open_, refused)
        yield from self._extra(refused)

    def _prepare(self, files: SessionFiles, select: Select | None = None,
                 exclude: frozenset[tuple[int, bytes]] | set = frozenset()) -> "_Pending":
        """A session's entries as Loki parts, and those Loki does not hold yet."""
        report = SessionReport(files.session)
        entries = read_entries(files, self.labels, None if select is None else (lambda ts: select(files, ts)))
        report.read = len(entries)
        parts = [p for e in entries for p in split_entry(e, self.exporter.settings.max_line_bytes)]
        if exclude:
            kept = [p for p in parts if (p.ts_ns, p.line) not in exclude]
            report.excluded, parts = len(parts) - len(kept), kept
        missing = parts
        if self.check and parts:
            held = self.held(files.session, parts)
            missing = [p for p in parts if (p.ts_ns, p.line.decode()) not in held]
            report.present = len(parts) - len(missing)
        return _Pending(report, parts, missing, left=len(missing))

    def _flush(self, waiting: list, below: int | None) -> None:
        """Push the waiting entries older than ``below`` (all with None), oldest first."""
        due = []
        while waiting and (below is None or waiting[0][0] < below):
            _, _, part, pending = heapq.heappop(waiting)
            due.append((part, pending))
        if not due:
            return
        outcome = self.exporter.send_entries(part for part, _ in due)
        lost = {id(part) for part in outcome.undelivered}
        for part, pending in due:
            pending.left -= 1
            pending.undelivered += id(part) in lost
            pending.troubled |= bool(outcome.failed)
            for error in outcome.errors[:3]:
                if error not in pending.report.errors:
                    pending.report.errors.append(error)

    def _finished(self, open_: "deque[_Pending]", refused: list["_Pending"]) -> Iterator[SessionReport]:
        """The reports of the first sessions whose entries have all been pushed."""
        while open_ and open_[0].left == 0:
            pending = open_.popleft()
            report = pending.report
            report.undelivered = pending.undelivered
            report.pushed = len(pending.missing) - pending.undelivered
            if pending.missing:  # the line bytes pushed, for the metrics (parts of a session are alike)
                report.pushed_bytes = sum(p.size for p in pending.missing) * report.pushed // len(pending.missing)
            if pending.troubled and not pending.undelivered:
                held = self.held(report.session, pending.parts)
                report.refused = [p for p in pending.missing if (p.ts_ns, p.line.decode()) not in held]
                report.pushed -= len(report.refused)
            if report.refused and self.extra_label:
                refused.append(pending)
            else:
                yield report

    def _extra(self, refused: list["_Pending"]) -> Iterator[SessionReport]:
        """Entries Loki refused for their stream, into a stream with the extra label: all of them
        in time order (that stream, too, takes nothing an hour behind its newest)."""
        if not refused:
            return
        own_stream = sorted((replace(p, labels=p.labels + (self.extra_label,)) for pending in refused
                             for p in pending.report.refused), key=lambda p: p.ts_ns)
        outcome = self.exporter.send_entries(own_stream)
        for pending in refused:
            report = pending.report
            report.errors += outcome.errors[:3]
            if outcome.sent == len(own_stream):
                report.extra_pushed = len(report.refused)
            else:
                held = self.held(report.session, pending.parts)
                report.extra_pushed = sum((p.ts_ns, p.line.decode()) in held for p in report.refused)
            yield report


@dataclass
class _Pending:
    """A session on its way: its parts, those Loki lacked, and what became of them so far."""

    report: SessionReport
    parts: list[LokiEntry]
    missing: list[LokiEntry]
    left: int                 # missing parts not pushed yet
    undelivered: int = 0
    troubled: bool = False    # a push that carried some of them was refused in part


def _label(text: str) -> tuple[str, str]:
    name, eq, value = text.partition("=")
    if not eq or not name.isidentifier():
        raise argparse.ArgumentTypeError(f"expected K=V with a label name, got {text!r}")
    return name, value


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, environ: dict | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="loki-backfill",
        description="Push entries from the JSONL session logs to Loki (what Loki lacks only).")
    parser.add_argument("--log-dir", type=Path, help="default: LLM_PROXY_LOG_DIR")
    parser.add_argument("--session", help="one session id")
    parser.add_argument("--since", help="first day, YYYY-MM-DD")
    parser.add_argument("--until", help="last day, YYYY-MM-DD")
    parser.add_argument("--upstream", help="only this upstream host (directory name)")
    parser.add_argument("--extra-label", type=_label, metavar="K=V",
                        help="push entries Loki refuses for their stream into a stream with this extra label")
    parser.add_argument("--no-check", action="store_true",
                        help="do not ask Loki what it holds first: push everything again (log queries "
                             "show a resent entry once, metric queries may count it twice)")
    args = parser.parse_args(argv)

    try:
        settings: Settings = load_settings(environ, create_dirs=False)
    except SettingsError as exc:
        print(f"loki-backfill: {exc}", file=sys.stderr)
        return 2
    if not settings.loki.url:
        print("loki-backfill: LLM_PROXY_LOKI_URL is not set", file=sys.stderr)
        return 2
    log_dir = args.log_dir or settings.log_dir
    backfill = Backfill(settings.loki, LabelMaker(settings.loki.environment, settings.machine_id),
                        check=not args.no_check, extra_label=args.extra_label)
    total = SessionReport("total")
    failed_sessions = 0
    reports = backfill.run(session_files(log_dir, args.session, args.since, args.until, args.upstream))
    try:
        for report in reports:
            if report.failure:
                print(f"{report.session}: error: {report.failure}", file=out)
                failed_sessions += 1
                continue
            status = "ok" if report.ok else "FAILED"
            print(f"{report.session}: read {report.read}, in Loki {report.present}, pushed {report.pushed}"
                  + (f", refused {len(report.refused)}" if report.refused else "")
                  + (f", pushed with {args.extra_label[0]}={args.extra_label[1]} {report.extra_pushed}"
                     if report.extra_pushed else "")
                  + (f", not delivered {report.undelivered}" if report.undelivered else "")
                  + f" [{status}]", file=out)
            for error in report.errors[:3]:
                print(f"  Loki: {error}", file=out)
            if report.refused and not args.extra_label:
                print("  Loki can no longer take these into their stream (too far behind its newest entry, or "
                      "too old); rerun with --extra-label backfill=1 to push them into a stream of their own",
                      file=out)
            total.read += report.read
            total.present += report.present
            total.pushed += report.pushed + report.extra_pushed
            failed_sessions += status != "ok"
    except (RuntimeError, ValueError, OSError) as exc:  # Loki would not say which entries it refused
        print(f"error: {exc}", file=out)
        failed_sessions += 1
    print(f"summary: read {total.read}, in Loki already {total.present}, pushed {total.pushed}, "
          f"sessions failed {failed_sessions}", file=out)
    return 1 if failed_sessions else 0


if __name__ == "__main__":
    raise SystemExit(main())
