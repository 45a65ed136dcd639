"""The WSGI entry point gunicorn loads (``llmproxy.wsgi:app``), once in each worker after fork."""

from llmproxy.server.app import create_app
from llmproxy.settings import load_settings_or_exit

app = create_app(load_settings_or_exit())
