"""Views of a run built from what its bucket holds (metrics.jsonl, the ledger): plots."""
