"""Group commit: threads of one process that need sessions.db while another holds it share the
next transaction, each in a savepoint of its own."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from proxyproc import wait_until

from llmproxy.record.sessions import SessionStore

NOW = 1_764_300_000_000_000_000


def queued(store: SessionStore) -> int:
    with store._jobs_changed:
        return len(store._jobs)


class HeldTransaction:
    """A first request whose ``within`` holds the transaction open until ``release``."""

    def __init__(self, store: SessionStore, lines: list[int]):
        self.inside, self.go_on = threading.Event(), threading.Event()

        def within(assignment):
            lines.append(assignment.seq)
            self.inside.set()
            assert self.go_on.wait(10)

        self.thread = threading.Thread(target=store.assign, args=("anthropic", "h", "c", None, [], NOW, within))
        self.thread.start()
        assert self.inside.wait(10)

    def release_after(self, store: SessionStore, queued_jobs: int, others: list[threading.Thread]) -> None:
        for t in others:
            t.start()
        wait_until(lambda: queued(store) == queued_jobs, 10, message=f"{queued_jobs} requests queued behind the first")
        self.go_on.set()
        for t in [self.thread, *others]:
            t.join(10)


def test_waiting_threads_share_one_transaction_and_keep_seq_order(tmp_path):
    store = SessionStore(tmp_path / "sessions.db")
    lines: list[int] = []          # what each request's ``within`` wrote, in the order written
    ran_on: dict[int, int] = {}    # request → the thread that ran its ``within``
    held = HeldTransaction(store, lines)
    results: dict[int, int] = {}

    def one(i):
        def within(assignment):
            lines.append(assignment.seq)
            ran_on[i] = threading.get_ident()
        results[i] = store.assign("anthropic", "h", "c", None, [], NOW, within).seq

    held.release_after(store, 8, [threading.Thread(target=one, args=(i,)) for i in range(8)])
    assert sorted(results.values()) == list(range(2, 10))
    assert lines == list(range(1, 10))  # lines land in seq order
    assert len(set(ran_on.values())) == 1  # one thread ran all eight: one transaction


def test_a_failing_request_in_a_shared_transaction_is_rolled_back_alone(tmp_path):
    store = SessionStore(tmp_path / "sessions.db")
    held = HeldTransaction(store, [])
    outcomes: dict[int, object] = {}

    def one(i):
        def within(assignment):
            if i == 2:
                raise RuntimeError("a bug in one request's logging")
        try:
            outcomes[i] = store.assign("anthropic", "h", "c", None, [], NOW, within).seq
        except RuntimeError as exc:
            outcomes[i] = exc

    held.release_after(store, 5, [threading.Thread(target=one, args=(i,)) for i in range(5)])
    assert isinstance(outcomes.pop(2), RuntimeError)
    assert sorted(outcomes.values()) == [2, 3, 4, 5]  # the failed one's seq was given back
    assert store.assign("anthropic", "h", "c", None, [], NOW, lambda a: None).seq == 6


def test_a_failed_transaction_fails_each_of_its_requests(tmp_path):
    (tmp_path / "sessions.db").write_bytes(b"not a database" * 100)
    store = SessionStore(tmp_path / "sessions.db")
    for _ in range(2):  # the first failure leaves nothing behind that blocks the next request
        with pytest.raises(sqlite3.DatabaseError):
            store.assign("anthropic", "h", "c", None, [], NOW, lambda a: None)
        assert not store._leading and not store._jobs
