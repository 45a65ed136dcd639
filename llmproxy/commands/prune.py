"""``llm-proxy prune [--dry-run]``: compress old session logs, delete expired ones."""

from __future__ import annotations

import argparse

from llmproxy.server import prune
from llmproxy.settings import load_settings_or_exit

HELP = "compress old session logs, delete expired ones (LLM_PROXY_LOG_COMPRESS_AFTER, LLM_PROXY_LOG_RETENTION)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print what would be done and the bytes freed")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    return prune.run(load_settings_or_exit(create_dirs=False), dry_run=args.dry_run)
