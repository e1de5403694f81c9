"""The one retry policy for GCS requests, and the translation of client errors into StorageError.

Design choices:
- Retries count attempts, not time: transient errors (connection failures, timeouts, 408, 429, 5xx)
  are retried `max_retries` times with exponential backoff (doubling, capped at 30 s, +0-25% jitter).
  Callers pass retry=None to google-cloud-storage so the library does not retry underneath and the
  bound is exactly what the config says.
- When retries run out the error names the bucket and what to check (the emulator address when
  STORAGE_EMULATOR_HOST is set; otherwise network, bucket name, credentials).
- Permanent errors (403, 404, bad credentials) are not retried; they become StorageError with the
  fix in the message. Anything that is not a storage error (a bug, a local OSError) passes unchanged.
- Messages quote exception texts (URLs, status lines), never request headers or credential objects.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import time
from collections.abc import Callable
from typing import TypeVar

import requests
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as auth_exceptions
from google.cloud.storage.exceptions import InvalidResponse

from wrinklefree_core.storage.manifest import CorruptArtifactError
from wrinklefree_core.uri import StorageError

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    http.client.HTTPException,
    auth_exceptions.TransportError,
)
T = TypeVar("T")


class BucketUnreachableError(StorageError):
    """GCS (or the emulator) could not be reached within the configured retries."""


class UploadMismatch(Exception):
    """The server's size/CRC32C of an uploaded object differs from the local file; retried like a transient error."""


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: connection problems, timeouts, 408/429/5xx, a mismatched upload."""
    if isinstance(exc, (UploadMismatch, *_TRANSIENT_TYPES)):
        return True
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return exc.code in RETRYABLE_STATUS
    if isinstance(exc, InvalidResponse):
        return getattr(exc.response, "status_code", None) in RETRYABLE_STATUS
    return False


def describe(exc: BaseException) -> str:
    """One line naming the exception type and the start of its message."""
    text = str(exc).strip().replace("\n", " ")
    return f"{type(exc).__name__}: {text[:300]}"


def what_to_check(bucket: str) -> str:
    """The advice printed when a bucket cannot be reached."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator:
        return f"Check that the storage emulator at STORAGE_EMULATOR_HOST={emulator} is running."
    return (
        f"Check the network connection, that bucket {bucket!r} is spelled right and exists, and the "
        "credentials (GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default login`)."
    )


def translate(exc: BaseException, bucket: str, what: str) -> BaseException:
    """A StorageError for a permanent client error while trying to `what`; other exceptions unchanged."""
    if isinstance(exc, auth_exceptions.RefreshError):
        return StorageError(
            f"Google Cloud credentials could not be refreshed while trying to {what} ({type(exc).__name__}). "
            "Re-run `gcloud auth application-default login` or check GOOGLE_APPLICATION_CREDENTIALS."
        )
    if isinstance(exc, api_exceptions.NotFound):
        return StorageError(
            f"Not found while trying to {what}: bucket {bucket!r} does not exist or an object was removed "
            f"meanwhile ({describe(exc)}). Check the bucket name, or retry once the stage writing it has finished."
        )
    if isinstance(exc, api_exceptions.Forbidden | api_exceptions.Unauthorized):
        return StorageError(
            f"Access denied to bucket {bucket!r} while trying to {what} ({exc.code}). Check that the credentials "
            "in use have Storage Object Admin (read+write) or Viewer (read) on this bucket."
        )
    if isinstance(exc, api_exceptions.GoogleAPICallError):
        return StorageError(f"GCS refused to {what} in bucket {bucket!r}: {describe(exc)}")
    return exc


def call_with_retries(fn: Callable[[], T], *, bucket: str, what: str, max_retries: int, backoff_s: float) -> T:
    """Run `fn` (one request, or one file's upload/download), retrying transient failures.

    Raises BucketUnreachableError after `max_retries` retries, CorruptArtifactError when an upload
    keeps arriving different from the local file, and translate()'s StorageError for permanent errors.
    """
    delay = backoff_s
    attempts = max_retries + 1
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                error = translate(exc, bucket, what)
                if error is exc:
                    raise
                raise error from exc
            if attempt == attempts:
                if isinstance(exc, UploadMismatch):
                    raise CorruptArtifactError(
                        f"Could not {what}: {exc} after {attempts} attempts. Make sure nothing writes to the "
                        "local folder while it is uploaded."
                    ) from exc
                raise BucketUnreachableError(
                    f"Could not {what} (bucket {bucket!r}) after {attempts} attempts ({describe(exc)}). "
                    f"{what_to_check(bucket)}"
                ) from exc
            sleep_s = min(delay, MAX_BACKOFF_S) * (1.0 + 0.25 * random.random())
            log.warning("%s failed (%s); retry %d/%d in %.2fs", what, describe(exc), attempt, attempts - 1, sleep_s)
            time.sleep(sleep_s)
            delay *= 2
    raise AssertionError("unreachable: the loop returns or raises")
