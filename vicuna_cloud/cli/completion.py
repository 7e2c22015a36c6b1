"""Shell completion of values: presets, versions, run ids (this machine's run index) and
--set keys. Typer calls these with what the user typed so far (`vicuna-cloud
--install-completion` installs the shell side). Each imports what it needs when called,
so `vicuna-cloud --help` stays light; none touches the network or a bucket."""

from __future__ import annotations


def presets(incomplete: str) -> list[tuple[str, str]]:
    from vicuna_cloud.recipes import LOCAL_PRESETS, PRESET_NAMES

    return [(name, "local CPU" if name in LOCAL_PRESETS else "cloud GPUs")
            for name in PRESET_NAMES if name.startswith(incomplete.lower())]


def versions(incomplete: str) -> list[tuple[str, str]]:
    from vicuna_cloud.recipes import VERSIONS

    return [(v.name, v.note.split(" [")[0]) for v in VERSIONS.values()
            if v.name.startswith(incomplete)]


def run_ids(incomplete: str) -> list[tuple[str, str]]:
    """Runs launched from this machine, newest first (the index in $VICUNA_CLOUD_HOME)."""
    from vicuna_cloud import run_index

    try:
        runs = run_index.all_runs()
    except OSError:  # an unreadable index completes nothing, never a traceback in a shell
        return []
    return [(r.run_id, f"{r.preset or '?'} {r.backend} {r.launched_at[:16]}".strip())
            for r in reversed(runs) if r.run_id.startswith(incomplete)]


def override_keys(incomplete: str) -> list[tuple[str, str]]:
    """--set KEY=: the run-spec keys, completed up to the '='."""
    from vicuna_cloud.sdk.overrides import valid_keys

    if "=" in incomplete:
        return []
    return [(f"{k}=", "run-spec value") for k in valid_keys() if k.startswith(incomplete)]
