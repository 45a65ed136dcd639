"""The sessions.db write lock: one holder across threads and processes, handed over at once."""

import multiprocessing
import os
import threading
import time

from llmproxy.record.writelock import WriteLock


def _hold(path, held, release):
    with WriteLock(path):
        held.set()
        release.wait(10)


def test_another_process_waits_until_the_holder_releases(tmp_path):
    path = tmp_path / "db.lock"
    ctx = multiprocessing.get_context("fork")
    held, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold, args=(path, held, release))
    child.start()
    try:
        assert held.wait(10)
        lock = WriteLock(path)
        got = threading.Event()
        waiter = threading.Thread(target=lambda: (lock.__enter__(), got.set(), lock.__exit__()))
        waiter.start()
        assert not got.wait(0.2)  # the child holds it
        released_at = time.monotonic()
        release.set()
        assert got.wait(10)
        assert time.monotonic() - released_at < 0.5  # woken, not polling with growing sleeps
        waiter.join(5)
    finally:
        release.set()
        child.join(10)


def test_threads_of_one_process_take_turns(tmp_path):
    lock = WriteLock(tmp_path / "db.lock")
    inside, overlaps = [0], []

    def work():
        for _ in range(200):
            with lock:
                inside[0] += 1
                overlaps.append(inside[0])
                inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(overlaps) == 1600 and max(overlaps) == 1


def test_without_a_lock_file_it_still_serialises_threads(tmp_path):
    lock = WriteLock(tmp_path / "missing-dir" / "db.lock")
    with lock:
        assert not lock._threads.acquire(blocking=False)
    assert lock._threads.acquire(blocking=False)
    lock._threads.release()


def test_a_forked_child_opens_its_own_descriptor(tmp_path):
    # An inherited descriptor shares its flock with the parent: used in a child, the parent and
    # the child would both "hold" the lock at once.
    lock = WriteLock(tmp_path / "db.lock")
    with lock:  # the parent opened its descriptor
        pass
    ctx = multiprocessing.get_context("fork")
    held, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=lambda: _hold_with(lock, held, release))
    child.start()
    try:
        assert held.wait(10)
        got = threading.Event()
        waiter = threading.Thread(target=lambda: (lock.__enter__(), got.set(), lock.__exit__()))
        waiter.start()
        assert not got.wait(0.2)  # the child holds it, through a descriptor of its own
        release.set()
        assert got.wait(10)
        waiter.join(5)
    finally:
        release.set()
        child.join(10)


def _hold_with(lock, held, release):
    with lock:
        held.set()
        release.wait(10)
