"""``llm-proxy check-config``: validate the configuration (AWS credentials too, when Bedrock is
configured) and print the effective values."""

from __future__ import annotations

import argparse

from llmproxy.settings import describe, load_settings_or_exit

HELP = "validate the configuration and print the effective values"


def configure(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, extra: list[str]) -> int:
    settings = load_settings_or_exit(credentials=True)
    rows = describe(settings)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"configuration OK (env file: {settings.env_file}"
          f"{'' if settings.env_file and settings.env_file.is_file() else ', not present'})")
    return 0
