"""Threads and forks inside a client session (SessionStore, on hash lists standing for turns)."""

from llmproxy.common.clientids import RESPONSE_KEY
from llmproxy.record.sessions import SessionStore

NOW = 1_764_300_000_000_000_000


def sender(tmp_path, client="cc-1"):
    store = SessionStore(tmp_path / "sessions.db")

    def send(hashes, agent=None, client_id=client):
        return store.assign("anthropic", "api.anthropic.com", client_id, agent, hashes, NOW, lambda a: None)
    return send


def test_a_branch_goes_on_as_its_own_thread_and_the_old_one_stays_reachable(tmp_path):
    send = sender(tmp_path)
    send(["u1"]), send(["u1", "a1", "u2"]), send(["u1", "a1", "u2", "a2", "u3"])
    branch = send(["u1", "a1", "x2"])
    assert (branch.seq, branch.thread, branch.fork.from_seq, branch.fork.from_thread) == (4, "t2", 1, "t1")
    on = send(["u1", "a1", "x2", "b2", "x3"])
    assert (on.thread, on.fork) == ("t2", None)
    back = send(["u1", "a1", "u2", "a2", "u3", "a3", "u4"])  # the old branch, extended
    assert (back.thread, back.fork) == ("t1", None)
    assert {send(h).session for h in (["u1"], ["zz"])} == {branch.session}


def test_a_sub_agent_branch_stays_the_agents(tmp_path):
    send = sender(tmp_path)
    send(["m1"])
    send(["s1", "r1", "s2"], agent="explore")
    fork = send(["s1", "r1", "t2"], agent="explore")
    assert fork.fork is not None and fork.thread.startswith("explore+") and fork.agent == "explore"
    on = send(["s1", "r1", "t2", "r2", "t3"], agent="explore")
    assert (on.thread, on.fork) == (fork.thread, None)


def test_a_repeat_is_no_fork(tmp_path):
    send = sender(tmp_path)
    send(["u1", "a1", "u2"])
    again = send(["u1", "a1", "u2"])
    assert again.fork is None and again.thread == "t1"


def test_a_response_key_finds_a_session_but_names_none(tmp_path):
    send = sender(tmp_path)
    first = send([], client_id=RESPONSE_KEY + "resp_1")
    assert first.client_id is None and first.started_session
    assert send([], client_id=RESPONSE_KEY + "resp_1").session == first.session
    assert send(["u1"], client_id="codex-7").client_id == "codex-7"
