"""``llm-proxy env [--codex]``: what points today's clients at this proxy."""

from __future__ import annotations

import argparse

from llmproxy.settings import load_settings_or_exit

HELP = "print export lines pointing Claude Code, Gemini CLI and the SDKs here"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--codex", action="store_true",
                        help="print the Codex CLI's config.toml settings instead")


def run(args: argparse.Namespace, extra: list[str]) -> int:
    """Client setup for this proxy: shell exports, or with ``--codex`` a Codex ``config.toml`` part."""
    settings = load_settings_or_exit(create_dirs=False)
    print(codex_config(settings.base_url) if args.codex else
          shell_exports(settings.base_url, settings.bedrock_region or DEFAULT_AWS_REGION), end="")
    return 0


DEFAULT_AWS_REGION = "us-east-1"  # where Claude Code's Bedrock mode goes when nothing says


def shell_exports(base: str, region: str = DEFAULT_AWS_REGION) -> str:
    """For ``eval``: Claude Code, Gemini CLI and the SDKs read these; Codex does not (0.171
    ignores the second). Claude Code uses the Bedrock URL only in its Bedrock mode."""
    return (f"export ANTHROPIC_BASE_URL={base}/anthropic/api.anthropic.com\n"
            f"export OPENAI_BASE_URL={base}/openai/api.openai.com/v1\n"
            f"export GOOGLE_GEMINI_BASE_URL={base}/gemini/generativelanguage.googleapis.com\n"
            f"export ANTHROPIC_BEDROCK_BASE_URL={base}/bedrock/{region}\n"
            "# Codex CLI: llm-proxy env --codex (it ignores OPENAI_BASE_URL)\n"
            "# Claude Code on Bedrock, signed by the proxy: "
            "CLAUDE_CODE_USE_BEDROCK=1 CLAUDE_CODE_SKIP_BEDROCK_AUTH=1\n")


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
