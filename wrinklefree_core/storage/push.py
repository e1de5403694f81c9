"""`python -m wrinklefree_core.storage.push LOCAL_DIR gs://bucket/prefix`: publish a finished folder by hand.

What a stage prints when its upload failed after the output was complete: the local folder is intact,
and this uploads it with the completion marker written last, sending only the files the bucket does
not already hold with the same size and CRC32C (so a second try after a partial upload is cheap).
GCS client settings are the `gcs` section's defaults; credentials come from the environment.
"""

from __future__ import annotations

import argparse
import sys

from wrinklefree_core.config.storage import GCSConfig
from wrinklefree_core.uri import StorageError


def main(argv: list[str] | None = None) -> int:
    """Upload LOCAL_DIR to the gs:// URI; exit 2 with one line on a storage error."""
    parser = argparse.ArgumentParser(prog="python -m wrinklefree_core.storage.push", description=__doc__.splitlines()[0])
    parser.add_argument("local_dir")
    parser.add_argument("uri")
    args = parser.parse_args(argv)
    try:
        from wrinklefree_core.storage.gcs import GCSStore

        uri = GCSStore(GCSConfig()).upload_folder(args.local_dir, args.uri, skip_identical=True)
    except StorageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"uploaded {args.local_dir} to {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
