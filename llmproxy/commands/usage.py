"""``llm-proxy usage [daily|monthly|session|model|machine|client]``: calls, tokens and cost from
this machine's logs, or with ``--loki`` from every machine that ships to the Loki in
``LLM_PROXY_LOKI_URL`` (docs/usage.rst)."""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sqlite3
import sys
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from llmproxy.providers import APIS
from llmproxy.settings import load_settings_or_exit
from llmproxy.usage import KINDS, Filters, Report, local, render

HELP = "calls, tokens and cost by day, month, session, model, machine or client (docs/usage.rst)"
_DAYS_AGO = re.compile(r"(\d+)d")


def day(value: str) -> date:
    """``YYYY-MM-DD``, ``YYYYMMDD``, ``today``, ``yesterday`` or ``Nd`` (N days ago), UTC."""
    today = datetime.now(timezone.utc).date()
    named = {"today": today, "yesterday": today - timedelta(days=1)}
    if value in named:
        return named[value]
    ago = _DAYS_AGO.fullmatch(value)
    if ago:
        return today - timedelta(days=int(ago.group(1)))
    for pattern in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.strptime(value, pattern).date()
        except ValueError:
            pass
    raise argparse.ArgumentTypeError(f"{value!r} is not a day (YYYY-MM-DD, YYYYMMDD, today, yesterday or 7d)")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("report", nargs="?", default="daily", choices=list(KINDS),
                        help="what a row is (default: daily)")
    parser.add_argument("--since", type=day, metavar="DAY", help="from this day on (UTC; YYYY-MM-DD, or 7d)")
    parser.add_argument("--until", type=day, metavar="DAY", help="up to this day, included")
    names = ", ".join(dict.fromkeys(name for api in APIS for name in api.NAMES))
    parser.add_argument("--provider", help=f"calls of this provider only ({names})")
    parser.add_argument("--model", help="calls whose model contains this text")
    parser.add_argument("--machine", help="calls of this machine only")
    parser.add_argument("--breakdown", action="store_true", help="each row's models below it")
    parser.add_argument("--json", action="store_true", help="the report as JSON")
    parser.add_argument("--log-dir", type=Path, help="the log tree to read (LLM_PROXY_LOG_DIR), e.g. a copy")
    parser.add_argument("--loki", action="store_true",
                        help="every machine's calls, asked of the Loki in LLM_PROXY_LOKI_URL (default --since 30d)")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    settings = load_settings_or_exit(create_dirs=False)
    if args.log_dir is not None:
        settings = replace(settings, log_dir=args.log_dir.expanduser())
    filters = Filters(args.since, args.until, args.provider, args.model, args.machine)
    if args.loki:
        report = from_loki(settings, KINDS[args.report], filters)
        if isinstance(report, int):
            return report
    elif not settings.log_dir.is_dir():
        named = "--log-dir" if args.log_dir is not None else "LLM_PROXY_LOG_DIR"
        print(f"llm-proxy usage: {settings.log_dir} does not exist: no calls were logged there "
              f"({named})", file=sys.stderr)
        return 1
    else:
        try:
            report = local.report(settings.log_dir, KINDS[args.report], filters)
        except (OSError, sqlite3.Error) as exc:
            print(f"llm-proxy usage: cannot read the logs in {settings.log_dir}: {exc}", file=sys.stderr)
            return 1
    if args.json:
        text = json.dumps(render.as_json(report, args.breakdown), indent=2)
    else:
        text = render.table(report, shutil.get_terminal_size().columns, args.breakdown)
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:  # | head
        sys.stderr.close()
    return 0


def from_loki(settings, kind, filters: Filters) -> Report | int:
    """The report asked of Loki, or the exit status: 2 without a Loki URL, 3 when Loki did not
    answer or refused."""
    from llmproxy.loki.client import LokiClient
    from llmproxy.usage import loki

    if not settings.loki.url:
        print("llm-proxy usage: --loki needs LLM_PROXY_LOKI_URL", file=sys.stderr)
        return 2
    client = LokiClient(settings.loki)
    try:
        return loki.report(client, settings.loki.environment, kind, filters)
    except (RuntimeError, ValueError) as exc:
        print(f"llm-proxy usage: {exc}", file=sys.stderr)
        return 3
    finally:
        client.close()
