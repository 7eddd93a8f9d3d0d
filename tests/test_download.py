"""Downloads against a real HTTP server on 127.0.0.1, checksums, trust on first use, safe extraction."""

from __future__ import annotations

import builtins
import errno
import hashlib
import io
import json
import logging
import os
import socket
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from range_http_server import ServerState, serve

from defectbench.data.download import (
    EXTRACTED_MARKER,
    LOCK_FILE_NAME,
    fetch,
    record_first_use,
    safe_extract,
    verify_file,
)
from defectbench.data.images import DataError

FAST = {"attempts": 3, "backoff_s": 0.01, "timeout_s": 5.0}


def payload(n_bytes: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n_bytes, dtype=np.uint8).tobytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def server() -> Iterator[ServerState]:
    with serve() as state:
        yield state


def test_download_with_checksum_and_no_second_download(server: ServerState, tmp_path: Path) -> None:
    body = payload(300_000)
    server.files["/data/a.bin"] = body
    dest = tmp_path / "archives" / "a.bin"
    assert fetch(server.url("/data/a.bin"), dest, sha256=sha(body), size=len(body), **FAST) == dest
    assert dest.read_bytes() == body
    assert not dest.with_name("a.bin.part").exists()
    assert server.requests == [("/data/a.bin", None)]
    fetch(server.url("/data/a.bin"), dest, sha256=sha(body), size=len(body), **FAST)
    assert len(server.requests) == 1  # verified copy present: nothing fetched


def test_dropped_connection_resumes_with_range(server: ServerState, tmp_path: Path) -> None:
    body = payload(500_000, seed=1)
    server.files["/big.tar"] = body
    server.drop_after["/big.tar"] = 123_456
    dest = tmp_path / "big.tar"
    fetch(server.url("/big.tar"), dest, sha256=sha(body), **FAST)
    assert server.requests == [("/big.tar", None), ("/big.tar", "bytes=123456-")]
    assert dest.read_bytes() == body


def test_server_ignoring_range_restarts_from_zero(server: ServerState, tmp_path: Path) -> None:
    body = payload(200_000, seed=2)
    server.files["/f.zip"] = body
    server.drop_after["/f.zip"] = 50_000
    server.ignore_range = True
    dest = tmp_path / "f.zip"
    fetch(server.url("/f.zip"), dest, sha256=sha(body), **FAST)
    assert [header for _, header in server.requests] == [None, "bytes=50000-"]
    assert dest.read_bytes() == body


def test_partial_file_from_an_earlier_run_is_resumed(server: ServerState, tmp_path: Path) -> None:
    body = payload(100_000, seed=3)
    server.files["/p.bin"] = body
    dest = tmp_path / "p.bin"
    dest.with_name("p.bin.part").write_bytes(body[:40_000])
    fetch(server.url("/p.bin"), dest, sha256=sha(body), size=len(body), **FAST)
    assert server.requests == [("/p.bin", "bytes=40000-")]
    assert dest.read_bytes() == body


def test_404_fails_at_once_naming_url_and_manual_place(server: ServerState, tmp_path: Path) -> None:
    dest = tmp_path / "missing.zip"
    with pytest.raises(DataError) as err:
        fetch(server.url("/missing.zip"), dest, **FAST)
    assert "404" in str(err.value)
    assert server.url("/missing.zip") in str(err.value)
    assert f"place it manually at {dest}" in str(err.value)
    assert len(server.requests) == 1  # no retries for a client error
    assert not dest.exists() and not dest.with_name("missing.zip.part").exists()


def test_unreachable_server_gives_up_after_the_attempts(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    dest = tmp_path / "x.zip"
    with pytest.raises(DataError, match="after 3 attempts") as err:
        fetch(f"http://127.0.0.1:{port}/x.zip", dest, **FAST)
    assert str(dest) in str(err.value)
    assert not dest.exists()


def test_wrong_checksum_moves_bad_bytes_aside(server: ServerState, tmp_path: Path) -> None:
    body = payload(50_000, seed=4)
    server.files["/a.zip"] = body
    dest = tmp_path / "a.zip"
    with pytest.raises(DataError, match="sha256") as err:
        fetch(server.url("/a.zip"), dest, sha256=sha(b"something else"), **FAST)
    aside = tmp_path / "a.zip.sha256-mismatch"
    assert str(aside) in str(err.value)
    assert not dest.exists() and not (tmp_path / "a.zip.part").exists()
    assert aside.read_bytes() == body


def test_wrong_size_is_rejected(server: ServerState, tmp_path: Path) -> None:
    server.files["/a.zip"] = payload(1000)
    dest = tmp_path / "a.zip"
    with pytest.raises(DataError, match="1000 bytes instead of 999"):
        fetch(server.url("/a.zip"), dest, size=999, **FAST)
    assert not dest.exists()
    assert (tmp_path / "a.zip.size-mismatch").exists()


def test_trust_on_first_use_records_then_rejects_a_changed_file(
    server: ServerState, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = payload(80_000, seed=5)
    server.files["/ds.tar.gz"] = first
    dest = tmp_path / "ds.tar.gz"
    with caplog.at_level(logging.WARNING, logger="defectbench.data.download"):
        fetch(server.url("/ds.tar.gz"), dest, **FAST)
        record_first_use(dest, len(first), sha(first), dest.stat().st_mtime_ns)  # after it was indexed
    assert "trust on first use" in caplog.text
    record = json.loads((tmp_path / LOCK_FILE_NAME).read_text())["ds.tar.gz"]
    assert (record["size"], record["sha256"]) == (len(first), sha(first))

    # Verified against the record from now on: the same file passes without a download ...
    fetch(server.url("/ds.tar.gz"), dest, **FAST)
    assert len(server.requests) == 1
    # ... and a file that changed on the server is refused.
    dest.unlink()
    changed = payload(80_000, seed=6)
    server.files["/ds.tar.gz"] = changed
    with pytest.raises(DataError, match=r"recorded in .* at its first use"):
        fetch(server.url("/ds.tar.gz"), dest, **FAST)
    assert not dest.exists()
    assert (tmp_path / "ds.tar.gz.sha256-mismatch").read_bytes() == changed


def test_tampered_existing_file_is_replaced_by_a_verified_download(
    server: ServerState, tmp_path: Path
) -> None:
    body = payload(20_000, seed=7)
    server.files["/t.zip"] = body
    dest = tmp_path / "t.zip"
    fetch(server.url("/t.zip"), dest, **FAST)
    record_first_use(dest, len(body), sha(body), dest.stat().st_mtime_ns)
    dest.write_bytes(payload(20_000, seed=8))
    fetch(server.url("/t.zip"), dest, **FAST)
    assert dest.read_bytes() == body
    assert (tmp_path / "t.zip.sha256-mismatch").read_bytes() == payload(20_000, seed=8)


# ---------------------------------------------------------------- extraction


def _tar_bytes(members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _zip_bytes(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buffer.getvalue()


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(
    "suffix, mode", [(".tar", "w"), (".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar.xz", "w:xz")]
)
def test_tar_extraction_with_marker(tmp_path: Path, suffix: str, mode: str) -> None:
    archive = tmp_path / f"ds{suffix}"
    archive.write_bytes(
        _tar_bytes([_file("Top/a/x.png", b"x"), _file("Top/b.txt", b"bb"), _link("Top/c", "b.txt")], mode)
    )
    dest = tmp_path / "datasets" / "ds"
    assert safe_extract(archive, dest) == dest
    assert (dest / "Top/a/x.png").read_bytes() == b"x"
    assert (dest / "Top/c").is_symlink() and (dest / "Top/c").read_bytes() == b"bb"
    marker = json.loads((dest / EXTRACTED_MARKER).read_text())
    assert marker[archive.name]["sha256"] == sha(archive.read_bytes())
    assert _tree(tmp_path / "datasets") == {"ds", "ds/Top", "ds/Top/a", "ds/Top/a/x.png", "ds/Top/b.txt",
                                            "ds/Top/c", f"ds/{EXTRACTED_MARKER}"}  # fmt: skip


def test_extraction_is_idempotent_and_merges_archives(tmp_path: Path) -> None:
    first, second = tmp_path / "one.zip", tmp_path / "two.tar.gz"
    first.write_bytes(_zip_bytes({"root/images/1.png": b"1", "root/readme.txt": b"r"}))
    second.write_bytes(_tar_bytes([_file("root/masks/1.png", b"m")]))
    dest = tmp_path / "ds"
    safe_extract(first, dest)
    (dest / "root/readme.txt").unlink()
    safe_extract(first, dest)  # marker present: nothing is extracted again
    assert not (dest / "root/readme.txt").exists()
    safe_extract(second, dest)
    assert (dest / "root/images/1.png").read_bytes() == b"1"
    assert (dest / "root/masks/1.png").read_bytes() == b"m"
    assert set(json.loads((dest / EXTRACTED_MARKER).read_text())) == {"one.zip", "two.tar.gz"}
    assert not [p for p in tmp_path.iterdir() if ".extract-" in p.name]


MALICIOUS_TARS = {
    "absolute": [_file("ok.txt", b"ok"), _file("/ABSOLUTE/evil.txt", b"evil")],
    "dotdot": [_file("ok.txt", b"ok"), _file("sub/../../evil.txt", b"evil")],
    "symlink_out": [_link("ok_link", "../../evil_dir"), _file("ok_link/evil.txt", b"evil")],
    "symlink_abs": [_link("passwd", "/etc/passwd")],
    "hardlink_out": [_link("h", "../evil.txt", tarfile.LNKTYPE)],
    # Lexically inside, but `s` resolves to the root, so `s/l` reaches two levels above it.
    "symlink_chain": [_link("p/q/s", "../.."), _link("p/q/s/l", "../../evil.txt"), _file("p/q/s/l", b"evil")],
    "device": [_link("dev", "", tarfile.CHRTYPE)],
}


@pytest.mark.parametrize("case", sorted(MALICIOUS_TARS))
def test_malicious_tar_is_refused(tmp_path: Path, case: str) -> None:
    members = MALICIOUS_TARS[case]
    if case == "absolute":
        members = [members[0], _file(str(tmp_path / "ABSOLUTE" / "evil.txt"), b"evil")]
    archive = tmp_path / "in" / "bad.tar"
    archive.parent.mkdir()
    archive.write_bytes(_tar_bytes(members, "w"))
    dest = tmp_path / "out" / "data" / "ds"
    with pytest.raises(DataError, match=r"bad\.tar.*refusing"):
        safe_extract(archive, dest)
    assert not dest.exists()
    assert _tree(tmp_path) == {"in", "in/bad.tar", "out", "out/data"}


@pytest.mark.parametrize(
    "members, symlinks",
    [({"ok.txt": b"ok", "../evil.txt": b"evil"}, None), ({"/evil.txt": b"evil"}, None),
     ({"ok.txt": b"ok"}, {"link": "../../evil.txt"})],
)  # fmt: skip
def test_malicious_zip_is_refused(tmp_path: Path, members: dict[str, bytes], symlinks: dict | None) -> None:
    archive = tmp_path / "in" / "bad.zip"
    archive.parent.mkdir()
    archive.write_bytes(_zip_bytes(members, symlinks))
    dest = tmp_path / "out" / "ds"
    with pytest.raises(DataError, match=r"bad\.zip.*refusing"):
        safe_extract(archive, dest)
    assert _tree(tmp_path) == {"in", "in/bad.zip", "out"}


def test_damaged_archive_names_the_file(tmp_path: Path) -> None:
    archive = tmp_path / "broken.tar.gz"
    archive.write_bytes(_tar_bytes([_file("a.txt", payload(5000))])[:-200])
    with pytest.raises(DataError, match=r"broken\.tar\.gz"):
        safe_extract(archive, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


# ---------------------------------------------------------------- issue 9: escapes, bombs, full disks, TOFU


def _zip_in_order(entries: list[tuple[str, bytes | str, bool]]) -> bytes:
    """A zip whose members (name, data or link target, is_symlink) are written in the given order."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data, is_link in entries:
            info = zipfile.ZipInfo(name)
            if is_link:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, data)
    return buffer.getvalue()


def test_zip_symlink_chain_cannot_escape_the_target(tmp_path: Path) -> None:
    """Each link alone stays inside; written through each other they climb three levels out."""
    archive = tmp_path / "in" / "chain.zip"
    archive.parent.mkdir()
    archive.write_bytes(
        _zip_in_order(
            [("d/l", "..", True), ("d/l/a", "..", True), ("d/l/a/b", "..", True),
             ("d/l/a/b/outside/evil.txt", b"evil", False)]
        )
    )  # fmt: skip
    dest = tmp_path / "out" / "x" / "y" / "ds"
    with pytest.raises(DataError, match=r"chain\.zip.*refusing"):
        safe_extract(archive, dest)
    assert _tree(tmp_path) == {"in", "in/chain.zip", "out", "out/x", "out/x/y"}  # no file, no stray link


def test_zip_link_inside_the_target_still_extracts(tmp_path: Path) -> None:
    archive = tmp_path / "ok.zip"
    archive.write_bytes(_zip_in_order([("top/a.txt", b"a", False), ("top/alias", "a.txt", True)]))
    dest = safe_extract(archive, tmp_path / "ds")
    assert (dest / "top/alias").is_symlink() and (dest / "top/alias").read_bytes() == b"a"


def _zip_bomb(uncompressed: int) -> bytes:
    """A real deflate zip of `uncompressed` zero bytes, built in milliseconds: deflating 1 MiB of zeros after a
    full flush always gives the same bytes, so the stream is that piece repeated (zipfile would take seconds)."""
    block = bytes(1 << 20)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    piece = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = piece * (uncompressed >> 20) + compressor.flush()
    crc = 0
    for _ in range(uncompressed >> 20):
        crc = zlib.crc32(block, crc)
    name = b"zeros.bin"
    header = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 33, crc, len(stream), uncompressed, len(name), 0
    )
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 33, crc, len(stream), uncompressed, len(name),
        0, 0, 0, 0, 0, 0,
    )  # fmt: skip
    body = header + name + stream
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central) + len(name), len(body), 0)
    return body + central + name + end


def test_zip_bomb_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    archive.write_bytes(_zip_bomb(1 << 30))  # 1 GiB of zeros in about 1 MB
    assert archive.stat().st_size < 1_100_000
    with pytest.raises(DataError, match=r"bomb\.zip.*refusing.*1\.1 GB.*compression ratio"):
        safe_extract(archive, tmp_path / "ds")
    assert _tree(tmp_path) == {"bomb.zip"}


def test_extracted_size_is_bounded_by_the_given_limit(tmp_path: Path) -> None:
    archive = tmp_path / "big.tar.gz"
    archive.write_bytes(_tar_bytes([_file("a.bin", payload(60_000)), _file("b.bin", payload(60_000, 1))]))
    with pytest.raises(DataError, match=r"big\.tar\.gz.*refusing.*more than the limit of 100\.0 kB"):
        safe_extract(archive, tmp_path / "ds", max_bytes=100_000)
    assert _tree(tmp_path) == {"big.tar.gz"}
    assert safe_extract(archive, tmp_path / "ds", max_bytes=120_000) == tmp_path / "ds"


class _FullDisk:
    """Writes to files under `root` fail with ENOSPC once `capacity` bytes were written there in total."""

    def __init__(self, root: Path, capacity: int) -> None:
        self.root, self.left = root.resolve(), capacity
        self.real_open = builtins.open

    def open(self, file, mode="r", *args, **kwargs):
        handle = self.real_open(file, mode, *args, **kwargs)
        inside = isinstance(file, str | os.PathLike) and Path(file).resolve().is_relative_to(self.root)
        return _Filling(handle, self) if inside and set(mode) & set("wax+") else handle


class _Filling:
    def __init__(self, handle: Any, disk: _FullDisk) -> None:
        self._handle, self._disk = handle, disk

    def write(self, data: bytes) -> int:
        if len(data) > self._disk.left:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._disk.left -= len(data)
        return self._handle.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)

    def __enter__(self) -> _Filling:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path, int], None]:
    def fill(root: Path, capacity: int) -> None:
        disk = _FullDisk(root, capacity)
        monkeypatch.setattr(builtins, "open", disk.open)
        monkeypatch.setattr(tarfile, "bltn_open", disk.open)

    return fill


@pytest.mark.parametrize("name", ["ds.zip", "ds.tar.gz"])
def test_full_disk_during_extraction_says_no_space_left(tmp_path: Path, full_disk, name: str) -> None:
    archive = tmp_path / name
    members = {"a.bin": payload(300_000), "b.bin": payload(300_000, 1)}
    archive.write_bytes(
        _zip_bytes(members)
        if name.endswith(".zip")
        else _tar_bytes([_file(k, v) for k, v in members.items()])
    )
    full_disk(tmp_path / "out", 400_000)
    with pytest.raises(DataError, match="no space left") as err:
        safe_extract(archive, tmp_path / "out" / "ds")
    assert "damaged" not in str(err.value) and str(tmp_path / "out") in str(err.value)
    assert _tree(tmp_path / "out") == set()  # the staging folder is gone


def test_full_disk_during_download_says_no_space_left_and_does_not_retry(
    server: ServerState, tmp_path: Path, full_disk
) -> None:
    server.files["/d.zip"] = payload(3_000_000)
    full_disk(tmp_path, 1_500_000)
    with pytest.raises(DataError, match="no space left") as err:
        fetch(server.url("/d.zip"), tmp_path / "d.zip", **FAST)
    assert "attempts" not in str(err.value) and str(tmp_path / "d.zip.part") in str(err.value)
    assert len(server.requests) == 1


def test_html_page_instead_of_the_archive_is_an_error(server: ServerState, tmp_path: Path) -> None:
    server.files["/get/set.zip"] = b"\n<!DOCTYPE html>\n<html><body>Please log in</body></html>\n"
    dest = tmp_path / "set.zip"
    with pytest.raises(DataError, match=r"set\.zip.*HTML page"):
        fetch(server.url("/get/set.zip"), dest, **FAST)
    assert not dest.exists() and not (tmp_path / LOCK_FILE_NAME).exists()


def test_a_first_download_is_not_recorded_until_confirmed(server: ServerState, tmp_path: Path) -> None:
    """A cut first copy must not become the truth: only `record_first_use` (after indexing) records it."""
    body = payload(80_000, seed=5)
    server.files["/ds.tar.gz"] = body[:50_000]  # cut short, and nothing says how long it should be
    dest = tmp_path / "ds.tar.gz"
    fetch(server.url("/ds.tar.gz"), dest, **FAST)
    assert not (tmp_path / LOCK_FILE_NAME).exists()
    dest.unlink()
    server.files["/ds.tar.gz"] = body  # the correct copy is accepted
    fetch(server.url("/ds.tar.gz"), dest, **FAST)
    record_first_use(dest, len(body), sha(body), dest.stat().st_mtime_ns)
    dest.write_bytes(payload(80_000, seed=6))
    with pytest.raises(DataError) as err:
        verify_file(dest)
    lock = tmp_path / LOCK_FILE_NAME
    assert f"recorded in {lock}" in str(err.value) and "delete the entry 'ds.tar.gz'" in str(err.value)
