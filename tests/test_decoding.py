"""Decoding bodies for the log: every coding, stacked, piece by piece, broken, bombs bounded."""

import gzip
import json
import time

import pytest
from contentcoding import StreamEncoder, encode, header_value

from llmproxy.proxy.capture import Exchange
from llmproxy.proxy.decoding import Decoded, StreamDecoder, codings, decode
from llmproxy.proxy.routing import resolve
from llmproxy.record.entries import body_fields

BODY = json.dumps({"model": "m", "input": [{"role": "user", "content": "héllo " * 2000}]}).encode()
STACKS = ["gzip", "deflate", "deflate-raw", "br", "zstd", "gzip, br", "deflate, zstd", "zstd, gzip, br"]


def test_codings_are_listed_in_the_order_they_were_applied():
    assert codings("gzip, br") == ["gzip", "br"]
    assert codings(" Identity ,ZSTD") == ["zstd"]
    assert codings(None) == codings("") == []


@pytest.mark.parametrize("stack", STACKS)
def test_every_coding_and_stack_decodes(stack):
    assert decode(encode(BODY, stack), header_value(stack)) == Decoded(BODY)


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("piece_size", [1, 7, 4096])
def test_a_stream_decodes_piece_by_piece(stack, piece_size):
    encoder = StreamEncoder(stack)
    events = [b"data: %d %s\n\n" % (i, b"x" * i) for i in range(50)]
    wire = b"".join(encoder.piece(e) for e in events) + encoder.end()
    decoder = StreamDecoder(header_value(stack))
    out = b"".join(decoder.feed(wire[i:i + piece_size]) for i in range(0, len(wire), piece_size))
    assert out == b"".join(events)


@pytest.mark.parametrize("stack", STACKS)
def test_each_flushed_piece_decodes_at_once(stack):
    """What lets an encoded event stream keep its per-event arrival times."""
    encoder, decoder = StreamEncoder(stack), StreamDecoder(header_value(stack))
    for i in range(5):
        event = b"event: e\ndata: %d\n\n" % i
        assert decoder.feed(encoder.piece(event)) == event


def test_concatenated_gzip_members_decode_whole():
    assert decode(gzip.compress(b"one ") + gzip.compress(b"two"), "gzip").data == b"one two"


@pytest.mark.parametrize("stack, data, error", [
    ("gzip", b"not gzip at all", "gzip: "),
    ("br", b"\xff\xfe not brotli", "br: "),
    ("zstd", b"\x28\xb5\x2f\xfd garbage", "zstd: "),
    ("compress", b"LZW", "unsupported content-encoding 'compress'"),
    ("gzip, br", gzip.compress(b"only gzip"), "br: "),
])
def test_a_body_that_does_not_decode_is_kept_as_it_came_with_the_reason(stack, data, error):
    decoded = decode(data, stack)
    assert decoded.data == data and decoded.error.startswith(error) and not decoded.truncated


@pytest.mark.parametrize("stack", ["gzip", "deflate", "br", "zstd", "gzip, zstd"])
def test_a_decompression_bomb_is_cut_at_the_limit(stack):
    bomb = encode(b"\0" * (64 << 20), stack)  # 64 MiB of zeros, a few KiB on the wire
    assert len(bomb) < 1 << 20
    limit = 1 << 20
    started = time.perf_counter()
    decoded = decode(bomb, header_value(stack), limit=limit)
    assert decoded.truncated and decoded.data == b"\0" * limit and decoded.error is None
    assert time.perf_counter() - started < 5  # it stopped at the limit, did not inflate it all


@pytest.mark.parametrize("stack", STACKS)
def test_a_body_cut_mid_stream_is_logged_as_far_as_it_decodes(stack):
    half = encode(BODY, stack)[:len(encode(BODY, stack)) // 2]
    decoded = decode(half, header_value(stack))
    if decoded.data == half:  # nothing came out yet: kept as it came
        assert decoded.error.endswith(" stream") and "not a complete" in decoded.error
    else:
        assert decoded.data and BODY.startswith(decoded.data)
        assert decoded.error.endswith(": the body ends mid-stream")


def test_log_fields_say_what_happened_to_a_body():
    assert body_fields(Decoded(b"{}")) == {"body": "{}"}
    assert body_fields(Decoded(b"\x1f\x8b\xff", error="gzip: bad")) == {
        "body": "H4v/", "body_encoding": "base64", "body_decode_error": "gzip: bad"}
    assert body_fields(Decoded(b"ab", truncated=True)) == {"body": "ab", "body_truncated": True}


def _stream_exchange(content_encoding, pieces):
    route = resolve("/openai/127.0.0.1:9/v1/responses", None, ("127.0.0.1",))
    exchange = Exchange(route=route, method="POST", path="/v1/responses", request_headers=[], request_body=b"")
    exchange.got_headers(200, [("Content-Type", "text/event-stream"), ("Content-Encoding", content_encoding)],
                         sse=True)
    for piece in pieces:
        exchange.got_data(piece)
    exchange.finish()
    return exchange


def test_an_encoded_event_stream_is_logged_event_by_event():
    encoder = StreamEncoder("gzip, br")
    events = [b"event: e\ndata: {\"n\": %d}\n\n" % i for i in range(4)]
    exchange = _stream_exchange("gzip, br", [encoder.piece(e) for e in events] + [encoder.end()])
    assert [c.raw for c in exchange.chunks] == events
    assert exchange.decoded_body() is None and not exchange.stream_truncated
    stamps = [c.ts_ns for c in exchange.chunks]
    assert stamps == sorted(stamps) and len(set(stamps)) == 4  # each its own arrival time


def test_an_encoded_stream_that_breaks_keeps_its_events_and_the_rest_raw():
    encoder = StreamEncoder("zstd")
    good = encoder.piece(b"data: 1\n\n")
    exchange = _stream_exchange("zstd", [good, b"\x00\x01garbage", b"more"])
    assert [c.raw for c in exchange.chunks] == [b"data: 1\n\n"]
    rest = exchange.decoded_body()
    assert rest.data == b"\x00\x01garbagemore" and rest.error.startswith("zstd: ")


@pytest.mark.parametrize("sep", [b"\n\n", b"\r\n\r\n", b"\r\r"])
def test_events_are_split_on_every_separator_wherever_the_pieces_are_cut(sep):
    events = [b"event: e" + sep[:len(sep) // 2] + b"data: {\"n\": %d}" % i + sep for i in range(5)]
    stream = b"".join(events) + b"data: cut off"
    for cut in (1, 3, 7, len(stream)):
        pieces = [stream[i:i + cut] for i in range(0, len(stream), cut)]
        exchange = _stream_exchange("identity", pieces)
        assert [c.raw for c in exchange.chunks] == events + [b"data: cut off"]
