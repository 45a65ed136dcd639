"""The shell integration with real shells: a workstation set up by ``llm-proxy setup`` (temporary
home), its user unit run the way systemd runs it, and new interactive bash, zsh and fish shells in
a pseudo-terminal. They get the client variables while the proxy runs, and none after it was
stopped or killed with ``kill -9``. The real Claude Code started from such a shell, and the real
Codex with the config.toml ``setup --codex`` wrote, go through the proxy."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pexpect
import pytest
import realclients
from fakeprovider import FakeProvider
from proxyproc import free_port, http_get, jsonl_lines, wait_until
from test_systemd import unit_values
from workstation import FakeSystemctl, llm_proxy, make_home

from llmproxy.server import presence
from llmproxy.setup import installer

SHELLS = ("bash", "zsh", "fish")
SKEL_BASHRC = Path("/etc/skel/.bashrc")
PROBE = 'echo "<<""$ANTHROPIC_BASE_URL|$OPENAI_BASE_URL"">>"'   # one line in all three shells
ANSWER = re.compile(r'<<([^"$]*)\|([^"$]*)>>')


def require_shells():
    missing = [name for name in SHELLS if shutil.which(name) is None]
    if missing:
        realclients.require(f"{', '.join(missing)} not installed (./scripts/test installs Debian's zsh and fish)",
                            what="the shell tests")


class Workstation:
    """A home where ``llm-proxy setup --codex`` ran (the service manager faked), and its unit."""

    def __init__(self, root: Path):
        require_shells()
        self.home = make_home(root)
        self.path = self.home.path
        (self.path / ".bashrc").write_bytes(SKEL_BASHRC.read_bytes() if SKEL_BASHRC.exists() else b"# bashrc\n")
        (self.path / ".zshrc").write_text("# the user's zsh settings\n")
        self.port = free_port()
        settings_file = self.home.settings_file
        settings_file.parent.mkdir(parents=True)
        settings_file.write_text("LLM_PROXY_WORKERS=2\nLLM_PROXY_THREADS=16\n")   # the user's, kept
        code, out, err = llm_proxy(self.home, FakeSystemctl(), "setup", "--codex", "--port", str(self.port))
        assert code == 0, err
        self.unit = unit_values((self.home.systemd_units / "llm-proxy.service").read_text())
        self.settings = installer.Installation(self.home).service_settings()
        self.presence_file = presence.path(self.settings)
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    # the service, run as systemd runs it ---------------------------------------------------

    def start(self) -> None:
        """ExecStart with Environment= on top of the user manager's environment, the home as
        working directory (a user unit's default), and a notify socket (Type=notify)."""
        environ = {"HOME": str(self.path), "PATH": os.environ["PATH"], "LANG": "C.UTF-8"}
        for line in self.unit["Environment"]:
            for assignment in shlex.split(line):   # quoted words, as systemd splits them
                key, _, value = assignment.partition("=")
                environ[key] = value.replace("%%", "%")
        notify_path = self.path.parent / f"notify-{self.port}"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.settimeout(30)
        environ["NOTIFY_SOCKET"] = str(notify_path)
        self.journal = open(self.path.parent / "journal", "ab")
        try:
            self.proc = subprocess.Popen(shlex.split(self.unit["ExecStart"][0]), env=environ, cwd=self.path,
                                         stdout=self.journal, stderr=subprocess.STDOUT)
            assert b"READY=1" in notify.recv(4096)
        finally:
            notify.close()
            notify_path.unlink()
        wait_until(lambda: presence.read(self.presence_file), 10, message="the presence file")
        wait_until(lambda: http_get(self.port, "/health")[1].get("threads", {}).get("workers") == 2, 30,
                   message="both workers")

    def reload(self) -> None:
        """ExecReload: HUP to the master; gunicorn replaces its workers."""
        old = self.workers()
        reload = self.unit["ExecReload"][0].replace("$MAINPID", str(self.proc.pid))
        assert subprocess.run(shlex.split(reload), timeout=10).returncode == 0
        wait_until(lambda: not set(self.workers()) & set(old) and len(self.workers()) == len(old), 60,
                   interval=0.1, message="workers replaced")

    def stop(self) -> int:
        """KillSignal to the main process (KillMode=mixed), waiting up to TimeoutStopSec."""
        self.proc.send_signal(getattr(signal, self.unit["KillSignal"][0]))
        return self.proc.wait(int(self.unit["TimeoutStopSec"][0]))

    def kill_9(self) -> None:
        workers = self.workers()
        self.proc.kill()
        self.proc.wait(10)
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), 30,
                   message="the orphaned workers leave")

    def workers(self) -> list[int]:
        try:
            return [int(p) for p in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()]
        except FileNotFoundError:
            return []

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if getattr(self, "journal", None):
            self.journal.close()

    # a user's new shell ----------------------------------------------------------------------

    def shell(self, name: str, **env: str) -> pexpect.spawn:
        """A new interactive shell in a pseudo-terminal, as a terminal window starts one."""
        environ = {"HOME": str(self.path), "PATH": os.environ["PATH"], "TERM": "dumb", "LANG": "C.UTF-8",
                   "SHELL": shutil.which(name), **env}
        return pexpect.spawn(name, ["-i"], env=environ, cwd=str(self.path), encoding="utf-8", timeout=30,
                             dimensions=(24, 300))

    def variables(self, name: str) -> tuple[str, str]:
        """ANTHROPIC_BASE_URL and OPENAI_BASE_URL in a new shell (empty: not set)."""
        child = self.shell(name)
        try:
            child.sendline(PROBE)
            child.expect(ANSWER)
            found = child.match.groups()
            child.sendline("exit")
            child.expect(pexpect.EOF)
            return found
        finally:
            child.close(force=True)


@pytest.fixture
def workstation(tmp_path):
    station = Workstation(tmp_path)
    yield station
    station.close()


def test_new_shells_have_the_variables_while_the_proxy_runs_and_none_after_stop_or_kill_9(workstation):
    up = (f"{workstation.base_url}/anthropic/api.anthropic.com", f"{workstation.base_url}/openai/api.openai.com/v1")
    down = ("", "")
    assert {name: workstation.variables(name) for name in SHELLS} == dict.fromkeys(SHELLS, down)

    workstation.start()
    assert {name: workstation.variables(name) for name in SHELLS} == dict.fromkeys(SHELLS, up)
    workstation.reload()                                          # systemctl --user reload: same master
    assert workstation.variables("bash") == up
    assert workstation.stop() == 0                                # systemctl --user stop
    assert not workstation.presence_file.exists()
    assert {name: workstation.variables(name) for name in SHELLS} == dict.fromkeys(SHELLS, down)

    workstation.start()
    assert workstation.variables("zsh") == up
    workstation.kill_9()                                          # kill -9 of the master: the file stays …
    assert workstation.presence_file.exists()
    assert {name: workstation.variables(name) for name in SHELLS} == dict.fromkeys(SHELLS, down)   # … unread

    workstation.start()                                           # the service starts again (Restart=)
    assert workstation.variables("fish") == up
    journal = (workstation.path.parent / "journal").read_text(errors="replace")
    assert "cannot write" not in journal


def test_a_shell_that_inherits_the_variables_drops_them_once_the_proxy_is_gone(workstation):
    """A tmux pane or a nested shell inherits its parent's environment: started after the proxy
    stopped (or was killed), it must not point Claude Code at a dead port because its parent once
    did. Each parent shell is opened while the proxy runs; then the proxy goes away."""
    up = (f"{workstation.base_url}/anthropic/api.anthropic.com", f"{workstation.base_url}/openai/api.openai.com/v1")
    for parent, going in zip(SHELLS, ("stop", "kill -9", "stop")):
        workstation.start()
        outer = workstation.shell(parent)
        try:
            outer.sendline(PROBE)
            outer.expect(ANSWER)
            assert outer.match.groups() == up
            if going == "stop":
                assert workstation.stop() == 0
            else:
                workstation.kill_9()
            for child in SHELLS:
                outer.sendline(f"{child} -i")
                outer.sendline(PROBE)
                outer.expect(ANSWER)
                assert (parent, going, child, outer.match.groups()) == (parent, going, child, ("", ""))
                outer.sendline("exit")
            outer.sendline("exit")
            outer.expect(pexpect.EOF)
        finally:
            outer.close(force=True)


@pytest.fixture
def fake():
    provider = FakeProvider().start()
    yield provider
    provider.stop()


def test_claude_code_started_from_a_new_shell_goes_through_the_proxy(workstation, fake):
    realclients.require()
    workstation.start()
    project = workstation.path / "project"
    project.mkdir()
    (project / "prompt.txt").write_text("Hello from a shell.\nfake-reply: shell-answer-22\n")
    child = workstation.shell("bash", ANTHROPIC_API_KEY=realclients.ANTHROPIC_KEY,
                              PATH=f"{realclients.BIN}:{os.environ['PATH']}", TMPDIR=os.environ.get("TMPDIR", "/tmp"))
    try:
        child.sendline(f"cd project; {PROBE}")
        child.expect(ANSWER)
        assert child.match.group(1) == f"{workstation.base_url}/anthropic/api.anthropic.com"
        # The shell's own variable, its upstream part pointed at the fake (as realclients.Client does).
        child.sendline(f'ANTHROPIC_BASE_URL="${{ANTHROPIC_BASE_URL/api.anthropic.com/{fake.upstream}}}" '
                       'claude -p "$(cat prompt.txt)"; echo "<<""exit $?"">>"')
        child.expect(r"<<exit (\d+)>>", timeout=realclients.CLIENT_TIMEOUT)
        assert child.match.group(1) == "0", child.before
        assert "shell-answer-22" in child.before
    finally:
        child.close(force=True)
    assert any(r.path.startswith("/v1/messages") for r in fake.received)
    sessions = list((workstation.settings.log_dir / fake.upstream).glob("*/*.jsonl"))
    assert sessions, "the proxy logged no session for the fake upstream"
    assert any('"type":"request"' in line and "Hello from a shell." in line
               for path in sessions for line in jsonl_lines(path))


def test_codex_with_the_config_setup_wrote_goes_through_the_proxy(workstation, fake):
    realclients.require()
    workstation.start()
    config = workstation.home.codex_config
    written = config.read_text()
    assert f'base_url = "{workstation.base_url}/openai/api.openai.com/v1"' in written
    # The upstream part pointed at the fake, everything else as setup wrote it (model_provider chosen).
    config.write_text(written.replace("/openai/api.openai.com/", f"/openai/{fake.upstream}/"))
    client = realclients.Client(workstation.path.parent, workstation.base_url, fake.upstream)
    assert client.codex_home == config.parent
    run = client.codex("exec", "--skip-git-repo-check", "Hello from setup.\nfake-reply: codex-via-setup")
    assert "codex-via-setup" in run.stdout
    assert any(r.path.startswith("/v1/responses") for r in fake.received)
    sessions = list((workstation.settings.log_dir / fake.upstream).glob("*/*.jsonl"))
    assert any('"type":"request"' in line and "Hello from setup." in line
               for path in sessions for line in jsonl_lines(path))
