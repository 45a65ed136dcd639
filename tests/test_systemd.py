"""The systemd units: they verify, install idempotently, and run the way systemd runs them."""

import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from fakeloki import FakeLoki
from proxyproc import free_port, wait_until

from llmproxy.server.systemd import UNITS, read_env_file, render
from llmproxy.server.systemd import main as install_main
from llmproxy.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
LLM_PROXY = str(Path(sys.executable).with_name("llm-proxy"))


def unit_values(text: str, section: str = "Service") -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section:
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


@pytest.mark.parametrize("name", UNITS)
def test_every_unit_verifies(tmp_path, name):
    assert shutil.which("systemd-analyze"), "systemd-analyze missing: scripts/test installs Debian's systemd"
    env_file = tmp_path / "llm-proxy.env"
    env_file.write_text(f"LLM_PROXY_LOG_DIR={tmp_path / 'logs'}\n")
    out = subprocess.run([LLM_PROXY, "systemd-unit", name, "--env-file", str(env_file)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    path = tmp_path / name
    path.write_text(out.stdout)
    if name.endswith(".timer"):  # verify checks that the service it starts exists
        (tmp_path / "llm-proxy-prune.service").write_text(
            render("llm-proxy-prune.service", load_settings({"LLM_PROXY_LOG_DIR": str(tmp_path)}, create_dirs=False),
                   "llmproxy", env_file))
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_unit_has_this_installations_paths_and_the_hardening(tmp_path):
    env_file = tmp_path / "proxy.env"
    env_file.write_text(f"LLM_PROXY_LOG_DIR={tmp_path / 'logs'}\nLLM_PROXY_LOKI_SHUTDOWN_TIMEOUT=40s\n"
                        f"LLM_PROXY_LOKI_SPOOL_DIR={tmp_path / 'spool'}\n")
    text = subprocess.run([LLM_PROXY, "systemd-unit", "--env-file", str(env_file)], capture_output=True,
                          text=True, timeout=30, check=True).stdout
    service = unit_values(text)
    assert service["ExecStart"] == [f"{LLM_PROXY} serve"]
    assert service["EnvironmentFile"] == [str(env_file)]
    assert service["User"] == ["llmproxy"]
    assert service["ReadWritePaths"] == [f"{tmp_path / 'logs'} {tmp_path / 'spool'}"]
    assert service["TimeoutStopSec"] == ["70"]  # gunicorn waits 40 + 15 s for its workers
    for key, want in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("PrivateTmp", "yes"),
                      ("Restart", "on-failure"), ("KillSignal", "SIGTERM"), ("ProtectHome", "yes")]:
        assert service[key] == [want], key
    # a log dir under /home stays reachable: read-only home, that dir writable
    home = render("llm-proxy.service", load_settings({"LLM_PROXY_LOG_DIR": "/home/ops/llm-logs"}, create_dirs=False))
    assert unit_values(home)["ProtectHome"] == ["read-only"]
    assert unit_values(home)["ReadWritePaths"] == ["/home/ops/llm-logs"]


def test_install_dry_run_then_install_then_nothing_to_do(tmp_path):
    paths = ["--user", "nobody", "--env-file", str(tmp_path / "etc" / "llm-proxy.env"),
             "--log-dir", str(tmp_path / "state"), "--unit-dir", str(tmp_path / "units")]
    dry = subprocess.run([str(ROOT / "scripts" / "install-systemd"), "--dry-run", *paths],
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert f"would write {tmp_path / 'etc' / 'llm-proxy.env'} (mode 0600)" in dry.stdout
    assert f"would create {tmp_path / 'state'}" in dry.stdout
    assert all(f"would write {tmp_path / 'units' / name}" in dry.stdout for name in UNITS)
    assert not (tmp_path / "etc").exists() and not (tmp_path / "units").exists() and not (tmp_path / "state").exists()

    first = subprocess.run([str(ROOT / "scripts" / "install-systemd"), *paths], capture_output=True, text=True,
                           timeout=120)
    assert first.returncode == 0, first.stderr
    env_file = tmp_path / "etc" / "llm-proxy.env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert read_env_file(env_file)["LLM_PROXY_LOG_DIR"] == str(tmp_path / "state")
    state = (tmp_path / "state").stat()
    assert state.st_uid == 65534 and stat.S_IMODE(state.st_mode) == 0o700
    assert unit_values((tmp_path / "units" / "llm-proxy.service").read_text())["ReadWritePaths"] == \
        [str(tmp_path / "state")]

    env_file.write_text(env_file.read_text() + "LLM_PROXY_LOKI_AUTH_TOKEN=secret-token\n")
    env_file.chmod(0o644)
    again = install_main(paths, out=(log := _Capture()))
    assert again == 0
    assert log.lines() == [f"make {env_file} mode 0600 (it may hold a Loki token)"] + log.trailer()
    assert "secret-token" in env_file.read_text()  # an existing env file is kept
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert install_main(paths, out=(log := _Capture())) == 0 and log.lines() == log.trailer()

    env_file.write_text("LLM_PROXY_PORT=http\n")
    assert install_main(paths, out=_Capture()) == 2


class _Capture:
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass

    def lines(self):
        return self.text.splitlines()

    def trailer(self):
        return [line for line in self.lines() if line.startswith(("systemd is not running", "next:"))]


def test_install_systemd_help():
    out = subprocess.run([str(ROOT / "scripts" / "install-systemd"), "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and "--dry-run" in out.stdout and "exit status" in out.stdout


def test_the_unit_run_as_systemd_runs_it(tmp_path):
    """ExecStart with the env file parsed as systemd parses it and a notify socket, ExecReload
    (HUP), then KillSignal to the main process: entries reach Loki at each step, flushed by the
    workers that stop (the batch wait is far longer than the test)."""
    loki = FakeLoki().start()
    from fakeprovider import FakeProvider

    fake = FakeProvider().start()
    try:
        port = free_port()
        env_file = tmp_path / "llm-proxy.env"
        env_file.write_text(
            "# written by an operator\n"
            f"LLM_PROXY_PORT={port}\n"
            f'LLM_PROXY_LOG_DIR="{tmp_path / "logs"}"\n'
            "  ; a comment\n"
            "LLM_PROXY_LOKI_ENABLED = true\n"
            f"LLM_PROXY_LOKI_URL='{loki.url}'\n"
            "LLM_PROXY_LOKI_BATCH_WAIT=10m\n"
            'LLM_PROXY_LOKI_ENVIRONMENT="prod \\"eu\\""\n'
            "LLM_PROXY_LOKI_SHUTDOWN_TIMEOUT=10s\n"
            "LLM_PROXY_THREADS=\\\n4\n")
        settings = load_settings({**read_env_file(env_file), "LLM_PROXY_ENV_FILE": "/dev/null"}, create_dirs=False)
        unit = render("llm-proxy.service", settings, "nobody", env_file, Path(LLM_PROXY))
        service = unit_values(unit)
        environ = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
        for assignment in service["Environment"]:
            key, _, value = assignment.partition("=")
            environ[key] = value
        for path in service["EnvironmentFile"]:
            environ.update(read_env_file(Path(path)))
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(30)
        environ["NOTIFY_SOCKET"] = str(tmp_path / "notify")
        out = open(tmp_path / "journal", "wb")
        proc = subprocess.Popen(shlex.split(service["ExecStart"][0]), env=environ, cwd="/",
                                stdout=out, stderr=subprocess.STDOUT)
        try:
            assert b"READY=1" in notify.recv(4096)  # Type=notify
            base = f"http://127.0.0.1:{port}/anthropic/{fake.upstream}/v1/messages"

            def call():
                resp = requests.post(base, json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                                     headers={"x-api-key": "sk-ant-" + "x" * 40}, timeout=10)
                assert resp.status_code == 200

            wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/health", timeout=1).ok, 30)
            for _ in range(3):
                call()
            assert loki.count() == 0  # held by the 10-minute batch wait
            # gunicorn forks its workers one by one, a random pause apart: wait for all of them.
            old = wait_until(lambda: len(kids := _children(proc.pid)) == settings.workers and kids, 30,
                             message="all workers forked")
            reload = service["ExecReload"][0].replace("$MAINPID", str(proc.pid))
            assert subprocess.run(shlex.split(reload), timeout=10).returncode == 0
            wait_until(lambda: not set(_children(proc.pid)) & set(old) and len(_children(proc.pid)) == len(old), 60,
                       interval=0.1, message="workers replaced")
            assert loki.count() == 9  # 3 × (session_start, request, response), flushed by the old workers
            labels = loki.entries()[0][0]
            assert labels["environment"] == 'prod "eu"'
            for _ in range(2):
                call()
            proc.send_signal(getattr(signal, service["KillSignal"][0]))
            assert proc.wait(int(service["TimeoutStopSec"][0])) == 0
            assert loki.count() == 15
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            out.close()
            notify.close()
        journal = (tmp_path / "journal").read_text()
        assert "Loki: flushed" in journal
    finally:
        fake.stop()
        loki.down()


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def test_env_file_is_read_like_systemd(tmp_path):
    path = tmp_path / "env"
    path.write_text('A=1\n# c\n; c\nB = "two words"\nC=\'single\'\nD="q\\"x"\nE=a\\\nb\nexport F=1\n\nnoequals\n')
    # systemd ignores "export F=1" (not a variable name), unlike python-dotenv
    assert read_env_file(path) == {"A": "1", "B": "two words", "C": "single", "D": 'q"x', "E": "ab"}
