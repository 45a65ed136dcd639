"""Where one user's files are: rc files, the settings file, units, Codex's config.

Everything :mod:`~llmproxy.setup` reads or writes is named here, from a home directory and an
environment handed in (``HOME``, ``XDG_CONFIG_HOME``, ``ZDOTDIR``, ``CODEX_HOME``, ``SHELL``,
``PATH``), so that a test runs the whole installation against a temporary home.
"""

from __future__ import annotations

import os
import pwd
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from llmproxy.settings import user_settings_file


@dataclass(frozen=True)
class Home:
    path: Path
    environ: Mapping[str, str] = field(default_factory=dict)
    platform: str = sys.platform

    @classmethod
    def current(cls) -> "Home":
        return cls(Path.home(), dict(os.environ))

    @property
    def config_dir(self) -> Path:
        return Path(self.environ.get("XDG_CONFIG_HOME") or self.path / ".config")

    @property
    def settings_file(self) -> Path:
        """The user's settings (``LLM_PROXY_*=…``), read by the service and by every command."""
        return user_settings_file({**self.environ, "HOME": str(self.path)})

    @property
    def manifest(self) -> Path:
        """What ``setup`` changed, for ``uninstall``."""
        return self.settings_file.with_name("installed.json")

    @property
    def systemd_units(self) -> Path:
        return self.config_dir / "systemd" / "user"

    @property
    def launch_agents(self) -> Path:
        return self.path / "Library" / "LaunchAgents"

    @property
    def app_logs(self) -> Path:
        """Where a launchd agent's stdout and stderr go (systemd's go to the journal)."""
        return self.path / "Library" / "Logs"

    @property
    def fish_conf_d(self) -> Path:
        return self.config_dir / "fish" / "conf.d"

    @property
    def zdotdir(self) -> Path:
        return Path(self.environ.get("ZDOTDIR") or self.path)

    @property
    def codex_config(self) -> Path:
        return Path(self.environ.get("CODEX_HOME") or self.path / ".codex") / "config.toml"

    @property
    def login_shell(self) -> str:
        """The name of the user's shell (``$SHELL``, else the passwd entry's)."""
        shell = self.environ.get("SHELL")
        if not shell:
            try:
                shell = pwd.getpwuid(os.getuid()).pw_shell
            except KeyError:
                shell = ""
        return Path(shell).name

    def has(self, program: str) -> bool:
        return shutil.which(program, path=self.environ.get("PATH", os.defpath)) is not None

    def short(self, path: Path) -> str:
        """``~/.bashrc`` for a path under this home (what a person reads), else the path."""
        try:
            return "~/" + str(Path(path).relative_to(self.path))
        except ValueError:
            return str(path)
