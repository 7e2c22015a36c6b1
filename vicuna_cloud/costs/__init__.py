"""Cost: what a run spent (report.py, from its ledger), what a preset will cost
(estimate.py, closed form), and a Monte Carlo of a spot run (simulate.py)."""
