"""``llm-proxy check-config``: validate the configuration (AWS credentials too, when Bedrock is
configured) and print the effective values."""

from __future__ import annotations

import argparse
import os

from llmproxy.settings import describe, load_settings_or_exit, settings_files

HELP = "validate the configuration and print the effective values"


def configure(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace, extra: list[str]) -> int:
    settings = load_settings_or_exit(credentials=True)
    rows = describe(settings)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    said = [f"{'env file' if path == settings.env_file else 'user settings'}: {path}"
            f"{'' if path.is_file() else ', not present'}" for path in reversed(settings_files(os.environ))]
    print(f"configuration OK ({'; '.join(said)})")
    return 0
