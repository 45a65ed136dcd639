"""The access logger computes only the atoms its format names, and renders what gunicorn does."""

from __future__ import annotations

import datetime

import pytest
from gunicorn import glogging
from gunicorn.config import Config

from llmproxy.server import gunicorn_config
from llmproxy.server.accesslog import AccessLogger

ALL_ATOMS = ('%(h)s %(l)s %(u)s %(r)s %(s)s %(m)s %(U)s %(q)s %(H)s %(b)s %(B)s %(f)s %(a)s %(T)s %(D)s '
             '%(M)s %(L)s %(p)s %({user-agent}i)s %({X-Missing}i)s %({content-type}o)s %({llmproxy.provider}e)s '
             '%({REMOTE_ADDR}e)s %({nothing}e)s %(nonsense)s')


class Req:
    headers = [("User-Agent", 'curl/8 "quoted"'), ("Authorization", "Basic dXNlcjpwYXNz")]


class Resp:
    status = "200 OK"
    sent = 1234
    headers = [("Content-Type", "application/json")]


ENVIRON = {"REMOTE_ADDR": "127.0.0.1", "REQUEST_METHOD": "POST", "RAW_URI": "/anthropic/v1/messages?beta=true",
           "PATH_INFO": "/anthropic/v1/messages", "QUERY_STRING": "beta=true", "SERVER_PROTOCOL": "HTTP/1.1",
           "HTTP_USER_AGENT": 'curl/8 "quoted"', "HTTP_REFERER": "http://x/", "HTTP_AUTHORIZATION": "Basic dXNlcjpwYXNz",
           "llmproxy.provider": "anthropic"}
TOOK = datetime.timedelta(seconds=1, microseconds=234567)


def rendered(logger_class, fmt: str) -> str:
    cfg = Config()
    cfg.set("access_log_format", fmt)
    logger = logger_class(cfg)
    logger.now = lambda: "[02/Dec/2026:07:00:00 +0000]"  # the one atom that moves between two calls
    return fmt % logger.atoms_wrapper_class(logger.atoms(Resp(), Req(), dict(ENVIRON), TOOK))


@pytest.mark.parametrize("fmt", [ALL_ATOMS, gunicorn_config.access_log_format, Config().access_log_format])
def test_the_line_is_gunicorns(fmt):
    assert rendered(AccessLogger, fmt) == rendered(glogging.Logger, fmt)


def test_only_named_atoms_are_computed():
    cfg = Config()
    cfg.set("access_log_format", '%(s)s %({x-a}i)s')
    atoms = AccessLogger(cfg).atoms(Resp(), Req(), dict(ENVIRON), TOOK)
    assert atoms == {"s": "200"}  # the header is absent: rendered as "-"
    cfg.set("access_log_format", '%(s)s %({user-agent}i)s')
    atoms = AccessLogger(cfg).atoms(Resp(), Req(), dict(ENVIRON), TOOK)
    assert atoms == {"s": "200", "{user-agent}i": 'curl/8 "quoted"'}


def test_the_proxy_uses_it():
    assert gunicorn_config.logger_class == "llmproxy.server.accesslog.AccessLogger"
