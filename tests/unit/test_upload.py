"""``--fsync`` keeps every single sync small: the body is synced as it arrives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from evloop_httpd import upload as upload_mod
from evloop_httpd.upload import Upload

PIECE = 64 * 1024  # what one recv hands over
MAX_UNSYNCED = 4 * 1024 * 1024  # what docs/limits.md promises a single sync waits for, at most


def folder_fd(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


@pytest.mark.parametrize("size", [20 * 1024 * 1024 + 12_345, 3 * 1024 * 1024, 10])
def test_no_sync_waits_for_more_than_a_few_mib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, size: int
) -> None:
    # History: --fsync synced the whole body once, at the commit, blocking the loop for 250 ms
    # for a 512 MiB upload on a fast disk (seconds on a slow one).
    written = 0
    at_last_sync = 0
    unsynced_at_each_sync: list[int] = []
    real_write, real_fsync, real_fdatasync = os.write, os.fsync, os.fdatasync

    def write(fd: int, data: bytes | memoryview) -> int:
        nonlocal written
        n = real_write(fd, data)
        written += n
        return n

    def syncing(real):  # type: ignore[no-untyped-def]
        def sync(fd: int) -> None:
            nonlocal at_last_sync
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                return real(fd)  # the folder's entry: nothing of the body
            unsynced_at_each_sync.append(written - at_last_sync)
            at_last_sync = written
            return real(fd)

        return sync

    monkeypatch.setattr(upload_mod.os, "write", write)
    monkeypatch.setattr(upload_mod.os, "fsync", syncing(real_fsync))
    monkeypatch.setattr(upload_mod.os, "fdatasync", syncing(real_fdatasync))
    body = bytes(range(251)) * (size // 251 + 1)
    up = Upload(folder_fd(tmp_path), "big.bin", fsync=True)
    for i in range(0, size, PIECE):
        up.write(body[i : min(i + PIECE, size)])
    up.commit()
    assert (tmp_path / "big.bin").read_bytes() == body[:size]
    assert unsynced_at_each_sync and sum(unsynced_at_each_sync) == size
    assert max(unsynced_at_each_sync) <= MAX_UNSYNCED + PIECE, unsynced_at_each_sync


def test_without_fsync_nothing_is_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(upload_mod.os, "fsync", calls.append)
    monkeypatch.setattr(upload_mod.os, "fdatasync", calls.append)
    up = Upload(folder_fd(tmp_path), "big.bin", fsync=False)
    for _ in range(100):
        up.write(b"x" * PIECE)
    up.commit()
    assert calls == []
    assert (tmp_path / "big.bin").stat().st_size == 100 * PIECE
