"""The Prometheus exporter (issue #5)."""
