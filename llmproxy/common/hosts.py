"""Host name patterns, as the allow-list and the providers' default upstreams spell them.

``api.example.com`` is that host; ``*.example.com`` any host under ``example.com``; a ``*``
label elsewhere (``bedrock-runtime.*.amazonaws.com``) any one label there; ``*`` any host.
"""

from __future__ import annotations


def host_matches(pattern: str, host: str) -> bool:
    """Whether ``host`` (lower case, no port) is one ``pattern`` names."""
    if pattern == "*" or pattern == host:
        return True
    if pattern.startswith("*.") and "*" not in pattern[2:]:
        return host.endswith(pattern[1:])
    if "*" not in pattern:
        return False
    want, have = pattern.split("."), host.split(".")
    return len(want) == len(have) and all(w == "*" and h or w == h for w, h in zip(want, have))
