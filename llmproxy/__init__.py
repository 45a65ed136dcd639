"""llm-proxy: a transparent logging proxy for LLM API traffic.

Requests flow: routing → forwarding → capture → MultiWriter → file log / Loki exporter.
"""

__version__ = "0.1.0"
