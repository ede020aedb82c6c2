"""Readers: chunk-aligned blocks of canonical arrays, from canonical DataArrays or CF Datasets."""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr

from ..exceptions import DataError
from ._internals import ZarrDirect

logger = logging.getLogger(__name__)


_CORE_DIMS = ("time", "variable", "lat", "lon")

def canonical_order(da: xr.DataArray) -> xr.DataArray:
    missing = [d for d in _CORE_DIMS if d not in da.dims]
    if missing:
        raise DataError(f"expected a DataArray with dims (*batch, time, variable, lat, lon); missing {missing} in {da.dims}")
    return da.transpose(..., *_CORE_DIMS)


#: dask graphs up to this many tasks are materialised once and culled per read; larger ones per read
_FULL_GRAPH_TASKS = 200_000


def _scheduler(default: Any) -> Any:
    """A configured dask scheduler or client, else ``default`` (reads run in a loader thread)."""
    import dask

    return dask.base.get_scheduler() or default


def chunk_runs(chunks: Sequence[int]) -> list[list[int]]:
    """Consecutive chunk numbers grouped: [1, 2, 5] -> [[1, 2], [5]]."""
    out: list[list[int]] = []
    for c in sorted(chunks):
        if out and c == out[-1][-1] + 1:
            out[-1].append(c)
        else:
            out.append([c])
    return out


def _as_slice(idx: Sequence[int]) -> slice | list[int]:
    """A list of positions as a slice when it is a contiguous ascending run (views, not copies)."""
    idx = [int(i) for i in idx]
    if idx and idx == list(range(idx[0], idx[-1] + 1)):
        return slice(idx[0], idx[-1] + 1)
    return idx


class ArrayReader:
    """Blocks of a canonical DataArray ``(*batch, time, variable, lat, lon)``.

    Numpy-backed (or lazily indexed) arrays are sliced; for dask-backed ones the task graph is
    built once and the tasks of the wanted chunks are run directly (no per-read graph construction).
    """

    def __init__(self, da: xr.DataArray) -> None:
        self.array = da
        self.names = tuple(str(v) for v in da["variable"].values)
        self.times = np.asarray(da["time"].values)  # datetime64 or cftime, never converted
        self.batch_dims = tuple(da.dims[:-4])
        self.series_shape = tuple(da.shape[:-4])
        self.chunks = tuple(int(c) for c in da.chunks[-4]) if da.chunks else (self.times.size,)
        self.shape = tuple(da.shape[-2:])
        self.step_bytes = da.dtype.itemsize * int(np.prod(da.shape[-3:]))
        self._graph: dict | None = None

    def read(self, pos: tuple[int, ...], spans: Sequence[tuple[int, int]],
             chunks: Sequence[Sequence[int]]) -> list[tuple[np.ndarray, bool]]:
        """Raw ``[steps, V, lat, lon]`` arrays of the time spans (made of whole chunks), in one compute.

        Each comes with a flag: True if it is a new array that may be overwritten.
        """
        if self.array.chunks is None:
            sel = dict(zip(self.batch_dims, pos))
            return [(self.array.isel({**sel, "time": slice(lo, hi)}).values, False) for lo, hi in spans]
        import dask.core
        from dask.optimization import cull

        arr = self.array.data
        where = []  # (chunk number, offset) along each batch dim
        for p, ch in zip(pos, arr.chunks[: len(pos)]):
            edges = np.cumsum((0,) + ch)
            i = int(np.searchsorted(edges, p, side="right") - 1)
            where.append((i, p - int(edges[i])))
        head = (arr.name, *(w[0] for w in where))
        nv, ny, nx = (len(c) for c in arr.chunks[-3:])
        grids = [
            [[[[(*head, c, v, y, x) for x in range(nx)] for y in range(ny)] for v in range(nv)] for c in run]
            for run in chunks
        ]
        keys = [k for g in grids for blk in g for plane in blk for row in plane for k in row]
        if self._graph is None:
            hlg = arr.__dask_graph__()
            n_tasks = sum(len(layer) for layer in hlg.layers.values()) if hasattr(hlg, "layers") else len(hlg)
            if n_tasks <= _FULL_GRAPH_TASKS:
                self._graph = dict(hlg)
        dsk = cull(self._graph, keys)[0] if self._graph is not None else dict(arr.__dask_graph__().cull(set(keys)))
        values = dict(zip(keys, _scheduler(dask.core.get)(dsk, keys)))  # no per-task scheduling cost
        offset = tuple(w[1] for w in where)
        out = []
        for g in grids:
            blocks = [[[[values[k] for k in row] for row in plane] for plane in blk] for blk in g]
            parts = [b[0][0][0] if nv * ny * nx == 1 else np.block(b) for b in blocks]
            # a single task result may be a view of the user's data: never written to
            single = len(parts) == 1 and nv * ny * nx == 1
            out.append(((parts[0] if len(parts) == 1 else np.concatenate(parts, axis=len(pos)))[offset], not single))
        return out




class DatasetReader:
    """Blocks of the canonical array of a CF Dataset, read from its source variables.

    The read plan (which source variable, level and unit conversion gives each ClimaX variable)
    is made once with :func:`xclimax.tokens.find_variables`. A read loads the time range of every
    source variable in one compute (a few tasks per source variable instead of several per
    ClimaX variable), then selects levels, converts units and stacks in numpy, one array
    operation per source variable. The values equal ``tokens.to_array(ds, names)``.
    """

    def __init__(self, ds: xr.Dataset, names: Sequence[str] | None, *, extra_variables: Any = None,
                 variable_map: Mapping[str, str] | None = None) -> None:
        from ..cf import tokens
        from ..cf.grid import normalize_grid
        from ..cf.time import time_dim

        norm, _ = normalize_grid(ds)
        tdim = time_dim(norm)
        if tdim != "time":
            norm = norm.rename({tdim: "time"})
        found = tokens.find_variables(norm, names, extra_variables=extra_variables, variable_map=variable_map,
                                      strict=names is not None)
        if not found:
            raise DataError(f"no ClimaX variable found in the Dataset (data variables: {list(ds.data_vars)})")
        self.names = tuple(found)
        self.times = np.asarray(norm["time"].values)  # datetime64 or cftime, never converted
        self.shape = (norm.sizes["lat"], norm.sizes["lon"])
        self.step_bytes = 4 * len(self.names) * int(np.prod(self.shape))
        self.lat = np.asarray(norm["lat"].values, dtype=np.float32)
        # groups of ClimaX variables taken from one source variable the same way: vectorised reads
        groups: dict[tuple, list[tuple[int, int | None]]] = {}
        batch: list[str] = []
        for p, vs in enumerate(found.values()):
            if vs.source is None:
                continue  # lattitude
            sel_dims = tuple(vs.selection)
            level_dim = sel_dims[0] if len(sel_dims) == 1 else None
            key = (vs.source, level_dim, vs.drop_dims, vs.kind, vs.scale, vs.offset,
                   None if level_dim else tuple(vs.selection.items()))
            groups.setdefault(key, []).append((p, vs.selection[level_dim] if level_dim else None))
            skip = {"time", "lat", "lon", *sel_dims, *vs.drop_dims}
            batch += [d for d in norm[vs.source].dims if d not in skip and d not in batch]
        self.groups = groups
        self.lattitude = [p for p, vs in enumerate(found.values()) if vs.source is None]
        self.batch_dims = tuple(batch)
        self.series_shape = tuple(norm.sizes[d] for d in batch)
        self.ds = norm[list(dict.fromkeys(k[0] for k in groups))]
        if any(v.chunks for v in self.ds.data_vars.values()):
            chunks = tuple(norm.chunksizes.get("time", (self.times.size,)))
        else:  # numpy, or lazily opened files (chunks=None): read by the chunks on disk, without dask
            on_disk = [v.encoding.get("preferred_chunks", {}).get("time") for v in self.ds.data_vars.values()
                       if "time" in v.dims]
            step = max([c for c in on_disk if c] or [self.times.size])
            chunks = (step,) * (self.times.size // step) + ((self.times.size % step,) if self.times.size % step else ())
        self.chunks = tuple(int(c) for c in chunks)
        self.direct = ZarrDirect.attach(self.ds)

    def read(self, pos: tuple[int, ...], spans: Sequence[tuple[int, int]],
             chunks: Sequence[Sequence[int]]) -> list[tuple[np.ndarray, bool]]:
        """Canonical float32 ``[steps, V, lat, lon]`` arrays of the time spans (new arrays), in one compute."""
        import dask

        at = dict(zip(self.batch_dims, pos))
        names, sels = [], []
        for lo, hi in spans:
            for name, da in self.ds.data_vars.items():
                sel = {d: i for d, i in at.items() if d in da.dims}
                if "time" in da.dims:
                    sel["time"] = (lo, hi)
                names.append(str(name))
                sels.append(sel)
        if self.direct is not None:
            loaded = iter(xr.DataArray(v) for v in self.direct.read(names, sels))
        else:
            lazy = [self.ds[n].variable.isel({d: slice(*r) if isinstance(r, tuple) else r for d, r in s.items()})
                    for n, s in zip(names, sels)]
            data = dask.compute(*[v.data for v in lazy], scheduler=_scheduler("sync"))
            loaded = iter(xr.DataArray(v.copy(data=d)) for v, d in zip(lazy, data))
        out = []
        for lo, hi in spans:
            src = {name: next(loaded) for name in self.ds.data_vars}
            block = np.empty((hi - lo, len(self.names), *self.shape), np.float32)
            for (var, level_dim, drop, kind, scale, offset, sel), items in self.groups.items():
                x = src[var]
                x = x.isel({d: 0 for d in drop if d in x.dims})
                if kind == "constant" and "time" in x.dims:
                    x = x.isel(time=0)
                if level_dim is not None:
                    x = x.isel({level_dim: _as_slice([i for _, i in items])})
                else:
                    x = x.isel(dict(sel)).expand_dims("_token")
                    level_dim = "_token"
                x = x.transpose(*(["time"] if "time" in x.dims else []), level_dim, "lat", "lon").values
                if scale != 1.0 or offset != 0.0:
                    x = x * scale + offset
                block[:, _as_slice([p for p, _ in items])] = x.astype(np.float32, copy=False)
            block[:, self.lattitude] = self.lat[:, None]
            out.append((block, True))
        return out


