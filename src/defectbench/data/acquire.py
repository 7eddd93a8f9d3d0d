"""Bring one registry dataset onto disk: verify or download its archives, then extract them.

Archives live in `<archives_dir>/<dataset>/<filename>`; the extracted data in `<datasets_dir>/<dataset>/`
(the dataset's own layout, with `.extracted` recording which archives went in).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from defectbench.data.download import (
    fetch,
    is_archive,
    read_extraction_record,
    record_first_use,
    safe_extract,
    sha256_of,
    verify_file,
)
from defectbench.data.images import DataError
from defectbench.io import atomic_path

log = logging.getLogger(__name__)


def acquire(
    dataset: str,
    entry: dict[str, Any],
    archives_dir: Path,
    datasets_dir: Path,
    url_overrides: dict[str, str] | None = None,
) -> Path:
    """Verify (or download) every archive of the registry `entry` and extract them; return the dataset dir.

    `url_overrides` maps an archive's `filename` to a URL that replaces the registry's (for moved files).
    A manually placed archive is verified exactly like a downloaded one. Files that are not archives
    (e.g. a split CSV) are copied into the dataset directory as they are.
    """
    archives = entry.get("archives") or []
    if not archives:
        raise ValueError(f"registry entry of {dataset!r} lists no archives")
    overrides = dict(url_overrides or {})
    unknown = set(overrides) - {archive["filename"] for archive in archives}
    if unknown:
        raise ValueError(
            f"url_overrides for {dataset!r} name unknown archives {sorted(unknown)}; "
            f"valid: {sorted(a['filename'] for a in archives)}"
        )
    target_dir = Path(archives_dir) / dataset
    require_manual_archives(dataset, entry, archives_dir)
    checksums = {}
    for archive in archives:
        path = target_dir / archive["filename"]
        if not path.exists():
            fetch_archive(dataset, entry, archive["filename"], path, overrides)
        # After a fetch this is a cheap look-up of the record written while verifying the download.
        checksums[path] = verify_file(path, archive.get("sha256"), archive.get("size"))
    dataset_dir = Path(datasets_dir) / dataset
    for path, sha256 in checksums.items():
        if is_archive(path):
            max_bytes = int(entry["max_extracted_gb"] * 1e9)
            safe_extract(path, dataset_dir, archive_sha256=sha256, max_bytes=max_bytes)
        else:
            with atomic_path(dataset_dir / path.name) as tmp:
                shutil.copy2(path, tmp)
            log.info("copied %s into %s", path.name, dataset_dir)
    return dataset_dir


def fetch_archive(
    dataset: str,
    entry: dict[str, Any],
    filename: str,
    dest: Path,
    url_overrides: dict[str, str] | None = None,
) -> Path:
    """Download and verify one archive of the registry `entry` to `dest` (the download rule and acquire).

    A manual dataset raises DataError saying where to place the file; an override replaces the registry's URL."""
    archive = next((a for a in entry.get("archives") or [] if a["filename"] == filename), None)
    if archive is None:
        raise ValueError(f"the registry entry of {dataset!r} has no archive {filename!r}")
    if entry.get("access") == "manual":
        raise _manual_error(dataset, entry, [Path(dest)])
    url = (url_overrides or {}).get(filename, archive.get("url"))
    if not url:
        raise DataError(
            f"no URL known for {filename} of {dataset!r}: place the file at {dest} or give a URL override"
        )
    return fetch(url, Path(dest), sha256=archive.get("sha256"), size=archive.get("size"))


def _manual_error(dataset: str, entry: dict[str, Any], missing: list[Path]) -> DataError:
    places = "\n".join(f"  {path}" for path in missing)
    return DataError(
        f"dataset {dataset!r} cannot be downloaded automatically; place these files exactly here:\n{places}\n"
        f"How to get them: {entry.get('manual_instructions') or 'see the dataset page'}"
    )


def require_manual_archives(dataset: str, entry: dict[str, Any], archives_dir: Path) -> None:
    """A dataset that needs a login must have its archives placed by hand: say exactly where and how."""
    missing = [
        Path(archives_dir) / dataset / a["filename"]
        for a in entry["archives"]
        if entry.get("access") == "manual" and not (Path(archives_dir) / dataset / a["filename"]).exists()
    ]
    if missing:
        raise _manual_error(dataset, entry, missing)


def confirm_first_use(dataset: str, entry: dict[str, Any], archives_dir: Path, datasets_dir: Path) -> None:
    """Once the dataset extracted and indexed successfully, record the checksums of its archives that have no
    published one (trust on first use): the copies that were actually used, as `safe_extract` recorded them."""
    dataset_dir = Path(datasets_dir) / dataset
    for archive in entry["archives"]:
        if archive["sha256"] is not None:
            continue
        path = Path(archives_dir) / dataset / archive["filename"]
        used = read_extraction_record(dataset_dir, path.name) if is_archive(path) else None
        if used is not None:
            record_first_use(path, used["size"], used["sha256"], used.get("mtime_ns"))
        elif path.exists():  # copied as it is (a split file)
            record_first_use(path, path.stat().st_size, sha256_of(path), path.stat().st_mtime_ns)
