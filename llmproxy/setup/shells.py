"""The shell integration: what bash, zsh and fish run at every start to learn whether the proxy is up.

It runs at every shell start, so it starts no program (a Python interpreter alone takes tens of
milliseconds): it reads the server's presence file (llmproxy/server/presence.py) with the
shell's own ``read`` and asks the kernel, with the shell's own ``test``, whether the process the
file names holds that very file open (``[ /proc/PID/fd/FD -ef FILE ]``). Only then does it export
the variables the file lists. A proxy that was stopped left no file; one that crashed or was
killed with ``kill -9`` left a file that no living process holds: either way the shell gets
nothing. Without ``/proc`` (macOS) the test is ``kill -0 PID``.

bash and zsh get a marked block at the end of their rc file (llmproxy/setup/textfile.py); fish a
file of its own in ``conf.d``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from llmproxy.setup import textfile
from llmproxy.setup.home import Home
from llmproxy.setup.textfile import BEGIN, END

NAMES = ("bash", "zsh", "fish")
FISH_FILE = "llm-proxy.fish"
HEADER = ("Points Claude Code and the SDKs at llm-proxy while it runs, and only then.",
          "Added by `llm-proxy setup`, removed by `llm-proxy uninstall` (docs/workstation.rst).")


@dataclass(frozen=True)
class Shell:
    name: str
    rc: Path
    whole_file: bool   # fish: the file is ours alone; bash, zsh: a block in the user's file

    def text(self, presence_file: Path, proc: bool = True) -> str:
        """The block (bash, zsh) or file (fish) for a server whose presence file is ``presence_file``."""
        if self.name == "fish":
            return fish(presence_file, proc)
        return posix(presence_file, proc)


def rc_file(home: Home, name: str) -> Path:
    if name == "fish":
        return home.fish_conf_d / FISH_FILE
    if name == "zsh":
        return home.zdotdir / ".zshrc"
    # Terminal on macOS starts login shells, which read ~/.bash_profile and not ~/.bashrc.
    return home.path / (".bash_profile" if home.platform == "darwin" else ".bashrc")


def shells(home: Home) -> list[Shell]:
    """The shells to set up: each one installed here whose rc file exists, the login shell's even
    when it does not yet (a new ``~/.zshrc`` would skip zsh's first-run wizard for nothing), and
    fish's ``conf.d`` file whenever fish is installed."""
    found = []
    for name in NAMES:
        if not home.has(name):
            continue
        rc = rc_file(home, name)
        if name == "fish" or rc.exists() or rc.is_symlink() or home.login_shell == name:
            found.append(Shell(name, rc, whole_file=name == "fish"))
    return found


def all_shells(home: Home) -> list[Shell]:
    """Every place a block may be, installed shell or not (what ``uninstall`` and ``status`` look at)."""
    return [Shell(name, rc_file(home, name), whole_file=name == "fish") for name in NAMES]


def posix(presence_file: Path, proc: bool = True) -> str:
    """bash and zsh: the same text (``read``, ``[ … -ef … ]``, ``export`` are builtins of both).

    What it exports it names in ``_LLM_PROXY_SET``, so that a shell that inherits them from a
    parent started while the proxy ran (a tmux pane, a nested shell) drops them once the proxy
    is gone. ``eval`` splits the names in zsh too, and runs only when they are names."""
    file = shlex.quote(str(presence_file))
    alive = (f'[ "/proc/$_llm_proxy_pid/fd/$_llm_proxy_fd" -ef {file} ]' if proc
             else 'kill -0 "$_llm_proxy_pid" 2>/dev/null')
    return "\n".join([
        BEGIN,
        *(f"# {line}" for line in HEADER),
        "_llm_proxy_up=",
        f"if [ -r {file} ]; then",
        "    { read -r _llm_proxy_pid _llm_proxy_fd _llm_proxy_rest",
        f"      if {alive}; then",
        "          _llm_proxy_up=1 _LLM_PROXY_SET=",
        "          while IFS= read -r _llm_proxy_var; do",
        "              export \"$_llm_proxy_var\" && _LLM_PROXY_SET=\"$_LLM_PROXY_SET ${_llm_proxy_var%%=*}\"",
        "          done",
        "          export _LLM_PROXY_SET",
        f"      fi; }} < {file}",
        "fi",
        'if [ -z "$_llm_proxy_up" ] && [ -n "${_LLM_PROXY_SET-}" ]; then',
        r'    case $_LLM_PROXY_SET in *[!A-Za-z0-9_\ ]*) ;; *) eval "unset $_LLM_PROXY_SET _LLM_PROXY_SET" ;; esac',
        "fi",
        "unset _llm_proxy_pid _llm_proxy_fd _llm_proxy_rest _llm_proxy_var _llm_proxy_up",
        END,
    ]) + "\n"


def fish_quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def fish(presence_file: Path, proc: bool = True) -> str:
    """fish: as :func:`posix`, its variables named in ``_LLM_PROXY_SET`` (one string, as bash and
    zsh export it) for a shell that inherits them after the proxy is gone."""
    file = fish_quote(str(presence_file))
    alive = f'test "/proc/$pid/fd/$fd" -ef {file}' if proc else 'kill -0 "$pid" 2>/dev/null'
    return "\n".join([
        *(f"# {line}" for line in HEADER),
        "set -l up",
        f"if test -r {file}",
        "    begin",
        "        read -l pid fd rest",
        f"        if {alive}",
        "            set up 1",
        "            set -l names",
        "            while read -l var",
        "                set -l pair (string split -m 1 = -- $var)",
        "                set -gx $pair",
        "                set -a names $pair[1]",
        "            end",
        '            set -gx _LLM_PROXY_SET "$names"',
        "        end",
        f"    end < {file}",
        "end",
        "if test -z \"$up\"; and set -q _LLM_PROXY_SET",
        "    set -e (string split --no-empty ' ' -- $_LLM_PROXY_SET) _LLM_PROXY_SET",
        "end",
    ]) + "\n"


def installed_in(home: Home) -> list[Path]:
    """The rc files that hold the integration now."""
    found = []
    for shell in all_shells(home):
        text = textfile.read(shell.rc)
        if text is not None and (shell.whole_file and HEADER[0] in text or textfile.block_of(text)):
            found.append(shell.rc)
    return found
