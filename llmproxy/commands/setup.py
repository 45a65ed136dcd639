"""``llm-proxy setup [--codex] [--explorer] [--no-service] [--port N] [--dry-run]``: install once
on this workstation (llmproxy/setup/, docs/workstation.rst)."""

from __future__ import annotations

import argparse
import sys

from llmproxy.settings import option_type
from llmproxy.setup import installer, service
from llmproxy.setup.home import Home

HELP = "install for this user: a user service, the port, shell integration (--codex, --explorer)"
PROG = "llm-proxy setup"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print every change, make none")
    parser.add_argument("--codex", action="store_true",
                        help="also point the Codex CLI here: the llm-proxy provider in ~/.codex/config.toml")
    parser.add_argument("--explorer", action="store_true",
                        help="also install `llm-proxy explore` (the log explorer) as a second user service")
    parser.add_argument("--no-service", dest="service", action="store_false",
                        help="no user service (no systemd user instance here): run `llm-proxy serve` yourself")
    parser.add_argument("--port", type=option_type("LLM_PROXY_PORT"),
                        help="the proxy's port when none is set yet (default 8080 unless taken, else a free one)")


def run(args: argparse.Namespace, extra: list[str], home: Home | None = None,
        runner: service.Runner = service.run) -> int:
    options = installer.Options(codex=args.codex, explorer=args.explorer, service=args.service, port=args.port)
    installation = installer.Installation(home or Home.current(), runner)
    try:
        plan = installation.setup_plan(options)
    except installer.SetupError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.code
    code = installer.carry_out(plan, args.dry_run, sys.stdout, sys.stderr, PROG)
    for note in plan.notes:
        print(note)
    if not plan.steps:
        print("nothing to change: everything is in place (see llm-proxy status)")
        return 0
    if args.dry_run and not code:
        print(f"would record it in {installation.home.short(installation.home.manifest)} (for llm-proxy uninstall)")
    if code or args.dry_run:
        return code
    for line in installer.setup_summary(installation, plan, options):
        print(line)
    return 0
