"""What a weights file on disk is, and whether its bytes are still the ones that were written.

``torch.load`` neither checks the CRC-32 that every zip entry of a ``.pt`` file carries nor
says what a file is when it is not a checkpoint (an HTML error page saved as ``.pth`` comes
back as advice to set ``weights_only=False``). This module answers both before any
unpickling happens, without importing torch:

* :func:`sniff` names the format from the first bytes (torch zip, legacy torch pickle,
  safetensors, or a foreign file: empty, text, HTML, JSON, a Git LFS pointer);
* :func:`verify_zip` re-reads a zip checkpoint and compares every entry with its stored
  CRC-32, so one flipped byte anywhere in the tensors or the pickle is refused.

A file is verified once per process while its identity (size, mtime, ctime, inode) stays the
same; any write changes its ctime, so an edited file is verified again.
"""

from __future__ import annotations

import enum
import json
import struct
import zipfile
import zlib
from pathlib import Path
from typing import BinaryIO

from .errors import CheckpointError
from .paths import display

HEAD_BYTES = 512
CHUNK = 1 << 20


class FileKind(enum.Enum):
    TORCH_ZIP = "torch zip archive"
    TORCH_LEGACY = "legacy torch pickle"
    SAFETENSORS = "safetensors"
    EMPTY = "empty file"
    LFS_POINTER = "Git LFS pointer"
    HTML = "HTML page"
    JSON = "JSON document"
    TEXT = "text file"
    UNKNOWN = "unknown binary"


def _looks_like_safetensors(head: bytes) -> bool:
    if len(head) < 10:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length < 100_000_000 and head[8:9] == b"{"


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(char.isprintable() or char in "\r\n\t" for char in text)


def sniff(path: Path) -> FileKind:
    """The kind of ``path`` judged from its first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
    if not head:
        return FileKind.EMPTY
    if head.startswith(b"PK\x03\x04"):
        return FileKind.TORCH_ZIP
    if head[:1] == b"\x80":  # pickle protocol 2 or later: torch.save(..., _use_new_zipfile_serialization=False)
        return FileKind.TORCH_LEGACY
    if _looks_like_safetensors(head):
        return FileKind.SAFETENSORS
    if head.startswith(b"version https://git-lfs"):
        return FileKind.LFS_POINTER
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return FileKind.HTML
    if stripped[:1] in (b"{", b"["):
        try:
            json.loads(head.decode("utf-8"))
            return FileKind.JSON
        except (UnicodeDecodeError, ValueError):
            if _is_text(head):  # a JSON document longer than the bytes read
                return FileKind.JSON
    if _is_text(head):
        return FileKind.TEXT
    return FileKind.UNKNOWN


def foreign_file_error(path: Path, kind: FileKind) -> CheckpointError:
    """The one-line error for a file that is not a checkpoint at all."""
    where = display(path)
    if kind is FileKind.EMPTY:
        return CheckpointError(f"{where}: is empty (0 bytes): the save or download did not finish; restore it or save it again")
    if kind is FileKind.LFS_POINTER:
        return CheckpointError(f"{where}: is a Git LFS pointer, not the weights; fetch the real file with `git lfs pull`")
    if kind is FileKind.HTML:
        return CheckpointError(
            f"{where}: is an HTML page, not a checkpoint (a download that saved an error or login page?); download it again"
        )
    if kind is FileKind.JSON:
        return CheckpointError(f"{where}: is a JSON document, not a checkpoint; point Zoo at the weights file itself")
    if kind is FileKind.TEXT:
        with open(path, "rb") as handle:
            first = handle.read(40).decode("utf-8", "replace").splitlines()[0] if path.stat().st_size else ""
        return CheckpointError(f"{where}: is a text file (it starts with {first!r}), not a checkpoint")
    if kind is FileKind.SAFETENSORS:
        return CheckpointError(f"{where}: is a safetensors file with another suffix; rename it to end in .safetensors")
    return CheckpointError(
        f"{where}: is not a PyTorch checkpoint (neither a zip archive nor a pickle); restore it or save it again"
    )


_verified: set[tuple[str, int, int, int, int]] = set()


def identity(path: Path) -> tuple[str, int, int, int, int]:
    """What changes whenever the file's bytes may have changed: size, mtime, ctime and inode.

    ``os.utime`` can put an old mtime back, but not the ctime: any write or rename sets it.
    """
    stat = path.stat()
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)


def _stored_crc(handle: BinaryIO, info: zipfile.ZipInfo) -> int:
    """CRC-32 of an entry's stored bytes, read straight from the archive.

    zipfile checks CRCs only at the end of each entry it decompresses and reports a mismatch
    as a message to be parsed; reading the stored bytes keeps the comparison ours.
    """
    handle.seek(info.header_offset)
    header = handle.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"entry '{info.filename}' has no local header")
    name_length, extra_length = struct.unpack("<HH", header[26:30])
    handle.seek(info.header_offset + 30 + name_length + extra_length)
    crc, remaining = 0, info.compress_size
    while remaining:
        chunk = handle.read(min(CHUNK, remaining))
        if not chunk:
            raise EOFError(f"entry '{info.filename}' is cut off")
        crc = zlib.crc32(chunk, crc)
        remaining -= len(chunk)
    return crc


def _entry_crc(archive: zipfile.ZipFile, handle: BinaryIO, info: zipfile.ZipInfo) -> int:
    if info.compress_type == zipfile.ZIP_STORED:  # how torch.save writes every entry
        return _stored_crc(handle, info)
    crc = 0
    with archive.open(info) as entry:  # compressed by another writer: zipfile inflates it
        while chunk := entry.read(CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def verify_zip(path: Path) -> None:
    """Compare every entry of a zip checkpoint with its stored CRC-32.

    :raises CheckpointError: naming the first entry whose bytes changed, or a broken archive.
    """
    key = identity(path)
    if key in _verified:
        return
    where = display(path)
    try:
        with open(path, "rb") as handle, zipfile.ZipFile(handle) as archive:
            for info in archive.infolist():
                if _entry_crc(archive, handle, info) != info.CRC:
                    raise CheckpointError(_crc_message(where, info.filename))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as exc:
        raise CheckpointError(f"{where}: truncated or corrupt checkpoint ({exc}); restore it or save it again") from None
    _verified.add(key)


def _crc_message(where: str, member: str) -> str:
    return (
        f"{where}: corrupt checkpoint: the bytes of '{member}' no longer match the checksum stored with them "
        "(a flipped bit on disk or an interrupted copy); restore the file or save it again"
    )


def check_checkpoint_file(path: Path) -> FileKind:
    """Refuse foreign and corrupt files before they reach an unpickler; return the file's kind."""
    kind = sniff(path)
    if kind is FileKind.TORCH_ZIP:
        verify_zip(path)
    elif kind not in (FileKind.TORCH_LEGACY,):
        raise foreign_file_error(path, kind)
    return kind


def forget_verified() -> None:
    """Verify every file again on its next load (tests, or after restoring files in place)."""
    _verified.clear()


