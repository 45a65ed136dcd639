"""Session logging through the running proxy: one file per session, in order, nothing secret."""

import base64
import concurrent.futures
import json
import multiprocessing
import shutil
import socket
import uuid
from pathlib import Path

import claudecode
import pytest
import requests
from proxyproc import http_get, jsonl_lines, wait_until

from llmproxy.record.sessions import SessionStore

API_KEY = "sk-ant-api03-" + "Q" * 86 + "Zabcd"
OPENAI_KEY = "sk-proj-" + "P" * 60 + "wxyz"


def session_files(log_dir: Path) -> dict[str, list[dict]]:
    """Every session file under the log dir: session id → its entries in file order."""
    files = {}
    for path in sorted(log_dir.glob("*/*/*.jsonl")):
        files[path.stem] = [json.loads(line) for line in jsonl_lines(path)]
    return files


def entries_of(log_dir: Path, session_marker: str) -> dict[str, list[dict]]:
    return {sid: entries for sid, entries in session_files(log_dir).items()
            if any(session_marker in json.dumps(e) for e in entries)}


def post_messages(proxy, fake, body, headers=None):
    resp = requests.post(f"{proxy.url}/anthropic/{fake.upstream}/v1/messages", json=body,
                         headers={"x-api-key": API_KEY, "anthropic-version": "2023-06-01", **(headers or {})})
    content = resp.content  # the whole stream
    assert resp.status_code == 200, content
    return resp


def wait_for_responses(log_dir, marker, count):
    def done():
        found = entries_of(log_dir, marker)
        n = sum(1 for entries in found.values() for e in entries if e["type"] == "response")
        return found if n >= count else None
    return wait_until(done, timeout=10, message=f"{count} responses logged")


def test_a_claude_code_session_lands_in_one_file_in_order(proxy, fake_provider):
    client_session = str(uuid.uuid4())
    for turn in range(1, 11):
        body = claudecode.request_body(client_session, claudecode.conversation(turn))
        post_messages(proxy, fake_provider, body)

    files = wait_for_responses(proxy.log_dir, client_session, 10)
    assert len(files) == 1
    (session, entries), = files.items()
    path, = proxy.log_dir.glob(f"{fake_provider.upstream}/*/{session}.jsonl")
    assert path.parent.name == f"{session[0:4]}-{session[4:6]}-{session[6:8]}"
    assert entries[0]["type"] == "session_start" and len(entries) == 21
    assert [e["seq"] for e in entries if e["type"] == "request"] == list(range(1, 11))
    # A response is written once its last byte is on the wire: the client may already have sent
    # (and another worker logged) the next request by then.
    position = {(e["type"], e["seq"]): i for i, e in enumerate(entries[1:])}
    assert all(position[("request", n)] < position[("response", n)] for n in range(1, 11))
    assert all(e["_meta"]["session"] == session for e in entries)
    assert entries[0]["provider"] == "anthropic" and entries[0]["upstream"] == fake_provider.upstream
    assert entries[0]["client_session_id"] == client_session

    # The last turn's pair, found by seq: the previous response may land after this request.
    request, = (e for e in entries if e["type"] == "request" and e["seq"] == 10)
    response, = (e for e in entries if e["type"] == "response" and e["seq"] == 10)
    assert request["method"] == "POST" and request["path"] == "/v1/messages"
    assert json.loads(request["body"])["messages"][0]["content"][1]["text"].startswith("Fix the failing")
    assert request["size"] == len(request["body"].encode())
    assert request["_meta"]["request_id"] == response["_meta"]["request_id"]
    assert response["status"] == 200 and response["timing"]["ttfb_ms"] > 0
    assert response["timing"]["total_ms"] >= response["timing"]["ttfb_ms"]
    raw = "".join(c["raw"] for c in response["chunks"])
    assert raw.startswith("event: message_start") and raw.endswith('data: {"type": "message_stop"}\n\n')
    assert response["size"] == len(raw.encode())
    assert all(c["delta_ms"] >= 0 and c["ts"].endswith("Z") for c in response["chunks"])
    meta = response["_meta"]
    assert meta["machine"] and meta["host"] == fake_provider.upstream
    assert len(meta["ts"]) == len("2026-11-28T10:15:00.123456789Z")


def test_nothing_secret_reaches_the_log_dir(proxy, fake_provider):
    client_session = str(uuid.uuid4())
    post_messages(proxy, fake_provider, claudecode.request_body(client_session, claudecode.conversation(1), stream=False),
                  headers={"Authorization": f"Bearer {OPENAI_KEY}", "Cookie": "__cf_bm=COOKIESECRET42"})
    requests.post(f"{proxy.url}/openai/{fake_provider.upstream}/v1/chat/completions",
                  json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                  headers={"Authorization": f"Bearer {OPENAI_KEY}"})
    wait_for_responses(proxy.log_dir, client_session, 1)
    blob = b"".join(p.read_bytes() for p in proxy.log_dir.rglob("*") if p.is_file())
    for secret in (API_KEY, OPENAI_KEY, API_KEY[7:-4], OPENAI_KEY[8:-4], "COOKIESECRET42"):
        assert secret.encode() not in blob
    entries = next(iter(entries_of(proxy.log_dir, client_session).values()))
    headers = entries[1]["headers"]
    assert headers["X-Api-Key"] == "sk-ant-...abcd"
    assert headers["Authorization"] == "Bearer sk-proj-...wxyz"
    assert headers["Cookie"] == "__cf_bm=..."
    assert entries[2]["headers"]["Set-Cookie"] == ["a=...; Path=/", "b=...; Path=/"]


def test_a_rewound_conversation_forks_inside_its_client_session(proxy, fake_provider):
    client_session = str(uuid.uuid4())
    history = claudecode.conversation(4)                      # u1 a1 u2 a2 u3 a3 u4
    for turn in (1, 2, 3, 4):
        post_messages(proxy, fake_provider, claudecode.request_body(client_session, claudecode.conversation(turn)))
    # The user rewinds to after the first tool result and says something else.
    edited = history[:3] + [claudecode.assistant_tool_use(9, "git status"),
                            claudecode.tool_result(9, "nothing to commit")]
    post_messages(proxy, fake_provider, claudecode.request_body(client_session, edited))
    # ...and goes on from there: continues the new branch, without another fork.
    post_messages(proxy, fake_provider, claudecode.request_body(
        client_session, edited + [claudecode.assistant_tool_use(10, "ls"), claudecode.tool_result(10, "app.py")]))

    files = wait_for_responses(proxy.log_dir, client_session, 6)
    (session, entries), = files.items()  # the client's session id wins: one file
    assert [e["type"] for e in entries if e["type"] != "response"] == [
        "session_start", "request", "request", "request", "request", "fork", "request", "request"]
    fork = next(e for e in entries if e["type"] == "fork")
    # u1 a1 u2 are shared: the branch departs after seq 2, whose request held u1 a1 u2.
    assert fork == {**fork, "from_seq": 2, "parent_session": session, "reason": "message_history_diverged",
                    "from_thread": "t1", "thread": "t2"}
    requests_ = [e for e in entries if e["type"] == "request"]
    assert [e["seq"] for e in requests_] == [1, 2, 3, 4, 5, 6]
    assert [e["_meta"]["thread"] for e in requests_] == ["t1", "t1", "t1", "t1", "t2", "t2"]
    assert all(e["_meta"]["client_session_id"] == client_session for e in entries)


def test_sub_agents_and_title_calls_are_threads_of_the_same_session(proxy, fake_provider):
    client_session = str(uuid.uuid4())
    post_messages(proxy, fake_provider, claudecode.request_body(client_session, claudecode.conversation(1)))
    post_messages(proxy, fake_provider, claudecode.title_request(client_session, "Fix the failing test"))
    post_messages(proxy, fake_provider, claudecode.request_body(
        client_session, claudecode.conversation(2, prompt="Search the codebase for uses of create_app")),
        headers={"x-claude-code-agent-id": "agent-explore-1"})
    post_messages(proxy, fake_provider, claudecode.request_body(client_session, claudecode.conversation(2)))
    # The sub-agent goes on in its own thread, named by the client.
    post_messages(proxy, fake_provider, claudecode.request_body(
        client_session, claudecode.conversation(3, prompt="Search the codebase for uses of create_app")),
        headers={"x-claude-code-agent-id": "agent-explore-1"})

    files = wait_for_responses(proxy.log_dir, client_session, 5)
    assert len(files) == 1
    entries = next(iter(files.values()))
    assert "fork" not in [e["type"] for e in entries]
    requests_ = [e for e in entries if e["type"] == "request"]
    assert [e["seq"] for e in requests_] == [1, 2, 3, 4, 5]
    assert [e["_meta"].get("agent") for e in requests_] == [None, None, "agent-explore-1", None, "agent-explore-1"]


@pytest.mark.parametrize("headers, body_extra", [
    ({"X-Claude-Code-Session-Id": "cc-header-session"}, {}),
    ({}, {"metadata": {"user_id": json.dumps({"session_id": "cc-json-session"})}}),
    ({}, {"metadata": {"user_id": "user_ab12_account_1111_session_cc-legacy-session"}}),
], ids=["header", "user_id-json", "user_id-legacy"])
def test_anthropic_client_ids_keep_requests_together(proxy, fake_provider, headers, body_extra):
    marker = str(uuid.uuid4())
    for _ in range(2):
        post_messages(proxy, fake_provider, {"model": "m", "messages": [{"role": "user", "content": marker}],
                                             **body_extra}, headers)
    files = wait_for_responses(proxy.log_dir, marker, 2)
    assert len(files) == 1


def test_codex_session_header_and_responses_chain(proxy, fake_provider):
    base = f"{proxy.url}/openai/{fake_provider.upstream}/v1/responses"
    marker = str(uuid.uuid4())
    for _ in range(2):
        requests.post(base, json={"model": "m", "input": [{"role": "user", "content": marker}]},
                      headers={"session_id": f"codex-{marker}"})
    # previous_response_id: the chain is found from the id of a response the proxy logged.
    first = requests.post(base, json={"model": "m", "input": f"chain {marker}", "stream": True})
    response_id = [json.loads(line[5:]) for line in first.text.splitlines() if line.startswith("data:")][0]
    wait_for_responses(proxy.log_dir, f"chain {marker}", 1)
    requests.post(base, json={"model": "m", "input": f"next {marker}",
                              "previous_response_id": response_id["response"]["id"]})
    files = wait_for_responses(proxy.log_dir, marker, 4)
    assert sorted(len([e for e in es if e["type"] == "request"]) for es in files.values()) == [2, 2]


def test_requests_without_client_id_are_sessions_of_their_own(proxy, fake_provider):
    marker = str(uuid.uuid4())
    for _ in range(2):
        requests.post(f"{proxy.url}/openai/{fake_provider.upstream}/v1/chat/completions",
                      json={"model": "m", "messages": [{"role": "user", "content": marker}]})
    files = wait_for_responses(proxy.log_dir, marker, 2)
    assert len(files) == 2 and all(e[1]["seq"] == 1 for e in files.values())


def test_binary_request_body_is_stored_base64_untruncated(proxy, fake_provider):
    body = b"\xff\xfe" + uuid.uuid4().bytes * 40000
    requests.post(f"{proxy.url}/anthropic/{fake_provider.upstream}/v1/messages", data=body)
    marker = base64.b64encode(body[:30]).decode()[:30]
    entries = next(iter(wait_for_responses(proxy.log_dir, marker, 1).values()))
    request = entries[1]
    assert request["body_encoding"] == "base64" and base64.b64decode(request["body"]) == body


def test_gzip_response_is_logged_decoded(proxy, fake_provider):
    marker = str(uuid.uuid4())
    requests.post(f"{proxy.url}/anthropic/{fake_provider.upstream}/v1/messages",
                  json={"model": marker}, headers={"x-fake-gzip": "1"})
    entries = next(iter(wait_for_responses(proxy.log_dir, marker, 1).values()))
    assert json.loads(entries[2]["body"])["model"] == marker
    assert entries[2]["headers"]["Content-Encoding"] == "gzip"


def test_cut_streams_are_logged_incomplete(proxy, fake_provider):
    marker = str(uuid.uuid4())
    with requests.post(f"{proxy.url}/anthropic/{fake_provider.upstream}/v1/messages",
                       json={"model": marker, "stream": True}, headers={"x-fake-cut-after": "3"},
                       stream=True) as resp:
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            resp.content
    # The client goes away mid-stream.
    sock = socket.create_connection(("127.0.0.1", proxy.port))
    body = json.dumps({"model": marker + "-gone", "stream": True}).encode()
    sock.sendall(b"POST /anthropic/%s/v1/messages HTTP/1.1\r\nHost: x\r\nx-fake-delay-ms: 50\r\n"
                 b"x-fake-events: 400\r\nContent-Length: %d\r\n\r\n%s" % (fake_provider.upstream.encode(), len(body), body))
    sock.recv(100)
    sock.close()
    files = wait_for_responses(proxy.log_dir, marker, 2)
    responses_ = {json.loads(es[1]["body"])["model"]: es[2] for es in files.values()}
    cut, gone = responses_[marker], responses_[marker + "-gone"]
    assert cut["incomplete"] is True and "broke off" in cut["error"] and len(cut["chunks"]) == 3
    assert gone["incomplete"] is True and gone["error"] == "client disconnected"


def test_concurrent_large_lines_never_interleave(proxy, fake_provider):
    client_session = f"race-{uuid.uuid4()}"

    def one(i):
        body = {"model": "m", "messages": [{"role": "user", "content": f"{i}:" + "z" * 300_000}]}
        return post_messages(proxy, fake_provider, body, {"X-Claude-Code-Session-Id": client_session}).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert list(pool.map(one, range(32))) == [200] * 32
    files = wait_for_responses(proxy.log_dir, client_session, 32)
    (entries,) = files.values()  # every line parsed as JSON: none torn or interleaved
    assert sorted(e["seq"] for e in entries if e["type"] == "request") == list(range(1, 33))
    assert [e["seq"] for e in entries if e["type"] == "request"] == list(range(1, 33))


def _race(db_path, client_id, barrier, results):
    store = SessionStore(Path(db_path))
    barrier.wait(10)
    try:
        assignment = store.assign("anthropic", "api.anthropic.com", client_id, None, [],
                                  1_764_300_000_000_000_000, lambda a: None)
        results.put((assignment.session, assignment.seq))
    except Exception as exc:
        results.put((repr(exc), 0))


def test_two_processes_racing_on_a_new_client_session_create_one_session(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for round_ in range(20):
        barrier, results = ctx.Barrier(2), ctx.Queue()
        # A new database each round: creating it (WAL switch, tables) is part of the race.
        procs = [ctx.Process(target=_race, args=(tmp_path / f"sessions-{round_}.db", "client", barrier, results))
                 for _ in range(2)]
        for p in procs:
            p.start()
        got = [results.get(timeout=20) for _ in procs]
        for p in procs:
            p.join(10)
        assert len({session for session, _ in got}) == 1
        assert sorted(seq for _, seq in got) == [1, 2]


def test_an_unwritable_log_dir_does_not_fail_calls(start_proxy, fake_provider):
    server = start_proxy()
    shutil.rmtree(server.log_dir)
    server.log_dir.write_text("the log dir is now a file")
    for _ in range(6):
        resp = requests.post(f"{server.url}/anthropic/{fake_provider.upstream}/v1/messages", json={"model": "m"})
        assert resp.status_code == 200
    health = wait_until(lambda: (lambda b: b if b.get("file_logging") == "failing" else None)(
        http_get(server.port, "/health")[1]), timeout=5)
    assert health["status"] == "ok"
    # One message per worker at most, not one per request.
    assert 1 <= server.output().count("file logging failed") <= 2

    server.log_dir.unlink()
    server.log_dir.mkdir()
    for _ in range(4):  # both workers write again
        requests.post(f"{server.url}/anthropic/{fake_provider.upstream}/v1/messages", json={"model": "m"})
    assert any(server.log_dir.glob("*/*/*.jsonl"))
