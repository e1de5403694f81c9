"""Secrets out of what a run records: userinfo and token parameters of URIs, before any file or log.

A URI a user passes (`tracking.mlflow_uri=https://user:password@host`, a signed URL with
`?X-Goog-Signature=...`) would otherwise be copied into stage.json, run.json, MLflow params, the
Prefect artifacts and pipeline.json, all of which travel (a bucket, a tracking server, a UI).
`redact` walks JSON-like values and replaces the password part of any `scheme://user:password@`
and the value of every query parameter whose name marks a credential with `***`; everything else
is kept byte for byte, so the recorded config still says which server or bucket was used.
Credentials belong in the environment (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD,
GOOGLE_APPLICATION_CREDENTIALS), which nothing records.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
# Query parameter names (lower case) that carry a credential in the URIs our stages take.
SECRET_PARAMS = frozenset(
    {"token", "access_token", "auth", "password", "passwd", "secret", "key", "api_key", "apikey", "sig", "signature",
     "x-goog-signature", "x-goog-credential", "x-amz-signature", "x-amz-credential", "x-amz-security-token", "sas"}
)
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def _redact_uri(uri: str) -> str:
    try:
        parts = urlsplit(uri)
    except ValueError:
        return uri
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{MASK}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(name.lower() in SECRET_PARAMS for name, _ in pairs):
            query = urlencode([(name, MASK if name.lower() in SECRET_PARAMS else value) for name, value in pairs], safe="*")
    if netloc == parts.netloc and query == parts.query:
        return uri
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """`text` with every URI in it redacted."""
    return _URI.sub(lambda m: _redact_uri(m.group(0)), text) if "://" in text else text


def redact(value: Any) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings, scalars) with every URI's secrets masked."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(item) for item in value)
    return value
