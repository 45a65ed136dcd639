"""The install as a tool: README's ``pipx install`` line, run from a copy of this checkout into a
temporary tool home, puts ``llm-proxy`` on the PATH it names, in a venv of its own.

The suite runs in a loopback-only network namespace, so pip gets no index: it takes the
dependencies and the build backend from ``.venv/wheelhouse``, which ``scripts/test`` makes
before it enters the namespace (scripts/bootstrap.sh, ``bootstrap_wheelhouse``). What is built
and installed is this checkout, as a user's pipx would build it.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import realclients

ROOT = Path(__file__).resolve().parent.parent
WHEELHOUSE = ROOT / ".venv" / "wheelhouse"
PIPX = Path(sys.executable).with_name("pipx")


def readme_install_command() -> list[str]:
    """README's install line: the first ``pipx install …`` of its opening, as argv."""
    opening = (ROOT / "README.rst").read_text().split("\nTwo commands\n")[0]
    line = re.search(r"^\s+(pipx install \S+)", opening, re.M)
    assert line, "README's opening has no `pipx install` line"
    return shlex.split(line.group(1))


def checkout_copy(target: Path) -> Path:
    """The tracked files of this checkout (what a clone holds), so the build leaves nothing here."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=60)
    if listed.returncode == 0:
        for name in listed.stdout.decode().split("\0"):
            if name and (ROOT / name).is_file():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, target / name)
    else:  # an unpacked source tree without git
        shutil.copytree(ROOT, target, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", "build"))
    return target


def test_the_readme_install_command_puts_llm_proxy_on_the_path_it_names(tmp_path):
    if not (WHEELHOUSE / ".made").exists():
        realclients.require(f"{WHEELHOUSE} is missing (./scripts/test makes it)", what="the install test")
    argv = readme_install_command()
    assert argv[:2] == ["pipx", "install"]
    source = checkout_copy(tmp_path / "checkout")
    tools, bin_dir = tmp_path / "pipx", tmp_path / "bin"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PIPX_", "LLM_PROXY_", "VIRTUAL_ENV"))},
           "HOME": str(tmp_path / "home"), "PIPX_HOME": str(tools), "PIPX_BIN_DIR": str(bin_dir),
           "PIPX_MAN_DIR": str(tmp_path / "man"),
           # pipx would fetch a newer pip for its shared venv: there is no index here
           "PIPX_DISABLE_SHARED_LIBS_AUTO_UPGRADE": "1"}
    install = subprocess.run([str(PIPX), *argv[1:], "--pip-args", f"--no-index --find-links {WHEELHOUSE}"],
                             cwd=source, env=env, capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    said = install.stdout + install.stderr
    assert "installed package llm-proxy 0.1.0" in said and str(bin_dir) in said   # the PATH it names

    found = shutil.which("llm-proxy", path=str(bin_dir))
    assert found
    version = subprocess.run([found, "--version"], env={**env, "PATH": f"{bin_dir}:/usr/bin:/bin"},
                             capture_output=True, text=True, timeout=60)
    assert version.stdout == "llm-proxy 0.1.0\n"
    venv_python = tools / "venvs" / "llm-proxy" / "bin" / "python"
    where = subprocess.run([str(venv_python), "-c", "import llmproxy, importlib.resources as r; "
                            "print(llmproxy.__file__); "
                            "print(r.files('llmproxy.setup').joinpath('units', 'llm-proxy.service').is_file())"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    module, units = where.stdout.split()
    assert Path(module).is_relative_to(tools) and units == "True"   # its own venv, the unit templates in it
    # …and the next README line works from there
    setup = subprocess.run([found, "setup", "--no-service", "--dry-run"], cwd=tmp_path,
                           env={**env, "PATH": f"{bin_dir}:/usr/bin:/bin"}, capture_output=True, text=True,
                           timeout=60)
    assert setup.returncode == 0, setup.stderr
    assert "would write ~/.config/llm-proxy/llm-proxy.env (LLM_PROXY_PORT=" in setup.stdout
