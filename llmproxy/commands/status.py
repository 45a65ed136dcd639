"""``llm-proxy status``: running or not, the service, the logs, today's traffic, Loki, the shells.
Exit status 0 when the proxy answers, 3 when it does not (like ``systemctl status``)."""

from __future__ import annotations

import argparse
import sys

from llmproxy.settings import load_settings_or_exit
from llmproxy.setup import installer, service, status
from llmproxy.setup.home import Home

HELP = "is the proxy running (pid, port, uptime), its service, logs, today's calls and cost, Loki, shells"


def configure(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, extra: list[str], home: Home | None = None,
        runner: service.Runner = service.run) -> int:
    settings = load_settings_or_exit(create_dirs=False)
    report = status.gather(installer.Installation(home or Home.current(), runner), settings)
    sys.stdout.write(report.text())
    return report.exit_status
