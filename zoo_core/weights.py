"""Offline-first weight resolution: find, verify, download, pin and import weight files.

Where a model's files are looked for, in order:

1. Zoo's store (``$ZOO_HOME/weights/sha256/<digest>/<file>``) for files pinned by digest,
   which is where ``zoo import`` and catalog URL pins put them;
2. the library caches: the Hugging Face hub cache (``HF_HUB_CACHE`` / ``HF_HOME``) for hub
   files, ``TORCH_HOME/hub/checkpoints`` for torch.hub-style URLs.

Every load verifies the file against the lock file (``zoo.lock``) when the model is pinned
there, and against a catalog's ``sha256`` when one is given; digests are cached by size and
modification time so the check stays cheap. Downloads happen only when the environment is
online (``ZOO_OFFLINE`` and ``HF_HUB_OFFLINE`` unset); an offline cache miss is an error that
names the command that fixes it.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import attrs

from . import hub, paths
from .download import download
from .errors import OfflineError, WeightsError
from .fileio import atomic_save_with, atomic_write_json, sha256_file
from .lockfile import LockedFile, LockEntry, LockFile
from .specs import LocationKind, ResolvedModel, WeightsFile

log = logging.getLogger(__name__)


# --- digests, cached by file identity ----------------------------------------------------------


def _hash_cache_path() -> Path:
    return paths.zoo_home() / "hashes.json"


def _cache_key(stat: os.stat_result) -> dict[str, int]:
    # ctime and inode as well as size and mtime: os.utime can restore an edited file's mtime,
    # but any write sets its ctime, and replacing it gives a new inode
    return {
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "ctime_ns": stat.st_ctime_ns,
        "inode": stat.st_ino,
        "device": stat.st_dev,
    }


def file_sha256(path: Path, *, cached: bool = True) -> str:
    """sha256 of ``path``; re-hashed whenever its size, mtime, ctime, inode or device changed.

    :param cached: ``False`` re-reads the file whatever the cache says (``zoo verify``).
    """
    path = Path(path)
    real = str(path.resolve())
    key = _cache_key(path.stat())
    cache_file = _hash_cache_path()
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    entry = cache.get(real)
    if cached and isinstance(entry, dict) and all(entry.get(name) == value for name, value in key.items()):
        return entry["sha256"]
    digest = sha256_file(path)
    cache[real] = {**key, "sha256": digest}
    try:
        atomic_write_json(cache_file, cache)
    except OSError as exc:  # a read-only ZOO_HOME costs speed, not correctness
        log.debug("cannot write the hash cache: %s", exc)
    return digest


def store_path(sha256: str, filename: str) -> Path:
    return paths.weights_store() / "sha256" / sha256 / filename


# --- one file ------------------------------------------------------------------------------------------


@attrs.frozen
class LocatedFile:
    """A weights file found on disk and verified."""

    spec: WeightsFile
    path: Path
    sha256: str
    pinned: bool  # checked against zoo.lock or a catalog pin

    def to_dict(self) -> dict[str, Any]:
        return {
            "filename": self.spec.filename,
            "path": str(self.path),
            "sha256": self.sha256,
            "size": self.path.stat().st_size,
            "pinned": self.pinned,
        }


def _default_location(spec: WeightsFile) -> Path:
    """Where a URL download goes: the store for digest-pinned files, else TORCH_HOME."""
    if spec.sha256:
        return store_path(spec.sha256, spec.filename)
    return paths.torch_hub_checkpoints() / spec.filename


def _candidates(spec: WeightsFile, pinned: LockedFile | None, revision: str | None) -> list[Path]:
    found: list[Path] = []
    if pinned is not None:
        found.append(store_path(pinned.sha256, spec.filename))
    if spec.kind is LocationKind.HF:
        cached = hub.cached(spec.repo_id, spec.filename, revision or spec.revision)
        if cached is not None:
            found.append(cached)
    elif spec.kind is LocationKind.URL:
        found.append(_default_location(spec))
    elif spec.kind is LocationKind.LOCAL and spec.path:
        found.append(Path(spec.path))
    return found


def _verify(name: str, spec: WeightsFile, path: Path, pinned: LockedFile | None, *, cached: bool = True) -> LocatedFile:
    digest = file_sha256(path, cached=cached)
    expected = pinned.sha256 if pinned is not None else spec.sha256
    if expected is not None and digest != expected:
        where = "zoo.lock" if pinned is not None else "the catalog"
        raise WeightsError(
            f"{name}: {path} has sha256 {digest}, but {where} pins {expected}; "
            f"delete the file and run `zoo pull {name}`, or re-pin on purpose with `zoo import {name} FILE`"
        )
    if expected is None and spec.sha256_prefix and not digest.startswith(spec.sha256_prefix):
        log.warning(
            "%s: %s does not match the publisher's digest prefix %s; it was not downloaded by Zoo",
            name,
            path,
            spec.sha256_prefix,
        )
    return LocatedFile(spec, path, digest, expected is not None)


def _locate_file(
    name: str, spec: WeightsFile, pinned: LockedFile | None, revision: str | None, *, cached: bool = True
) -> LocatedFile | None:
    for candidate in _candidates(spec, pinned, revision):
        if candidate.is_file():
            return _verify(name, spec, candidate, pinned, cached=cached)
    return None


def _download_file(name: str, spec: WeightsFile, pinned: LockedFile | None, revision: str | None) -> LocatedFile:
    if spec.kind is LocationKind.HF:
        return _download_hf(name, spec, pinned, revision)
    if spec.kind is LocationKind.URL and spec.url:
        expected = pinned.sha256 if pinned is not None else spec.sha256
        destination = store_path(expected, spec.filename) if expected else _default_location(spec)
        digest = download(
            spec.url, destination, sha256=expected, sha256_prefix=None if expected else spec.sha256_prefix, name=name
        )
        return LocatedFile(spec, destination, digest, expected is not None)
    raise WeightsError(f"{name}: weights file {spec.path or spec.filename} is missing and has no URL to fetch it from")


def _download_hf(name: str, spec: WeightsFile, pinned: LockedFile | None, revision: str | None) -> LocatedFile:
    found = hub.download(spec.repo_id, spec.filename, revision or spec.revision, name=name)
    try:
        return _verify(name, spec, found, pinned)
    except WeightsError:
        hub.discard(found)
        raise


# --- a model's files ---------------------------------------------------------------------------------


def _offline_error(resolved: ResolvedModel) -> OfflineError:
    name = resolved.requested or resolved.name
    return OfflineError(
        f"{name}: weights are not in the cache and offline mode (ZOO_OFFLINE / HF_HUB_OFFLINE) forbids downloading; "
        f"run `zoo pull {name}` on a connected machine, or `zoo import {name} FILE` with a copy of the weights"
    )


def model_files(resolved: ResolvedModel, lock: LockFile | None = None) -> list[tuple[WeightsFile, LockedFile | None]]:
    """The files that make up a model's weights, each with its lock pin (if any).

    An imported model's files come from its lock entry; otherwise from the resolution
    (weights first, then companions such as a hub ``config.json``).
    """
    lock = lock or LockFile.read()
    entry = lock.get(resolved.name)
    if entry is not None and entry.method == "import":
        return [
            (WeightsFile(kind=LocationKind.LOCAL, filename=item.filename, sha256=item.sha256), item)
            for item in entry.files
        ]
    if resolved.weights is None:
        raise WeightsError(
            f"{resolved.requested or resolved.name} has no pretrained weights; start from random weights "
            f"(--no-pretrained, or pretrained=False in Python), or register a file with `zoo import {resolved.name} FILE`"
        )
    specs = [resolved.weights, *resolved.companions]
    return [(spec, entry.file(spec.filename) if entry else None) for spec in specs]


def locate(resolved: ResolvedModel, lock: LockFile | None = None, *, cached: bool = True) -> list[LocatedFile] | None:
    """The model's verified files if all are on disk, else ``None``. Never downloads.

    :param cached: ``False`` re-hashes every file instead of trusting the digest cache.
    """
    found = []
    for spec, pinned in model_files(resolved, lock):
        located = _locate_file(resolved.name, spec, pinned, resolved.revision, cached=cached)
        if located is None:
            return None
        found.append(located)
    return found


class VerifyStatus(enum.Enum):
    OK = "ok"
    MISMATCH = "mismatch"
    MISSING = "missing"
    UNPINNED = "not pinned"


@attrs.frozen
class FileCheck:
    """One file's outcome in ``zoo verify``."""

    name: str
    filename: str
    status: VerifyStatus
    path: Path | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "filename": self.filename,
            "status": self.status.value,
            "path": str(self.path) if self.path else None,
            "detail": self.detail,
        }


def verify(resolved: ResolvedModel, lock: LockFile | None = None) -> list[FileCheck]:
    """Re-hash every file of a model against its pins, ignoring the digest cache."""
    checks = []
    for spec, pinned in model_files(resolved, lock):
        try:
            located = _locate_file(resolved.name, spec, pinned, resolved.revision, cached=False)
        except WeightsError as exc:
            checks.append(FileCheck(resolved.name, spec.filename, VerifyStatus.MISMATCH, detail=str(exc)))
            continue
        if located is None:
            checks.append(FileCheck(resolved.name, spec.filename, VerifyStatus.MISSING, detail=f"run `zoo pull {resolved.name}`"))
        elif not located.pinned:
            checks.append(FileCheck(resolved.name, spec.filename, VerifyStatus.UNPINNED, located.path, "pin it with `zoo pull`"))
        else:
            checks.append(FileCheck(resolved.name, spec.filename, VerifyStatus.OK, located.path, located.sha256))
    return checks


def fetch(resolved: ResolvedModel, lock: LockFile | None = None) -> list[LocatedFile]:
    """The model's verified files, downloading missing ones when online."""
    lock = lock or LockFile.read()
    found = []
    for spec, pinned in model_files(resolved, lock):
        located = _locate_file(resolved.name, spec, pinned, resolved.revision)
        if located is None:
            if paths.is_offline():
                raise _offline_error(resolved)
            located = _download_file(resolved.name, spec, pinned, resolved.revision)
        found.append(located)
    return found


def weights_path(resolved: ResolvedModel) -> Path:
    """The verified main weights file, fetched if needed."""
    return fetch(resolved)[0].path


def pull(resolved: ResolvedModel, lock: LockFile | None = None) -> LockEntry:
    """Fill the cache with the model's files and pin source, revision and digests in the lock."""
    lock = lock or LockFile.read()
    located = fetch(resolved, lock)
    revision = resolved.revision
    for item in located:
        if item.spec.kind is LocationKind.HF:
            revision = hub.revision_of(item.path) or revision
    previous = lock.get(resolved.name)
    entry = LockEntry(
        name=resolved.name,
        source=resolved.source,
        revision=revision,
        method=previous.method if previous is not None else "pull",
        files=tuple(
            LockedFile(
                filename=item.spec.filename,
                sha256=item.sha256,
                size=item.path.stat().st_size,
                url=item.spec.url,
                repo_id=item.spec.repo_id,
            )
            for item in located
        ),
    )
    lock.pin(entry)
    return entry


def import_file(resolved: ResolvedModel, file: Path, lock: LockFile | None = None) -> LockEntry:
    """Copy a local weights file into Zoo's store under its digest and pin it for ``resolved``.

    Storage only: whether the file holds weights of this model is checked by the caller
    (:func:`zoo_core.plans.import_weights`) before anything is stored.
    """
    file = Path(file)
    lock = lock or LockFile.read()
    digest = sha256_file(file)
    destination = store_path(digest, file.name)
    if not destination.is_file():
        with open(file, "rb") as original:
            atomic_save_with(destination, lambda handle: shutil.copyfileobj(original, handle))
    entry = LockEntry(
        name=resolved.name,
        source=resolved.source,
        revision=resolved.revision,
        method="import",
        files=(LockedFile(filename=file.name, sha256=digest, size=destination.stat().st_size),),
    )
    lock.pin(entry)
    return entry


def pinned_revision(name: str) -> str | None:
    """The revision the lock pins ``name`` to, for sources that resolve revisions."""
    entry = LockFile.read().get(name)
    return entry.revision if entry is not None else None
