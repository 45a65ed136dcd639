"""``llm-proxy serve [GUNICORN OPTIONS]``: gunicorn with the packaged settings (what systemd runs)."""

from __future__ import annotations

import argparse
import sys

from llmproxy.settings import load_settings_or_exit

HELP = "run the proxy under gunicorn (what systemd runs); further options go to gunicorn, e.g. --log-level debug"


def configure(parser: argparse.ArgumentParser) -> None:
    """Every option is gunicorn's: they come to :func:`run` unparsed."""


def run(args: argparse.Namespace, gunicorn_args: list[str]) -> int:
    """Run gunicorn with the settings packaged in :mod:`llmproxy.server.gunicorn_config`."""
    load_settings_or_exit()  # fail before gunicorn prints anything or binds
    from gunicorn.app.wsgiapp import WSGIApplication

    sys.argv = ["llm-proxy", "-c", "python:llmproxy.server.gunicorn_config", *gunicorn_args]
    WSGIApplication("%(prog)s serve [GUNICORN OPTIONS]").run()
    return 0
