"""``llm-proxy systemd-unit [UNIT]``: a unit shipped in the package, filled in for this installation."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from llmproxy.server import systemd
from llmproxy.settings import load_settings_or_exit

HELP = "print a systemd unit filled in for this installation"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("unit", nargs="?", default="llm-proxy.service",
                        choices=("llm-proxy.service", "llm-proxy-prune.service", "llm-proxy-prune.timer"))
    parser.add_argument("--user", default="llmproxy", help="service user (default llmproxy)")
    parser.add_argument("--env-file", type=Path, default=Path("/etc/llm-proxy.env"),
                        help="EnvironmentFile= (default /etc/llm-proxy.env; read for the log dir if present)")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    environ = dict(os.environ)
    if args.env_file.is_file():  # the service's settings, read as systemd reads them
        environ.update(systemd.read_env_file(args.env_file))
    environ["LLM_PROXY_ENV_FILE"] = "/dev/null"
    settings = load_settings_or_exit(environ, create_dirs=False)
    sys.stdout.write(systemd.render(args.unit, settings, args.user, args.env_file))
    return 0
