"""CLI commands: data (placeholder until its issue lands)."""

from vicuna_cloud.cli import app  # noqa: F401
