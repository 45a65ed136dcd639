# Gunicorn settings for `gunicorn -c gunicorn.conf.py` in a checkout. They ship inside the
# package (llmproxy/server/gunicorn_config.py) so that `llm-proxy serve` works from any directory.
from llmproxy.server.gunicorn_config import *  # noqa: F401,F403
