"""One hierarchy of domain errors for the control plane (a leaf module: imports nothing).

Every message says what is wrong and how to fix it, on one line: the CLI prints
``error: <message>`` and exits 2 for any ``VicunaError`` (``vicuna_cloud.cli.main``, the
one place that maps them); a notebook user catches ``VicunaError`` or a subclass.

    VicunaError
    ├── ConfigError          bad input: preset, flag values, run id, bucket URI, options
    │   │                    that make no sense for the chosen backend, damaged run.json
    │   └── DataError        a raw dump, manifest or dataset that cannot be used
    ├── CredentialsError     no usable cloud credentials here
    ├── StorageUnavailable   a bucket that cannot be read or written (missing, denied, down)
    ├── RunNotFound          unknown run id, no ledger, no export, no committed checkpoint
    ├── RunConflict          the run id already names a different run
    └── BackendError         SkyPilot unreachable, refused the job, or found no resources
"""

from __future__ import annotations


class VicunaError(Exception):
    """Base of every error a user can fix; ``str(e)`` is the one-line message."""


class ConfigError(VicunaError, ValueError):
    """Bad input: fix the flag, the preset or the file the message names."""


class DataError(ConfigError):
    """A raw dump, manifest or dataset that cannot be used as it is."""


class CredentialsError(VicunaError):
    """No usable cloud credentials on this machine (the message names `sky check`)."""


class StorageUnavailable(VicunaError):
    """A bucket that cannot be read or written: missing, access denied, or unreachable."""


class RunNotFound(VicunaError, LookupError):
    """A run id, ledger, export or checkpoint that is not where it was looked for."""


class RunConflict(VicunaError, ValueError):
    """The run id already names a different run (its run.json differs or is damaged)."""


class BackendError(VicunaError):
    """SkyPilot is unreachable, refused the job, or has no resources for it."""
