"""Artifact locations: local folders and gs://bucket/prefix.

- manifest.py: the `_COMPLETE` marker that makes an uploaded folder readable.
- retry.py: the bounded retry policy for GCS requests and the errors it raises.
- cache.py: where verified downloads live locally, published atomically.
- gcs.py: GCSStore, folder upload/download/listing on GCS.
- artifacts.py: resolve_input / staging_dir / publish_output, what stages call.
- checkpoints.py: RemoteCheckpoints, step-versioned resumable checkpoints under a gs:// prefix.
- mounts.py: local folders that are mounts of a bucket (WRINKLEFREE_BUCKET_MOUNTS).
- push.py: `python -m wrinklefree_core.storage.push LOCAL gs://...`, publish a finished folder by hand.

URIs themselves (parsing, StorageError) are wrinklefree_core/uri.py, below config, which validates
bucket names with it; they are re-exported here. gcs.py (google-cloud-storage) is not imported here:
it must not load for runs that never touch gs://.
"""

from wrinklefree_core.uri import GCSURI, LocalURI, StorageError, format_uri, is_remote, parse_uri

__all__ = ["GCSURI", "LocalURI", "StorageError", "format_uri", "is_remote", "parse_uri"]
