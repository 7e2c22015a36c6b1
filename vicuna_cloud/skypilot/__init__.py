"""SkyPilot glue: task rendering, the node's shell scripts, submission and the optimizer.

Torch-free. ``sky`` itself is imported lazily inside the functions that need it, so that
importing this package (e.g. from the CLI) stays cheap.
"""
