"""The ``llm-proxy`` command: the parser, and one module of this package per subcommand.

A subcommand module has ``HELP`` and ``run``; one that parses its own arguments (its own exit
codes, like a Nagios check) sets ``OWN_OPTIONS`` and gets ``argv``, any other has
``configure(parser)`` and gets the parsed arguments. A new subcommand is a module here and a row
in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType
from typing import Sequence

from llmproxy import __version__
from llmproxy.commands import (
    check_config,
    env,
    explore,
    loki_health,
    loki_session,
    prune,
    serve,
    setup,
    status,
    systemd_unit,
    uninstall,
    usage,
)

# In the order --help lists them.
COMMANDS: dict[str, ModuleType] = {
    "serve": serve,
    "setup": setup,
    "status": status,
    "uninstall": uninstall,
    "check-config": check_config,
    "env": env,
    "systemd-unit": systemd_unit,
    "prune": prune,
    "usage": usage,
    "explore": explore,
    "loki-health": loki_health,
    "loki-session": loki_session,
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="llm-proxy", description="Transparent logging proxy for LLM API traffic.")
    top.add_argument("--version", action="version", version=f"llm-proxy {__version__}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        if getattr(module, "OWN_OPTIONS", False):
            # Listed for --help only: main() hands their arguments over before parsing.
            commands.add_parser(name, add_help=False, help=module.HELP)
        else:
            module.configure(commands.add_parser(name, help=module.HELP))
    return top


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and getattr(COMMANDS.get(argv[0]), "OWN_OPTIONS", False):
        return COMMANDS[argv[0]].run(argv[1:])
    top = parser()
    args, extra = top.parse_known_args(argv)
    if extra and args.command != "serve":  # serve hands its options to gunicorn
        top.error(f"unrecognized arguments: {' '.join(extra)}")
    return COMMANDS[args.command].run(args, extra)
