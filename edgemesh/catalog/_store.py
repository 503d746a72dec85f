"""
The edge's catalog on disk, so that it serves after a restart with the cloud unreachable.

Two files in one directory: ``catalog.msgpack`` (the newest snapshot) and
``catalog.prev.msgpack`` (the one before).  Each is msgpack of
``{"format", "sha256", "payload"}`` where ``payload`` is the msgpack of
``catalog_to_wire(...)`` and ``sha256`` its digest.  A save writes a temporary file,
fsyncs it, renames it over the newest and fsyncs the directory: a crash leaves either
the old or the new file, and a torn or corrupt one is caught by the checksum.

File I/O is blocking (fsync): a caller on the reactor thread may run ``save`` in a
thread; the Catalog it passes is immutable.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from contextlib import suppress

import msgpack

from ._catalog import Catalog
from ._snapshot import SnapshotError, catalog_from_wire, catalog_to_wire

STORE_FILE = "catalog.msgpack"
PREVIOUS_FILE = "catalog.prev.msgpack"
STORE_FORMAT = "edgemesh.catalog.store"
MAX_STORE_BYTES = 64 * 1024 * 1024
_MAX_STR = 1024 * 1024
"""No string in a catalog comes near this (annotation values stop at 256 KiB)."""


class CatalogStore:
    """The newest good catalog snapshot and the one before it, in ``directory``."""

    def __init__(self, directory: str, max_bytes: int = MAX_STORE_BYTES) -> None:
        self.directory = directory
        self.path = os.path.join(directory, STORE_FILE)
        self.previous_path = os.path.join(directory, PREVIOUS_FILE)
        self._max_bytes = max_bytes
        self._newest_is_good: bool | None = None
        """Whether ``path`` holds a valid snapshot; None until read or written."""
        self._newest_seen: tuple[int, int, int] | None = None
        """(inode, size, mtime) of ``path`` when ``_newest_is_good`` was learnt: a file
        changed since (by someone else) is read again before it may become the previous."""

    def save(self, catalog: Catalog) -> None:
        """Write ``catalog`` durably (returns after the fsyncs); the snapshot it replaces
        becomes the previous one, unless it was corrupt.  Raises OSError if the disk
        refuses (full, read-only): the previous files are then left as they were."""
        payload = msgpack.packb(catalog_to_wire(catalog), use_bin_type=True)
        data = msgpack.packb(
            {"format": STORE_FORMAT, "sha256": hashlib.sha256(payload).digest(),
             "payload": payload},
            use_bin_type=True,
        )
        if len(data) > self._max_bytes:
            raise ValueError(f"catalog snapshot of {len(data)} bytes exceeds {self._max_bytes}")
        os.makedirs(self.directory, exist_ok=True)
        temporary = self._write_temporary(data)
        try:
            if self._newest_is_good is None or self._stat(self.path) != self._newest_seen:
                # Not known, or changed on disk since: a corrupt file must not replace the
                # good previous snapshot (the last good copy would be lost).
                seen = self._stat(self.path)
                self._newest_is_good = self._read(self.path)[0] is not None
                self._newest_seen = seen
            if self._newest_is_good:
                self._keep_as_previous()
            os.replace(temporary, self.path)
        except BaseException:
            with suppress(OSError):
                os.unlink(temporary)
            raise
        self._newest_is_good = True
        self._newest_seen = self._stat(self.path)
        self._fsync_directory()

    @staticmethod
    def _stat(path: str) -> tuple[int, int, int] | None:
        try:
            info = os.stat(path)
        except OSError:
            return None
        return info.st_ino, info.st_size, info.st_mtime_ns

    def load(self) -> tuple[Catalog | None, list[str]]:
        """The newest valid snapshot (None if there is none) and the problems met on the
        way, one line each, naming the file.  Never raises for what the files contain."""
        problems: list[str] = []
        for path in (self.path, self.previous_path):
            seen = self._stat(path)
            catalog, problem = self._read(path)
            if path == self.path:
                self._newest_is_good = catalog is not None
                self._newest_seen = seen
            if catalog is not None:
                if problems:
                    problems.append(f"{path}: using this previous snapshot instead")
                return catalog, problems
            if problem is not None:
                problems.append(problem)
            elif path == self.path and os.path.exists(self.previous_path):
                problems.append(f"{path}: missing")
        return None, problems

    def _read(self, path: str) -> tuple[Catalog | None, str | None]:
        """(catalog, None), or (None, problem), or (None, None) when there is no file."""
        try:
            with open(path, "rb") as file:
                data = file.read(self._max_bytes + 1)
        except FileNotFoundError:
            return None, None
        except OSError as error:
            return None, f"{path}: cannot read: {error.strerror or error}"
        if len(data) > self._max_bytes:
            return None, f"{path}: larger than {self._max_bytes} bytes"
        if not data:
            return None, f"{path}: empty (truncated)"
        try:
            envelope = msgpack.unpackb(
                data, raw=False, strict_map_key=True, max_str_len=64,
                max_bin_len=self._max_bytes, max_array_len=0, max_map_len=8, max_ext_len=0,
            )
        # msgpack documents that unpacking may raise more than its own exceptions.
        except Exception as error:  # noqa: BLE001
            return None, f"{path}: truncated or not a catalog store file ({error})"
        if not isinstance(envelope, dict) or envelope.get("format") != STORE_FORMAT:
            return None, f"{path}: not a catalog store file"
        digest, payload = envelope.get("sha256"), envelope.get("payload")
        if not isinstance(digest, bytes) or not isinstance(payload, bytes):
            return None, f"{path}: not a catalog store file (no checksum or payload)"
        if hashlib.sha256(payload).digest() != digest:
            return None, f"{path}: checksum mismatch (corrupt)"
        # Caps no bigger than the payload itself: a forged length cannot make msgpack
        # allocate more than the file is worth.
        cap = len(payload)
        try:
            wire = msgpack.unpackb(
                payload, raw=False, strict_map_key=True, max_str_len=min(cap, _MAX_STR),
                max_bin_len=0, max_array_len=cap, max_map_len=cap, max_ext_len=0,
            )
        except Exception as error:  # noqa: BLE001  (as above)
            return None, f"{path}: payload is not msgpack ({error})"
        try:
            return catalog_from_wire(wire), None
        except SnapshotError as error:
            return None, f"{path}: {error}"

    def _write_temporary(self, data: bytes) -> str:
        descriptor, temporary = tempfile.mkstemp(
            dir=self.directory, prefix=".catalog.", suffix=".tmp"
        )
        try:
            with os.fdopen(descriptor, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
        except BaseException:
            with suppress(OSError):
                os.unlink(temporary)
            raise
        return temporary

    def _keep_as_previous(self) -> None:
        """Make the current newest file the previous one, without a moment where the
        newest name is missing: a hard link under a temporary name, renamed over."""
        link = self.previous_path + ".tmp"
        with suppress(FileNotFoundError):
            os.unlink(link)
        try:
            os.link(self.path, link)
        except FileNotFoundError:
            return
        except OSError:
            # No hard links on this file system: copy, durably, instead.
            with open(self.path, "rb") as source:
                data = source.read(self._max_bytes + 1)
            os.replace(self._write_temporary(data), self.previous_path)
            return
        os.replace(link, self.previous_path)

    def _fsync_directory(self) -> None:
        """Make the renames durable."""
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
        try:
            descriptor = os.open(self.directory, flags)
        except OSError:
            return  # e.g. Windows: directories cannot be opened
        try:
            os.fsync(descriptor)
        except OSError:
            pass
        finally:
            os.close(descriptor)
