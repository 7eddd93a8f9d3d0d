"""Resumable, verified downloads and safe archive extraction.

`fetch` streams a URL to `<dest>.part` (resuming with an HTTP Range request after a dropped connection),
verifies size and sha256 and renames the file onto `dest`. Where no checksum is known, the size and sha256 of
the first copy that extracted and indexed successfully are recorded in `checksums.lock.json` beside it (trust on
first use, `record_first_use`) and enforced afterwards; a truncated copy or an HTML login page never becomes the
truth. `safe_extract` unpacks zip/tar archives after refusing members that would land outside the target and
archives that unpack to implausibly much.
"""

from __future__ import annotations

import contextlib
import errno
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
from defectbench.io import current_umask, write_json

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
_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
DEFAULT_MAX_BYTES = 200 * 10**9  # extraction limit where none is given (the registry gives one per dataset)
MAX_RATIO = 100  # unpacked / packed size: image datasets stay far below; archive bombs reach thousands
RATIO_FLOOR = 64 * 2**20  # below this many unpacked bytes the ratio is harmless and not checked


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
    try:
        _download(url, part, dest, size, attempts, backoff_s, timeout_s)
    except OSError as err:
        if err.errno not in _DISK_FULL:
            raise
        kept = part.stat().st_size if part.exists() else 0
        raise DataError(
            f"no space left on the device while downloading {url} to {part} ({err.strerror}): free space "
            f"there and run again; the {kept} bytes received are kept and the download resumes"
        ) from err
    verify_file(part, sha256, size, record_as=dest)
    os.replace(part, dest)  # a rename keeps the mtime recorded with the checksum
    return dest


def _download(
    url: str, part: Path, dest: Path, size: int | None, attempts: int, backoff_s: float, timeout_s: float
) -> None:
    """Complete the partial file `part` of `dest` from `url`, retrying transfer failures."""
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
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as err:
                handle.flush()
                raise _TransferError(f"connection lost after {received} bytes: {err}") from err
            if not chunk:
                break
            handle.write(chunk)  # an OSError here is the disk's (full?), not the network's: not retried
            received += len(chunk)
            bar.update(len(chunk))
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
    beside it is used. A file that fails (an HTML page included) is moved aside to `<name>.<what>-mismatch`
    and a `DataError` says where it went. A file verified against a given checksum is recorded (with its mtime,
    so an unchanged file is not hashed again); a file without any known checksum is not: `record_first_use`
    records it once it has extracted and indexed successfully.
    """
    path = Path(path)
    final = Path(record_as) if record_as is not None else path
    record = read_lock_record(final)
    source = "given"
    if sha256 is None and record is not None:
        sha256, size, source = record["sha256"], record["size"], "recorded"
    if record is not None and path == final and _record_matches_file(record, path, sha256):
        return record["sha256"]
    if _looks_like_html(path):
        _reject(path, final, "html", "it is an HTML page (a login or error page?), not the file itself")
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        _reject(path, final, "size", f"{actual_size} bytes instead of {size}", source)
    actual_sha = sha256_of(path)
    if sha256 is not None and actual_sha != sha256.lower():
        _reject(path, final, "sha256", f"sha256 {actual_sha} instead of {sha256}", source)
    if sha256 is None:
        log.warning(
            "no checksum known for %s: its size and sha256 are recorded in %s once it has extracted and "
            "indexed successfully (trust on first use)",
            final.name,
            final.parent / LOCK_FILE_NAME,
        )
        return actual_sha
    if source == "recorded":
        log.info("%s matches the size and sha256 recorded at its first use", final.name)
    _write_lock_record(final, actual_size, actual_sha, source, os.stat(path).st_mtime_ns)
    return actual_sha


def record_first_use(path: Path, size: int, sha256: str, mtime_ns: int | None) -> None:
    """Record the checksum of an archive without a published one, once it has extracted and indexed."""
    if read_lock_record(path) is None:
        log.warning(
            "no checksum is published for %s: recording its size %d and sha256 %s in %s (trust on first use)",
            Path(path).name,
            size,
            sha256,
            Path(path).parent / LOCK_FILE_NAME,
        )
        _write_lock_record(Path(path), size, sha256, "trust on first use", mtime_ns)


def _looks_like_html(path: Path) -> bool:
    with open(path, "rb") as handle:
        start = handle.read(512).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    return start.startswith((b"<!doctype html", b"<html", b"<head"))


def _record_matches_file(record: dict[str, Any], path: Path, sha256: str | None) -> bool:
    """True when `path` is the very file verified before (same size and mtime), so hashing can be skipped."""
    info = path.stat()
    return (
        record.get("mtime_ns") == info.st_mtime_ns
        and record["size"] == info.st_size
        and (sha256 is None or sha256.lower() == record["sha256"])
    )


def _reject(path: Path, final: Path, what: str, detail: str, source: str = "given") -> None:
    aside = final.with_name(f"{final.name}.{what}-mismatch")
    os.replace(path, aside)
    if source == "recorded":
        lock = final.parent / LOCK_FILE_NAME
        raise DataError(
            f"{final} failed verification: {detail} recorded in {lock} at its first use. The file was moved to "
            f"{aside}. If that copy is the right one and the recorded checksum came from a bad copy, delete the "
            f"entry {final.name!r} from {lock} (or the whole file), move the file back and run again; "
            f"otherwise delete it and download again"
        )
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


def _write_lock_record(path: Path, size: int, sha256: str, source: str, mtime_ns: int | None) -> None:
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


def safe_extract(
    archive: Path, dest: Path, *, archive_sha256: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> Path:
    """Extract a zip or tar archive into directory `dest` and return `dest`.

    Members with absolute paths, `..` components, links leading outside `dest` (alone or through links
    extracted before them) or device files are refused, and so is an archive that unpacks to more than
    `max_bytes` or, beyond `RATIO_FLOOR` bytes, to more than `MAX_RATIO` times its own size (an archive bomb).
    Extraction goes to a temporary directory beside `dest` and is then moved in (merged when `dest` already
    holds other archives); `dest/.extracted` records each extracted archive's name, size, mtime and sha256,
    and an archive recorded there is not extracted again. A full disk is reported as such.
    """
    archive, dest = Path(archive), Path(dest)
    if not archive.is_file():
        raise DataError(f"archive not found: {archive} — download it or place it there first")
    marker = dest / EXTRACTED_MARKER
    done = _read_marker(marker)
    previous = done.get(archive.name)
    info = archive.stat()
    if previous and previous["size"] == info.st_size and archive_sha256 in (None, previous["sha256"]):
        log.info("%s already extracted into %s", archive.name, dest)
        return dest
    sha = archive_sha256 or sha256_of(archive)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    staging.chmod(0o777 & ~current_umask())  # mkdtemp makes it private; it becomes `dest`
    budget = _Budget(archive, info.st_size, max_bytes)
    try:
        log.info("extracting %s into %s", archive, dest)
        _extract_members(archive, staging, budget)
        if dest.exists():
            _merge_into(staging, dest)
        else:
            os.rename(staging, dest)
        done[archive.name] = {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "sha256": sha,
                              "extracted": _now()}  # fmt: skip
        write_json(marker, done)
    except OSError as err:
        if err.errno not in _DISK_FULL:
            raise
        raise DataError(
            f"no space left on the device while extracting {archive} into {dest.parent} ({err.strerror}); "
            f"the archive is fine: free at least {_human(budget.total)} there and run again"
        ) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return dest


class _Budget:
    """Counts the bytes an archive unpacks to and refuses it past the size limit or the bomb ratio."""

    def __init__(self, archive: Path, archive_size: int, max_bytes: int):
        self.archive, self.archive_size, self.max_bytes = archive, archive_size, max_bytes
        self.total = 0

    def add(self, n_bytes: int) -> None:
        self.total += n_bytes
        why = ""
        if self.total > self.max_bytes:
            why = f"more than the limit of {_human(self.max_bytes)} for this dataset"
        elif self.total > RATIO_FLOOR and self.total > MAX_RATIO * self.archive_size:
            ratio = self.total / max(self.archive_size, 1)
            why = f"a compression ratio of {ratio:.0f}:1 (at most {MAX_RATIO}:1 is plausible for image data)"
        if why:
            raise DataError(
                f"{self.archive}: refusing to extract: its members unpack to at least {_human(self.total)}, "
                f"{why}; this looks like an archive bomb. If the archive is genuine, raise the dataset's "
                "max_extracted_gb in src/defectbench/data/registry.yaml"
            )


def _human(n_bytes: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n_bytes < 1000:
            return f"{n_bytes:.1f} {unit}"
        n_bytes /= 1000
    return f"{n_bytes:.1f} TB"


def _read_marker(marker: Path) -> dict[str, dict[str, Any]]:
    if not marker.exists():
        return {}
    try:
        return json.loads(marker.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"unreadable extraction marker {marker} ({err}); delete it to extract again") from err


def read_extraction_record(dataset_dir: Path, archive_name: str) -> dict[str, Any] | None:
    """What `safe_extract` recorded about `archive_name` in `dataset_dir` (size, mtime_ns, sha256), or None."""
    return _read_marker(Path(dataset_dir) / EXTRACTED_MARKER).get(archive_name)


def _extract_members(archive: Path, target: Path, budget: _Budget) -> None:
    name = archive.name.lower()
    if name.endswith(ZIP_SUFFIXES) or (not name.endswith(TAR_SUFFIXES) and zipfile.is_zipfile(archive)):
        _extract_zip(archive, target, budget)
    elif name.endswith(TAR_SUFFIXES) or tarfile.is_tarfile(archive):
        _extract_tar(archive, target, budget)
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


def _checked_tar_members(archive: Path, tar: tarfile.TarFile, budget: _Budget) -> Iterator[tarfile.TarInfo]:
    for member in tar:
        path = _check_member_path(archive, member.name)
        if member.issym():
            _check_link_target(archive, member.name, path.parent, member.linkname)
        elif member.islnk():
            _check_link_target(archive, member.name, PurePosixPath(), member.linkname)
        elif not (member.isfile() or member.isdir()):
            raise DataError(f"{archive}: refusing special file (device, fifo) {member.name!r}")
        budget.add(member.size if member.isfile() else 0)  # tar headers hold the exact sizes
        yield member


def _extract_tar(archive: Path, target: Path, budget: _Budget) -> None:
    try:
        with tarfile.open(archive, "r:*") as tar:
            # The stdlib "data" filter re-checks every member against the real file system (it catches
            # escapes through chains of symlinks that a purely lexical check cannot see).
            tar.extractall(target, members=_checked_tar_members(archive, tar, budget), filter="data")
    except tarfile.FilterError as err:
        raise DataError(f"{archive}: refusing unsafe member ({err})") from err
    except (tarfile.TarError, EOFError, OSError) as err:
        _raise_damaged(archive, err)


def _extract_zip(archive: Path, target: Path, budget: _Budget) -> None:
    """Members are written one by one, each path resolved on disk through the links extracted before it (as
    tarfile's "data" filter does), so a chain of links that are each harmless alone cannot lead outside."""
    root = target.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:  # check everything that can be checked before writing anything
                path = _check_member_path(archive, info.filename)
                if stat.S_ISLNK(info.external_attr >> 16):
                    _check_link_target(archive, info.filename, path.parent, zf.read(info).decode())
                budget.add(info.file_size)  # zipfile never returns more than the declared size
            for info in infos:
                path = target / _check_member_path(archive, info.filename)
                _inside(archive, info.filename, root, path.parent)
                if info.is_dir():
                    _inside(archive, info.filename, root, path).mkdir(parents=True, exist_ok=True)
                elif stat.S_ISLNK(info.external_attr >> 16):
                    link_target = zf.read(info).decode()
                    _inside(archive, info.filename, root, path.parent.resolve() / link_target)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(link_target, path)
                else:
                    path = _inside(archive, info.filename, root, path)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as source, open(path, "wb") as sink:
                        shutil.copyfileobj(source, sink, _CHUNK)
    except (zipfile.BadZipFile, EOFError, OSError) as err:
        _raise_damaged(archive, err)


def _inside(archive: Path, member: str, root: Path, path: Path) -> Path:
    """`path` with every link on the way resolved; refuses it when that lies outside `root`."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise DataError(f"{archive}: refusing member {member!r}: through links extracted before it, it "
                        f"would be written outside the target (at {resolved})")  # fmt: skip
    return resolved


def _raise_damaged(archive: Path, err: BaseException) -> None:
    if isinstance(err, OSError) and err.errno in _DISK_FULL:
        raise err  # not the archive's fault: safe_extract says so
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
