"""The gunicorn settings' documented old path (``-c python:llmproxy.gunicorn_config``); they
live in :mod:`llmproxy.server.gunicorn_config`."""
from llmproxy.server.gunicorn_config import *  # noqa: F401,F403
