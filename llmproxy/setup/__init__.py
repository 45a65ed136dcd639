"""Install once on a workstation: the user service, the shell integration, Codex's config.toml,
and how that installation is doing (``llm-proxy setup``, ``status``, ``uninstall``).

:mod:`~llmproxy.setup.home` (where a user's files are), :mod:`~llmproxy.setup.installer` (the
plan of changes that ``setup`` applies and ``uninstall`` undoes, with
:mod:`~llmproxy.setup.manifest`, the record of what was done), and the pieces it edits:
:mod:`~llmproxy.setup.service` (a systemd user unit or a launchd agent, driven through an
injectable runner; templates in ``units/``), :mod:`~llmproxy.setup.shells` (the block each
shell's rc file gets, which reads the server's presence file without starting a program),
:mod:`~llmproxy.setup.textfile` (marked blocks and lines added and removed byte for byte, through
symlinks), :mod:`~llmproxy.setup.codex` (config.toml with tomlkit), :mod:`~llmproxy.setup.ports`;
then :mod:`~llmproxy.setup.probe` (asking a running proxy) and :mod:`~llmproxy.setup.status`.

May import: common, providers, settings, record, loki, server, catalog.
Must not be imported by: common, providers, settings, proxy, record, loki, server, catalog, usage, explorer.
"""
