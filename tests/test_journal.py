"""Crash consistency, piece by piece: the write lock's pad, undoing an uncommitted request's lines,
half lines, and a worker's Loki ledger. (tests/test_crashes.py kills real workers.)"""

from __future__ import annotations

import errno
import json
import os

import pytest

from llmproxy.loki.ledger import Ledger, claim, dead_ledgers, read_ledger
from llmproxy.record import filelog, journal
from llmproxy.record.filelog import FileLogger
from llmproxy.record.journal import Intent
from llmproxy.record.sessions import SessionStore
from llmproxy.record.writelock import WriteLock

NOW = 1_764_300_000_000_000_000


def line(kind: str, request_id: str | None, seq: int = 1) -> bytes:
    meta = {"session": "S"} | ({"request_id": request_id} if request_id else {})
    return json.dumps({"type": kind, "seq": seq, "_meta": meta}, separators=(",", ":")).encode()


def test_the_pad_keeps_what_a_holder_that_died_noted_until_the_next_holder_clears_it(tmp_path):
    lock = WriteLock(tmp_path / "db.lock")
    with lock:
        assert lock.left == []
        lock.note(b"first")
        lock.note(b"second")
    # Not cleared: as if the holder had died. A new process (a new descriptor) sees the notes.
    again = WriteLock(tmp_path / "db.lock")
    with again:
        assert again.left == [b"first", b"second"]
        again.clear()
    with WriteLock(tmp_path / "db.lock") as third:
        assert third.left == []


def test_an_uncommitted_requests_lines_come_out_and_answers_written_after_them_stay(tmp_path):
    files = FileLogger(tmp_path)
    path = "h/2026-11-28/S.jsonl"
    assert files.append(path, [line("session_start", None), line("request", "r1")]) is None
    noted = []
    files.append(path, [line("fork", "r2", 2), line("request", "r2", 2)],
                 lambda offset, dev, ino: noted.append(Intent(path, offset, dev, ino, "S", 2, False, "r2")))
    files.append(path, [line("response", "r1")])  # another worker's answer, after the crash
    assert journal.undo(str(tmp_path), noted[0]) == 2
    kinds = [json.loads(x)["type"] for x in (tmp_path / path).read_bytes().split(b"\n")[:-1]]
    assert kinds == ["session_start", "request", "response"]
    assert journal.undo(str(tmp_path), noted[0]) == 0  # done once is done


def test_a_new_session_that_never_committed_leaves_no_file_and_a_committed_one_stays(tmp_path):
    store = SessionStore(tmp_path / "sessions.db")
    files = FileLogger(tmp_path)

    def within(assignment):
        path = f"h/2026-11-28/{assignment.session}.jsonl"
        files.append(path, [line("session_start", None), line("request", "r1")],
                     lambda offset, dev, ino: store.intend(Intent(path, offset, dev, ino, assignment.session, 1,
                                                                  True, "r1")))

    kept = store.assign("anthropic", "h", "client-a", None, [], NOW, within)
    assert store._write_lock.left == []  # cleared after COMMIT

    class Killed(BaseException):
        pass

    def dies_before_commit(assignment):
        within(assignment)
        raise Killed  # stands for SIGKILL: what a crash leaves, the pad is left with too
    with pytest.raises(Killed):
        store.assign("anthropic", "h", "client-b", None, [], NOW, dies_before_commit)
    # In-process, the failed job's lines were taken out at once; a real crash leaves them for
    # the next holder, which finds the note (the same undo, from the pad).
    assert [p.stem for p in tmp_path.glob("h/*/*.jsonl")] == [kept.session]
    assert store.assign("anthropic", "h", "client-b", None, [], NOW, lambda a: None).seq == 1


def test_the_next_writer_cuts_a_half_line_and_a_failed_write_leaves_none(tmp_path, monkeypatch):
    files = FileLogger(tmp_path)
    path = tmp_path / "h/d/S.jsonl"
    files.append("h/d/S.jsonl", [line("request", "r1")])
    with open(path, "ab") as f:
        f.write(b'{"type":"response","body":"cut sh')  # a writer killed mid-line
    assert files.append("h/d/S.jsonl", [line("request", "r2", 2)]) is None
    assert [json.loads(x)["seq"] for x in path.read_bytes().split(b"\n")[:-1]] == [1, 2]

    size = path.stat().st_size

    def full_disk(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    real_writev = os.writev
    monkeypatch.setattr(filelog.os, "writev", lambda fd, parts: real_writev(fd, [parts[0][:100]]))
    monkeypatch.setattr(filelog.os, "write", full_disk)
    error = files.append("h/d/S.jsonl", [line("request", "r3", 3) + b" " * 500])
    assert error is not None and error.errno == errno.ENOSPC
    assert path.stat().st_size == size  # the 100 bytes that went in were taken back


def test_a_ledger_names_what_is_unsettled_and_only_a_dead_workers_can_be_claimed(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.open()
    tickets = ledger.note([(10, "h/d/A.jsonl"), (11, "h/d/A.jsonl"), (12, "h/d/B.jsonl")])
    ledger.settle(tickets[:1])
    ledger.flush()
    assert read_ledger(ledger.path.read_bytes(), 1).entries == [(11, "h/d/A.jsonl"), (12, "h/d/B.jsonl")]
    assert claim(ledger.path) is None  # its worker lives (holds the lock)
    assert list(dead_ledgers(tmp_path, ledger.path)) == []

    other = Ledger(tmp_path / "other")
    other.open()
    other.note([(13, "h/d/C.jsonl")])
    assert other.close() is False  # unsettled: left for a successor, unlocked
    (path, pid), = dead_ledgers(tmp_path / "other", None)
    assert pid == os.getpid()
    fd = claim(path)
    assert fd is not None
    os.close(fd)

    ledger.settle(tickets[1:])
    assert ledger.close() is True and not ledger.path.exists()


def test_a_compacted_ledger_stays_locked_and_keeps_the_unsettled(tmp_path, monkeypatch):
    monkeypatch.setattr("llmproxy.loki.ledger.COMPACT_BYTES", 2000)
    ledger = Ledger(tmp_path)
    ledger.open()
    keep = ledger.note([(1, "h/d/keep.jsonl")])
    for i in range(200):
        ledger.settle(ledger.note([(100 + i, "h/d/other.jsonl")]))
        ledger.flush()
    assert ledger.path.stat().st_size < 2000 + 100
    assert claim(ledger.path) is None
    assert read_ledger(ledger.path.read_bytes(), 1).entries == [(1, "h/d/keep.jsonl")]
    ledger.settle(keep)
    assert ledger.close()


def test_a_compaction_that_fails_leaves_no_file_behind_and_the_ledger_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr("llmproxy.loki.ledger.COMPACT_BYTES", 200)
    ledger = Ledger(tmp_path)
    ledger.open()
    keep = ledger.note([(1, "h/d/keep.jsonl")])
    real_write = os.write

    def full_disk_for_new_files(fd, data):
        if fd != ledger._fd:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr("llmproxy.loki.ledger.os.write", full_disk_for_new_files)
    for i in range(20):
        ledger.settle(ledger.note([(100 + i, "h/d/other.jsonl")]))
        ledger.flush()
    assert sorted(os.listdir(tmp_path)) == [ledger.path.name]  # no half-written .new file
    assert claim(ledger.path) is None
    assert read_ledger(ledger.path.read_bytes(), 1).entries == [(1, "h/d/keep.jsonl")]
    ledger.settle(keep)
    assert ledger.close()


def test_a_ledger_closed_while_a_thread_waits_for_it_notes_and_flushes_nothing(tmp_path):
    """A worker exits (gunicorn's graceful timeout over) while a request thread still notes an
    entry and the pusher still flushes: they find the ledger closed once they hold its lock."""
    ledger = Ledger(tmp_path)
    ledger.open()
    ledger.settle(ledger.note([(1, "h/d/S.jsonl")]))
    real = ledger._lock

    class ClosedMeanwhile:
        def __enter__(self):
            if ledger._fd is not None:  # the closing thread got the lock first
                os.close(ledger._fd)
                ledger._fd = None
            return real.__enter__()

        def __exit__(self, *exc):
            return real.__exit__(*exc)

    ledger._lock = ClosedMeanwhile()
    assert ledger.note([(2, "h/d/S.jsonl")]) is None
    ledger._fd = os.open(ledger.path, os.O_WRONLY | os.O_APPEND)  # open again, to be closed again
    ledger.flush()  # nothing written, nothing raised
    assert ledger._fd is None


def test_two_uncommitted_requests_of_one_session_come_out_whatever_was_written_between(tmp_path):
    files = FileLogger(tmp_path)
    path = "h/d/S.jsonl"
    files.append(path, [line("session_start", None), line("request", "r1")])
    noted = []

    def note(request_id, seq):
        return lambda offset, dev, ino: noted.append(Intent(path, offset, dev, ino, "S", seq, False, request_id))

    files.append(path, [line("request", "r2", 2)], note("r2", 2))  # one transaction, two requests
    files.append(path, [line("response", "r1")])                   # an answer between them
    files.append(path, [line("request", "r3", 3)], note("r3", 3))
    db = tmp_path / "sessions.db"
    store = SessionStore(db)
    store.prepare()
    conn = store._conn()
    conn.execute("INSERT INTO sessions VALUES ('S', 'anthropic', 'h', NULL, 0, 1)")  # seq 1 committed
    journal.recover(conn, str(tmp_path), [i.encode() for i in noted])
    kinds = [(json.loads(x)["type"], json.loads(x)["seq"]) for x in (tmp_path / path).read_bytes().split(b"\n")[:-1]]
    assert kinds == [("session_start", 1), ("request", 1), ("response", 1)]
