"""Per-core datapath workers (issue #3)."""
