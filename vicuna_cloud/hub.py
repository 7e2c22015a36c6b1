"""Fetching from the Hugging Face hub, with errors that say whose fault they are.

A base model or tokenizer named by a hub id is fetched with ``snapshot_download``. What
can go wrong is of two kinds, and the trainer's exit code depends on which (issue 14):
- the input is wrong on its face (no such repo or revision, a gated repo without a token,
  an id that is not an id, files missing from the repo, offline with nothing cached):
  ``HubInputError``, a config error (exit 78: fixing the input is the only way);
- the hub (or the network to it) is down: refused connections, timeouts, 5xx, 429:
  ``HubUnavailable``, transient (exit 69: the managed job retries on a new cluster).
transformers' own loaders fold both kinds into one OSError (after a refused connection
it even reports "Can't load the configuration"), so hub ids are resolved here first and
the loaders only ever see a local directory. Torch-free: the data pipeline uses it too.
"""

from __future__ import annotations

from typing import Optional, Sequence

from vicuna_cloud.errors import ConfigError, VicunaError


class HubInputError(ConfigError):
    """The hub id, revision or token is wrong: retrying will not help."""


class HubUnavailable(VicunaError, ConnectionError):
    """The hub could not be reached or answered with a server error: try again later."""


def _chain(e: BaseException):
    seen: set[int] = set()
    stack: list[Optional[BaseException]] = [e]
    while stack:
        x = stack.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        stack += [x.__cause__, x.__context__]


def outage_of(e: BaseException) -> Optional[BaseException]:
    """The error in ``e``'s chain that makes it the hub's or the network's fault, if any."""
    from huggingface_hub.errors import HfHubHTTPError

    for x in _chain(e):
        if isinstance(x, (ConnectionError, TimeoutError)) or _is_httpx_transport_error(x):
            return x
        if isinstance(x, HfHubHTTPError):
            status = getattr(getattr(x, "response", None), "status_code", None)
            if status is not None and (status >= 500 or status == 429):
                return x
    return None


def _is_httpx_transport_error(x: BaseException) -> bool:
    """httpx.TransportError (refused, reset, timeout, protocol), known by its class path:
    httpx is huggingface_hub's HTTP client, not a dependency the node pins itself."""
    return any(c.__name__ == "TransportError" and c.__module__.split(".")[0] == "httpx"
               for c in type(x).__mro__)


def snapshot(name: str, patterns: Sequence[str], *, download: bool = True,
             what: str = "base model") -> str:
    """The local snapshot directory of hub repo ``name`` (only ``patterns``);
    ``download=False`` reads the local cache only (a rank whose node already fetched it).
    Raises HubUnavailable for an outage, HubInputError for anything else."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(name, allow_patterns=list(patterns),
                                 local_files_only=not download)
    except Exception as e:  # noqa: BLE001 - hub errors are many; classified right here
        cause = outage_of(e)
        if cause is not None:
            raise HubUnavailable(
                f"cannot fetch {what} {name!r}: the Hugging Face hub is unreachable or failing "
                f"({_one_line(cause)}); this is not your input: try again later (a managed job "
                "retries on a new cluster)") from None
        raise HubInputError(f"cannot fetch {what} {name!r}: {_why_wrong(e)}") from None


def _why_wrong(e: BaseException) -> str:
    """What is wrong with the input and how to fix it, on one line."""
    from huggingface_hub.errors import (GatedRepoError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    if isinstance(e, GatedRepoError):
        return ("it is a gated repository: accept its license on huggingface.co and set "
                "HF_TOKEN to a token that has access")
    if isinstance(e, RepositoryNotFoundError):
        return ("Repository Not Found on the hub (a private or gated one needs HF_TOKEN); "
                "check the id, or give a local directory")
    if isinstance(e, RevisionNotFoundError):
        return "no such revision in the repository; check the id, or give a local directory"
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = " ".join(lines[:2]) or type(e).__name__
    return (f"{text[:300]}; give a local directory or a Hugging Face id (set HF_TOKEN for "
            "gated models)")


def _one_line(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text}"[:300]
