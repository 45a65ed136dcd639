"""``llm-proxy explore [--host H] [--port P] [--open]``: the log explorer in a browser."""

from __future__ import annotations

import argparse
import sys
import threading
import webbrowser
from dataclasses import replace
from pathlib import Path

from llmproxy.settings import EXIT_BAD_CONFIG, SettingsError, load_settings_or_exit, option_type

HELP = "serve the log explorer: every session in a browser, live and searchable (127.0.0.1:8081)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", type=option_type("LLM_PROXY_EXPLORER_HOST"),
                        help="address to listen on (LLM_PROXY_EXPLORER_HOST, default 127.0.0.1); "
                             "other than loopback only with LLM_PROXY_EXPLORER_TOKEN set")
    parser.add_argument("--port", type=option_type("LLM_PROXY_EXPLORER_PORT"),
                        help="port (LLM_PROXY_EXPLORER_PORT, default 8081)")
    parser.add_argument("--log-dir", type=Path, help="the log tree to explore (LLM_PROXY_LOG_DIR), e.g. a copy")
    parser.add_argument("--open", action="store_true", help="open the explorer in the browser once it listens")


def _fail(message: str) -> int:
    print(f"llm-proxy: {message}", file=sys.stderr, flush=True)
    return EXIT_BAD_CONFIG


def run(args: argparse.Namespace, extra: list[str]) -> int:
    from llmproxy.explorer.serving import ExplorerServer, url

    settings = load_settings_or_exit(create_dirs=False)
    explorer = settings.explorer
    explorer = replace(explorer, host=args.host if args.host is not None else explorer.host,
                       port=args.port or explorer.port)
    settings = replace(settings, explorer=explorer, log_dir=(args.log_dir or settings.log_dir).expanduser())
    try:
        explorer.check_exposure()
    except SettingsError as exc:
        return _fail(str(exc))
    if not settings.log_dir.is_dir():
        return _fail(f"LLM_PROXY_LOG_DIR={str(settings.log_dir)!r} is not a directory: nothing to explore yet")
    address = url(settings)
    # The token opens the pages: it goes to the browser (--open), never to stdout or a journal.
    shown = address.split("?")[0] + ("?token=$LLM_PROXY_EXPLORER_TOKEN" if explorer.token else "")
    print(f"llm-proxy explorer: {shown}", flush=True)

    def ready() -> None:
        if args.open:
            threading.Thread(target=webbrowser.open, args=(address,), daemon=True).start()

    ExplorerServer(settings, on_ready=ready).run()
    return 0
