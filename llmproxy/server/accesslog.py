"""gunicorn's logger, with access lines that cost only what their format names.

gunicorn's ``Logger.atoms`` builds, for every access line, a dict of every request header,
response header and WSGI environ variable (some 60 entries) so that any format can name any of
them; under 16 clients that was 6 % of a worker's CPU. :class:`AccessLogger` reads which atoms
``access_log_format`` names once, and computes only those, with gunicorn's meanings and its
quoting (:class:`gunicorn.glogging.SafeAtoms`). Set as ``logger_class`` in
``llmproxy/server/gunicorn_config.py``.
"""

from __future__ import annotations

import os
import re

from gunicorn import glogging

_NAMED = re.compile(r"%\(([^)]+)\)")


def _status(resp, req, environ, took):
    status = resp.status
    return status.split(None, 1)[0] if isinstance(status, str) else status


def _sent(resp, req, environ, took):
    return getattr(resp, "sent", None)


# gunicorn's atoms, by name (its docs: "Access log format"); ``t`` and ``u`` need the logger.
_SIMPLE = {
    "h": lambda resp, req, environ, took: environ.get("REMOTE_ADDR", "-"),
    "l": lambda resp, req, environ, took: "-",
    "r": lambda resp, req, environ, took: "%s %s %s" % (environ["REQUEST_METHOD"], environ["RAW_URI"],
                                                        environ["SERVER_PROTOCOL"]),
    "s": _status,
    "m": lambda resp, req, environ, took: environ.get("REQUEST_METHOD"),
    "U": lambda resp, req, environ, took: environ.get("PATH_INFO"),
    "q": lambda resp, req, environ, took: environ.get("QUERY_STRING"),
    "H": lambda resp, req, environ, took: environ.get("SERVER_PROTOCOL"),
    "b": lambda resp, req, environ, took: str(resp.sent) if getattr(resp, "sent", None) is not None else "-",
    "B": _sent,
    "f": lambda resp, req, environ, took: environ.get("HTTP_REFERER", "-"),
    "a": lambda resp, req, environ, took: environ.get("HTTP_USER_AGENT", "-"),
    "T": lambda resp, req, environ, took: took.seconds,
    "D": lambda resp, req, environ, took: took.seconds * 1000000 + took.microseconds,
    "M": lambda resp, req, environ, took: took.seconds * 1000 + int(took.microseconds / 1000),
    "L": lambda resp, req, environ, took: "%d.%06d" % (took.seconds, took.microseconds),
    "p": lambda resp, req, environ, took: "<%s>" % os.getpid(),
}


def _header(headers, name: str):
    if hasattr(headers, "items"):
        headers = headers.items()
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


class AccessLogger(glogging.Logger):
    """gunicorn's ``Logger``; ``atoms`` computes only the atoms the access format names."""

    _format: str | None = None
    _wanted: tuple[str, ...] = ()

    def _atoms_named(self) -> tuple[str, ...]:
        fmt = self.cfg.access_log_format
        if fmt != self._format:  # read once per format (a HUP may bring a new one)
            self._wanted = tuple(dict.fromkeys(_NAMED.findall(fmt)))
            self._format = fmt
        return self._wanted

    def atoms(self, resp, req, environ, request_time):
        atoms = {}
        for name in self._atoms_named():
            simple = _SIMPLE.get(name)
            if simple is not None:
                atoms[name] = simple(resp, req, environ, request_time)
            elif name == "t":
                atoms[name] = self.now()
            elif name == "u":
                atoms[name] = self._get_user(environ) or "-"
            elif len(name) > 3 and name[0] == "{" and name[-2] == "}":
                key, kind = name[1:-2].lower(), name[-1]
                if kind == "e":
                    value = environ.get(name[1:-2])
                    if value is None:
                        value = next((v for k, v in environ.items() if k.lower() == key), None)
                elif kind == "i":
                    value = _header(getattr(req, "headers", req), key)
                elif kind == "o":
                    value = _header(resp.headers, key)
                else:
                    continue
                if value is not None:
                    atoms["{%s}%s" % (key, kind)] = value
        return atoms
