"""The residual file: one uncompressed .npz per (dataset, category, feature set), written atomically and
streamed image by image, read back with the big arrays memory-mapped, and refused when its settings differ.

Members: `settings` (JSON of the resolved settings, 0-d str array), `format` (int), `image_id` (N,) str,
`subset` (N,) str, `references` (N, K) int32 (indices into `train_ids`, -1 padded), `residuals`
(N, h, w, d) float16 signed (matched reference − query), and the fitted state under `state.<name>` that lets a
consumer compute residuals of new images (synthetic anomalies) with exactly the same bank (see residual.py).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from defectbench.data.images import DataError
from defectbench.io import atomic_path

FORMAT_VERSION = 1


class ArrayStreamWriter:
    """Writes named arrays into a ZIP_STORED .npz; `stream()` appends one array's rows chunk by chunk."""

    def __init__(self, path: Path):
        self.zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)

    def add(self, name: str, array: np.ndarray) -> None:
        with self.zip.open(f"{name}.npy", "w", force_zip64=True) as handle:
            npy_format.write_array(handle, np.asarray(array), allow_pickle=False)

    def stream(self, name: str, shape: tuple[int, ...], dtype: Any, chunks: Iterable[np.ndarray]) -> None:
        """Write array `name` of `shape` from an iterable of row chunks; their total must match `shape`."""
        header = {"descr": npy_format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": shape}
        rows = 0
        with self.zip.open(f"{name}.npy", "w", force_zip64=True) as handle:
            npy_format.write_array_header_2_0(handle, header)
            for chunk in chunks:
                chunk = np.ascontiguousarray(chunk, dtype=dtype)
                if chunk.shape[1:] != shape[1:]:
                    raise ValueError(f"chunk of {name} has shape {chunk.shape}, rows of {shape[1:]} expected")
                handle.write(chunk.tobytes())
                rows += len(chunk)
        if rows != shape[0]:
            raise ValueError(f"{name}: {rows} rows written, {shape[0]} declared")

    def close(self) -> None:
        self.zip.close()


def write_residual_file(
    dest: str | os.PathLike,
    settings: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    residual_shape: tuple[int, ...],
    residual_chunks: Iterable[np.ndarray],
    arrays_after: Callable[[], Mapping[str, np.ndarray]] = dict,
) -> Path:
    """Write the file atomically: nothing appears at `dest` unless every member was written.

    `arrays_after()` is called once the residuals are streamed (for arrays gathered while computing them).
    """
    with atomic_path(dest) as tmp:
        writer = ArrayStreamWriter(tmp)
        try:
            writer.add("format", np.array(FORMAT_VERSION))
            writer.add("settings", np.array(json.dumps(dict(settings), sort_keys=True)))
            for name, array in arrays.items():
                writer.add(name, array)
            writer.stream("residuals", residual_shape, np.float16, residual_chunks)
            for name, array in arrays_after().items():
                writer.add(name, array)
        finally:
            writer.close()
    return Path(dest)


def _memmap_member(path: Path, archive: zipfile.ZipFile, member: str) -> np.ndarray:
    """An uncompressed .npy member of the zip as a read-only memory map (no copy into memory)."""
    info = archive.getinfo(member)
    if info.compress_type != zipfile.ZIP_STORED:
        raise DataError(f"{path}: member {member} is compressed; the file was not written by defectbench")
    with open(path, "rb") as handle:
        handle.seek(info.header_offset)
        local = handle.read(30)
        name_length, extra_length = (
            int.from_bytes(local[26:28], "little"),
            int.from_bytes(local[28:30], "little"),
        )
        handle.seek(info.header_offset + 30 + name_length + extra_length)
        version = npy_format.read_magic(handle)
        reader = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, fortran, dtype = reader(handle)
        offset = handle.tell()
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, offset=offset, order="F" if fortran else "C")


class ResidualFile:
    """A residual file opened for reading; `residuals` is memory-mapped (N, h, w, d) float16."""

    def __init__(self, path: str | os.PathLike, expected: Mapping[str, Any] | None = None):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"residual file {self.path} does not exist; run `snakemake {self.path}`")
        try:
            with zipfile.ZipFile(self.path) as archive:
                names = set(archive.namelist())
                missing = {"format.npy", "settings.npy", "image_id.npy", "residuals.npy"} - names
                if missing:
                    raise DataError(
                        f"{self.path} lacks {sorted(missing)}: delete it and run `snakemake {self.path}`"
                    )
                small = {
                    n[:-4]: np.load(archive.open(n), allow_pickle=False)
                    for n in names
                    if n != "residuals.npy"
                }
                self.residuals = _memmap_member(self.path, archive, "residuals.npy")
        except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
            raise DataError(
                f"{self.path} is not a readable residual file ({err}); delete it and run `snakemake {self.path}`"
            ) from err
        if int(small["format"]) != FORMAT_VERSION:
            raise DataError(
                f"{self.path} has format {int(small['format'])}, this code reads {FORMAT_VERSION}: delete it and "
                f"run `snakemake {self.path}`"
            )
        self.settings: dict[str, Any] = json.loads(str(small["settings"]))
        self.image_id = [str(i) for i in small["image_id"]]
        self.arrays = small
        if len(self.image_id) != len(self.residuals):
            raise DataError(
                f"{self.path} holds {len(self.residuals)} residuals for {len(self.image_id)} images"
            )
        if expected is not None:
            check_settings(self.path, self.settings, expected)
        self._row = {image_id: row for row, image_id in enumerate(self.image_id)}

    def state(self) -> dict[str, np.ndarray]:
        """The fitted residual model's arrays (see ResidualModel.from_state)."""
        return {k.removeprefix("state."): v for k, v in self.arrays.items() if k.startswith("state.")}

    def rows(self, image_ids: list[str]) -> np.ndarray:
        """Row of each image id; an id the file lacks is an error naming the file."""
        missing = [i for i in image_ids if i not in self._row]
        if missing:
            raise DataError(
                f"{self.path} has no residuals for {missing[:3]} ({len(missing)} images): it was computed for "
                f"another split; delete it and run `snakemake {self.path}`"
            )
        return np.array([self._row[i] for i in image_ids], dtype=np.int64)

    def get(self, image_ids: list[str]) -> np.ndarray:
        """Residuals (n, h, w, d) float32 of the given images, in that order."""
        return np.asarray(self.residuals[self.rows(image_ids)], dtype=np.float32)


def check_settings(path: Path, recorded: Mapping[str, Any], expected: Mapping[str, Any]) -> None:
    """Refuse a residual file computed with other settings than the consumer expects (names the keys)."""
    expected = json.loads(json.dumps(dict(expected), sort_keys=True))  # tuples → lists, as recorded
    keys = sorted(set(recorded) | set(expected))
    differing = [k for k in keys if recorded.get(k) != expected.get(k)]
    if differing:
        details = "; ".join(
            f"{k}: file {recorded.get(k)!r}, expected {expected.get(k)!r}" for k in differing[:6]
        )
        raise DataError(
            f"{path} was computed with other settings ({details}); delete it and run `snakemake {path}` "
            "to recompute it with the current config/features.yaml"
        )
