"""Bring one registry dataset onto disk: verify or download its archives, then extract them.

Archives live in `<archives_dir>/<dataset>/<filename>`; the extracted data in `<datasets_dir>/<dataset>/`
(the dataset's own layout, with `.extracted` recording which archives went in).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from defectbench.data.download import fetch, is_archive, safe_extract, verify_file
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
    missing = [
        target_dir / a["filename"]
        for a in archives
        if entry.get("access") == "manual" and not (target_dir / a["filename"]).exists()
    ]
    if missing:
        raise _manual_error(dataset, entry, missing)
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
            safe_extract(path, dataset_dir, archive_sha256=sha256)
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
