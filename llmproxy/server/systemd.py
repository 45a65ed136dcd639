"""systemd: the unit files shipped in the package, filled in for this installation, and their
installation (``scripts/install-systemd``).

The templates live in ``llmproxy/server/systemd_units/``. What differs between installations is filled
in: the ``llm-proxy`` executable of this environment, the service user, the env file, the log
dir (the only place the hardened service may write) and the stop timeout, which must exceed
gunicorn's graceful timeout.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, TextIO

from llmproxy.settings import Settings, SettingsError, load_settings

UNITS = ("llm-proxy.service", "llm-proxy-prune.service", "llm-proxy-prune.timer")
DEFAULT_USER = "llmproxy"
DEFAULT_ENV_FILE = Path("/etc/llm-proxy.env")
DEFAULT_LOG_DIR = Path("/var/lib/llm-proxy")
DEFAULT_UNIT_DIR = Path("/etc/systemd/system")
# systemd must not kill a worker that is still flushing: gunicorn waits graceful_timeout
# (flush budget + 15 s) for its workers, systemd this much longer for gunicorn.
STOP_MARGIN = 15


def executable() -> Path:
    """The ``llm-proxy`` console script of the running environment (a venv's bin/ or PATH)."""
    beside = Path(sys.executable).with_name("llm-proxy")
    if beside.exists():
        return beside
    found = shutil.which("llm-proxy")
    return Path(found) if found else beside


class InstallError(Exception):
    """A step failed (``code`` 1) or the settings are bad (``code`` 2)."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def primary_group(user: str) -> str:
    """The user's group, or a group of the user's name (``useradd --user-group`` makes one)."""
    try:
        return grp.getgrgid(pwd.getpwnam(user).pw_gid).gr_name
    except KeyError:
        return user


def stop_timeout(settings: Settings) -> int:
    return settings.graceful_timeout + STOP_MARGIN


def render(name: str, settings: Settings, user: str = DEFAULT_USER, env_file: Path = DEFAULT_ENV_FILE,
           exe: Path | None = None) -> str:
    """The unit file ``name`` with this installation's values."""
    exe = exe or executable()
    write_paths = [settings.log_dir]
    spool = settings.loki.spool_dir
    if spool and not spool.is_relative_to(settings.log_dir):
        write_paths.append(spool)
    # ProtectHome=yes hides /home and /root entirely (ReadWritePaths= cannot undo that): an
    # installation or a log dir there needs read-only, which ReadWritePaths= can then open up.
    homes = (Path("/home"), Path("/root"), Path("/run/user"))
    under_home = any(p.is_relative_to(home) for p in (exe, *write_paths) for home in homes)
    template = resources.files("llmproxy.server").joinpath("systemd_units", name).read_text()
    return template.format(user=user, group=primary_group(user), env_file=env_file, exe=exe,
                           stop_timeout=stop_timeout(settings),
                           protect_home="read-only" if under_home else "yes",
                           write_paths=" ".join(str(p) for p in write_paths))


ENV_TEMPLATE = """\
# llm-proxy settings, read by systemd (EnvironmentFile=): KEY=VALUE, one a line.
# Mode 0600: it may hold LLM_PROXY_LOKI_AUTH_TOKEN or _PASSWORD.
# docs/configuration.rst lists every variable; llm-proxy check-config prints their values.
LLM_PROXY_HOST=127.0.0.1
LLM_PROXY_PORT=8080
LLM_PROXY_LOG_DIR={log_dir}
# LLM_PROXY_LOKI_ENABLED=true
# LLM_PROXY_LOKI_URL=http://127.0.0.1:3100
# LLM_PROXY_LOKI_AUTH_TOKEN=
# LLM_PROXY_LOG_RETENTION=90d
"""


@dataclass
class Installer:
    """Installs the units, the env file and the log dir; every step is skipped when already done.
    With ``dry_run`` it only says what it would do."""

    user: str
    env_file: Path
    log_dir: Path
    unit_dir: Path
    dry_run: bool
    out: TextIO
    run: Callable[[list[str]], int] = lambda argv: subprocess.call(argv)

    def say(self, what: str) -> None:
        print(("would " if self.dry_run else "") + what, file=self.out)

    def install(self) -> int:
        self._user()
        self._env_file()
        settings = self._settings()
        self._log_dir(settings.log_dir)
        changed = [name for name in UNITS if self._unit(name, render(name, settings, self.user, self.env_file))]
        if changed and Path("/run/systemd/system").is_dir():
            self.say("run systemctl daemon-reload")
            if not self.dry_run:
                self.run(["systemctl", "daemon-reload"])
        elif changed:
            print("systemd is not running here: run 'systemctl daemon-reload' where it is", file=self.out)
        print("next: edit {env}, then: systemctl enable --now llm-proxy.service llm-proxy-prune.timer"
              .format(env=self.env_file), file=self.out)
        return 0

    def _user(self) -> None:
        try:
            pwd.getpwnam(self.user)
            return
        except KeyError:
            pass
        self.say(f"create system user {self.user}")
        if not self.dry_run:
            code = self.run(["useradd", "--system", "--user-group", "--no-create-home",
                             "--home-dir", str(self.log_dir), "--shell", "/usr/sbin/nologin", self.user])
            if code:
                raise InstallError(f"useradd {self.user} failed (exit {code})")

    def _env_file(self) -> None:
        if self.env_file.exists():  # the operator's settings (and token) are never overwritten
            if self.env_file.stat().st_mode & 0o077:
                self.say(f"make {self.env_file} mode 0600 (it may hold a Loki token)")
                if not self.dry_run:
                    self.env_file.chmod(0o600)
            return
        self.say(f"write {self.env_file} (mode 0600)")
        if not self.dry_run:
            self.env_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(ENV_TEMPLATE.format(log_dir=self.log_dir))

    def _settings(self) -> Settings:
        """The settings the service will have: the env file as systemd reads it."""
        environ = {"LLM_PROXY_ENV_FILE": "/dev/null"}
        if self.env_file.exists():
            environ.update(read_env_file(self.env_file))
        else:  # dry run before the file exists
            environ["LLM_PROXY_LOG_DIR"] = str(self.log_dir)
        try:
            return load_settings(environ, create_dirs=False)
        except SettingsError as exc:
            raise InstallError(f"{self.env_file}: {exc}", 2) from None

    def _log_dir(self, log_dir: Path) -> None:
        try:
            entry = pwd.getpwnam(self.user)
        except KeyError:  # a dry run: the user is not created yet
            entry = None
        if not log_dir.is_dir():
            self.say(f"create {log_dir} (mode 0700, owner {self.user})")
            if not self.dry_run:
                log_dir.mkdir(parents=True, mode=0o700)
        if log_dir.is_dir() and entry is not None:
            st = log_dir.stat()
            if (st.st_uid, st.st_gid) != (entry.pw_uid, entry.pw_gid):
                self.say(f"give {log_dir} to {self.user}")
                if not self.dry_run:
                    os.chown(log_dir, entry.pw_uid, entry.pw_gid)

    def _unit(self, name: str, text: str) -> bool:
        path = self.unit_dir / name
        if path.exists() and path.read_text() == text:
            return False
        self.say(f"{'update' if path.exists() else 'write'} {path}")
        if not self.dry_run:
            self.unit_dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_text(text)
            tmp.chmod(0o644)
            os.replace(tmp, path)
        return True


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines the way systemd's EnvironmentFile= reads them: ``#`` and ``;`` start a
    comment line, whitespace around the value is dropped, one pair of double or single quotes
    is removed (``\\"`` and ``\\\\`` unescaped inside double quotes), a trailing backslash joins
    the next line; a line whose name is not a variable name (``export X=1``) is ignored.
    (python-dotenv reads ``.env`` differently: ``export``, ``${VAR}``.)"""
    values: dict[str, str] = {}
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        while line.endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line[:-1] + lines[i]
        i += 1
        stripped = line.strip()
        if not stripped or stripped[0] in "#;" or "=" not in stripped:
            continue
        key, _, value = stripped.partition("=")
        key, value = key.strip(), value.strip()
        if not _NAME.fullmatch(key):  # systemd ignores the line ("export X=1" among them)
            continue
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
        elif len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        values[key] = value
    return values


def main(argv: list[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(
        prog="install-systemd",
        description="Install llm-proxy as a systemd service: the service user, the env file "
                    "(mode 0600, kept if present), the log dir and the units (service, prune "
                    "service and timer). Idempotent: a second run changes nothing.",
        epilog="exit status: 0 done (or nothing to do), 1 a step failed, 2 bad arguments or settings")
    parser.add_argument("--user", default=DEFAULT_USER, help=f"service user (default {DEFAULT_USER}; created if missing)")
    parser.add_argument("--env-file", type=Path, default=DEFAULT_ENV_FILE, help=f"default {DEFAULT_ENV_FILE}")
    parser.add_argument("--log-dir", type=Path, default=DEFAULT_LOG_DIR,
                        help=f"LLM_PROXY_LOG_DIR of a new env file (default {DEFAULT_LOG_DIR})")
    parser.add_argument("--unit-dir", type=Path, default=DEFAULT_UNIT_DIR, help=f"default {DEFAULT_UNIT_DIR}")
    parser.add_argument("--dry-run", action="store_true", help="print what would be done, change nothing")
    args = parser.parse_args(argv)
    installer = Installer(args.user, args.env_file, args.log_dir, args.unit_dir, args.dry_run, out)
    try:
        return installer.install()
    except InstallError as exc:
        print(f"install-systemd: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:
        print(f"install-systemd: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
