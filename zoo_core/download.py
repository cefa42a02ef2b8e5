"""Downloads that never leave a partial or unverified file under the final name.

Bytes stream into a temporary file next to the destination while being hashed; the file is
renamed into place only when it is complete (``Content-Length`` honoured) and its sha256
matches the pin. ``http(s)://`` and ``file://`` URLs are supported through urllib; an
``http(s)`` host must be reachable first (see `network`), and each wait for data is bounded by
``ZOO_DOWNLOAD_TIMEOUT``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from . import network
from .errors import WeightsError
from .fileio import CHUNK, fsync_dir

log = logging.getLogger(__name__)

HASH_PREFIX = re.compile(r"-([a-f0-9]{6,})\.")  # torch.hub's "name-<sha256 prefix>.ext" convention


def published_digest_prefix(filename: str) -> str | None:
    """The sha256 prefix a torch.hub-style file name publishes (``resnet18-f37072fd.pth``), if any."""
    match = HASH_PREFIX.search(filename)
    return match.group(1) if match else None


def download(
    url: str, destination: Path, *, sha256: str | None = None, sha256_prefix: str | None = None, name: str | None = None
) -> str:
    """Fetch ``url`` into ``destination`` and return the file's sha256.

    :param sha256: the full digest the file must have.
    :param sha256_prefix: a published digest prefix (torch.hub's ``name-<prefix>.pth`` convention).
    :param name: the model the file belongs to, for the fixes an unreachable host suggests.
    :raises WeightsError: on network errors, truncated transfers or digest mismatches; nothing is
        left at ``destination`` in those cases.
    :raises UnreachableError: when the host does not accept a connection (see `network`).
    """
    timeout = network.download_timeout()
    network.require_reachable(url, name=name)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".partial", dir=destination.parent)
    tmp = Path(tmp_name)
    digest = hashlib.sha256()
    received = 0
    try:
        with os.fdopen(fd, "wb") as handle:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    expected_length = response.headers.get("Content-Length")
                    log.info("downloading %s -> %s", url, destination)
                    while chunk := response.read(CHUNK):
                        handle.write(chunk)
                        digest.update(chunk)
                        received += len(chunk)
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                if isinstance(reason, TimeoutError):
                    reason = f"no data for {timeout:g}s (ZOO_DOWNLOAD_TIMEOUT sets how long to wait)"
                raise WeightsError(f"download of {url} failed after {received} bytes: {reason}; check the URL and retry") from None
            if expected_length is not None and received != int(expected_length):
                raise WeightsError(
                    f"download of {url} was cut off: got {received} of {expected_length} bytes; retry the command"
                )
            handle.flush()
            os.fsync(handle.fileno())
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256:
            raise WeightsError(
                f"download of {url} has sha256 {actual}, but {sha256} is pinned; the file was discarded. "
                "If the publisher changed it on purpose, update the pin (catalog or zoo.lock)"
            )
        if sha256_prefix is not None and not actual.startswith(sha256_prefix):
            raise WeightsError(
                f"download of {url} has sha256 {actual[:16]}…, which does not start with the published "
                f"prefix {sha256_prefix}; the file was discarded"
            )
        os.replace(tmp, destination)
        fsync_dir(destination.parent)
        return actual
    finally:
        tmp.unlink(missing_ok=True)
