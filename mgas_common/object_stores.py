"""An object store (``s3://``, ``gs://``, ...) answers within a bound, or the command stops in one line.

``pyarrow.fs`` retries for minutes where a store cannot be reached or no credentials are found
(a ``gs://`` URI on a machine without Google credentials waits on the metadata server; its default
retry policy is 15 minutes). Before a command reads or writes a store, :func:`probe_store` opens
it and asks for the one path it needs, in a child process ended after :data:`STORE_TIMEOUT_S`; GCS
gets a shorter retry limit of its own, so it gives up by itself and says why.
"""

from __future__ import annotations

import subprocess
import sys

import pyarrow.fs as pafs

from mgas_common.errors import UserInputError

STORE_TIMEOUT_S = 10.0
GCS_RETRY_LIMIT_S = 4
"""GCS's own retry limit for the probe: it gives up, with its reason, inside the bound."""
HINTS = {
    "gs": "Google credentials (GOOGLE_APPLICATION_CREDENTIALS) and the bucket",
    "s3": "AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a profile), AWS_ENDPOINT_URL and the bucket",
}


def _bounded(uri: str) -> str:
    """The URI with GCS's own retry limit set to the bound (other stores: unchanged)."""
    if not uri.startswith(("gs://", "gcs://")) or "retry_limit_seconds=" in uri:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}retry_limit_seconds={GCS_RETRY_LIMIT_S}"


def look(uri: str) -> str:
    """Open the store, see its bucket, ask for the path (what the probe's child process runs): ""
    or why not."""
    try:
        fs, path = pafs.FileSystem.from_uri(_bounded(uri))
        bucket = path.strip("/").split("/", 1)[0]
        if not bucket:
            return "no bucket named"
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            return f"bucket {bucket!r} does not exist, or these credentials cannot see it"
        fs.get_file_info(path)
    except Exception as exc:  # any failure of the store is the user's to fix: reported by the parent
        return " ".join(str(exc).split())[:300] or type(exc).__name__
    return ""


def probe_store(uri: str, what: str, timeout_s: float = STORE_TIMEOUT_S) -> tuple[pafs.FileSystem, str]:
    """``pafs.FileSystem.from_uri(uri)`` once a look at its path answered within ``timeout_s``; a
    one-line :class:`UserInputError` naming ``what`` and the URI otherwise. The look runs in a child
    process, ended when the bound passes: a request stuck in the store's native client would
    otherwise hold this process at exit (the S3 client waits for it). Returns the filesystem and
    the path."""
    scheme = uri.split("://", 1)[0]
    hint = HINTS.get("gs" if scheme == "gcs" else scheme, "the store's address and credentials")
    code = "import sys; from mgas_common.object_stores import look; print(look(sys.argv[1]))"
    try:
        child = subprocess.run([sys.executable, "-c", code, uri], capture_output=True, text=True, timeout=timeout_s,
                               stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise UserInputError(f"{what} {uri}: the store did not answer within {timeout_s:g} s; check {hint}") from None
    if child.returncode != 0:
        raise RuntimeError(f"the store probe failed: {child.stderr[-2000:]}")
    reason = child.stdout.strip()
    if reason:
        raise UserInputError(f"{what} {uri}: cannot be read ({reason}); check {hint}")
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as exc:
        raise UserInputError(f"{what} {uri}: {' '.join(str(exc).split())[:300]}") from None
    return fs, path
