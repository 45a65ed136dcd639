"""A user's text files, changed so that the change can be taken back byte for byte.

``setup`` adds one marked block to an rc file: after the user's last byte, one line break, then
the block (``# >>> llm-proxy >>>`` … ``# <<< llm-proxy <<<``). Taking it back removes the block
and that one line break, so the file is what it was, with or without a final newline, and
whatever the user wrote around the block since stays. A file is edited where it really is: a
``~/.bashrc`` that is a symlink into a dotfiles repository keeps its link and the target changes.
Writing is atomic: the new text goes to a file beside the target (its mode and owner), which then
takes the target's place, so a full disk or a kill half-way leaves the file as it was.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

BEGIN = "# >>> llm-proxy >>>"
END = "# <<< llm-proxy <<<"
_BLOCK = re.compile(rf"^{re.escape(BEGIN)}$.*?(?:^{re.escape(END)}$\n?|\Z)", re.M | re.S)


def target(path: Path) -> Path:
    """The file a path really names (symlinks followed; the target may not exist yet)."""
    return Path(os.path.realpath(path))


def read(path: Path) -> str | None:
    """The file's text (any bytes survive the round trip), or None when there is none."""
    try:
        return target(path).read_bytes().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return None


def write(path: Path, text: str, mode: int = 0o644) -> None:
    """Write through any symlink, atomically: the whole new text or, when anything fails, the file
    as it was. The file keeps its mode and owner; a new one gets ``mode``."""
    data = text.encode("utf-8", "surrogateescape")
    real = target(path)
    real.parent.mkdir(parents=True, exist_ok=True)
    try:
        old = os.stat(real)
    except FileNotFoundError:
        old = None
    tmp = real.with_name(f".{real.name}.llm-proxy-{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode if old is None else 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if old is not None:
            os.chmod(tmp, stat.S_IMODE(old.st_mode))
            try:
                os.chown(tmp, old.st_uid, old.st_gid)
            except PermissionError:  # another owner's file this user may write: it becomes this user's
                pass
        os.replace(tmp, real)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def unwritable(path: Path) -> str | None:
    """Why the file could not be written (``None``: it can be), checked before any change. The
    file and its directory both: the new text takes the file's place (:func:`write`)."""
    real = target(path)
    if real.is_dir():
        return f"{path} is a directory"
    if real.exists() and not real.is_file():  # a link to /dev/null: never replaced by a file
        return f"{path} is not a regular file"
    if real.exists() and not os.access(real, os.W_OK):
        return f"{path} is not writable ({os.strerror(errno.EACCES)})"
    parent = real.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"{path} cannot be {'written' if real.exists() else 'created'} ({parent} is not writable)"
    return None


def find_block(text: str) -> tuple[int, int] | None:
    """``(start, end)`` of the marked block, ``start`` taking in the line break ``setup`` put
    before it; None when there is no block."""
    match = _BLOCK.search(text)
    if match is None:
        return None
    start = match.start() - 1 if match.start() > 0 and text[match.start() - 1] == "\n" else match.start()
    return start, match.end()


def with_block(text: str | None, block: str) -> str:
    """The text with ``block`` (ending in a newline) added after the last byte, or put in the
    place of the block already there."""
    match = _BLOCK.search(text or "")
    if match is not None:
        return text[:match.start()] + block + text[match.end():]
    return block if text is None else text + "\n" + block


def without_block(text: str) -> str:
    found = find_block(text)
    return text if found is None else text[:found[0]] + text[found[1]:]


def block_of(text: str | None) -> str | None:
    match = _BLOCK.search(text or "")
    return match.group(0) if match else None


def with_line(text: str | None, line: str) -> str:
    """The text with ``line`` added as its last line (a line break first, when the text lacks its final one)."""
    if not text:
        return line + "\n"
    return text + ("" if text.endswith("\n") else "\n") + line + "\n"


def without_line(text: str, line: str, added_break: bool) -> str:
    """The text without the last occurrence of ``line`` that :func:`with_line` added (and the
    line break it added before it, ``added_break``)."""
    lines = text.splitlines(keepends=True)
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].rstrip("\n") == line:
            del lines[i]
            if added_break and i == len(lines) and lines and lines[-1].endswith("\n"):
                lines[-1] = lines[-1][:-1]
            return "".join(lines)
    return text
