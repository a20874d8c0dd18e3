"""Labelled, resumable results: an ``xarray.Dataset`` in a zarr folder.

A result has named dimensions with explicit coordinates (``t`` for a line, ``x`` and ``y`` for a plane),
one float64 variable per metric (``train_loss``, ``test_accuracy``, ...) and provenance in its attributes
(model and data hashes, seed, versions, command, BN policy, family). Grid order is row-major over the
dimensions, in the order given (one home: `modescape.landscape.Grid`).

Work is split into *units*: unit u covers indices ``[u * rows, (u + 1) * rows)`` of the first dimension
and everything of the others, and is exactly one zarr chunk of every metric array. A unit is written,
then its checksum (``unit_checksums``: 64 bits of BLAKE2b over its values, NaN made canonical), then
it is marked in the completion mask ``done_units`` (each of these one chunk per unit). Zarr's local
store writes every chunk to a temporary file and renames it, so a run killed at any instant (SIGKILL
included) leaves each chunk either old or new; on rerun only the units not marked done are computed
again, and the final values equal an uninterrupted run's bit for bit. Ranks under ``torchrun`` own
disjoint units, hence disjoint chunks. The folder is created under a temporary name and renamed into
place, so a half-created store never appears.

Damage is detected, not read as data: every unit marked done is checked (`ResultStore.damaged`: its
chunks decode and match its checksum; a deleted chunk reads as NaN and does not match) when a store is
reopened to resume, and by `load`. `load` refuses a damaged result with one line saying which units
and points and what to do; reopening marks them not done (`ResultStore.repaired`), so the rerun
computes exactly them again and keeps the others bit for bit. (A store written before checksums has
none: there a done unit that fails to decode or reads as NaN throughout counts as damaged, and
reopening adds the checksums.) Coordinates carry checksums as well (attribute ``coord_checksums``): `load`
refuses a result whose coordinates are lost or corrupt, and reopening rewrites them from the grid. Writers
take a lock (`modescape.locks`) so two processes never write one store.

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import xarray as xr

from .errors import UserError
from .io import json_default

FORMAT = "modescape-result/1"
DONE = "done_units"
CHECKSUMS = "unit_checksums"
BOOKKEEPING = (DONE, CHECKSUMS)
COORD_CHECKSUMS = "coord_checksums"  # attribute: per dimension, the checksum of its coordinates (hex)


def unit_checksum(blocks: Sequence[np.ndarray]) -> int:
    """A unit's checksum: 64 bits of BLAKE2b over its metric blocks (float64, little-endian, in metric
    order), every NaN made the canonical one (zarr stores an all-NaN chunk as nothing, which reads back
    as the fill NaN); never 0, which means "none"."""
    h = hashlib.blake2b(digest_size=8)
    for b in blocks:
        b = np.asarray(b, dtype=np.float64)
        h.update(np.ascontiguousarray(np.where(np.isnan(b), np.nan, b), dtype="<f8").tobytes())
    return int.from_bytes(h.digest(), "little") or 1


def _ranges(items: Sequence[tuple[int, int]], limit: int = 8) -> str:
    """ "3, 5-7, ..." from (first, last) pairs; at most ``limit`` shown, then how many more ("and 4 more")."""
    text = [f"{a}" if a == b else f"{a}-{b}" for a, b in items[:limit]]
    if len(items) > limit:
        text.append(f"and {len(items) - limit} more")
    return ", ".join(text)


def settings_hash(settings: Mapping[str, Any]) -> str:
    """A short hash of canonical JSON of ``settings``."""
    text = json.dumps(settings, sort_keys=True, default=json_default)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def clean_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Attributes made JSON-safe (round trip through JSON)."""
    return json.loads(json.dumps(dict(attrs), default=json_default))


def empty_dataset(
    coords: Mapping[str, np.ndarray], names: Sequence[str], attrs: Mapping[str, Any] | None = None, fill: float = np.nan
) -> xr.Dataset:
    """A Dataset with the given coordinates (dims in order) and one float64 variable per name."""
    dims = list(coords)
    shape = tuple(len(coords[d]) for d in dims)
    data = {n: (dims, np.full(shape, fill, dtype=np.float64)) for n in names}
    return xr.Dataset(
        data, coords={d: np.asarray(coords[d], dtype=np.float64) for d in dims}, attrs=clean_attrs(attrs or {})
    )


class ResultStore:
    """A zarr folder holding one result; see the module docstring. Open with `ResultStore.open_or_create`."""

    def __init__(self, path: str | os.PathLike, mode: Literal["r", "r+"] = "r+"):
        self.path = Path(path)
        try:
            import zarr

            # Any: zarr types group[name] as Array | Group; every name read here is an array this class wrote
            self.group: Any = cast(Any, zarr.open_group(str(self.path), mode=mode))
            attrs: dict[str, Any] = dict(self.group.attrs)
            if attrs.get("format") != FORMAT:
                raise ValueError(f"format is {attrs.get('format')!r}")
            self.dims: list[str] = list(attrs["dims"])
            self.names: list[str] = list(attrs["metrics"])
            self.rows: int = int(attrs["unit_rows"])
            self.settings_hash: str = attrs["settings_hash"]
            self.shape = tuple(int(self.group[d].shape[0]) for d in self.dims)
            for n in self.names + [DONE]:
                self.group[n]  # noqa: B018 - must exist
            self.has_checksums: bool = CHECKSUMS in self.group
            self.repaired: list[int] = []  # units found damaged, and marked not done, on reopening
            self.reopened: bool = False  # whether open_or_create found this store already there
        except UserError:
            raise
        except Exception as e:  # a corrupt or foreign folder: one line, and what to do
            first = str(e).splitlines()[0] if str(e) else "unreadable"
            raise UserError(
                f"{self.path} is not a readable modescape result ({type(e).__name__}: {first}): "
                f"point at a folder written by interpolate, surface or trajectory, or delete it and rerun"
            ) from None

    # -- creation ------------------------------------------------------------------------------
    @classmethod
    def open_or_create(
        cls,
        path: str | os.PathLike,
        coords: Mapping[str, np.ndarray],
        names: Sequence[str],
        settings: Mapping[str, Any],
        attrs: Mapping[str, Any] | None = None,
        unit_rows: int = 1,
    ) -> ResultStore:
        """Reopen ``path`` when it holds the same ``settings`` (resuming), else create it.

        Creating happens in a temporary folder renamed into place. An existing store with other
        settings raises `UserError`. On reopening, every unit marked done is checked (`damaged`); the
        damaged ones are marked not done, to be computed again, and listed in ``store.repaired``.
        """
        path = Path(path)
        h = settings_hash(settings)
        if path.exists():
            store = cls(path)
            if store.settings_hash != h:
                old = store.attrs.get("settings", {})
                diff = sorted(
                    k
                    for k in set(old) | set(settings)
                    if json.dumps(old.get(k), sort_keys=True, default=json_default)
                    != json.dumps(settings.get(k), sort_keys=True, default=json_default)
                )
                raise UserError(
                    f"{path} holds a result made with different settings ({', '.join(diff) or 'unknown'} "
                    f"differ): use another --out, or delete it to start over"
                )
            store.reopened = True
            for d in store.damaged_coords():  # a lost or corrupt coordinate chunk: rewritten from the grid
                store.group[d][:] = np.asarray(coords[d], dtype=np.float64)
            store.repair()
            return store
        dims = list(coords)
        n0 = len(coords[dims[0]])
        rows = max(1, min(int(unit_rows), n0))
        n_units = -(-n0 // rows)
        all_attrs = {
            **clean_attrs(attrs or {}),
            "format": FORMAT,
            "dims": dims,
            "metrics": list(names),
            "unit_rows": rows,
            "n_units": n_units,
            "settings": clean_attrs(settings),
            COORD_CHECKSUMS: {d: f"{unit_checksum([coords[d]]):016x}" for d in dims},
            "settings_hash": h,
            "complete": False,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        ds = empty_dataset(coords, names, all_attrs)
        ds[DONE] = (("unit",), np.zeros(n_units, dtype=np.uint8))
        ds[CHECKSUMS] = (("unit",), np.zeros(n_units, dtype=np.uint64))
        chunks = (rows,) + tuple(len(coords[d]) for d in dims[1:])
        encoding = {n: {"chunks": chunks} for n in names}
        encoding[DONE] = {"chunks": (1,)}
        encoding[CHECKSUMS] = {"chunks": (1,)}
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

    def unit_points(self, u: int) -> tuple[int, int]:
        """(first, last) flat index, in row-major grid order, of the points of unit u."""
        sl = self.unit_slice(u)
        inner = int(np.prod(self.shape[1:], dtype=np.int64))
        return sl.start * inner, sl.stop * inner - 1

    def points_done(self) -> int:
        """How many grid points lie in units marked done."""
        return sum(self.unit_points(u)[1] - self.unit_points(u)[0] + 1 for u in np.flatnonzero(self.done()).tolist())

    def _vector(self, name: str) -> tuple[np.ndarray, list[int]]:
        """A per-unit bookkeeping array, and the units whose chunk of it cannot be read (those read as 0)."""
        arr = self.group[name]
        try:
            return np.asarray(arr[:]), []
        except Exception:
            out, bad = np.zeros(self.n_units, dtype=arr.dtype), []
            for u in range(self.n_units):
                try:
                    out[u] = arr[u]
                except Exception:
                    bad.append(u)
            return out, bad

    def done(self) -> np.ndarray:
        """[n_units] bool: which units are marked done (an unreadable mark counts as not done)."""
        return self._vector(DONE)[0].astype(bool)

    def write_unit(self, u: int, values: np.ndarray) -> None:
        """Write unit u's values ([points of the unit, M] in row-major grid order), its checksum, then mark
        it done (the commit)."""
        sl = self.unit_slice(u)
        shape = (sl.stop - sl.start,) + self.shape[1:]
        values = np.asarray(values, dtype=np.float64).reshape(int(np.prod(shape)), len(self.names))
        blocks = [values[:, j].reshape(shape) for j in range(len(self.names))]
        for n, b in zip(self.names, blocks, strict=True):
            self.group[n][sl] = b
        if self.has_checksums:
            self.group[CHECKSUMS][u] = np.uint64(unit_checksum(blocks))
        self.group[DONE][u] = 1

    def scan(self) -> tuple[dict[str, np.ndarray], np.ndarray, list[int]]:
        """Read everything once and check it: (each metric's values, the done mask, the damaged units).

        Values of units that are not marked done, or are damaged, are NaN. A unit marked done is damaged
        when a chunk of it (values, checksum or mark) does not decode, when its values do not match its
        checksum (a deleted chunk reads as NaN), or when the result says it is complete but the unit is
        not marked done (a lost mark). Reads only.
        """
        marks, bad_marks = self._vector(DONE)
        done = marks.astype(bool)
        bad = set(bad_marks)
        complete = bool(self.attrs.get("complete"))
        if complete:
            bad |= {int(u) for u in np.flatnonzero(~done)}
        sums, bad_sums = self._vector(CHECKSUMS) if self.has_checksums else (None, [])
        bad |= {u for u in bad_sums if done[u]}
        values = {}
        for n in self.names:  # one read per metric; unit by unit only when some chunk fails to decode
            arr = self.group[n]
            try:
                values[n] = np.array(arr[:], dtype=np.float64)
            except Exception:
                values[n] = np.full(self.shape, np.nan)
                for u in range(self.n_units):
                    sl = self.unit_slice(u)
                    try:
                        values[n][sl] = arr[sl]
                    except Exception:
                        values[n][sl] = np.nan
                        bad.add(u)
        for u in map(int, np.flatnonzero(done)):
            if u in bad:
                continue
            blocks = [values[n][self.unit_slice(u)] for n in self.names]
            if sums is not None:
                if int(sums[u]) != unit_checksum(blocks):
                    bad.add(u)
            elif all(np.isnan(b).all() for b in blocks):  # no checksums (an older store): a lost chunk reads NaN
                bad.add(u)
        damaged = sorted(u for u in bad if done[u] or u in bad_marks or complete)  # else: simply not computed yet
        for u in [*np.flatnonzero(~done), *damaged]:
            for n in self.names:
                values[n][self.unit_slice(int(u))] = np.nan
        return values, done, damaged

    def damaged_coords(self) -> list[str]:
        """The dimensions whose coordinates are missing or corrupt: a chunk that does not decode, a length
        that is not the dimension's, values that do not match the checksum written at creation (a deleted
        chunk reads as the fill NaN), or, in a store written before those checksums, non-finite values
        (every grid's coordinates are finite). Reads only."""
        sums = self.attrs.get(COORD_CHECKSUMS) or {}
        bad = []
        for d, n in zip(self.dims, self.shape, strict=True):
            try:
                values = np.asarray(self.group[d][:], dtype=np.float64)
            except Exception:
                bad.append(d)
                continue
            if (
                values.shape != (n,)
                or not np.isfinite(values).all()
                or (d in sums and sums[d] != f"{unit_checksum([values]):016x}")
            ):
                bad.append(d)
        return bad

    def damaged(self) -> list[int]:
        """The units marked done whose values are missing or corrupt, sorted (see `scan`). Reads only."""
        return self.scan()[2]

    def describe_units(self, units: Sequence[int]) -> str:
        """ "units 3, 5-6 (points 21-27, 35-48)": units, runs of consecutive ones joined, and their flat
        point indices in row-major grid order, for messages."""
        runs: list[tuple[int, int]] = []
        for u in sorted(int(u) for u in units):
            if runs and u == runs[-1][1] + 1:
                runs[-1] = (runs[-1][0], u)
            else:
                runs.append((u, u))
        word = "unit" if len(units) == 1 else "units"
        return (
            f"{word} {_ranges(runs)} "
            f"(points {_ranges([(self.unit_points(a)[0], self.unit_points(b)[1]) for a, b in runs])})"
        )

    def repair(self) -> list[int]:
        """Mark the damaged units not done (so a rerun computes them again), clear their values, and mark
        the result not complete; add checksums to a store written without them. Returns the damaged
        units (also kept in ``repaired``)."""
        values, done, bad = self.scan()
        changed = False
        if not self.has_checksums:
            self.group.create_array(
                CHECKSUMS, shape=(self.n_units,), chunks=(1,), dtype="uint64", fill_value=0, dimension_names=["unit"]
            )
            self.has_checksums = changed = True
            for u in set(map(int, np.flatnonzero(done))) - set(bad):
                blocks = [values[n][self.unit_slice(u)] for n in self.names]
                self.group[CHECKSUMS][u] = np.uint64(unit_checksum(blocks))
        for u in bad:
            self.group[DONE][u] = 0  # the mark first: a unit is never done without its checksum
            self.group[CHECKSUMS][u] = np.uint64(0)
            for n in self.names:  # and no damaged chunk stays behind (an all-NaN chunk is stored as none)
                self.group[n][self.unit_slice(u)] = np.nan
        if bad and self.attrs.get("complete"):
            self.set_attrs(complete=False)
            changed = True
        if changed:  # consolidated metadata (a plain xr.open_zarr, later opens) must list the new array and
            self._consolidate()  # must not keep a stale "complete"
        self.repaired = bad
        return bad

    def set_attrs(self, **attrs: Any) -> None:
        self.group.attrs.update(clean_attrs(attrs))

    def finish(self, **attrs: Any) -> None:
        """Mark the result complete (all units must be done)."""
        missing = int((~self.done()).sum())
        if missing:
            raise UserError(f"{self.path}: {missing} of {self.n_units} units are not computed yet; rerun to finish")
        self.set_attrs(complete=True, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **attrs)
        self._consolidate()

    def _consolidate(self) -> None:
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
    st = ResultStore(p, mode="r")  # validates, one-line error when corrupt
    coords = st.damaged_coords()
    if coords:
        raise UserError(
            f"result {p} is damaged: the coordinates of {', '.join(coords)} are missing or corrupt; rerun "
            f"the command that made it with the same --out to rewrite them"
        )
    values, _, bad = st.scan()
    if bad:
        raise UserError(
            f"result {p} is damaged: {st.describe_units(bad)} {'is' if len(bad) == 1 else 'are'} "
            f"missing or corrupt; rerun the command that made it with the same --out to recompute them"
        )
    try:  # coordinates and attributes through xarray; the metrics as read and checked above
        ds = xr.open_zarr(str(p), consolidated=False, drop_variables=[*BOOKKEEPING, *st.names]).load()
    except Exception as e:
        raise UserError(f"{p} is not a readable modescape result ({type(e).__name__}): delete it and rerun") from None
    for n in st.names:
        ds[n] = (st.dims, values[n])
    return ds
