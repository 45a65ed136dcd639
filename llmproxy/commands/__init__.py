"""The ``llm-proxy`` command line: :mod:`~llmproxy.commands.main` (the parser) and one small module
per subcommand, which parses its options and hands the work to the stage that does it.

May import: common, providers, pricing, settings, proxy, record, loki, server, catalog, usage, explorer, setup.
Must not be imported by: any package (only the entry points ``__main__`` and the console script).
"""
