"""Resumable, verified downloads and safe archive extraction.

`fetch` streams a URL to `<dest>.part` (resuming with an HTTP Range request after a dropped connection),
verifies size and sha256 and renames the file onto `dest`. Where no checksum is known, the first download's
size and sha256 are recorded in `checksums.lock.json` beside it (trust on first use) and enforced afterwards.
`safe_extract` unpacks zip/tar archives after refusing members that would land outside the target.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

from tqdm import tqdm

from defectbench.data.images import DataError
from defectbench.io import write_json

log = logging.getLogger(__name__)

LOCK_FILE_NAME = "checksums.lock.json"
EXTRACTED_MARKER = ".extracted"
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tbz2")
ZIP_SUFFIXES = (".zip",)
_CHUNK = 1 << 20
_USER_AGENT = "defectbench/0.1 (+https://github.com/defectbench)"
# HTTP statuses worth retrying; every other 4xx is final (the URL is wrong or needs a login).
_RETRY_STATUSES = {408, 425, 429}
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


class _TransferError(Exception):
    """A transfer failed in a way that a retry (resuming the partial file) may fix."""


def fetch(
    url: str,
    dest: Path,
    sha256: str | None = None,
    size: int | None = None,
    *,
    attempts: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
) -> Path:
    """Download `url` to `dest` unless a verified copy is already there; return `dest`.

    Failed transfers are retried `attempts` times in a row (the counter restarts whenever a transfer makes
    progress), waiting `backoff_s * 2**k` seconds before the k-th retry.
    """
    dest = Path(dest)
    if attempts < 1:
        raise ValueError(f"attempts must be >= 1, got {attempts}")
    if dest.exists():
        try:
            verify_file(dest, sha256, size)
            log.info("%s already present and verified; not downloading it again", dest)
            return dest
        except DataError as err:
            log.warning("%s; downloading it again", err)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with open(part, "ab") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise DataError(f"{part} is being written by another process; wait for it to finish") from err
        failures = 0
        while True:
            before = handle.seek(0, os.SEEK_END)
            try:
                _transfer(url, handle, dest, size, timeout_s)
                break
            except DataError:
                if handle.seek(0, os.SEEK_END) == 0:
                    part.unlink(missing_ok=True)
                raise
            except _TransferError as err:
                failures = 0 if handle.seek(0, os.SEEK_END) > before else failures + 1
                if failures >= attempts:
                    raise DataError(
                        f"could not download {url} ({err}) after {attempts} attempts; the partial file "
                        f"{part} is kept and a later run resumes it, or place the file manually at {dest}"
                    ) from err
                delay = backoff_s * 2 ** (failures - 1) if failures else 0.0
                log.warning("download of %s interrupted (%s); retrying in %.1f s", url, err, delay)
                time.sleep(delay)
        handle.flush()
        os.fsync(handle.fileno())
    verify_file(part, sha256, size, record_as=dest)
    os.replace(part, dest)  # a rename keeps the mtime recorded with the checksum
    return dest


def _transfer(url: str, handle: BinaryIO, dest: Path, size: int | None, timeout_s: float) -> None:
    """Append the rest of `url` to `handle`, the partial file of `dest`; its length is the resume offset."""
    offset = handle.seek(0, os.SEEK_END)
    if size is not None and offset > size:
        log.warning("partial file is larger than the expected %d bytes; restarting %s", size, url)
        handle.truncate(0)
        offset = 0
    if size is not None and offset == size:
        return
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            # The partial file reaches or passes the end; start afresh rather than guess.
            handle.truncate(0)
            raise _TransferError("server refused the resume range; restarting from zero") from err
        if 400 <= err.code < 500 and err.code not in _RETRY_STATUSES:
            raise DataError(
                f"download of {url} failed: HTTP {err.code} {err.reason}. The URL may have moved or need a "
                f"login: get the file another way and place it manually at {dest} (or give a working URL as an "
                "override)"
            ) from err
        raise _TransferError(f"HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        raise _TransferError(str(err)) from err
    with response:
        if offset and response.status == 206:
            start, total = _parse_content_range(response.headers.get("Content-Range", ""))
            if start != offset:
                handle.truncate(0)
                raise _TransferError(f"server resumed at byte {start} instead of {offset}; restarting")
        else:
            if offset:
                log.info("server ignored the Range request for %s; restarting from zero", url)
                handle.truncate(0)
                offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
        _copy_body(response, handle, offset, total, url)


def _copy_body(response: Any, handle: BinaryIO, offset: int, total: int | None, url: str) -> None:
    received = offset
    name = Path(urllib.parse.urlparse(url).path).name or url
    with tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=name, disable=None) as bar:
        try:
            while chunk := response.read(_CHUNK):
                handle.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as err:
            raise _TransferError(f"connection lost after {received} bytes: {err}") from err
        finally:
            handle.flush()
    if total is not None and received < total:
        raise _TransferError(f"connection closed after {received} of {total} bytes")


def _parse_content_range(value: str) -> tuple[int, int | None]:
    """`bytes 100-199/200` -> (100, 200); total None where the server writes `*`."""
    try:
        unit, spec = value.split(" ", 1)
        span, total = spec.split("/", 1)
        if unit != "bytes":
            raise ValueError(unit)
        return int(span.split("-", 1)[0]), None if total == "*" else int(total)
    except ValueError as err:
        raise _TransferError(f"unreadable Content-Range header {value!r}") from err


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(
    path: Path, sha256: str | None = None, size: int | None = None, *, record_as: Path | None = None
) -> str:
    """Check `path` against the given size/sha256, else against its trust-on-first-use record; return its sha256.

    `record_as` is the final name the file is verified for (default `path`): its record in the lock file
    beside it is used and written. A file that fails is moved aside to `<name>.<what>-mismatch` and a
    `DataError` says where it went; a file without any known checksum is recorded (trust on first use).
    """
    path = Path(path)
    final = Path(record_as) if record_as is not None else path
    record = read_lock_record(final)
    source = "given"
    if sha256 is None and record is not None:
        sha256, size, source = record["sha256"], record["size"], "recorded at first download"
    actual_size = path.stat().st_size
    if record is not None and path == final and _record_matches_file(record, path, sha256):
        return record["sha256"]
    if size is not None and actual_size != size:
        _reject(path, final, "size", f"{actual_size} bytes instead of {size} ({source})")
    actual_sha = sha256_of(path)
    if sha256 is not None and actual_sha != sha256.lower():
        _reject(path, final, "sha256", f"sha256 {actual_sha} instead of {sha256} ({source})")
    if sha256 is None:
        log.warning(
            "no checksum known for %s: trusting it on first use and recording size %d and sha256 %s in %s",
            final.name,
            actual_size,
            actual_sha,
            final.parent / LOCK_FILE_NAME,
        )
        source = "trust on first use"
    elif source == "recorded at first download":
        log.info("%s matches the size and sha256 recorded at its first download", final.name)
    _write_lock_record(final, actual_size, actual_sha, source, os.stat(path).st_mtime_ns)
    return actual_sha


def _record_matches_file(record: dict[str, Any], path: Path, sha256: str | None) -> bool:
    """True when `path` is the very file verified before (same size and mtime), so hashing can be skipped."""
    info = path.stat()
    return (
        record.get("mtime_ns") == info.st_mtime_ns
        and record["size"] == info.st_size
        and (sha256 is None or sha256.lower() == record["sha256"])
    )


def _reject(path: Path, final: Path, what: str, detail: str) -> None:
    aside = final.with_name(f"{final.name}.{what}-mismatch")
    os.replace(path, aside)
    raise DataError(
        f"{final} failed verification: {detail}. The bad file was moved to {aside}; delete it and download "
        f"again, or place a correct copy at {final}"
    )


def read_lock_record(path: Path) -> dict[str, Any] | None:
    """The checksum record of `path` in the lock file beside it, or None."""
    lock = Path(path).parent / LOCK_FILE_NAME
    if not lock.exists():
        return None
    return _read_lock(lock).get(Path(path).name)


def _read_lock(lock: Path) -> dict[str, dict[str, Any]]:
    try:
        records = json.loads(lock.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read checksum lock file {lock} ({err}); fix or delete it") from err
    if not isinstance(records, dict):
        raise DataError(f"checksum lock file {lock} is not a JSON object; fix or delete it")
    return records


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    """Serialise read-modify-write of the lock file between processes."""
    with open(lock.with_name(lock.name + ".flock"), "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        yield


def _write_lock_record(path: Path, size: int, sha256: str, source: str, mtime_ns: int) -> None:
    lock = path.parent / LOCK_FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(lock):
        records = _read_lock(lock) if lock.exists() else {}
        previous = records.get(path.name, {})
        records[path.name] = {
            "size": size,
            "sha256": sha256,
            "source": previous.get("source", source) if previous.get("sha256") == sha256 else source,
            "recorded": previous.get("recorded") if previous.get("sha256") == sha256 else _now(),
            "mtime_ns": mtime_ns,
        }
        write_json(lock, records)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def is_archive(path: Path) -> bool:
    name = Path(path).name.lower()
    return name.endswith(ZIP_SUFFIXES + TAR_SUFFIXES)


def safe_extract(archive: Path, dest: Path, *, archive_sha256: str | None = None) -> Path:
    """Extract a zip or tar archive into directory `dest` and return `dest`.

    Members with absolute paths, `..` components, links leading outside `dest` or device files are refused
    before anything is written. Extraction goes to a temporary directory beside `dest` and is then moved in
    (merged when `dest` already holds other archives); `dest/.extracted` records each extracted archive's
    name, size and sha256, and an archive recorded there is not extracted again.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DataError(f"archive not found: {archive} — download it or place it there first")
    marker = dest / EXTRACTED_MARKER
    done = _read_marker(marker)
    previous = done.get(archive.name)
    archive_size = archive.stat().st_size
    if previous and previous["size"] == archive_size and archive_sha256 in (None, previous["sha256"]):
        log.info("%s already extracted into %s", archive.name, dest)
        return dest
    sha = archive_sha256 or sha256_of(archive)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; it becomes `dest`
    try:
        log.info("extracting %s into %s", archive, dest)
        _extract_members(archive, staging)
        if dest.exists():
            _merge_into(staging, dest)
        else:
            os.rename(staging, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    done[archive.name] = {"size": archive_size, "sha256": sha, "extracted": _now()}
    write_json(marker, done)
    return dest


def _read_marker(marker: Path) -> dict[str, dict[str, Any]]:
    if not marker.exists():
        return {}
    try:
        return json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"unreadable extraction marker {marker} ({err}); delete it to extract again") from err


def _extract_members(archive: Path, target: Path) -> None:
    name = archive.name.lower()
    if name.endswith(ZIP_SUFFIXES) or (not name.endswith(TAR_SUFFIXES) and zipfile.is_zipfile(archive)):
        _extract_zip(archive, target)
    elif name.endswith(TAR_SUFFIXES) or tarfile.is_tarfile(archive):
        _extract_tar(archive, target)
    else:
        raise DataError(f"{archive} is neither a zip nor a tar archive; replace it with the original archive")


def _check_member_path(archive: Path, member: str) -> PurePosixPath:
    """The member's path relative to the extraction root; refuses anything that could escape it."""
    posix = PurePosixPath(member.replace("\\", "/"))
    if posix.is_absolute() or member.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(member):
        raise DataError(f"{archive}: refusing member with an absolute path: {member!r}")
    if ".." in posix.parts:
        raise DataError(f"{archive}: refusing member that climbs out of the target: {member!r}")
    return posix


def _check_link_target(archive: Path, member: str, link_base: PurePosixPath, target: str) -> None:
    """Refuse a link whose target, resolved from `link_base`, is absolute or leaves the extraction root."""
    if target.startswith(("/", "\\")):
        raise DataError(f"{archive}: refusing link {member!r} to the absolute path {target!r}")
    depth = 0
    for part in (link_base / target.replace("\\", "/")).parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            raise DataError(f"{archive}: refusing link {member!r} that points outside the target: {target!r}")


def _checked_tar_members(archive: Path, tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    for member in tar:
        path = _check_member_path(archive, member.name)
        if member.issym():
            _check_link_target(archive, member.name, path.parent, member.linkname)
        elif member.islnk():
            _check_link_target(archive, member.name, PurePosixPath(), member.linkname)
        elif not (member.isfile() or member.isdir()):
            raise DataError(f"{archive}: refusing special file (device, fifo) {member.name!r}")
        yield member


def _extract_tar(archive: Path, target: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            # The stdlib "data" filter re-checks every member against the real file system (it catches
            # escapes through chains of symlinks that a purely lexical check cannot see).
            tar.extractall(target, members=_checked_tar_members(archive, tar), filter="data")
    except tarfile.FilterError as err:
        raise DataError(f"{archive}: refusing unsafe member ({err})") from err
    except (tarfile.TarError, EOFError, OSError) as err:
        raise DataError(
            f"cannot extract {archive} ({err}); the archive is damaged: delete it and fetch again"
        ) from err


def _extract_zip(archive: Path, target: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:  # check everything before writing anything
                path = _check_member_path(archive, info.filename)
                if stat.S_ISLNK(info.external_attr >> 16):
                    _check_link_target(archive, info.filename, path.parent, zf.read(info).decode())
            for info in infos:
                if stat.S_ISLNK(info.external_attr >> 16):
                    link = target / _check_member_path(archive, info.filename)
                    link.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(zf.read(info).decode(), link)
                else:
                    zf.extract(info, target)
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise DataError(
            f"cannot extract {archive} ({err}); the archive is damaged: delete it and fetch again"
        ) from err


def _merge_into(source: Path, target: Path) -> None:
    """Move every entry of `source` into `target`, descending into directories present in both."""
    for entry in source.iterdir():
        destination = target / entry.name
        if (
            entry.is_dir()
            and not entry.is_symlink()
            and destination.is_dir()
            and not destination.is_symlink()
        ):
            _merge_into(entry, destination)
        else:
            if destination.is_dir() and not destination.is_symlink():
                shutil.rmtree(destination)
            os.replace(entry, destination)
