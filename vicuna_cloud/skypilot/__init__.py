"""The SkyPilot backend: task rendering (task.py), the node's shell scripts (run_script.py),
credentials (credentials.py), the optimizer over the local catalog (optimizer.py), and
managed-job submit / queue / cancel / logs (submit.py). ``vicuna_cloud.sdk`` calls it.

Torch-free. ``sky`` itself is imported lazily inside the functions that need it, so that
importing this package (e.g. from the CLI) stays cheap.
"""
