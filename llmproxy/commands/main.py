"""The ``llm-proxy`` command: ``serve``, ``check-config``, ``env``, ``systemd-unit``, ``prune``,
``loki-health``, ``loki-session``."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from llmproxy import __version__
from llmproxy.settings import Settings, SettingsError, describe, load_settings

EXIT_BAD_CONFIG = 2


def load_settings_or_exit(*, create_dirs: bool = True) -> Settings:
    """Settings, or one line on stderr and exit status 2 (no traceback) when one is bad."""
    try:
        return load_settings(create_dirs=create_dirs)
    except SettingsError as exc:
        print(f"llm-proxy: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_BAD_CONFIG) from None


def serve(gunicorn_args: Sequence[str]) -> int:
    """Run gunicorn with the settings packaged in :mod:`llmproxy.server.gunicorn_config`."""
    load_settings_or_exit()  # fail before gunicorn prints anything or binds
    from gunicorn.app.wsgiapp import WSGIApplication

    sys.argv = ["llm-proxy", "-c", "python:llmproxy.server.gunicorn_config", *gunicorn_args]
    WSGIApplication("%(prog)s serve [GUNICORN OPTIONS]").run()
    return 0


def check_config() -> int:
    settings = load_settings_or_exit()
    rows = describe(settings)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"configuration OK (env file: {settings.env_file}"
          f"{'' if settings.env_file and settings.env_file.is_file() else ', not present'})")
    return 0


def env(codex: bool = False) -> int:
    """Client setup for this proxy: shell exports, or with ``codex`` a Codex ``config.toml`` part."""
    settings = load_settings_or_exit(create_dirs=False)
    print(codex_config(settings.base_url) if codex else shell_exports(settings.base_url), end="")
    return 0


def shell_exports(base: str) -> str:
    """For ``eval``: Claude Code and the SDKs read these; Codex does not (0.171 ignores the second)."""
    return (f"export ANTHROPIC_BASE_URL={base}/anthropic/api.anthropic.com\n"
            f"export OPENAI_BASE_URL={base}/openai/api.openai.com/v1\n"
            "# Codex CLI: llm-proxy env --codex (it ignores OPENAI_BASE_URL)\n")


def codex_config(base: str) -> str:
    """The Codex CLI's two ways through the proxy, as checked against Codex 0.171.0."""
    url = f"{base}/openai/api.openai.com/v1"
    return f"""\
# Codex CLI through llm-proxy: put this at the top of $CODEX_HOME/config.toml
# (~/.codex/config.toml), before any [table].

# ChatGPT sign-in, or a key saved with `codex login --with-api-key`: the built-in
# provider (it tries a WebSocket first and ignores OPENAI_BASE_URL and OPENAI_API_KEY).
openai_base_url = "{url}"

# A key in $OPENAI_API_KEY: choose this provider here, or per run with
# `codex -c model_provider=llm-proxy` (plain HTTP and SSE).
# model_provider = "llm-proxy"

[model_providers.llm-proxy]
name = "OpenAI through llm-proxy"
base_url = "{url}"
env_key = "OPENAI_API_KEY"
wire_api = "responses"
"""


def systemd_unit(args: argparse.Namespace) -> int:
    from llmproxy.server import systemd

    environ = dict(os.environ)
    if args.env_file.is_file():  # the service's settings, read as systemd reads them
        environ.update(systemd.read_env_file(args.env_file))
    environ["LLM_PROXY_ENV_FILE"] = "/dev/null"
    try:
        settings = load_settings(environ, create_dirs=False)
    except SettingsError as exc:
        print(f"llm-proxy: {exc}", file=sys.stderr, flush=True)
        return EXIT_BAD_CONFIG
    sys.stdout.write(systemd.render(args.unit, settings, args.user, args.env_file))
    return 0


def prune(args: argparse.Namespace) -> int:
    from llmproxy.record import prune as pruning

    return pruning.run(load_settings_or_exit(create_dirs=False), dry_run=args.dry_run)


def tool(name: str, argv: list[str]) -> int:
    """``loki-health`` and ``loki-session``: their own options and exit codes (Nagios for the
    first), so they parse their arguments themselves."""
    if name == "loki-health":
        from llmproxy.loki import check as lokihealth

        return lokihealth.main(argv, prog="llm-proxy loki-health")
    from llmproxy.loki import session as lokisession

    return lokisession.main(argv, prog="llm-proxy loki-session")


TOOLS = ("loki-health", "loki-session")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in TOOLS:
        return tool(argv[0], argv[1:])
    parser = argparse.ArgumentParser(
        prog="llm-proxy",
        description="Transparent logging proxy for LLM API traffic.",
    )
    parser.add_argument("--version", action="version", version=f"llm-proxy {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("serve", help="run the proxy under gunicorn (what systemd runs); "
                        "further options go to gunicorn, e.g. --log-level debug")
    commands.add_parser("check-config", help="validate the configuration and print the effective values")
    env_parser = commands.add_parser("env", help="print export lines pointing Claude Code and the SDKs here")
    env_parser.add_argument("--codex", action="store_true",
                            help="print the Codex CLI's config.toml settings instead")
    unit = commands.add_parser("systemd-unit", help="print a systemd unit filled in for this installation")
    unit.add_argument("unit", nargs="?", default="llm-proxy.service",
                      choices=("llm-proxy.service", "llm-proxy-prune.service", "llm-proxy-prune.timer"))
    unit.add_argument("--user", default="llmproxy", help="service user (default llmproxy)")
    unit.add_argument("--env-file", type=Path, default=Path("/etc/llm-proxy.env"),
                      help="EnvironmentFile= (default /etc/llm-proxy.env; read for the log dir if present)")
    pruning = commands.add_parser("prune", help="compress old session logs, delete expired ones "
                                  "(LLM_PROXY_LOG_COMPRESS_AFTER, LLM_PROXY_LOG_RETENTION)")
    pruning.add_argument("--dry-run", action="store_true", help="print what would be done and the bytes freed")
    # Listed for --help only: main() hands their arguments over before parsing.
    commands.add_parser("loki-health", add_help=False,
                        help="one line on the Loki export, Nagios exit codes (see: llm-proxy loki-health --help)")
    commands.add_parser("loki-session", add_help=False,
                        help="print one session from Loki or the log files (see: llm-proxy loki-session --help)")
    args, extra = parser.parse_known_args(argv)

    if args.command == "serve":
        return serve(extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command == "check-config":
        return check_config()
    if args.command == "systemd-unit":
        return systemd_unit(args)
    if args.command == "prune":
        return prune(args)
    return env(codex=args.codex)
