"""What the fake provider needs to be AWS Bedrock: SigV4 checked as AWS checks it, and answers
in AWS's binary event stream.

:func:`check_signature` recomputes a request's SigV4 signature with botocore from the headers
it names as signed, the body as received and the test credentials, as AWS would for its own
host: an unsigned request, one signed with other credentials, for another host, path, body or
region fails. :func:`frame` writes one ``application/vnd.amazon.eventstream`` message (prelude
with its CRC32, headers, payload, message CRC32), as botocore's parser and the AWS SDKs read it.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import struct
from datetime import datetime, timedelta, timezone

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

# Made-up credentials: the proxy signs with them (AWS_ACCESS_KEY_ID…), the fake checks with them.
ACCESS_KEY = "AKIAR3ALCL1ENTTEST01"
SECRET_KEY = "R3alCl1entSecretKeyForTheFakeBedrock0001"
SESSION_TOKEN = "IQoJb3JpZ2luX2VjR3alCl1entSessionTokenForTests" + "x" * 40
SERVICE = "bedrock"
# A made-up Bedrock API key: Claude Code with AWS_BEARER_TOKEN_BEDROCK sends it as
# ``Authorization: Bearer …`` on every call, unsigned; Bedrock takes it instead of a signature.
API_KEY = "ABSKQmVkcm9ja0FQSUtleS1SM2FsQ2wxZW50" + "x" * 40

_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                   r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})")


def check_signature(method: str, host: str, path: str, headers: list[tuple[str, str]], body: bytes,
                    region: str, token: str | None = None, now: datetime | None = None) -> str | None:
    """Why AWS would refuse this request's signature, or None when it is good."""
    lowered: dict[str, list[str]] = {}
    for name, value in headers:
        lowered.setdefault(name.lower(), []).append(value)
    authorization = (lowered.get("authorization") or [""])[0]
    if authorization.startswith("Bearer "):
        return None if authorization == f"Bearer {API_KEY}" else "UnrecognizedClientException: invalid API key"
    match = _AUTH.fullmatch(authorization)
    if not match:
        return "MissingAuthenticationTokenException: no SigV4 Authorization header"
    key, day, scope_region, service, signed, signature = match.groups()
    if key != ACCESS_KEY:
        return f"UnrecognizedClientException: unknown access key {key}"
    if (scope_region, service) != (region, SERVICE):
        return f"InvalidSignatureException: credential scope {scope_region}/{service}, expected {region}/{SERVICE}"
    stamp = (lowered.get("x-amz-date") or [""])[0]
    try:
        when = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return "IncompleteSignatureException: no X-Amz-Date"
    if abs((now or datetime.now(timezone.utc)) - when) > timedelta(minutes=5) or stamp[:8] != day:
        return "InvalidSignatureException: Signature expired"
    names = signed.split(";")
    if "host" not in names or "x-amz-date" not in names:
        return "InvalidSignatureException: host and x-amz-date must be signed"
    if token is not None and ((lowered.get("x-amz-security-token") or [""])[0] != token
                              or "x-amz-security-token" not in names):
        return "UnrecognizedClientException: the security token is missing or not signed"
    missing = [n for n in names if n not in lowered and n != "host"]
    if missing:
        return f"InvalidSignatureException: signed headers not sent: {missing}"
    request = AWSRequest(method=method, url=f"http://{host}{path}", data=body,
                         headers={n: ",".join(lowered[n]) for n in names if n != "host"})
    request.headers["host"] = host  # AWS checks against its own name, not what the client signed for
    request.context["timestamp"] = stamp
    signer = SigV4Auth(ReadOnlyCredentials(ACCESS_KEY, SECRET_KEY, token), SERVICE, region)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    if expected != signature:
        return ("InvalidSignatureException: The request signature we calculated does not match the "
                "signature you provided.")
    return None


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return struct.pack("!B", len(raw_name)) + raw_name + struct.pack("!BH", 7, len(raw_value)) + raw_value


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: total and headers length, prelude CRC, headers (all strings),
    payload, message CRC."""
    head = b"".join(_header(n, v) for n, v in headers.items())
    total = 12 + len(head) + len(payload) + 4
    prelude = struct.pack("!II", total, len(head))
    prelude += struct.pack("!I", binascii.crc32(prelude))
    message = prelude + head + payload
    return message + struct.pack("!I", binascii.crc32(message))


def _padding(n: int) -> str:
    return "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[: 1 + n % 60]


def chunk(event: dict) -> bytes:
    """An Anthropic stream event as Bedrock's ``invoke-with-response-stream`` sends it."""
    data = json.dumps(event, separators=(",", ":")).encode()
    payload = json.dumps({"bytes": base64.b64encode(data).decode(), "p": _padding(len(data))}).encode()
    return frame({":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"}, payload)


def converse_event(kind: str, doc: dict) -> bytes:
    payload = json.dumps({**doc, "p": _padding(len(kind))}).encode()
    return frame({":event-type": kind, ":content-type": "application/json", ":message-type": "event"}, payload)


def exception(kind: str, message: str) -> bytes:
    """An error in the middle of a stream."""
    return frame({":exception-type": kind, ":content-type": "application/json", ":message-type": "exception"},
                 json.dumps({"message": message}).encode())
