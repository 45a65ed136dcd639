"""``scripts/loki-health``: ``/health/loki`` as one monitoring line and a Nagios exit status.

0 OK (or Loki export disabled), 1 WARNING (degraded, or a warning threshold reached),
2 CRITICAL (failing, or a critical threshold reached), 3 UNKNOWN (the proxy did not answer).
The line ends in Nagios performance data after ``|``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from typing import TextIO

import requests

from llmproxy.common.errors import innermost_reason
from llmproxy.settings import SettingsError, load_settings, parse_duration, parse_size

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
LABELS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


def _clock(iso: str | None) -> str:
    """``2026-11-28T10:02:11.412Z`` → ``10:02:11`` (UTC), or the date too when not today."""
    if not iso:
        return "?"
    stamp = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    today = datetime.now(stamp.tzinfo).date()
    return stamp.strftime("%H:%M:%S" if stamp.date() == today else "%Y-%m-%d %H:%M:%S")


def verdict(doc: dict, queue_warn: int | None, queue_crit: int | None,
            spool_warn: int | None, spool_crit: int | None) -> tuple[int, str]:
    """The exit status and the line (without performance data) for one /health/loki answer."""
    status = doc.get("status")
    if status == "disabled":
        return OK, "Loki export disabled"
    queue, spool = doc.get("queue_depth", 0), doc.get("spool_bytes", 0)
    counts = f"{doc.get('entries_sent', 0)} sent, {doc.get('entries_dropped', 0)} dropped, queue {queue}"
    if spool:
        counts += f", spool {spool} bytes"
    if status == "failing":
        return CRITICAL, f"failing since {_clock(doc.get('failing_since') or doc.get('last_error_time'))}: " \
                         f"{doc.get('last_error')}"
    code, why = OK, []
    for value, warn, crit, what in ((queue, queue_warn, queue_crit, "queue"), (spool, spool_warn, spool_crit, "spool")):
        if crit is not None and value >= crit:
            code = CRITICAL
            why.append(f"{what} {value} >= {crit}")
        elif warn is not None and value >= warn:
            code = max(code, WARNING)
            why.append(f"{what} {value} >= {warn}")
    if status == "degraded":
        code = max(code, WARNING)
        why.append(f"degraded: last error at {_clock(doc.get('last_error_time'))}: {doc.get('last_error')}")
    elif status != "ok":
        return UNKNOWN, f"unexpected status {status!r}"
    return code, "; ".join(why + [counts]) if why else counts


def perfdata(doc: dict) -> str:
    return (f"sent={doc.get('entries_sent', 0)}c failed={doc.get('entries_failed', 0)}c "
            f"dropped={doc.get('entries_dropped', 0)}c queue={doc.get('queue_depth', 0)} "
            f"spool={doc.get('spool_bytes', 0)}B")


def check(url: str, timeout: float, **thresholds) -> tuple[int, str]:
    try:
        resp = requests.get(url, timeout=timeout)
        doc = resp.json()
    except requests.exceptions.Timeout:
        return UNKNOWN, f"UNKNOWN: no answer from {url} within {timeout:g}s"
    except (requests.exceptions.RequestException, OSError) as exc:
        return UNKNOWN, f"UNKNOWN: cannot reach {url}: {innermost_reason(exc)}"
    except ValueError:
        return UNKNOWN, f"UNKNOWN: {url} answered HTTP {resp.status_code} without JSON"
    if not isinstance(doc, dict) or "status" not in doc:
        return UNKNOWN, f"UNKNOWN: {url} answered {json.dumps(doc)[:200]}"
    code, line = verdict(doc, **thresholds)
    return code, f"{LABELS[code]}: {line} | {perfdata(doc)}"


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, prog: str = "loki-health") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Check llm-proxy's Loki export (/health/loki) and print one line.",
        epilog="exit status (Nagios): 0 ok or disabled, 1 degraded or a warning threshold, "
               "2 failing or a critical threshold, 3 the proxy did not answer")
    parser.add_argument("--url", help="the proxy (http://127.0.0.1:8080) or its /health/loki URL; "
                        "default: LLM_PROXY_HOST and LLM_PROXY_PORT")
    parser.add_argument("--timeout", type=_duration, default=5.0, help="e.g. 2s (default 5s)")
    parser.add_argument("--queue-warn", type=int, metavar="N", help="warn at N entries queued in memory")
    parser.add_argument("--queue-crit", type=int, metavar="N", help="critical at N entries queued")
    parser.add_argument("--spool-warn", type=_size, metavar="SIZE", help="warn at a spool this big, e.g. 100MiB")
    parser.add_argument("--spool-crit", type=_size, metavar="SIZE", help="critical at a spool this big")
    args = parser.parse_args(argv)
    url = args.url
    if not url:
        try:
            url = load_settings(create_dirs=False).base_url
        except SettingsError as exc:
            print(f"UNKNOWN: {exc}", file=out)
            return UNKNOWN
    if not url.rstrip("/").endswith("/health/loki"):
        url = url.rstrip("/") + "/health/loki"
    code, line = check(url, args.timeout, queue_warn=args.queue_warn, queue_crit=args.queue_crit,
                       spool_warn=args.spool_warn, spool_crit=args.spool_crit)
    print(line, file=out)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
