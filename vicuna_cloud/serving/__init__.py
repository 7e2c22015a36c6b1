"""Serving an exported model: a SkyServe/vLLM service on the cloud (task.py), or the
local OpenAI-compatible server on 127.0.0.1 (local.py starts train/serve.py)."""
