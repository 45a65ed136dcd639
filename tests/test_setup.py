"""``llm-proxy setup`` and ``uninstall`` on a temporary home: what they change, that a second
setup changes nothing, that uninstall gives back every file byte for byte, and one clear line
(and nothing half-done) for each kind of bad input. The service managers are the fakes of
tests/workstation.py; the units themselves are checked by systemd-analyze and run as systemd
runs them in tests/test_shell_integration.py."""

from __future__ import annotations

import os
import plistlib
import shutil
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from workstation import LLM_PROXY, FakeLaunchctl, FakeSystemctl, llm_proxy, make_home, snapshot

from llmproxy.server import presence
from llmproxy.setup import installer, ports, service, shells, textfile
from llmproxy.setup.home import Home

SKEL_BASHRC = Path("/etc/skel/.bashrc")


@pytest.fixture
def port():
    """A port nothing listens on, for the proxy of one test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def taken_port():
    """A port another program listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def setup(home, runner, *args):
    return llm_proxy(home, runner, "setup", *args)


def uninstall(home, runner, *args):
    return llm_proxy(home, runner, "uninstall", *args)


def test_dry_run_prints_every_change_and_makes_none(tmp_path, port):
    home = make_home(tmp_path)
    (home.path / ".bashrc").write_text("alias ll='ls -l'\n")
    before = snapshot(tmp_path)
    systemctl = FakeSystemctl()
    code, out, err = setup(home, systemctl, "--dry-run", "--codex", "--port", str(port))
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        f"would write ~/.config/llm-proxy/llm-proxy.env (LLM_PROXY_PORT={port})",
        "would write ~/.config/systemd/user/llm-proxy.service",
        "would add the shell block to ~/.bashrc",
        "would write ~/.config/fish/conf.d/llm-proxy.fish",
        "would add model_provider and [model_providers.llm-proxy] to ~/.codex/config.toml",
        "would run systemctl --user daemon-reload",
        "would run systemctl --user enable --now llm-proxy.service",
        "would record it in ~/.config/llm-proxy/installed.json (for llm-proxy uninstall)",
    ]
    assert snapshot(tmp_path) == before
    assert systemctl.changes() == []


def test_setup_installs_service_port_shells_and_a_second_run_changes_nothing(tmp_path, port):
    home = make_home(tmp_path)
    (home.path / ".bashrc").write_text("alias ll='ls -l'\n")
    systemctl = FakeSystemctl()
    code, out, err = setup(home, systemctl, "--port", str(port))
    assert (code, err) == (0, ""), err
    assert f"llm-proxy runs as a systemd user unit on http://127.0.0.1:{port}" in out
    assert systemctl.changes() == [["systemctl", "--user", "daemon-reload"],
                                   ["systemctl", "--user", "enable", "--now", "llm-proxy.service"]]
    settings_file = home.path / ".config" / "llm-proxy" / "llm-proxy.env"
    assert f"\nLLM_PROXY_PORT={port}\n" in settings_file.read_text()
    assert oct(settings_file.stat().st_mode & 0o777) == "0o600"   # it may come to hold a Loki token
    unit = (home.path / ".config" / "systemd" / "user" / "llm-proxy.service").read_text()
    assert f'Environment="LLM_PROXY_ENV_FILE={settings_file}"\n' in unit
    assert f'ExecStart="{LLM_PROXY}" serve\n' in unit
    presence_file = home.path / ".llm-provider-logs" / ".run" / "proxy.env"
    assert textfile.block_of((home.path / ".bashrc").read_text()) == shells.posix(presence_file)
    assert (home.fish_conf_d / "llm-proxy.fish").read_text() == shells.fish(presence_file)
    assert not (home.path / ".zshrc").exists()   # zsh is not this user's shell and has no rc file

    done = snapshot(tmp_path)
    systemctl.calls.clear()
    code, out, err = setup(home, systemctl)
    assert (code, err) == (0, "")
    assert out == "nothing to change: everything is in place (see llm-proxy status)\n"
    assert snapshot(tmp_path) == done
    assert systemctl.changes() == []


def test_the_port_is_8080_unless_taken_then_a_free_one(monkeypatch, taken_port):
    assert ports.CANDIDATES[0] == 8080 and ports.EXPLORER not in ports.CANDIDATES
    assert not ports.bindable("127.0.0.1", taken_port)
    monkeypatch.setattr(ports, "CANDIDATES", (taken_port, taken_port))
    chosen = ports.choose("127.0.0.1")
    assert chosen != taken_port and ports.bindable("127.0.0.1", chosen)


def test_a_port_changed_in_the_settings_file_restarts_the_running_service(tmp_path, port):
    home = make_home(tmp_path)
    systemctl = FakeSystemctl()
    assert setup(home, systemctl, "--port", str(port))[0] == 0
    settings = installer.Installation(home).service_settings()
    running = presence.Announcement(presence.path(settings))   # what the service's server writes
    running.publish(settings.base_url)
    try:
        home.settings_file.write_text(home.settings_file.read_text().replace(f"={port}", f"={port + 1}"))
        systemctl.calls.clear()
        code, out, err = setup(home, systemctl)
        assert (code, err) == (0, "")
        assert out.splitlines()[0] == "ran systemctl --user restart llm-proxy.service"
        assert systemctl.changes() == [["systemctl", "--user", "restart", "llm-proxy.service"]]
    finally:
        running.withdraw()


BASHRC_CASES = {
    "final newline": b"export EDITOR=vi\n",
    "no final newline": b"export EDITOR=vi\nalias ll='ls -l'",
    "empty": b"",
    "blank lines and CRLF": b"\r\n\n# mine\r\n\n\n",
}


@pytest.mark.parametrize("content", BASHRC_CASES.values(), ids=BASHRC_CASES.keys())
def test_uninstall_gives_back_each_rc_file_byte_for_byte(tmp_path, port, content):
    home = make_home(tmp_path, shell="/usr/bin/zsh")
    (home.path / ".bashrc").write_bytes(content)
    (home.path / ".profile").write_bytes(b"# untouched\n")
    before = snapshot(tmp_path, mtimes=False)
    systemctl = FakeSystemctl()
    assert setup(home, systemctl, "--port", str(port), "--codex")[0] == 0
    assert (home.path / ".bashrc").read_bytes().startswith(content)
    assert (home.path / ".zshrc").exists()   # the login shell's rc file is made
    code, out, err = uninstall(home, systemctl)
    assert (code, err) == (0, ""), err
    assert systemctl.changes()[-2:] == [["systemctl", "--user", "disable", "--now", "llm-proxy.service"],
                                        ["systemctl", "--user", "daemon-reload"]]
    assert snapshot(tmp_path, mtimes=False) == before
    assert "the session logs stay" not in out   # none were written here
    assert uninstall(home, systemctl)[1] == "nothing to remove: llm-proxy setup has not changed anything here\n"


def test_an_rc_file_that_is_a_symlink_into_a_dotfiles_repository(tmp_path, port):
    home = make_home(tmp_path)
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    (dotfiles / "bashrc").write_bytes(SKEL_BASHRC.read_bytes() if SKEL_BASHRC.exists() else b"# bashrc\n")
    (home.path / ".bashrc").symlink_to("../dotfiles/bashrc")
    original = (dotfiles / "bashrc").read_bytes()
    code, out, _ = setup(home, FakeSystemctl(), "--port", str(port))
    assert code == 0
    assert f"added the shell block to ~/.bashrc (a link to {dotfiles / 'bashrc'})" in out
    assert os.readlink(home.path / ".bashrc") == "../dotfiles/bashrc"
    assert textfile.block_of((dotfiles / "bashrc").read_text())
    assert uninstall(home, FakeSystemctl())[0] == 0
    assert os.readlink(home.path / ".bashrc") == "../dotfiles/bashrc"
    assert (dotfiles / "bashrc").read_bytes() == original


def test_what_the_user_added_around_the_block_stays(tmp_path, port):
    home = make_home(tmp_path)
    rc = home.path / ".bashrc"
    rc.write_bytes(b"first\n")
    assert setup(home, FakeSystemctl(), "--no-service", "--port", str(port))[0] == 0
    rc.write_bytes(rc.read_bytes() + b"added after setup\n")
    assert uninstall(home, FakeSystemctl())[0] == 0
    assert rc.read_bytes() == b"first\nadded after setup\n"


CODEX_CONFIG = """\
# my Codex settings
model = "gpt-5"  # the default model
approval_policy = "on-request"

[model_providers.azure]
name = "Azure"
base_url = "https://example.openai.azure.com/openai"

# profiles below
[profiles.fast]
model = "gpt-5-mini"
"""


def test_codex_config_gets_the_provider_keeping_comments_order_and_the_users_keys(tmp_path, port):
    home = make_home(tmp_path)
    config = home.path / ".codex" / "config.toml"
    config.parent.mkdir()
    config.write_text(CODEX_CONFIG)
    assert setup(home, FakeSystemctl(), "--no-service", "--codex", "--port", str(port))[0] == 0
    text = config.read_text()
    # every line of the user's where it was; the choice after the last top-level key, the table at the end
    assert text == CODEX_CONFIG.replace('"on-request"\n', '"on-request"\nmodel_provider = "llm-proxy" # added by '
                                        'llm-proxy setup\n') + f"""
[model_providers.llm-proxy] # added by llm-proxy setup
name = "OpenAI through llm-proxy"
base_url = "http://127.0.0.1:{port}/openai/api.openai.com/v1"
env_key = "OPENAI_API_KEY"
wire_api = "responses"
"""
    doc = tomllib.loads(text)
    assert doc["model_provider"] == "llm-proxy"
    assert doc["model_providers"]["llm-proxy"] == {
        "name": "OpenAI through llm-proxy", "base_url": f"http://127.0.0.1:{port}/openai/api.openai.com/v1",
        "env_key": "OPENAI_API_KEY", "wire_api": "responses"}
    assert doc["model_providers"]["azure"]["name"] == "Azure" and doc["profiles"]["fast"]["model"] == "gpt-5-mini"
    assert uninstall(home, FakeSystemctl())[0] == 0
    assert config.read_text() == CODEX_CONFIG


def test_a_model_provider_the_user_chose_is_never_changed(tmp_path, port):
    home = make_home(tmp_path)
    config = home.path / ".codex" / "config.toml"
    config.parent.mkdir()
    config.write_text('model_provider = "azure"\n' + CODEX_CONFIG)
    code, out, _ = setup(home, FakeSystemctl(), "--no-service", "--codex", "--port", str(port))
    assert code == 0
    assert "kept your model_provider = 'azure' in ~/.codex/config.toml; through the proxy per run:\n" \
           "  codex -c model_provider=llm-proxy\n" in out
    assert config.read_text().startswith('model_provider = "azure"\n')
    # edited after setup: uninstall takes out its own keys only, the user's edit stays
    config.write_text(config.read_text().replace('model = "gpt-5"', 'model = "o3"'))
    code, out, _ = uninstall(home, FakeSystemctl())
    assert code == 0 and "(edited since setup; the rest stays)" in out
    assert config.read_text() == 'model_provider = "azure"\n' + CODEX_CONFIG.replace('model = "gpt-5"', 'model = "o3"')


def test_a_second_setup_after_a_port_change_updates_only_its_own_codex_keys(tmp_path, port):
    home = make_home(tmp_path)
    assert setup(home, FakeSystemctl(), "--no-service", "--codex", "--port", str(port))[0] == 0
    home.settings_file.write_text(home.settings_file.read_text().replace(f"={port}", f"={port + 1}"))
    code, out, _ = setup(home, FakeSystemctl(), "--no-service", "--codex")
    assert code == 0
    assert "updated [model_providers.llm-proxy] in ~/.codex/config.toml" in out
    assert f"127.0.0.1:{port + 1}/openai" in home.codex_config.read_text()
    assert "update the shell block" not in out   # the presence file does not depend on the port


# --- bad input: one line each, nothing changed ---

def test_codex_config_that_does_not_parse(tmp_path, port):
    home = make_home(tmp_path)
    config = home.path / ".codex" / "config.toml"
    config.parent.mkdir()
    config.write_text('model = "gpt-5"\n[profiles\n')
    (home.path / ".bashrc").write_text("# mine\n")
    before = snapshot(tmp_path)
    code, out, err = setup(home, FakeSystemctl(), "--codex", "--port", str(port))
    assert code == 1 and out == ""
    assert err.splitlines() == [f"llm-proxy setup: {config} does not parse (Unexpected character: '\\n' "
                                "at line 2 col 9): nothing changed"]
    assert snapshot(tmp_path) == before


def test_no_systemd_user_instance(tmp_path):
    home = make_home(tmp_path)
    (home.path / ".bashrc").write_text("# mine\n")
    before = snapshot(tmp_path)
    code, out, err = setup(home, FakeSystemctl(offline=True))
    assert (code, out) == (1, "")
    assert err == ("llm-proxy setup: no systemd user instance here (systemctl --user is-system-running: offline): "
                   "nothing changed; `llm-proxy setup --no-service` sets up the rest\n")
    assert snapshot(tmp_path) == before


def test_no_systemd_user_instance_here_for_real(tmp_path):
    """This machine (a container) has systemctl but no user instance: the real command says so."""
    if shutil.which("systemctl") is None or service.SystemdUser(make_home(tmp_path)).unavailable() is None:
        pytest.skip("this machine has a systemd user instance")
    home = make_home(tmp_path)
    before = snapshot(tmp_path)
    out = subprocess.run([LLM_PROXY, "setup"], env={**home.environ, "LANG": "C.UTF-8"}, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith("llm-proxy setup: no systemd user instance here (systemctl --user ")
    assert out.stderr.count("\n") == 1
    assert snapshot(tmp_path) == before


def test_port_taken_by_another_program(tmp_path, taken_port):
    home = make_home(tmp_path)
    home.settings_file.parent.mkdir(parents=True)
    home.settings_file.write_text(f"LLM_PROXY_PORT={taken_port}\n")
    before = snapshot(tmp_path)
    code, out, err = setup(home, FakeSystemctl())
    assert (code, out) == (1, "")
    assert err == (f"llm-proxy setup: port {taken_port} (LLM_PROXY_PORT in ~/.config/llm-proxy/llm-proxy.env) is "
                   "taken by another program: nothing changed; set another LLM_PROXY_PORT there\n")
    code, out, err = setup(home, FakeSystemctl(), "--port", str(taken_port + 1))
    assert err == (f"llm-proxy setup: LLM_PROXY_PORT={taken_port} is set in ~/.config/llm-proxy/llm-proxy.env "
                   "already: change it there\n")
    assert snapshot(tmp_path) == before


def test_a_port_given_with_the_flag_that_is_taken(tmp_path, taken_port):
    home = make_home(tmp_path)
    code, out, err = setup(home, FakeSystemctl(), "--port", str(taken_port))
    assert (code, out) == (1, "")
    assert err == (f"llm-proxy setup: port {taken_port} (--port) is taken by another program: nothing changed; "
                   "choose another with --port\n")
    assert not home.settings_file.exists()


def test_a_port_out_of_range_is_refused_as_the_setting_would_be(tmp_path):
    home = make_home(tmp_path)
    before = snapshot(tmp_path)
    result = subprocess.run([LLM_PROXY, "setup", "--no-service", "--port", "70000"], env=home.environ,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == ("llm-proxy setup: error: argument --port: '70000' is not valid: "
                                              "a whole number from 1 to 65535")
    assert snapshot(tmp_path) == before


def test_a_bad_setting_in_the_users_file(tmp_path):
    home = make_home(tmp_path)
    home.settings_file.parent.mkdir(parents=True)
    home.settings_file.write_text("LLM_PROXY_PORT=http\n")
    code, out, err = setup(home, FakeSystemctl())
    assert code == 2
    assert err == ("llm-proxy setup: ~/.config/llm-proxy/llm-proxy.env: LLM_PROXY_PORT='http' is not valid: "
                   "a whole number from 1 to 65535\n")


def test_uninstall_with_a_settings_file_gone_bad_since_setup(tmp_path, port):
    home = make_home(tmp_path)
    (home.path / ".bashrc").write_bytes(b"# mine\n")
    assert setup(home, FakeSystemctl(), "--no-service", "--port", str(port))[0] == 0
    home.settings_file.write_text(home.settings_file.read_text() + "LLM_PROXY_THREADS=many\n")
    code, out, err = uninstall(home, FakeSystemctl())
    assert (code, err) == (0, "")
    assert (home.path / ".bashrc").read_bytes() == b"# mine\n"
    assert home.settings_file.read_text().endswith("LLM_PROXY_THREADS=many\n")   # the user's line stays
    assert f"LLM_PROXY_PORT={port}" not in home.settings_file.read_text()
    assert not home.manifest.exists()


def as_nobody(fn):
    """``fn()`` in a child process that runs as user nobody (root passes every permission
    check, so an unwritable file needs another user); its result comes back through a pipe."""
    import pickle

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        os.close(read)
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            result = fn()
        except BaseException as exc:
            result = exc
        with os.fdopen(write, "wb") as pipe:
            pickle.dump(result, pipe)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        result = pickle.load(pipe)
    os.waitpid(pid, 0)
    if isinstance(result, BaseException):
        raise result
    return result


def test_an_rc_file_that_is_not_writable(port):
    import tempfile

    with tempfile.TemporaryDirectory(prefix="llm-proxy-nobody-") as tmp:   # not under 0700 pytest dirs
        os.chmod(tmp, 0o755)
        _not_writable(Path(tmp), port)


def _not_writable(tmp_path, port):
    home = make_home(tmp_path, shell="/usr/bin/zsh")
    (home.path / ".bashrc").write_text("# mine\n")
    (home.path / ".zshrc").write_text("# read-only here\n")
    (home.path / ".zshrc").chmod(0o444)
    if os.getuid() == 0:
        for path in [tmp_path, *tmp_path.rglob("*")]:
            os.chown(path, 65534, 65534, follow_symlinks=False)
    before = snapshot(tmp_path)
    run = (lambda: setup(home, FakeSystemctl(), "--no-service", "--port", str(port)))
    code, out, err = as_nobody(run) if os.getuid() == 0 else run()
    assert (code, out) == (1, "")
    assert err == f"llm-proxy setup: {home.path / '.zshrc'} is not writable (Permission denied): nothing changed\n"
    assert snapshot(tmp_path) == before


def _file_size_limit(limit: int):
    """For a child: files it writes stop at ``limit`` bytes (EFBIG, as a full disk stops them: ENOSPC)."""
    import resource
    import signal

    def limit_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return limit_files


def test_a_write_that_fails_half_way_leaves_the_rc_file_as_it_was(tmp_path, port):
    home = make_home(tmp_path, shell="/bin/bash")
    rc = home.path / ".bashrc"
    original = b"# mine\n" * 300   # 2100 bytes; with the block past the limit below
    rc.write_bytes(original)
    result = subprocess.run([LLM_PROXY, "setup", "--no-service", "--port", str(port)],
                            # no .pyc: Python's own writes of them would be cut short too, and kept
                            env={**home.environ, "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"},
                            capture_output=True, text=True, timeout=60, preexec_fn=_file_size_limit(len(original) + 100))
    assert result.returncode == 1, result.stderr
    assert "llm-proxy setup: add the shell block to ~/.bashrc failed: File too large\n" in result.stderr
    assert rc.read_bytes() == original
    assert sorted(p.name for p in home.path.iterdir()) == [".bashrc", ".config"]   # no partial file beside it
    code, _, err = uninstall(home, FakeSystemctl())
    assert (code, err) == (0, "")
    assert rc.read_bytes() == original


@pytest.mark.skipif(os.getuid() != 0, reason="making a device node takes root")
def test_an_rc_file_linked_to_a_device_is_left_alone(tmp_path, port):
    """A ~/.zshrc linked to /dev/null: an rc file is replaced whole when written, which must never
    happen to a device (here a copy of /dev/null of the test's own)."""
    import stat

    home = make_home(tmp_path, shell="/usr/bin/zsh")
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    (home.path / ".zshrc").symlink_to(null)
    before = snapshot(tmp_path)
    code, out, err = setup(home, FakeSystemctl(), "--no-service", "--port", str(port))
    assert (code, out) == (1, "")
    assert err == f"llm-proxy setup: {home.path / '.zshrc'} is not a regular file: nothing changed\n"
    assert stat.S_ISCHR(null.stat().st_mode) and snapshot(tmp_path) == before


def test_a_failed_start_lists_what_was_done_and_uninstall_undoes_it(tmp_path, port):
    home = make_home(tmp_path)
    (home.path / ".bashrc").write_bytes(b"# mine")
    before = snapshot(tmp_path, mtimes=False)
    code, out, err = setup(home, FakeSystemctl(failing=("enable",)), "--port", str(port))
    assert code == 1
    assert err.splitlines() == [
        "llm-proxy setup: run systemctl --user enable --now llm-proxy.service failed: systemctl --user enable "
        "--now llm-proxy.service: Job for llm-proxy.service failed because the control process exited with "
        "error code. (see journalctl --user -u llm-proxy.service)",
        f"llm-proxy setup: done before it: wrote ~/.config/llm-proxy/llm-proxy.env (LLM_PROXY_PORT={port}); "
        "wrote ~/.config/systemd/user/llm-proxy.service; added the shell block to ~/.bashrc; "
        "wrote ~/.config/fish/conf.d/llm-proxy.fish; ran systemctl --user daemon-reload "
        "(`llm-proxy uninstall` undoes them)"]
    systemctl = FakeSystemctl()
    code, out, err = uninstall(home, systemctl)
    assert code == 0, err
    assert ["systemctl", "--user", "disable", "--now", "llm-proxy.service"] in systemctl.changes()
    assert snapshot(tmp_path, mtimes=False) == before


def test_uninstall_without_the_record_still_finds_the_blocks_and_units(tmp_path, port):
    home = make_home(tmp_path)
    (home.path / ".bashrc").write_bytes(b"# mine\n")
    before = snapshot(tmp_path)
    assert setup(home, FakeSystemctl(), "--port", str(port))[0] == 0
    home.manifest.unlink()
    code, out, err = uninstall(home, FakeSystemctl())
    assert code == 0, err
    assert (home.path / ".bashrc").read_bytes() == b"# mine\n"
    assert not (home.systemd_units / "llm-proxy.service").exists()
    assert not (home.fish_conf_d / "llm-proxy.fish").exists()
    left = set(snapshot(tmp_path)) - set(before)
    assert all(".config" in p for p in left)   # the settings file and empty directories: no record of them


def test_uninstall_dry_run_changes_nothing_and_says_where_the_logs_stay(tmp_path, port):
    home = make_home(tmp_path)
    assert setup(home, FakeSystemctl(), "--port", str(port))[0] == 0
    logs = home.path / ".llm-provider-logs" / "127.0.0.1:1" / "2026-12-05"
    logs.mkdir(parents=True)
    (logs / "s.jsonl").write_bytes(b"x" * 2048)
    before = snapshot(tmp_path)
    code, out, err = uninstall(home, FakeSystemctl(), "--dry-run")
    assert code == 0
    assert out.splitlines()[0] == "would run systemctl --user disable --now llm-proxy.service"
    assert out.splitlines()[-1] == f"the session logs stay: {home.path / '.llm-provider-logs'} (2.0 KiB in 1 file)"
    assert snapshot(tmp_path) == before
    assert uninstall(home, FakeSystemctl())[0] == 0
    assert (logs / "s.jsonl").exists()


# --- the explorer and launchd ---

def test_explorer_unit_and_the_flag(tmp_path, port):
    home = make_home(tmp_path)
    settings = installer.Installation(home).service_settings()
    proxy, explore = service.SystemdUser(home).units(settings, home.settings_file, explorer=True)
    assert explore.name == "llm-proxy-explore.service"
    assert f'ExecStart="{LLM_PROXY}" explore\n' in explore.text
    assert "After=llm-proxy.service" in explore.text
    if installer.explorer_available():
        systemctl = FakeSystemctl()
        assert setup(home, systemctl, "--explorer", "--port", str(port))[0] == 0
        assert ["systemctl", "--user", "enable", "--now", "llm-proxy-explore.service"] in systemctl.changes()
    else:
        before = snapshot(tmp_path)
        code, out, err = setup(home, FakeSystemctl(), "--explorer", "--port", str(port))
        assert code == 1 and err == ("llm-proxy setup: --explorer: this llm-proxy has no `llm-proxy explore` "
                                     "(the log explorer) yet: nothing changed\n")
        assert snapshot(tmp_path) == before


def test_launchd_agent_on_macos(tmp_path, port):
    home = make_home(tmp_path, shell="/bin/zsh", platform="darwin")
    (home.path / ".zshrc").write_text("# mine\n")
    launchctl = FakeLaunchctl()
    code, out, err = setup(home, launchctl, "--port", str(port))
    assert code == 0, err
    plist_path = home.path / "Library" / "LaunchAgents" / "llm-proxy.plist"
    agent = plistlib.loads(plist_path.read_bytes())
    service.check_agent(agent)
    assert agent["ProgramArguments"] == [str(Path(sys.executable).with_name("llm-proxy")), "serve"]
    assert agent["EnvironmentVariables"] == {"LLM_PROXY_ENV_FILE": str(home.settings_file)}
    assert agent["KeepAlive"] == {"SuccessfulExit": False} and agent["RunAtLoad"] is True
    assert launchctl.changes() == [["launchctl", "bootstrap", f"gui/{os.getuid()}", str(plist_path)]]
    block = textfile.block_of((home.path / ".zshrc").read_text())
    assert 'kill -0 "$_llm_proxy_pid"' in block and "/proc/" not in block   # no /proc on macOS
    assert "llm-proxy runs as a launchd agent" in out
    launchctl.calls.clear()
    assert setup(home, launchctl)[1].startswith("nothing to change")
    assert uninstall(home, launchctl)[0] == 0
    assert launchctl.changes() == [["launchctl", "bootout", f"gui/{os.getuid()}/llm-proxy"]]
    assert not plist_path.exists() and (home.path / ".zshrc").read_text() == "# mine\n"


@pytest.mark.parametrize("broken, message", [
    ({"ProcessType": "Fast"}, "ProcessType='Fast'"),
    ({"ProgramArguments": ["llm-proxy", "serve"]}, "the first an absolute path"),
    ({"KeepAlive": "yes"}, "KeepAlive='yes' is not a key of the type launchd takes"),
    ({"Sockets": {}}, "Sockets={} is not a key"),
])
def test_a_plist_launchd_would_refuse_is_caught(broken, message):
    agent = service.agent("llm-proxy", ["/usr/local/bin/llm-proxy", "serve"], Path("/x/llm-proxy.env"),
                          Path("/x/llm-proxy.log"), 60)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        service.check_agent({**agent, **broken})


# --- units as systemd reads them ---

@pytest.mark.parametrize("odd", [False, True], ids=["plain", "space-and-percent"])
@pytest.mark.parametrize("explorer", [False, True], ids=["proxy", "explorer"])
def test_user_units_verify(tmp_path, explorer, odd):
    """``odd``: the home and the installation's path hold a space and a ``%`` (a Windows-style
    user name, a tool home under "Application Support"): each is one quoted word in the unit."""
    assert shutil.which("systemd-analyze"), "systemd-analyze missing: scripts/test installs Debian's systemd"
    root = tmp_path / "my home 100%" if odd else tmp_path
    home = make_home(root)
    exe = None
    if odd:
        exe = root / "tool bin" / "llm-proxy"
        exe.parent.mkdir(parents=True)
        exe.symlink_to(LLM_PROXY)
    settings = installer.Installation(home).service_settings()
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    for unit in service.SystemdUser(home).units(settings, home.settings_file, explorer, exe=exe):
        unit.path.parent.mkdir(parents=True, exist_ok=True)
        unit.path.write_text(unit.text)
    name = "llm-proxy-explore.service" if explorer else "llm-proxy.service"
    # The user manager's search path (~/.config/systemd/user) and runtime dir, as at a login.
    result = subprocess.run(["systemd-analyze", "--user", "verify", str(home.systemd_units / name)],
                            env={**home.environ, "XDG_RUNTIME_DIR": str(runtime)}, capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_the_users_settings_file_is_read_under_dotenv_and_the_environment(tmp_path):
    from llmproxy.settings import load_settings

    config = tmp_path / "config"
    (config / "llm-proxy").mkdir(parents=True)
    (config / "llm-proxy" / "llm-proxy.env").write_text("LLM_PROXY_PORT=8090\nLLM_PROXY_THREADS=7\n")
    environ = {"XDG_CONFIG_HOME": str(config), "LLM_PROXY_LOG_DIR": str(tmp_path)}
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert (load_settings(environ).port, load_settings(environ).threads) == (8090, 7)
        (tmp_path / ".env").write_text("LLM_PROXY_THREADS=9\n")
        assert (load_settings(environ).port, load_settings(environ).threads) == (8090, 9)
        assert load_settings({**environ, "LLM_PROXY_THREADS": "11"}).threads == 11
        # a service names its one file: the user's file is not read under it
        only = tmp_path / "only.env"
        only.write_text("LLM_PROXY_THREADS=3\n")
        settings = load_settings({**environ, "LLM_PROXY_ENV_FILE": str(only)})
        assert (settings.port, settings.threads) == (8080, 3)
    finally:
        os.chdir(cwd)


def test_home_paths_follow_xdg_zdotdir_and_codex_home(tmp_path):
    home = Home(tmp_path, {"XDG_CONFIG_HOME": str(tmp_path / "cfg"), "ZDOTDIR": str(tmp_path / "z"),
                           "CODEX_HOME": str(tmp_path / "cx")})
    assert home.settings_file == tmp_path / "cfg" / "llm-proxy" / "llm-proxy.env"
    assert shells.rc_file(home, "zsh") == tmp_path / "z" / ".zshrc"
    assert shells.rc_file(home, "fish") == tmp_path / "cfg" / "fish" / "conf.d" / "llm-proxy.fish"
    assert home.codex_config == tmp_path / "cx" / "config.toml"
    assert presence.FILE_NAME == "proxy.env"


def test_uninstall_leaves_a_config_toml_broken_since_setup_and_takes_back_the_rest(tmp_path, port):
    home = make_home(tmp_path)
    (home.path / ".bashrc").write_bytes(b"# mine\n")
    assert setup(home, FakeSystemctl(), "--no-service", "--codex", "--port", str(port))[0] == 0
    home.codex_config.write_text(home.codex_config.read_text() + "[broken\n")
    code, out, err = uninstall(home, FakeSystemctl())
    assert (code, err) == (0, "")
    assert f"{home.codex_config} does not parse any more (" in out
    assert (home.path / ".bashrc").read_bytes() == b"# mine\n"
    assert home.manifest.exists()   # what is left to undo stays recorded


def test_a_question_to_the_service_manager_is_bounded_in_seconds_a_change_in_minutes(tmp_path, monkeypatch):
    """``status`` asks ``systemctl --user is-active``: a hung user bus answers nothing, and
    status must not wait the minutes a start may take (it waits for gunicorn's READY=1)."""
    hung = tmp_path / "systemctl"
    hung.write_text("#!/bin/sh\nexec sleep 30\n")
    hung.chmod(0o755)
    monkeypatch.setattr(service, "QUERY_TIMEOUT", 0.5)
    asked = service.run([str(hung), "--user", "is-active", "llm-proxy.service"])
    assert asked.returncode == 124 and asked.line.endswith("no answer within 0.5 s")
    monkeypatch.setattr(service, "COMMAND_TIMEOUT", 1.0)
    changed = service.run([str(hung), "--user", "restart", "llm-proxy.service"])
    assert changed.returncode == 124 and changed.line.endswith("no answer within 1.0 s")
