"""acquire(): placed archives verified, manual datasets explained, downloads fetched, everything extracted."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from range_http_server import ServerState, serve

from defectbench.data.acquire import acquire, confirm_first_use
from defectbench.data.download import EXTRACTED_MARKER, LOCK_FILE_NAME
from defectbench.data.images import DataError


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


ARCHIVE = _zip({"KolektorSDD2/train/10000.png": b"img", "KolektorSDD2/train/10000_GT.png": b"gt"})


def _entry(
    access: str, url: str | None, sha256: str | None = None, size: int | None = None
) -> dict[str, Any]:
    return {
        "title": "Test set",
        "access": access,
        "archives": [{"url": url, "filename": "set.zip", "size": size, "sha256": sha256}],
        "manual_instructions": "log in at https://example.org/set and download set.zip"
        if access == "manual"
        else None,
        "root": "KolektorSDD2",
        "max_extracted_gb": 1,
    }


@pytest.fixture
def server() -> Iterator[ServerState]:
    with serve() as state:
        yield state


def test_download_entry_is_fetched_and_extracted(server: ServerState, tmp_path: Path) -> None:
    server.files["/set.zip"] = ARCHIVE
    entry = _entry("download", server.url("/set.zip"), hashlib.sha256(ARCHIVE).hexdigest(), len(ARCHIVE))
    out = acquire("toyset", entry, tmp_path / "archives", tmp_path / "datasets")
    assert out == tmp_path / "datasets" / "toyset"
    assert (out / "KolektorSDD2/train/10000_GT.png").read_bytes() == b"gt"
    assert (tmp_path / "archives/toyset/set.zip").read_bytes() == ARCHIVE
    assert (
        json.loads((out / EXTRACTED_MARKER).read_text())["set.zip"]["sha256"]
        == entry["archives"][0]["sha256"]
    )
    acquire("toyset", entry, tmp_path / "archives", tmp_path / "datasets")  # idempotent, no new request
    assert len(server.requests) == 1


def test_url_override_replaces_the_registry_url(server: ServerState, tmp_path: Path) -> None:
    server.files["/moved/set.zip"] = ARCHIVE
    entry = _entry("download", server.url("/old/set.zip"))
    acquire(
        "toyset",
        entry,
        tmp_path / "a",
        tmp_path / "d",
        url_overrides={"set.zip": server.url("/moved/set.zip")},
    )
    assert server.requests == [("/moved/set.zip", None)]
    with pytest.raises(ValueError, match="unknown archives"):
        acquire("toyset", entry, tmp_path / "a", tmp_path / "d", url_overrides={"sett.zip": "http://x"})


def test_manual_access_without_the_file_names_the_exact_path(tmp_path: Path) -> None:
    entry = _entry("manual", None)
    with pytest.raises(DataError) as err:
        acquire("toyset", entry, tmp_path / "archives", tmp_path / "datasets")
    message = str(err.value)
    assert str(tmp_path / "archives" / "toyset" / "set.zip") in message
    assert "log in at https://example.org/set" in message
    assert not (tmp_path / "datasets").exists()


def test_placed_archive_is_verified_then_extracted(tmp_path: Path) -> None:
    placed = tmp_path / "archives" / "toyset" / "set.zip"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(ARCHIVE)
    entry = _entry("manual", None, hashlib.sha256(ARCHIVE).hexdigest(), len(ARCHIVE))
    out = acquire("toyset", entry, tmp_path / "archives", tmp_path / "datasets")
    assert (out / "KolektorSDD2/train/10000.png").read_bytes() == b"img"


def test_placed_archive_with_wrong_checksum_is_refused(tmp_path: Path) -> None:
    placed = tmp_path / "archives" / "toyset" / "set.zip"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(ARCHIVE)
    entry = _entry("manual", None, sha256="0" * 64)
    with pytest.raises(DataError, match=r"set\.zip failed verification"):
        acquire("toyset", entry, tmp_path / "archives", tmp_path / "datasets")
    assert not placed.exists() and placed.with_name("set.zip.sha256-mismatch").exists()
    assert not (tmp_path / "datasets").exists()


def test_placed_archive_without_checksum_is_trusted_on_first_use(tmp_path: Path) -> None:
    placed = tmp_path / "archives" / "toyset" / "set.zip"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(ARCHIVE)
    entry = _entry("manual", None)
    acquire("toyset", entry, tmp_path / "archives", tmp_path / "datasets")
    assert not (placed.parent / LOCK_FILE_NAME).exists()  # not before the dataset indexed successfully
    confirm_first_use("toyset", entry, tmp_path / "archives", tmp_path / "datasets")
    lock = json.loads((placed.parent / LOCK_FILE_NAME).read_text())
    assert lock["set.zip"]["sha256"] == hashlib.sha256(ARCHIVE).hexdigest()
    placed.write_bytes(_zip({"other.png": b"o"}))  # a different archive placed later is refused
    with pytest.raises(
        DataError, match=r"recorded in .*checksums\.lock\.json at its first use.*delete the entry"
    ):
        acquire("toyset", entry, tmp_path / "archives", tmp_path / "datasets")


def test_truncated_first_copy_is_not_locked_in(tmp_path: Path) -> None:
    """A truncated placed archive fails to extract; the correct copy placed afterwards is accepted."""
    placed = tmp_path / "archives" / "toyset" / "set.zip"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(ARCHIVE[:-40])
    entry = _entry("manual", None)
    with pytest.raises(DataError, match=r"set\.zip.*damaged"):
        acquire("toyset", entry, tmp_path / "archives", tmp_path / "datasets")
    placed.write_bytes(ARCHIVE)
    out = acquire("toyset", entry, tmp_path / "archives", tmp_path / "datasets")
    assert (out / "KolektorSDD2/train/10000.png").read_bytes() == b"img"


def test_login_page_download_is_an_error(server: ServerState, tmp_path: Path) -> None:
    server.files["/set.zip"] = b"<html><head><title>Sign in</title></head><body>login</body></html>"
    with pytest.raises(DataError, match="HTML page"):
        acquire("toyset", _entry("download", server.url("/set.zip")), tmp_path / "a", tmp_path / "d")
    assert not (tmp_path / "a" / "toyset" / LOCK_FILE_NAME).exists()


def test_extraction_limit_comes_from_the_registry(tmp_path: Path) -> None:
    placed = tmp_path / "archives" / "toyset" / "set.zip"
    placed.parent.mkdir(parents=True)
    placed.write_bytes(_zip({"big.bin": bytes(5000)}))
    entry = {**_entry("manual", None), "max_extracted_gb": 4e-6}  # 4 kB
    with pytest.raises(DataError, match=r"set\.zip: refusing.*limit of 4\.0 kB.*max_extracted_gb"):
        acquire("toyset", entry, tmp_path / "archives", tmp_path / "datasets")
    assert not (tmp_path / "datasets" / "toyset").exists()


def test_plain_file_is_copied_beside_extracted_archives(server: ServerState, tmp_path: Path) -> None:
    server.files["/set.zip"] = ARCHIVE
    server.files["/split.csv"] = b"object,split\ncandle,train\n"
    entry = _entry("download", server.url("/set.zip"))
    entry["archives"].append(
        {"url": server.url("/split.csv"), "filename": "split.csv", "size": None, "sha256": None}
    )
    out = acquire("toyset", entry, tmp_path / "archives", tmp_path / "datasets")
    assert (out / "split.csv").read_bytes() == server.files["/split.csv"]
    assert (out / "KolektorSDD2/train/10000.png").exists()
