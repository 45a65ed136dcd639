import json
import time
import urllib.request


def test_real_loki_takes_a_push_and_answers_a_query(real_loki):
    ts = time.time_ns()
    body = json.dumps({"streams": [{"stream": {"app": "smoke"}, "values": [[str(ts), "hello"]]}]}).encode()
    req = urllib.request.Request(real_loki.push_url, body, {"Content-Type": "application/json"})
    assert urllib.request.urlopen(req).status == 204
    assert real_loki.wait_for_lines('{app="smoke"}', 1) == [(ts, "hello")]
