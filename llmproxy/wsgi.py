"""The WSGI entry point gunicorn loads (``llmproxy.wsgi:app``), once in each worker after fork."""

from llmproxy.proxy.views import create_app
from llmproxy.commands.main import load_settings_or_exit

app = create_app(load_settings_or_exit())
