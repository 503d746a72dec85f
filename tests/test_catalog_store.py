"""CatalogStore: atomic saves, the previous snapshot kept, corrupt files detected and skipped."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import msgpack
import pytest

from edgemesh.catalog import Catalog, CatalogStore, load_manifest
from edgemesh.catalog._store import PREVIOUS_FILE, STORE_FILE, STORE_FORMAT

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo-catalog.yaml"


@pytest.fixture
def first() -> Catalog:
    return load_manifest(str(DEMO), revision=1)


@pytest.fixture
def second(first: Catalog) -> Catalog:
    services = {k: s for k, s in first.services.items() if k != "default/hello-multi"}
    return Catalog(services, first.nodes, revision=2)


def _files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir()}


def test_empty_directory_has_nothing_and_no_problem(tmp_path: Path) -> None:
    assert CatalogStore(str(tmp_path / "absent")).load() == (None, [])
    assert CatalogStore(str(tmp_path)).load() == (None, [])


def test_save_then_load(tmp_path: Path, first: Catalog) -> None:
    directory = tmp_path / "store"
    CatalogStore(str(directory)).save(first)
    assert _files(directory) == {STORE_FILE}
    assert CatalogStore(str(directory)).load() == (first, [])


def test_file_format_is_checksummed_msgpack(tmp_path: Path, first: Catalog) -> None:
    CatalogStore(str(tmp_path)).save(first)
    envelope = msgpack.unpackb((tmp_path / STORE_FILE).read_bytes(), raw=False)
    assert envelope["format"] == STORE_FORMAT
    assert envelope["sha256"] == hashlib.sha256(envelope["payload"]).digest()


def test_previous_snapshot_is_kept(tmp_path: Path, first: Catalog, second: Catalog) -> None:
    store = CatalogStore(str(tmp_path))
    store.save(first)
    store.save(second)
    assert _files(tmp_path) == {STORE_FILE, PREVIOUS_FILE}
    assert store.load() == (second, [])
    os.unlink(tmp_path / STORE_FILE)
    catalog, problems = CatalogStore(str(tmp_path)).load()
    assert catalog == first
    assert any("missing" in p for p in problems)


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (lambda data: data[: len(data) // 2], "truncated"),
        (lambda data: data[:-1], "truncated"),
        (lambda data: b"", "empty (truncated)"),
        (lambda data: data[:-40] + bytes([data[-40] ^ 1]) + data[-39:], "checksum mismatch"),
        (lambda data: b"\x00" * len(data), "not a catalog store file"),
        (lambda data: data + b"trailing", "truncated or not a catalog store file"),
        (lambda data: b"\xdd\xff\xff\xff\xff", "truncated"),  # array of 2**32-1 elements
    ],
)
def test_damaged_newest_falls_back_to_previous(
    tmp_path: Path, first: Catalog, second: Catalog, damage: object, problem: str
) -> None:
    assert callable(damage)
    store = CatalogStore(str(tmp_path))
    store.save(first)
    store.save(second)
    newest = tmp_path / STORE_FILE
    newest.write_bytes(damage(newest.read_bytes()))
    catalog, problems = CatalogStore(str(tmp_path)).load()
    assert catalog == first
    assert problem in problems[0]
    assert problems[0].startswith(str(newest))
    assert all("\n" not in p for p in problems)


def test_valid_checksum_over_invalid_content(tmp_path: Path) -> None:
    payload = msgpack.packb({"format": "edgemesh.catalog", "version": 99})
    (tmp_path / STORE_FILE).write_bytes(msgpack.packb(
        {"format": STORE_FORMAT, "sha256": hashlib.sha256(payload).digest(), "payload": payload}
    ))
    catalog, problems = CatalogStore(str(tmp_path)).load()
    assert catalog is None
    assert len(problems) == 1 and "unsupported version" in problems[0]


def test_both_damaged(tmp_path: Path, first: Catalog, second: Catalog) -> None:
    store = CatalogStore(str(tmp_path))
    store.save(first)
    store.save(second)
    for name in (STORE_FILE, PREVIOUS_FILE):
        (tmp_path / name).write_bytes(b"\x81\xa1")
    catalog, problems = CatalogStore(str(tmp_path)).load()
    assert catalog is None
    assert [p.split(":")[0] for p in problems] == [
        str(tmp_path / STORE_FILE), str(tmp_path / PREVIOUS_FILE)]


def test_oversized_file_is_not_read_whole(tmp_path: Path, first: Catalog) -> None:
    CatalogStore(str(tmp_path)).save(first)
    catalog, problems = CatalogStore(str(tmp_path), max_bytes=100).load()
    assert catalog is None
    assert "larger than 100 bytes" in problems[0]


def test_corrupt_newest_never_replaces_a_good_previous(
    tmp_path: Path, first: Catalog, second: Catalog
) -> None:
    store = CatalogStore(str(tmp_path))
    store.save(first)
    store.save(second)
    (tmp_path / STORE_FILE).write_bytes(b"garbage")
    # A fresh process that saves without loading first.
    third = second.with_revision(3)
    CatalogStore(str(tmp_path)).save(third)
    assert CatalogStore(str(tmp_path)).load() == (third, [])
    os.unlink(tmp_path / STORE_FILE)
    assert CatalogStore(str(tmp_path)).load()[0] == first


def test_newest_corrupted_under_a_running_store_never_replaces_a_good_previous(
    tmp_path: Path, first: Catalog, second: Catalog
) -> None:
    """The same store that wrote the newest file saves again after someone damaged it: it
    must not trust what it remembers of its own write (the last good copy was lost)."""
    store = CatalogStore(str(tmp_path))
    store.save(first)
    store.save(second)
    (tmp_path / STORE_FILE).write_bytes(os.urandom(555))
    third = second.with_revision(3)
    store.save(third)
    os.unlink(tmp_path / STORE_FILE)
    assert CatalogStore(str(tmp_path)).load()[0] == first
    # Undamaged, the newest still becomes the previous without being read again.
    store.save(second.with_revision(4))
    store.save(second.with_revision(5))
    os.unlink(tmp_path / STORE_FILE)
    assert CatalogStore(str(tmp_path)).load()[0] == second.with_revision(4)


def test_failed_rename_leaves_old_files_and_no_temporary(
    tmp_path: Path, first: Catalog, second: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CatalogStore(str(tmp_path))
    store.save(first)
    real_replace = os.replace

    def failing_replace(source: str, destination: str) -> None:
        if destination.endswith(STORE_FILE):
            raise OSError(28, "No space left on device")
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        store.save(second)
    monkeypatch.undo()
    assert not [n for n in _files(tmp_path) if n.endswith(".tmp")]
    assert CatalogStore(str(tmp_path)).load() == (first, [])


def test_failed_write_leaves_old_files(
    tmp_path: Path, first: Catalog, second: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CatalogStore(str(tmp_path))
    store.save(first)
    before = (tmp_path / STORE_FILE).read_bytes()

    def failing_fsync(descriptor: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        store.save(second)
    monkeypatch.undo()
    assert (tmp_path / STORE_FILE).read_bytes() == before
    assert _files(tmp_path) == {STORE_FILE}


def test_save_fsyncs_file_and_directory(
    tmp_path: Path, first: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(descriptor: int) -> None:
        synced.append("dir" if os.path.isdir(f"/proc/self/fd/{descriptor}") else "file")
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    CatalogStore(str(tmp_path)).save(first)
    assert synced == ["file", "dir"]


def test_without_hard_links_the_previous_is_copied(
    tmp_path: Path, first: Catalog, second: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(source: str, destination: str) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    store = CatalogStore(str(tmp_path))
    store.save(first)
    store.save(second)
    assert _files(tmp_path) == {STORE_FILE, PREVIOUS_FILE}
    os.unlink(tmp_path / STORE_FILE)
    assert CatalogStore(str(tmp_path)).load()[0] == first


def test_unreadable_file_is_a_problem_not_an_exception(tmp_path: Path) -> None:
    (tmp_path / STORE_FILE).mkdir()  # reading a directory fails with IsADirectoryError
    catalog, problems = CatalogStore(str(tmp_path)).load()
    assert catalog is None
    assert "cannot read" in problems[0]
