"""The presence file: a running server says where it is, in a form a shell reads without Python.

The gunicorn master writes ``{log_dir}/.run/proxy.env`` once it listens (``when_ready``) and
keeps it open for as long as it lives; it removes the file when it stops (``on_exit``). The
first line names the master and the descriptor it holds the file open on; the rest are the
client variables (``NAME=value``, one a line)::

    4242 7 1764950400 0.1.0 http://127.0.0.1:8080
    ANTHROPIC_BASE_URL=http://127.0.0.1:8080/anthropic/api.anthropic.com
    OPENAI_BASE_URL=http://127.0.0.1:8080/openai/api.openai.com/v1

A file left behind (``kill -9``, a crash, a reboot) must not count. On Linux a reader asks the
kernel whether process PID still holds this very file open at descriptor FD: ``[
/proc/PID/fd/FD -ef FILE ]`` is true for the writer alone, never for a dead one, a reused pid
or a file from before a reboot, and a shell's ``test`` builtin answers it without starting a
program (llmproxy/setup/shells.py). Where there is no ``/proc`` (macOS) it falls back to
``kill -0 PID``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from llmproxy import __version__
from llmproxy.providers import client_environment
from llmproxy.settings import Settings

FILE_NAME = "proxy.env"


def path(settings: Settings) -> Path:
    return settings.run_dir / FILE_NAME


@dataclass(frozen=True)
class Presence:
    """What the presence file says."""

    pid: int
    fd: int
    started: float          # Unix time the server started listening
    version: str
    base_url: str
    variables: dict[str, str] = field(default_factory=dict)

    def text(self) -> str:
        head = f"{self.pid} {self.fd} {int(self.started)} {self.version} {self.base_url}\n"
        return head + "".join(f"{name}={value}\n" for name, value in self.variables.items())

    @classmethod
    def parse(cls, text: str) -> "Presence | None":
        lines = text.splitlines()
        try:
            pid, fd, started, version, base_url = lines[0].split(" ")
            variables = dict(line.split("=", 1) for line in lines[1:] if "=" in line)
            return cls(int(pid), int(fd), float(started), version, base_url, variables)
        except (IndexError, ValueError):
            return None


class Announcement:
    """The file of one running server (held by the gunicorn master)."""

    def __init__(self, file: Path):
        self.file = Path(file)
        self._fd: int | None = None

    def publish(self, base_url: str, pid: int | None = None) -> Presence:
        """Write the file (atomically) and keep it open: from now on it says this process is here."""
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_name(f".{self.file.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        presence = Presence(pid or os.getpid(), fd, time.time(), __version__, base_url,
                            client_environment(base_url))
        os.write(fd, presence.text().encode())
        os.replace(tmp, self.file)
        self.withdraw()
        self._fd = fd
        return presence

    def withdraw(self) -> None:
        """Remove the file if it is still this server's (another may have replaced it), and close it."""
        if self._fd is None:
            return
        try:
            if os.path.samestat(os.fstat(self._fd), os.stat(self.file)):
                self.file.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None


def read(file: Path) -> Presence | None:
    """The server the file names, if it is still there (see the module's docstring), else None."""
    try:
        presence = Presence.parse(Path(file).read_text())
    except (OSError, UnicodeDecodeError):
        return None
    return presence if presence is not None and holds(presence, Path(file)) else None


def holds(presence: Presence, file: Path) -> bool:
    """Whether the process the file names is alive and is the one that wrote it."""
    if Path("/proc/self/fd").is_dir():
        try:
            return os.path.samestat(os.stat(f"/proc/{presence.pid}/fd/{presence.fd}"), os.stat(file))
        except OSError:
            return False
    try:
        os.kill(presence.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
