"""Grafana Loki export: batch, client, exporter (queue + pusher thread), health across workers."""

from llmproxy.loki.batch import Labels, LokiEntry
from llmproxy.loki.exporter import LokiExporter

__all__ = ["Labels", "LokiEntry", "LokiExporter"]
