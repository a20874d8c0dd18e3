"""Labelled, resumable results: an ``xarray.Dataset`` in a zarr folder.

A result has named dimensions with explicit coordinates (``t`` for a line, ``x`` and ``y`` for a plane),
one float64 variable per metric (``train_loss``, ``test_accuracy``, ...) and provenance in its attributes
(model and data hashes, seed, versions, command, BN policy, family). Grid order is row-major over the
dimensions, in the order given (one home: `modescape.landscape.Grid`).

Work is split into *units*: unit u covers indices ``[u * rows, (u + 1) * rows)`` of the first dimension
and everything of the others, and is exactly one zarr chunk of every metric array. A unit is written,
then marked in the ``done_units`` array (one chunk per unit). Zarr's local store writes every chunk to
a temporary file and renames it, so a run killed at any instant (SIGKILL included) leaves each chunk
either old or new; on rerun only the units not marked done are computed again, and the final values
equal an uninterrupted run's bit for bit. Ranks under ``torchrun`` own disjoint units, hence disjoint
chunks. The folder is created under a temporary name and renamed into place, so a half-created store
never appears.

``settings`` (a JSON-able dict of everything that determines the numbers: grid, family, model, data,
BN policy, evaluation mode) is stored with a hash; reopening with different settings is refused with a
message saying what differs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr

from .errors import UserError
from .io import json_default

FORMAT = "modescape-result/1"
DONE = "done_units"


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A short hash of canonical JSON of ``settings``."""
    text = json.dumps(settings, sort_keys=True, default=json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def clean_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes made JSON-safe (round trip through JSON)."""
    return json.loads(json.dumps(dict(attrs), default=json_default))


def empty_dataset(coords: Mapping[str, np.ndarray], names: Sequence[str], attrs: Mapping[str, Any] | None = None,
                  fill: float = np.nan) -> xr.Dataset:
    """A Dataset with the given coordinates (dims in order) and one float64 variable per name."""
    dims = list(coords)
    shape = tuple(len(coords[d]) for d in dims)
    data = {n: (dims, np.full(shape, fill, dtype=np.float64)) for n in names}
    return xr.Dataset(data, coords={d: np.asarray(coords[d], dtype=np.float64) for d in dims},
                      attrs=clean_attrs(attrs or {}))


class ResultStore:
    """A zarr folder holding one result; see the module docstring. Open with `ResultStore.open_or_create`."""

    def __init__(self, path: str | os.PathLike, mode: str = "r+"):
        self.path = Path(path)
        try:
            import zarr

            self.group = zarr.open_group(str(self.path), mode=mode)
            attrs = dict(self.group.attrs)
            if attrs.get("format") != FORMAT:
                raise ValueError(f"format is {attrs.get('format')!r}")
            self.dims: list[str] = list(attrs["dims"])
            self.names: list[str] = list(attrs["metrics"])
            self.rows: int = int(attrs["unit_rows"])
            self.settings_hash: str = attrs["settings_hash"]
            self.shape = tuple(int(self.group[d].shape[0]) for d in self.dims)
            for n in self.names + [DONE]:
                self.group[n]  # noqa: B018 - must exist
        except UserError:
            raise
        except Exception as e:  # a corrupt or foreign folder: one line, and what to do
            first = str(e).splitlines()[0] if str(e) else "unreadable"
            raise UserError(f"{self.path} is not a readable modescape result ({type(e).__name__}: {first}): "
                            f"point at a folder written by interpolate, surface or trajectory, or delete it and rerun") from None

    # -- creation ------------------------------------------------------------------------------
    @classmethod
    def open_or_create(cls, path: str | os.PathLike, coords: Mapping[str, np.ndarray], names: Sequence[str],
                       settings: Mapping[str, Any], attrs: Mapping[str, Any] | None = None,
                       unit_rows: int = 1) -> "ResultStore":
        """Reopen ``path`` when it holds the same ``settings`` (resuming), else create it.

        Creating happens in a temporary folder renamed into place. An existing store with other
        settings raises `UserError`.
        """
        path = Path(path)
        h = settings_hash(settings)
        if path.exists():
            store = cls(path)
            if store.settings_hash != h:
                old = store.attrs.get("settings", {})
                diff = sorted(k for k in set(old) | set(settings)
                              if json.dumps(old.get(k), sort_keys=True, default=json_default)
                              != json.dumps(settings.get(k), sort_keys=True, default=json_default))
                raise UserError(f"{path} holds a result made with different settings ({', '.join(diff) or 'unknown'} "
                                f"differ): use another --out, or delete it to start over")
            return store
        dims = list(coords)
        n0 = len(coords[dims[0]])
        rows = max(1, min(int(unit_rows), n0))
        n_units = -(-n0 // rows)
        all_attrs = {**clean_attrs(attrs or {}), "format": FORMAT, "dims": dims, "metrics": list(names),
                     "unit_rows": rows, "n_units": n_units, "settings": clean_attrs(settings),
                     "settings_hash": h, "complete": False,
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        ds = empty_dataset(coords, names, all_attrs)
        ds[DONE] = (("unit",), np.zeros(n_units, dtype=np.uint8))
        chunks = (rows,) + tuple(len(coords[d]) for d in dims[1:])
        encoding = {n: {"chunks": chunks} for n in names}
        encoding[DONE] = {"chunks": (1,)}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        ds.to_zarr(str(tmp), mode="w", encoding=encoding, consolidated=False)
        try:
            os.rename(tmp, path)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            if not path.exists():
                raise
        return cls(path)

    # -- units ---------------------------------------------------------------------------------
    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def n_units(self) -> int:
        return -(-self.shape[0] // self.rows)

    def unit_slice(self, u: int) -> slice:
        return slice(u * self.rows, min((u + 1) * self.rows, self.shape[0]))

    def done(self) -> np.ndarray:
        """[n_units] bool: which units are written."""
        return np.asarray(self.group[DONE][:]).astype(bool)

    def write_unit(self, u: int, values: np.ndarray) -> None:
        """Write unit u's values ([points of the unit, M] in row-major grid order), then mark it done."""
        sl = self.unit_slice(u)
        shape = (sl.stop - sl.start,) + self.shape[1:]
        values = np.asarray(values, dtype=np.float64).reshape(int(np.prod(shape)), len(self.names))
        for j, n in enumerate(self.names):
            self.group[n][sl] = values[:, j].reshape(shape)
        self.group[DONE][u] = 1

    def set_attrs(self, **attrs: Any) -> None:
        self.group.attrs.update(clean_attrs(attrs))

    def finish(self, **attrs: Any) -> None:
        """Mark the result complete (all units must be done)."""
        missing = int((~self.done()).sum())
        if missing:
            raise UserError(f"{self.path}: {missing} of {self.n_units} units are not computed yet; rerun to finish")
        self.set_attrs(complete=True, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **attrs)
        # consolidated metadata: a plain xr.open_zarr(path) then opens the finished result without a warning
        import warnings

        import zarr

        with warnings.catch_warnings():  # zarr 3: "not part of the format 3 specification" (xarray reads it)
            warnings.simplefilter("ignore")
            zarr.consolidate_metadata(str(self.path))

    def dataset(self) -> xr.Dataset:
        """The result, loaded into memory (without the bookkeeping array)."""
        return load(self.path)


def load(path: str | os.PathLike) -> xr.Dataset:
    """Open a result folder (``result.zarr``, or a folder containing one) as an in-memory Dataset."""
    p = Path(path)
    if p.is_dir() and not (p / "zarr.json").exists() and (p / "result.zarr").exists():
        p = p / "result.zarr"
    if not p.exists() or (p.is_dir() and not (p / "zarr.json").exists() and not p.name.endswith(".zarr")):
        raise UserError(f"no result at {p}: pass a result.zarr folder or the --out folder of a sweep")
    ResultStore(p, mode="r")  # validates, one-line error when corrupt
    try:
        ds = xr.open_zarr(str(p), consolidated=False).load()
    except Exception as e:
        raise UserError(f"{p} is not a readable modescape result ({type(e).__name__}): delete it and rerun") from None
    return ds.drop_vars([DONE], errors="ignore")
