"""A workstation for the setup tests: a temporary home, the service managers' command lines as
fakes (this machine has no systemd user instance and no launchd), and a look at every file.

The fakes answer what ``systemctl --user`` and ``launchctl`` print for the commands
llmproxy/setup/service.py uses (checked against systemd 252 and launchctl(1)), keep the state a
real manager would (enabled, active, loaded), and record every command line.
"""

from __future__ import annotations

import contextlib
import io
import os
import plistlib
import sys
from pathlib import Path

from llmproxy.commands import main as cli
from llmproxy.setup.home import Home
from llmproxy.setup.service import Result

LLM_PROXY = str(Path(sys.executable).with_name("llm-proxy"))
QUERIES = ("is-system-running", "is-enabled", "is-active", "print")


class FakeSystemctl:
    """``systemctl --user`` with a user instance (``offline=True``: without one)."""

    def __init__(self, offline: bool = False, failing: tuple[str, ...] = ()):
        self.offline = offline
        self.failing = set(failing)      # verbs that fail ("enable", "restart" …)
        self.enabled: set[str] = set()
        self.active: set[str] = set()
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> Result:
        self.calls.append(list(argv))
        assert argv[:2] == ["systemctl", "--user"], argv
        verb, names = argv[2], [a for a in argv[3:] if not a.startswith("--")]
        if self.offline:
            if verb == "is-system-running":
                return Result(1, "offline\n")
            return Result(1, "", "Failed to connect to bus: No medium found\n")
        if verb in self.failing:
            return Result(1, "", f"Job for {names[0]} failed because the control process exited with error code.\n")
        if verb == "is-system-running":
            return Result(0, "running\n")
        if verb == "is-enabled":
            return Result(0, "enabled\n") if names[0] in self.enabled else Result(1, "disabled\n")
        if verb == "is-active":
            return Result(0, "active\n") if names[0] in self.active else Result(3, "inactive\n")
        if verb == "enable":
            self.enabled.update(names)
            if "--now" in argv:
                self.active.update(names)
        elif verb == "disable":
            self.enabled.difference_update(names)
            if "--now" in argv:
                self.active.difference_update(names)
        elif verb in ("restart", "start"):
            self.active.update(names)
        elif verb != "daemon-reload":
            raise AssertionError(f"unexpected systemctl command: {argv}")
        return Result(0)

    def changes(self) -> list[list[str]]:
        """The commands that change something (not the questions)."""
        return [c for c in self.calls if c[2] not in QUERIES]


class FakeLaunchctl:
    """``launchctl`` in a GUI session: ``bootstrap``, ``bootout``, ``kickstart``, ``print``."""

    def __init__(self):
        self.loaded: dict[str, Path] = {}
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> Result:
        self.calls.append(list(argv))
        verb = argv[1]
        if verb == "print":
            target = argv[2]
            if target.count("/") == 1:
                return Result(0, f"{target} = {{\n\ttype = gui\n}}\n")
            label = target.rsplit("/", 1)[1]
            if label in self.loaded:
                return Result(0, f"{target} = {{\n\tstate = running\n\tpid = 4242\n}}\n")
            return Result(113, "", f'Could not find service "{label}" in domain for user gui: 501\n')
        if verb == "bootstrap":
            path = Path(argv[3])
            label = plistlib.loads(path.read_bytes())["Label"]
            self.loaded[label] = path
        elif verb == "bootout":
            self.loaded.pop(argv[2].rsplit("/", 1)[1], None)
        elif verb != "kickstart":
            raise AssertionError(f"unexpected launchctl command: {argv}")
        return Result(0)

    def changes(self) -> list[list[str]]:
        return [c for c in self.calls if c[1] not in QUERIES]


def make_home(root: Path, shell: str = "/bin/bash", platform: str = "linux", **environ) -> Home:
    home = Path(root) / "home"
    home.mkdir(parents=True, exist_ok=True)
    return Home(home, {"HOME": str(home), "PATH": os.environ.get("PATH", os.defpath), "SHELL": shell, **environ},
                platform)


def llm_proxy(home: Home, runner, *argv: str) -> tuple[int, str, str]:
    """``llm-proxy ARGV`` in this process, against ``home`` and the fake service manager."""
    args, extra = cli.parser().parse_known_args(list(argv))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.COMMANDS[args.command].run(args, extra, home=home, runner=runner)
    return code, out.getvalue(), err.getvalue()


def snapshot(root: Path, mtimes: bool = True) -> dict[str, tuple]:
    """Every path under ``root``: kind, bytes (or link target), mode and (``mtimes``) mtime;
    what must not move when nothing is to change."""
    seen = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(directory, name)
            st = path.lstat()
            if path.is_symlink():
                seen[str(path)] = ("link", os.readlink(path))
            elif path.is_dir():
                seen[str(path)] = ("dir", st.st_mode)
            else:
                seen[str(path)] = ("file", path.read_bytes(), st.st_mode) + ((st.st_mtime_ns,) if mtimes else ())
    return seen
