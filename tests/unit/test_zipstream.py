"""The ZIP producer (zipstream.py): archives checked by zipfile and `unzip -t`, byte for byte."""

from __future__ import annotations

import io
import os
import random
import shutil
import stat
import struct
import subprocess
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from evloop_httpd.errors import HttpError
from evloop_httpd.files import UPLOAD_PREFIX, UPLOAD_SUFFIX, locate
from evloop_httpd.zipstream import MAX_SCANNED_PER_CHUNK, ZipStream

from ..helpers import open_fds

UNZIP = shutil.which("unzip")  # Debian package unzip (.ci/run installs it)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty dir").mkdir()
    (root / "a" / "b" / "c" / "deep.txt").write_bytes(b"deep\n")
    (root / "a" / "one.bin").write_bytes(random.Random(1).randbytes(200_000))
    (root / "empty.txt").write_bytes(b"")
    (root / "été ☃ 日本.txt").write_bytes("unicode ✓\n".encode())
    (root / "<&'\">.txt").write_bytes(b"odd")
    (root / ".dotfile").write_bytes(b"secret")
    (root / f"{UPLOAD_PREFIX}abc{UPLOAD_SUFFIX}").write_bytes(b"half an upload")
    (root / "link-in.txt").symlink_to("a/b/c/deep.txt")
    (root / "a" / "loop").symlink_to("..")  # back up the tree: must not recurse for ever
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not yours")
    (root / "link-out.txt").symlink_to(outside)
    os.mkfifo(root / "fifo")
    return root


EXPECTED = {
    "a/": None,
    "a/b/": None,
    "a/b/c/": None,
    "a/b/c/deep.txt": b"deep\n",
    "a/one.bin": random.Random(1).randbytes(200_000),
    "empty dir/": None,
    "empty.txt": b"",
    "été ☃ 日本.txt": "unicode ✓\n".encode(),
    "<&'\">.txt": b"odd",
    "link-in.txt": b"deep\n",
}


def stream_of(root: Path, seed: int = 0, **kwargs: object) -> bytes:
    """The whole archive, pulled in random pieces of 1 byte to 100 KiB."""
    rng = random.Random(seed)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with ZipStream(fd, str(root), str(root), **kwargs) as z:  # type: ignore[arg-type]
            while not z.maybe_check():
                pass
            out = bytearray()
            while not z.finished:
                size = rng.choice([1, 7, 512, 65536, 100_000, rng.randint(1, 100_000)])
                chunk = z.next_chunk(size)
                assert len(chunk) <= size
                out += chunk
            assert z.next_chunk(1000) == b""
            return bytes(out)
    finally:
        os.close(fd)


def contents(archive: bytes) -> dict[str, bytes | None]:
    zf = zipfile.ZipFile(io.BytesIO(archive))
    assert zf.testzip() is None
    got: dict[str, bytes | None] = {}
    for info in zf.infolist():
        assert info.flag_bits & 0x0800  # UTF-8 names
        assert info.compress_type == zipfile.ZIP_STORED
        got[info.filename] = None if info.is_dir() else zf.read(info)
    return got


def unzip_test(tmp_path: Path, archive: bytes) -> None:
    assert UNZIP is not None, "the tests need unzip (Debian package unzip)"
    path = tmp_path / "t.zip"
    path.write_bytes(archive)
    done = subprocess.run([UNZIP, "-t", str(path)], capture_output=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert b"No errors detected" in done.stdout


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tree_round_trips_byte_for_byte(tree: Path, tmp_path: Path, seed: int) -> None:
    archive = stream_of(tree, seed)
    assert contents(archive) == EXPECTED
    assert b"PK\x06\x06" not in archive  # small: no ZIP64 end record
    unzip_test(tmp_path, archive)
    # unzip itself puts the tree back, byte for byte, empty folder included
    out = tmp_path / "out"
    assert UNZIP is not None
    subprocess.run([UNZIP, "-q", str(tmp_path / "t.zip"), "-d", str(out)], check=True)
    assert (out / "a" / "one.bin").read_bytes() == EXPECTED["a/one.bin"]
    assert (out / "empty dir").is_dir() and not any((out / "empty dir").iterdir())
    assert (out / "été ☃ 日本.txt").read_bytes() == "unicode ✓\n".encode()


def test_same_bytes_whatever_the_pieces(tree: Path) -> None:
    assert stream_of(tree, 3) == stream_of(tree, 4)


@pytest.mark.parametrize("threshold", [0, 1000])
def test_zip64_forced_by_threshold(tree: Path, tmp_path: Path, threshold: int) -> None:
    archive = stream_of(tree, 5, zip64_threshold=threshold)
    assert contents(archive) == EXPECTED
    assert b"PK\x06\x06" in archive and b"PK\x06\x07" in archive  # ZIP64 end and locator
    zf = zipfile.ZipFile(io.BytesIO(archive))
    # The big file's local header announces ZIP64 sizes: 0xFFFFFFFF and a ZIP64 extra field.
    info = zf.getinfo("a/one.bin")
    local = archive[info.header_offset : info.header_offset + 30]
    assert struct.unpack("<II", local[18:26]) == (0xFFFFFFFF, 0xFFFFFFFF)
    assert struct.unpack("<H", local[4:6]) == (45,)
    unzip_test(tmp_path, archive)


def test_dotfiles_and_symlinks_when_told(tree: Path) -> None:
    got = contents(stream_of(tree, dotfiles=True, follow_symlinks=True))
    assert got == {**EXPECTED, ".dotfile": b"secret", "link-out.txt": b"not yours"}
    # never our upload temp files, the FIFO, or the loop


def test_prefix_puts_everything_in_one_folder(tree: Path) -> None:
    got = contents(stream_of(tree, prefix="root/"))
    assert got == {"root/" + k: v for k, v in EXPECTED.items()}


def test_each_call_does_bounded_work(tmp_path: Path) -> None:
    root = tmp_path / "many"
    root.mkdir()
    for i in range(MAX_SCANNED_PER_CHUNK * 3):
        (root / f".hidden{i}").write_bytes(b"")
    (root / "visible").write_bytes(b"v")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    with ZipStream(fd, str(root), str(root)) as z:
        checks = 1
        while not z.maybe_check():
            checks += 1
        calls, archive = 0, b""
        while not z.finished:
            calls += 1
            archive += z.next_chunk(1 << 20)
    os.close(fd)
    assert checks >= 3 and calls >= 3  # 769 entries cannot be read in fewer steps
    assert contents(archive) == {"visible": b"v"}


def test_too_many_entries_refused_before_the_first_byte(tree: Path) -> None:
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    with ZipStream(fd, str(tree), str(tree), max_entries=5) as z:
        with pytest.raises(HttpError) as err:
            while not z.maybe_check():
                pass
        assert err.value.status == 403 and "5 entries" in err.value.detail
    # Without the check (or a tree that grew after it), the stream stops instead of lying.
    with ZipStream(fd, str(tree), str(tree), max_entries=5) as z, pytest.raises(HttpError):
        while not z.finished:
            z.next_chunk(1 << 16)
    with ZipStream(fd, str(tree), str(tree), max_central_bytes=200) as z, pytest.raises(HttpError):
        while not z.maybe_check():
            pass
    with ZipStream(fd, str(tree), str(tree), max_depth=3) as z:
        with pytest.raises(HttpError) as err:
            while not z.maybe_check():
                pass
        assert "deeper than 3" in err.value.detail
    os.close(fd)


def test_descriptors_released_finished_or_not(tree: Path) -> None:
    before = open_fds()
    stream_of(tree)
    assert open_fds() == before
    fd = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    z = ZipStream(fd, str(tree), str(tree))
    z.next_chunk(40_000)  # inside a.one.bin or another entry, folders open
    z.close()
    os.close(fd)
    assert open_fds() == before


def start_single(root: Path, name: str, data: bytes) -> Iterator[bytes]:
    """Yield chunks of an archive of ``root`` holding one file; pieces of header+1000 bytes."""
    (root / name).write_bytes(data)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with ZipStream(fd, str(root), str(root)) as z:
            yield z.next_chunk(30 + len(name) + 1000)  # the local header and 1000 bytes
            while not z.finished:
                yield z.next_chunk(1 << 16)
    finally:
        os.close(fd)


def test_file_shrinking_mid_stream_keeps_the_archive_valid(tmp_path: Path) -> None:
    data = random.Random(2).randbytes(50_000)
    chunks = start_single(tmp_path, "f", data)
    first = next(chunks)
    os.truncate(tmp_path / "f", 10)
    archive = first + b"".join(chunks)
    assert contents(archive) == {"f": data[:1000]}  # the bytes read, with their own CRC
    unzip_test(tmp_path, archive)


def test_file_growing_mid_stream_stops_at_its_size_at_open(tmp_path: Path) -> None:
    data = random.Random(3).randbytes(50_000)
    chunks = start_single(tmp_path, "f", data)
    first = next(chunks)
    with open(tmp_path / "f", "ab") as f:
        f.write(b"more" * 10_000)
    assert contents(first + b"".join(chunks)) == {"f": data}


def test_file_vanishing_before_it_is_opened_is_left_out(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    for name in ("x", "y"):
        (root / name).write_bytes(name.encode() * 5000)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    with ZipStream(fd, str(root), str(root)) as z:
        first = z.next_chunk(31)  # the first file's local header only
        started = first[30:31].decode()
        (root / ("y" if started == "x" else "x")).unlink()
        archive = first
        while not z.finished:
            archive += z.next_chunk(1 << 16)
    os.close(fd)
    assert contents(archive) == {started: started.encode() * 5000}


def test_modes_keep_permission_bits_only(tmp_path: Path) -> None:
    root = tmp_path / "r"
    root.mkdir()
    (root / "tool").write_bytes(b"#!/bin/sh\n")
    os.chmod(root / "tool", 0o4755)  # set-user-ID: must not travel
    info = zipfile.ZipFile(io.BytesIO(stream_of(root))).getinfo("tool")
    assert info.external_attr >> 16 == stat.S_IFREG | 0o755


def test_dates_outside_what_zip_can_show_are_clamped(tmp_path: Path) -> None:
    # History: an mtime localtime() cannot take (tmpfs stores any 64-bit one) raised OSError
    # from next_chunk, so such a file would have broken the whole download.
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else str(tmp_path)
    with tempfile.TemporaryDirectory(dir=base) as d:
        root = Path(d)
        dates = {"old": -(2.0**62), "1970": 0.0, "far": 2.0**62, "now": 1_700_000_000.0}
        for name, seconds in dates.items():
            (root / name).write_bytes(name.encode())
            os.utime(root / name, (seconds, seconds))
        if base == "/dev/shm":
            assert os.stat(root / "far").st_mtime == 2.0**62  # really out of localtime's reach
        archive = stream_of(root)
    assert contents(archive) == {n: n.encode() for n in dates}
    zf = zipfile.ZipFile(io.BytesIO(archive))
    years = {i.filename: i.date_time[0] for i in zf.infolist()}
    assert years["old"] == years["1970"] == 1980 and years["far"] == 2107
    assert years["now"] == 2023


def test_from_the_descriptor_the_handler_holds(tree: Path) -> None:
    # The handler has the folder as files.locate's Found (O_PATH on Linux): that is enough.
    found = locate(str(tree), str(tree / "a"), follow_symlinks=False)
    try:
        with ZipStream(found.fd, found.real, str(tree), prefix="a/") as z:
            while not z.maybe_check():
                pass
            archive = b""
            while not z.finished:
                archive += z.next_chunk(1 << 16)
    finally:
        os.close(found.fd)
    inside_a = {k: v for k, v in EXPECTED.items() if k.startswith("a/") and k != "a/"}
    # a/loop leads to the root: inside it, so it is served, and so zipped; but the root's "a"
    # is the folder being zipped, on the walk's stack, so it is not entered again.
    via_loop = {"a/loop/" + k: v for k, v in EXPECTED.items() if not k.startswith("a/")} | {
        "a/loop/": None
    }
    assert contents(archive) == inside_a | via_loop
