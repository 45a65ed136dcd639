"""The user service: a systemd user unit on Linux, a launchd agent on macOS.

Each manager renders its files (units from ``units/``; a plist built and checked with
:mod:`plistlib`), says whether it can run here at all, reads a service's state and names the
commands that start, restart and stop it. Every command goes through a *runner* handed in
(``argv → Result``), so that a test drives the whole installation without a systemd or a
launchd, and this module never starts a process itself.
"""

from __future__ import annotations

import os
import plistlib
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable

from llmproxy.server.systemd import executable, stop_timeout
from llmproxy.settings import Settings
from llmproxy.setup.home import Home

PROXY = "llm-proxy"
EXPLORER = "llm-proxy-explore"
COMMAND_TIMEOUT = 180  # a start waits for gunicorn's READY=1; a stop for the Loki flush
QUERY_TIMEOUT = 15     # a question (is-active, print…): a hung user bus must not stall `status`
_CHANGES = {"start", "restart", "stop", "enable", "disable", "daemon-reload", "bootstrap", "bootout", "kickstart"}


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def line(self) -> str:
        """The first line of what the command said (stderr first), for a one-line report."""
        for text in (self.stderr, self.stdout):
            for line in text.splitlines():
                if line.strip():
                    return line.strip()
        return f"exit status {self.returncode}"


Runner = Callable[[list[str]], Result]


def run(argv: list[str]) -> Result:
    """The real runner: a change may take minutes, a question a few seconds."""
    timeout = COMMAND_TIMEOUT if _CHANGES.intersection(argv[1:]) else QUERY_TIMEOUT
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return Result(127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return Result(124, "", f"{' '.join(argv)}: no answer within {timeout} s")
    return Result(done.returncode, done.stdout, done.stderr)


def unit_word(text: str, command: bool = False) -> str:
    """``text`` as one word of a unit file's setting: quoted (a home with a space), ``%`` not a
    specifier, and in a command line ``$`` not a variable (systemd.syntax, systemd.service)."""
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return '"' + (text.replace("$", "$$") if command else text) + '"'


@dataclass(frozen=True)
class Unit:
    """One service's file: its name for the manager, where it goes, what it says."""

    name: str
    path: Path
    text: str


@dataclass(frozen=True)
class State:
    installed: bool   # the manager knows it (enabled / loaded)
    active: str       # active, inactive, failed, activating … (running / not running for launchd)

    @property
    def running(self) -> bool:
        return self.active in ("active", "running")


class SystemdUser:
    """``~/.config/systemd/user/*.service``, driven with ``systemctl --user``."""

    kind = "systemd user unit"

    def __init__(self, home: Home, runner: Runner = run):
        self.home = home
        self.runner = runner

    def unavailable(self) -> str | None:
        """Why there is no systemd user instance to talk to (a container, WSL without systemd), or None."""
        result = self.runner(["systemctl", "--user", "is-system-running"])
        state = result.stdout.strip()
        if result.returncode == 127:
            return "no systemd here (systemctl not found)"
        if state in ("", "offline", "unknown"):
            return f"no systemd user instance here (systemctl --user is-system-running: {state or result.line})"
        return None

    def units(self, settings: Settings, settings_file: Path, explorer: bool, exe: Path | None = None) -> list[Unit]:
        exe = exe or executable()
        names = [PROXY, EXPLORER] if explorer else [PROXY]
        return [Unit(f"{name}.service", self.home.systemd_units / f"{name}.service",
                     resources.files("llmproxy.setup").joinpath("units", f"{name}.service").read_text()
                     .format(exe=unit_word(str(exe), command=True), stop_timeout=stop_timeout(settings),
                             settings_file=unit_word(f"LLM_PROXY_ENV_FILE={settings_file}")))
                for name in names]

    def state(self, name: str) -> State:
        enabled = self.runner(["systemctl", "--user", "is-enabled", name]).stdout.strip()
        active = self.runner(["systemctl", "--user", "is-active", name]).stdout.strip()
        return State(enabled == "enabled", active or "unknown")

    def activation(self, units: list[Unit], changed: set[str], settings_changed: bool) -> list[list[str]]:
        """The commands that leave every unit enabled and running its current file (the names in
        ``changed`` were rewritten) and settings."""
        commands = [["systemctl", "--user", "daemon-reload"]] if changed else []
        for unit in units:
            state = self.state(unit.name)
            if not state.installed or not state.running:
                commands.append(["systemctl", "--user", "enable", "--now", unit.name])
            elif unit.name in changed or settings_changed:
                commands.append(["systemctl", "--user", "restart", unit.name])
        return commands

    def deactivation(self, names: list[str]) -> list[list[str]]:
        return [["systemctl", "--user", "disable", "--now", *names]]

    def after_removal(self) -> list[list[str]]:
        return [["systemctl", "--user", "daemon-reload"]]

    def logs(self, name: str) -> str:
        return f"journalctl --user -u {name}"


class Launchd:
    """``~/Library/LaunchAgents/llm-proxy.plist``, driven with ``launchctl`` in the user's GUI domain."""

    kind = "launchd agent"

    def __init__(self, home: Home, runner: Runner = run, uid: int | None = None):
        self.home = home
        self.runner = runner
        self.domain = f"gui/{os.getuid() if uid is None else uid}"

    def unavailable(self) -> str | None:
        result = self.runner(["launchctl", "print", self.domain])
        if result.returncode == 127:
            return "no launchd here (launchctl not found)"
        if result.returncode != 0:
            return f"no launchd session for this user here (launchctl print {self.domain}: {result.line})"
        return None

    def units(self, settings: Settings, settings_file: Path, explorer: bool, exe: Path | None = None) -> list[Unit]:
        exe = exe or executable()
        names = [(PROXY, "serve"), (EXPLORER, "explore")] if explorer else [(PROXY, "serve")]
        return [Unit(label, self.home.launch_agents / f"{label}.plist",
                     plistlib.dumps(agent(label, [str(exe), command], settings_file,
                                          self.home.app_logs / f"{label}.log", stop_timeout(settings)),
                                    sort_keys=False).decode())
                for label, command in names]

    def state(self, name: str) -> State:
        result = self.runner(["launchctl", "print", f"{self.domain}/{name}"])
        if result.returncode != 0:
            return State(False, "not loaded")
        running = any(line.strip() == "state = running" for line in result.stdout.splitlines())
        return State(True, "running" if running else "not running")

    def activation(self, units: list[Unit], changed: set[str], settings_changed: bool) -> list[list[str]]:
        commands = []
        for unit in units:
            state = self.state(unit.name)
            if state.installed and (unit.name in changed or settings_changed):
                # launchd reads a plist when it is bootstrapped: a changed one goes out and in again.
                commands.append(["launchctl", "bootout", f"{self.domain}/{unit.name}"])
                commands.append(["launchctl", "bootstrap", self.domain, str(unit.path)])
            elif not state.installed:
                commands.append(["launchctl", "bootstrap", self.domain, str(unit.path)])
            elif not state.running:
                commands.append(["launchctl", "kickstart", f"{self.domain}/{unit.name}"])
        return commands

    def deactivation(self, names: list[str]) -> list[list[str]]:
        return [["launchctl", "bootout", f"{self.domain}/{name}"] for name in names]

    def after_removal(self) -> list[list[str]]:
        return []

    def logs(self, name: str) -> str:
        return str(self.home.app_logs / f"{name}.log")


def agent(label: str, program: list[str], settings_file: Path, log: Path, stop_seconds: int) -> dict:
    """A launchd agent that starts at login and again after a failure (not after a clean exit)."""
    plist = {
        "Label": label,
        "ProgramArguments": program,
        "EnvironmentVariables": {"LLM_PROXY_ENV_FILE": str(settings_file)},
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        # launchd waits this long after a start before it starts a failed agent again.
        "ThrottleInterval": 10,
        # SIGTERM, then this long for in-flight calls and the Loki flush, as TimeoutStopSec.
        "ExitTimeOut": stop_seconds,
        "ProcessType": "Interactive",
        "StandardOutPath": str(log),
        "StandardErrorPath": str(log),
    }
    check_agent(plist)
    return plist


_AGENT_TYPES = {"Label": str, "ProgramArguments": list, "EnvironmentVariables": dict, "RunAtLoad": bool,
                "KeepAlive": (bool, dict), "ThrottleInterval": int, "ExitTimeOut": int, "ProcessType": str,
                "StandardOutPath": str, "StandardErrorPath": str}


def check_agent(plist: dict) -> None:
    """Raise ValueError unless ``plist`` is a launchd agent launchd would load: the keys of
    launchd.plist(5) this module uses, with their types, and a plist that survives plistlib."""
    for key, value in plist.items():
        if key not in _AGENT_TYPES or not isinstance(value, _AGENT_TYPES[key]):
            raise ValueError(f"launchd.plist: {key}={value!r} is not a key of the type launchd takes")
    if not plist.get("Label") or not plist.get("ProgramArguments"):
        raise ValueError("launchd.plist: Label and ProgramArguments are required")
    if not all(isinstance(arg, str) for arg in plist["ProgramArguments"]) or \
            not Path(plist["ProgramArguments"][0]).is_absolute():
        raise ValueError("launchd.plist: ProgramArguments must be strings, the first an absolute path")
    if plist.get("ProcessType") not in (None, "Background", "Standard", "Adaptive", "Interactive"):
        raise ValueError(f"launchd.plist: ProcessType={plist['ProcessType']!r}")
    if plistlib.loads(plistlib.dumps(plist)) != plist:
        raise ValueError("launchd.plist: does not survive plistlib")


def manager(home: Home, runner: Runner = run) -> SystemdUser | Launchd | None:
    """This platform's user service manager (None where there is none)."""
    if home.platform == "darwin":
        return Launchd(home, runner)
    if home.platform.startswith("linux"):
        return SystemdUser(home, runner)
    return None
