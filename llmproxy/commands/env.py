"""``llm-proxy env [--codex] [--force]``: what points today's clients at this proxy, while it answers."""

from __future__ import annotations

import argparse

from llmproxy.providers import client_environment
from llmproxy.settings import load_settings_or_exit
from llmproxy.setup import codex, probe

HELP = "print export lines pointing Claude Code and the SDKs here, while the proxy answers"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--codex", action="store_true",
                        help="print the Codex CLI's config.toml settings instead")
    parser.add_argument("--force", action="store_true",
                        help="print them even when the proxy does not answer")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Client setup for this proxy: shell exports, or with ``--codex`` a Codex ``config.toml``
    part. Nothing (and exit status 0) while nothing answers there, so that ``eval "$(llm-proxy
    env)"`` never points a client at a dead port."""
    settings = load_settings_or_exit(create_dirs=False)
    if not args.force and probe.health(settings.base_url, timeout=1.0) is None:
        return 0
    print(codex.snippet(settings.base_url) if args.codex else shell_exports(settings.base_url), end="")
    return 0


def shell_exports(base: str) -> str:
    """For ``eval``: Claude Code and the SDKs read these; Codex does not (0.171 ignores OPENAI_BASE_URL)."""
    return ("".join(f"export {name}={value}\n" for name, value in client_environment(base).items())
            + "# Codex CLI: llm-proxy env --codex (it ignores OPENAI_BASE_URL)\n")
