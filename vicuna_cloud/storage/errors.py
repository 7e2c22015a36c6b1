"""The storage errors every backend raises (a leaf module: imports nothing of ours).

They are RuntimeErrors, not ``vicuna_cloud.errors.VicunaError``: the trainer uses storage
too, where a failed call must fail the step. The SDK turns the ones a user can fix into
``StorageUnavailable`` naming the flag and the fix.
"""

from __future__ import annotations


class StorageError(RuntimeError):
    """A storage call that failed for good (after retries where retrying made sense)."""


class NotFoundError(StorageError):
    """The key does not exist."""


class AlreadyExistsError(StorageError):
    """A create-only write (``if_absent=True``) found the key already there."""


class BucketAccessError(StorageError):
    """The bucket is missing, unreachable, or our credentials may not use it."""
