"""Training samples straight from xarray: a pure sample index, block shuffling and a prefetching loader.

The work is split in two layers, as in xbatcher's ``BatchSchema``/``BatchGenerator``:

1. **Pure index.** :func:`sample_index` lists every valid ``(input time, target time, lead)``
   pair of a time axis. Pairs are found by time value, so they cross chunk boundaries and
   nothing is lost at chunk ends (unlike ClimaX's shard files, which drop the last
   ``max_predict_range`` steps of every shard). :func:`split_times` makes train/validation
   masks; a pair is used only when both of its times are inside the mask.
2. **Plan and read.** :class:`BatchLoader` cuts the input times into chunk-aligned *blocks*,
   shuffles the blocks, and draws batches at random from a small pool of samples from
   recently opened blocks (bounded memory, no 10,000-sample shuffle buffer). The plan of an
   epoch (which samples go into which batch) is computed from the seed alone, before any
   data are read, so a run can resume at any batch. Each block is then read with **one**
   compute over a task graph built once, by whole time chunks; each chunk is normalised once
   and cached while the plan still needs it (so the chunks holding a block's targets are not
   decoded again for the next block), within a memory budget. A helper thread reads the next
   block while batches are assembled in a background thread (optionally pinned for CUDA).

Sources are canonical DataArrays ``(*batch_dims, "time", "variable", "lat", "lon")`` (see
``docs/design.md``) or CF Datasets: for a Dataset the loader reads the *source* variables
(a few tasks per source variable, or plain file reads for ``open_zarr(..., chunks=None)``)
and selects levels, converts units and stacks in numpy, giving the values of
``tokens.to_array`` at a fraction of the cost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import xarray as xr

from .exceptions import DataError

__all__ = [
    "SampleIndex",
    "Batch",
    "BatchLoader",
    "time_step",
    "lead_choices",
    "sample_index",
    "split_times",
]

logger = logging.getLogger(__name__)

_CORE_DIMS = ("time", "variable", "lat", "lon")


# ----------------------------------------------------------------------------- pure index


def time_step(times: Any) -> np.timedelta64:
    """The time step of a time axis: the smallest positive difference between its values.

    Examples
    --------
    >>> import pandas as pd
    >>> pd.Timedelta(time_step(pd.date_range("2000-01-01", periods=4, freq="6h")))
    Timedelta('0 days 06:00:00')
    """
    t = np.asarray(times, dtype="datetime64[ns]")
    if t.size < 2:
        raise DataError(f"need at least 2 time steps to build forecast pairs; found {t.size}")
    d = np.diff(t)
    if (d <= np.timedelta64(0)).any():
        raise DataError("time coordinate must be strictly increasing; found repeated or decreasing values")
    return d.min()


def lead_choices(lead_times: Any, step: np.timedelta64) -> np.ndarray:
    """The lead times allowed for training: multiples of ``step`` in an inclusive range.

    Parameters
    ----------
    lead_times : str, timedelta or (lo, hi) pair
        One lead time, or the inclusive range to draw lead times from.
    step : numpy.timedelta64
        Time step of the data (:func:`time_step`).

    Examples
    --------
    >>> lead_choices(("6h", "24h"), np.timedelta64(6, "h")) / np.timedelta64(1, "h")
    array([ 6., 12., 18., 24.])
    """
    if isinstance(lead_times, (list, tuple)):
        if len(lead_times) != 2:
            raise DataError(f"lead_times must be one lead or a (min, max) pair; got {lead_times!r}")
        lo, hi = (pd.Timedelta(v).to_timedelta64() for v in lead_times)
    else:
        lo = hi = pd.Timedelta(lead_times).to_timedelta64()
    step = np.timedelta64(step, "ns")
    if lo <= np.timedelta64(0) or hi < lo:
        raise DataError(f"lead times must be positive with min <= max; got {lo} to {hi}")
    k = np.arange(-(-lo // step), hi // step + 1)  # ceil(lo/step) .. floor(hi/step)
    if k.size == 0:
        raise DataError(
            f"no multiple of the data's time step ({pd.Timedelta(step)}) lies in the lead-time range "
            f"{pd.Timedelta(lo)} to {pd.Timedelta(hi)}"
        )
    return k * step


@dataclass(frozen=True)
class SampleIndex:
    """All valid forecast pairs of one time axis, sorted by input time then lead.

    Attributes
    ----------
    input, target : numpy.ndarray of int64
        Positions on the time axis of the input state and of the target state.
    lead : numpy.ndarray of timedelta64[ns]
        ``time[target] - time[input]``.
    """

    input: np.ndarray
    target: np.ndarray
    lead: np.ndarray

    def __len__(self) -> int:
        return int(self.input.size)

    @property
    def lead_hours(self) -> np.ndarray:
        """Lead times in hours (float64)."""
        return self.lead / np.timedelta64(1, "h")


def sample_index(times: Any, lead_times: Any, *, mask: np.ndarray | None = None) -> SampleIndex:
    """List every ``(input, target, lead)`` pair of a time axis.

    A pair exists when ``time[input] + lead`` is itself on the axis for a lead returned by
    :func:`lead_choices`. Pairs are matched by value, so gaps in the axis are handled and
    no pair is dropped at chunk boundaries.

    Parameters
    ----------
    times : array-like of datetime64
        The time coordinate (strictly increasing).
    lead_times : str, timedelta or (lo, hi) pair
        One lead time or an inclusive range.
    mask : numpy.ndarray of bool, optional
        Times that may be used (e.g. the training period); both ends of a pair must be in it.

    Examples
    --------
    >>> import pandas as pd
    >>> idx = sample_index(pd.date_range("2000-01-01", periods=5, freq="6h"), ("6h", "12h"))
    >>> idx.input.tolist(), idx.target.tolist()
    ([0, 0, 1, 1, 2, 2, 3], [1, 2, 2, 3, 3, 4, 4])
    """
    t = np.asarray(times, dtype="datetime64[ns]")
    leads = lead_choices(lead_times, time_step(t))
    ok = np.ones(t.size, bool) if mask is None else np.asarray(mask, bool)
    if ok.shape != t.shape:
        raise DataError(f"mask must have one value per time step ({t.size}); got shape {ok.shape}")
    wanted = t[:, None] + leads[None, :]  # [T, K]
    pos = np.searchsorted(t, wanted).clip(max=t.size - 1)
    valid = (t[pos] == wanted) & ok[:, None] & ok[pos]
    i, k = np.nonzero(valid)  # row-major: sorted by input, then lead
    return SampleIndex(i.astype(np.int64), pos[i, k].astype(np.int64), leads[k])


def split_times(times: Any, val: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Boolean train and validation masks over a time axis.

    Parameters
    ----------
    times : array-like of datetime64
    val : slice, float or None
        ``slice(start, stop)`` of time labels (inclusive, like ``.sel``) for validation, or a
        fraction in (0, 1): the last part of the period. ``None``: no validation.

    Examples
    --------
    >>> import pandas as pd
    >>> train, val = split_times(pd.date_range("2000-01-01", periods=10, freq="D"), 0.2)
    >>> int(train.sum()), int(val.sum()), bool(val[-1])
    (8, 2, True)
    """
    t = pd.DatetimeIndex(np.asarray(times, dtype="datetime64[ns]"))
    if val is None:
        return np.ones(t.size, bool), np.zeros(t.size, bool)
    if isinstance(val, slice):
        lo = pd.Timestamp(val.start) if val.start is not None else t.min()
        hi = pd.Timestamp(val.stop) if val.stop is not None else t.max()
        is_val = np.asarray((t >= lo) & (t <= hi))
    elif isinstance(val, (float, int)) and not isinstance(val, bool) and 0 < val < 1:
        n_val = int(round(val * t.size))
        is_val = np.arange(t.size) >= t.size - n_val
    else:
        raise DataError(f"val must be a slice of times, a fraction in (0, 1) or a Dataset; got {val!r}")
    if is_val.all() or not is_val.any():
        raise DataError(
            f"the validation split {val!r} leaves {int((~is_val).sum())} training and {int(is_val.sum())} "
            "validation time steps; both must be non-empty"
        )
    return ~is_val, is_val


# ----------------------------------------------------------------------------- loader


@dataclass
class Batch:
    """One batch: normalised ``x [B, Vin, H, W]``, ``y [B, Vout, H, W]`` and ``lead_hours [B]``.

    ``source`` names the dataset the batch comes from (all samples of a batch share their
    variables); ``time`` holds the input times (numpy datetime64).
    """

    x: Any
    y: Any
    lead_hours: Any
    variables: tuple[str, ...]
    out_variables: tuple[str, ...]
    source: str
    time: np.ndarray

    def to(self, device: Any, non_blocking: bool = False) -> "Batch":
        """Move the tensors to ``device``."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(move(self.x), move(self.y), move(self.lead_hours), self.variables, self.out_variables,
                     self.source, self.time)


@dataclass
class _Source:
    name: str
    reader: Any  # _ArrayReader or _DatasetReader
    times: np.ndarray
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    index: list[SampleIndex]  # one per series (flattened position on the batch dims)
    chunks: tuple[int, ...]  # time chunk sizes
    mean: np.ndarray  # [V, 1, 1] over the variables of ``reader.names``
    std: np.ndarray
    in_ids: np.ndarray  # positions of ``inputs`` / ``outputs`` in ``reader.names``
    out_ids: np.ndarray

    def __post_init__(self) -> None:
        self.bounds = np.concatenate([[0], np.cumsum(self.chunks)]).astype(np.int64)
        self.chunk_of = np.repeat(np.arange(len(self.chunks)), self.chunks)  # time position -> chunk
        self.series_shape = tuple(self.reader.series_shape)


def _canonical_order(da: xr.DataArray) -> xr.DataArray:
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


def _runs(chunks: Sequence[int]) -> list[list[int]]:
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


class _ArrayReader:
    """Blocks of a canonical DataArray ``(*batch, time, variable, lat, lon)``.

    Numpy-backed (or lazily indexed) arrays are sliced; for dask-backed ones the task graph is
    built once and the tasks of the wanted chunks are run directly (no per-read graph construction).
    """

    def __init__(self, da: xr.DataArray) -> None:
        self.array = da
        self.names = tuple(str(v) for v in da["variable"].values)
        self.times = np.asarray(da["time"].values, dtype="datetime64[ns]")
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


_SLICING_LAYERS = ("original-open_dataset-", "open_dataset-", "getitem-", "rechunk-")
_LAZY_INDEXING = ("MemoryCachedArray", "CopyOnWriteArray", "LazilyIndexedArray", "LazilyVectorizedIndexedArray",
                  "ImplicitToExplicitIndexingAdapter")


def _fast_codec_pipeline() -> str | None:
    """zarr codec pipeline for the loader's direct reads: ``zarrs`` (Rust, parallel decoding) when it is
    installed and the ``zarrs`` option allows it, else None (zarr's own)."""
    from .options import OPTIONS

    if not OPTIONS["zarrs"]:
        return None
    import importlib.util

    return "zarrs.ZarrsCodecPipeline" if importlib.util.find_spec("zarrs") is not None else None


def _only_slices(var: xr.Variable) -> bool:
    """True if ``var`` holds its file's values, at most indexed or rechunked (no arithmetic)."""
    data = var._data
    if hasattr(data, "dask"):
        return all(str(name).startswith(_SLICING_LAYERS) for name in data.dask.layers)
    while type(data).__name__ in _LAZY_INDEXING:
        data = data.array
    return type(data).__name__ == "ZarrArrayWrapper"


class _ZarrDirect:
    """Reads a Dataset's source variables straight from the zarr store it was opened from.

    ``xr.open_zarr`` reads each chunk through one dask task (or one call per variable), and
    zarr 3 hands every call to its event loop and back: for 5.625 deg data that costs more
    than the decoding itself. Here every source variable of a block is requested in **one**
    ``asyncio.gather`` over zarr's asynchronous arrays, so chunks are fetched and decoded
    concurrently with one hand-off per block.

    Used only when it provably gives the values xarray would give: the Dataset's
    ``encoding["source"]`` is a zarr store that zarr (>= 3) can open, each variable is the
    store's array at most indexed or rechunked (no arithmetic: checked on the dask graph or
    the lazy-indexing chain), it needs no CF decoding (float, no scale/offset, NaN or no fill
    value), every dimension maps onto the store's by coordinate value (time onto a contiguous
    range; lat/lon/levels by any index, which covers flipped latitudes) and a first and a last
    time step read both ways are identical. Otherwise :meth:`attach` returns None and the
    reader uses xarray.

    With the `zarrs <https://github.com/zarrs/zarrs-python>`_ package installed (``pip install
    zarrs``; option ``zarrs``, on by default) these arrays decode with its Rust codec pipeline,
    in parallel on all cores; zarr's global configuration is left as it is.
    """

    def __init__(self, sync: Any, arrays: dict[str, Any], maps: dict[str, tuple[tuple, list[Any]]]) -> None:
        self._sync, self._arrays, self._maps = sync, arrays, maps

    @classmethod
    def attach(cls, ds: xr.Dataset) -> "_ZarrDirect | None":
        source = ds.encoding.get("source")
        if not isinstance(source, str) or not any(ds[v].encoding.get("preferred_chunks") for v in ds.data_vars):
            return None
        try:
            import zarr
            import zarr.api.asynchronous as azarr
            from zarr.core.sync import sync

            if int(zarr.__version__.split(".")[0]) < 3:
                return None
            with warnings.catch_warnings():  # e.g. about consolidated metadata: the user has seen them already
                warnings.simplefilter("ignore")
                group = sync(azarr.open_group(store=source, mode="r"))
                orig = xr.open_zarr(source, chunks=None)
            pipeline = _fast_codec_pipeline()
            with orig, (zarr.config.set({"codec_pipeline.path": pipeline}) if pipeline else contextlib.nullcontext()):
                arrays, maps = {}, {}  # (arrays keep the codec pipeline they are opened with)
                for name, var in ds.data_vars.items():
                    m = cls._mapping(ds, orig, str(name), var.variable)
                    if m is None:
                        logger.debug("zarr direct reads off: %r is not a plain slice of %s", name, source)
                        return None
                    arrays[str(name)], maps[str(name)] = sync(group.getitem(str(name))), (var.dims, m)
        except Exception as err:  # any store or zarr API problem: fall back to xarray
            logger.debug("zarr direct reads off for %s: %s", source, err)
            return None
        direct = cls(sync, arrays, maps)
        names = [str(v) for v in ds.data_vars]
        try:  # the first and last time steps, both ways
            for t in sorted({0, ds.sizes.get("time", 1) - 1}):
                sels = [{"time": (t, t + 1)} if "time" in ds[v].dims else {} for v in names]
                for v, sel, got in zip(names, sels, direct.read(names, sels)):
                    ref = ds[v].variable.isel({d: slice(*r) for d, r in sel.items()}).values
                    if not np.array_equal(got.values, ref, equal_nan=True):
                        logger.debug("zarr direct reads off: %r differs from xarray's values", v)
                        return None
        except Exception as err:
            logger.debug("zarr direct reads off for %s: %s", source, err)
            return None
        logger.debug("reading %s directly with zarr", source)
        return direct

    @staticmethod
    def _mapping(ds: xr.Dataset, orig: xr.Dataset, name: str, var: xr.Variable) -> list[Any] | None:
        """Per dimension of ``var``: (store axis, positions in the store); None if not a plain slice."""
        if name not in orig.data_vars or not _only_slices(var) or set(var.dims) != set(orig[name].dims):
            return None
        src = orig[name]
        enc = src.encoding
        fill = enc.get("_FillValue")
        if (src.dtype.kind != "f" or var.dtype != src.dtype or "scale_factor" in enc or "add_offset" in enc
                or (fill is not None and not np.isnan(fill))):
            return None
        out = []
        for dim in var.dims:
            axis = src.dims.index(dim)
            if dim in ds.indexes and dim in orig.indexes:
                if not orig.indexes[dim].is_unique:
                    return None
                pos = np.asarray(orig.indexes[dim].get_indexer(ds.indexes[dim]))
                if (pos < 0).any():
                    return None
            elif ds.sizes[dim] == orig.sizes[dim]:
                pos = np.arange(ds.sizes[dim])
            else:
                return None
            if dim == "time" and pos.size > 1 and not (np.diff(pos) == 1).all():
                return None
            out.append((axis, pos))
        return out

    def read(self, names: Sequence[str], selections: Sequence[Mapping[str, Any]]) -> list[xr.Variable]:
        """The Dataset variables ``names[i]`` at ``selections[i]``, dims in the Dataset's order.

        A selection maps a dimension to an integer (dropped) or a ``(lo, hi)`` range of the
        Dataset's positions; other dimensions are read whole. One ``asyncio.gather`` for all.
        """
        import asyncio

        jobs, posts = [], []
        for name, sel in zip(names, selections):
            dims, axes = self._maps[name]
            store_sel: list[Any] = [slice(None)] * len(axes)
            kept: list[tuple[int, Any]] = []  # (store axis, positions to take or None) per kept dim
            names_kept = []
            for dim, (axis, pos) in zip(dims, axes):
                want = sel.get(dim)
                if isinstance(want, (int, np.integer)):
                    store_sel[axis] = int(pos[want])
                    continue
                names_kept.append(dim)
                p = pos[want[0]:want[1]] if want is not None else pos
                lo, hi = int(p.min()), int(p.max()) + 1
                store_sel[axis] = slice(lo, hi)
                kept.append((axis, None if np.array_equal(p, np.arange(lo, hi)) else p - lo))
            jobs.append(self._arrays[name].getitem(tuple(store_sel)))
            posts.append((names_kept, kept))

        async def fetch() -> list:
            return await asyncio.gather(*jobs)

        out = []
        for raw, (dims_kept, kept) in zip(self._sync(fetch()), posts):
            arr = np.asarray(raw)
            order = sorted(a for a, _ in kept)  # the result's axes follow the store's order
            for axis, take in kept:
                if take is not None:
                    arr = np.take(arr, take, axis=order.index(axis))
            out.append(xr.Variable(dims_kept, np.transpose(arr, [order.index(a) for a, _ in kept])))
        return out


class _DatasetReader:
    """Blocks of the canonical array of a CF Dataset, read from its source variables.

    The read plan (which source variable, level and unit conversion gives each ClimaX variable)
    is made once with :func:`xclimax.tokens.find_variables`. A read loads the time range of every
    source variable in one compute (a few tasks per source variable instead of several per
    ClimaX variable), then selects levels, converts units and stacks in numpy, one array
    operation per source variable. The values equal ``tokens.to_array(ds, names)``.
    """

    def __init__(self, ds: xr.Dataset, names: Sequence[str] | None, *, extra_variables: Any = None,
                 variable_map: Mapping[str, str] | None = None) -> None:
        from . import tokens
        from .grid import normalize_grid

        norm, _ = normalize_grid(ds)
        if "time" not in norm.dims:
            t = [d for d in norm.cf.axes.get("T", []) if d in norm.dims] if hasattr(norm, "cf") else []
            if not t:
                raise DataError(f"expected a 'time' dimension (or one with axis='T'); found dims {dict(norm.sizes)}")
            norm = norm.rename({t[0]: "time"})
        found = tokens.find_variables(norm, names, extra_variables=extra_variables, variable_map=variable_map,
                                      strict=names is not None)
        if not found:
            raise DataError(f"no ClimaX variable found in the Dataset (data variables: {list(ds.data_vars)})")
        self.names = tuple(found)
        self.times = np.asarray(norm["time"].values, dtype="datetime64[ns]")
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
        self.direct = _ZarrDirect.attach(self.ds)

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


class BatchLoader:
    """Shuffled, prefetched training batches from one or several canonical DataArrays.

    Data are read by whole time chunks: each chunk is computed once (one dask ``get`` per block
    of the plan over a pre-built task graph, no per-item graph construction), normalised once
    and cached while the plan still needs it, so the chunk holding a block's targets is not
    decoded again for the next block. The plan is known in advance, so the cache keeps what
    is needed soonest when it is full, and a helper thread reads the next block while the
    current one is served.

    Parameters
    ----------
    sources : DataArray, Dataset or mapping of name -> DataArray or Dataset
        Canonical arrays ``(*batch, time, variable, lat, lon)`` (numpy- or dask-backed), or CF
        Datasets (read like ``tokens.to_array(ds, inputs + outputs)``, default: every ClimaX
        variable found), all on the same grid. Each batch comes from one source; sources may
        have different variables.
    stats : mapping
        ``{variable: (mean, std)}`` used to normalise on the fly (a mapping of such mappings,
        keyed like ``sources``, gives per-source statistics).
    lead_times : str, timedelta or (lo, hi) pair
        Lead time or inclusive range; each input gets one lead drawn uniformly per epoch.
    batch_size : int
    inputs, outputs : sequence of str, optional
        Input and target variables (default: all variables of each source). Variables
        missing from a source are skipped for that source.
    mask : mapping of name -> bool array, optional
        Usable time steps per source (e.g. from :func:`split_times`).
    shuffle : bool
        Shuffle blocks and samples (training) or keep time order (validation).
    seed : int
        Seed of the epoch plans; epoch ``e`` uses ``numpy.random.default_rng([seed, e])``.
    block_size : int, optional
        Input time steps per block; rounded to whole time chunks. Default: the smallest
        number of whole chunks covering twice the longest lead, within a ~512 MB budget.
    buffer_size : int, optional
        Samples in the shuffle pool (default: one block, at least ``2 * batch_size``).
    prefetch : int
        Batches prepared ahead by the background thread, which also reads the next blocks
        in helper threads (0: no threads).
    readers : int, optional
        Blocks read ahead at once, each in its own helper thread (decoding, unit conversion and
        normalisation run in parallel). Default: half the CPU cores, 1 to 4.
    pin_memory : bool
        Pin batch tensors (for fast asynchronous copies to CUDA).
    cache_bytes : float
        Memory for decoded, normalised time chunks (float32). When full, the chunks whose next
        use in the plan is farthest are dropped (and read again when needed); the chunks of
        the batch being assembled are always kept.
    variables : sequence of str or mapping of name -> sequence of str, optional
        The ClimaX variables of each source (one list for all, or one per source name), i.e.
        the canonical array it stands for: a Dataset is read like
        ``tokens.to_array(ds, variables)`` (a missing variable that is read raises
        :class:`~xclimax.exceptions.CFMappingError`), a DataArray must hold them. Default:
        ``inputs + outputs`` when both are given, else every variable (found) of the source.
        Only the variables among ``inputs``/``outputs`` are read.
    extra_variables, variable_map
        How Dataset sources map to ClimaX variables, as in :func:`xclimax.tokens.find_variables`
        (e.g. ``extra_variables=["mean_sea_level_pressure"]``).

    Examples
    --------
    >>> import xarray as xr, pandas as pd
    >>> da = xr.DataArray(np.random.rand(20, 2, 4, 8).astype("float32"), dims=("time", "variable", "lat", "lon"),
    ...                   coords={"time": pd.date_range("2000", periods=20, freq="6h"), "variable": ["a", "b"]})
    >>> loader = BatchLoader(da, {"a": (0.5, 0.3), "b": (0.5, 0.3)}, lead_times=("6h", "12h"), batch_size=8)
    >>> len(loader)
    3
    >>> b = next(iter(loader.epoch(0)))
    >>> tuple(b.x.shape), tuple(b.y.shape), b.variables
    ((8, 2, 4, 8), (8, 2, 4, 8), ('a', 'b'))
    """

    def __init__(
        self,
        sources: xr.DataArray | xr.Dataset | Mapping[str, xr.DataArray | xr.Dataset],
        stats: Mapping[str, Any],
        *,
        lead_times: Any,
        batch_size: int,
        inputs: Sequence[str] | None = None,
        outputs: Sequence[str] | None = None,
        mask: Mapping[str, np.ndarray] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        block_size: int | None = None,
        buffer_size: int | None = None,
        prefetch: int = 2,
        readers: int | None = None,
        pin_memory: bool = False,
        cache_bytes: float = 1e9,
        variables: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
        extra_variables: Any = None,
        variable_map: Mapping[str, str] | None = None,
    ) -> None:
        if isinstance(sources, (xr.DataArray, xr.Dataset)):
            sources = {"data": sources}
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1; got {batch_size}")
        self.batch_size = int(batch_size)
        self.shuffle, self.seed, self.prefetch, self.pin_memory = shuffle, int(seed), int(prefetch), pin_memory
        if readers is not None and int(readers) < 1:
            raise DataError(f"readers must be >= 1; got {readers}")
        self.readers = int(readers) if readers else min(4, max(1, (os.cpu_count() or 2) // 2))
        self.cache_bytes = float(cache_bytes)
        self.sources: list[_Source] = []
        mapping = dict(extra_variables=extra_variables, variable_map=variable_map)
        max_lead_steps = 1
        for name, obj in sources.items():
            want = variables.get(name) if isinstance(variables, Mapping) else variables
            want = None if want is None else tuple(str(v) for v in want)
            reader: Any = None
            if isinstance(obj, xr.Dataset):
                if want is None and inputs is not None and outputs is not None:
                    want = tuple(dict.fromkeys([*inputs, *outputs]))
                if want is None:  # every ClimaX variable found
                    reader = _DatasetReader(obj, None, **mapping)
                names = want if want is not None else reader.names
            elif isinstance(obj, xr.DataArray):
                da = _canonical_order(obj)
                have = tuple(str(v) for v in da["variable"].values)
                missing = [v for v in (want or ()) if v not in have]
                if missing:
                    raise DataError(
                        f"source {name!r}: variables {missing} are not in the DataArray's variables {list(have)}"
                    )
                names = want if want is not None else have
            else:
                raise DataError(f"source {name!r}: expected an xarray.DataArray or Dataset; got {type(obj).__name__}")
            ins = names if inputs is None else tuple(v for v in inputs if v in names)
            outs = names if outputs is None else tuple(v for v in outputs if v in names)
            if not ins or not outs:
                raise DataError(f"source {name!r} has variables {list(names)}: no inputs or no outputs among them")
            used = tuple(dict.fromkeys(ins + outs))
            if isinstance(obj, xr.DataArray):
                # a selection adds a task per chunk: only when needed
                reader = _ArrayReader(da if used == have else da.sel(variable=list(used)))
            elif reader is None or reader.names != used:  # read only what the batches use
                reader = _DatasetReader(obj, list(used), **mapping)
            st = stats[name] if isinstance(stats.get(name), Mapping) else stats
            missing = [v for v in reader.names if v not in st]
            if missing:
                raise DataError(f"no normalisation statistics for {missing} (source {name!r})")
            self._check_stats(st, reader.names)
            m = None if mask is None else mask.get(name)
            idx = sample_index(reader.times, lead_times, mask=m)
            n_series = int(np.prod(reader.series_shape, dtype=np.int64))
            src = _Source(
                name, reader, reader.times, ins, outs, [idx] * n_series, reader.chunks,
                mean=np.array([st[v][0] for v in reader.names], np.float32)[:, None, None],
                std=np.array([st[v][1] for v in reader.names], np.float32)[:, None, None],
                in_ids=np.array([reader.names.index(v) for v in ins]),
                out_ids=np.array([reader.names.index(v) for v in outs]),
            )
            if len(idx):
                max_lead_steps = max(max_lead_steps, int((idx.target - idx.input).max()))
            self.sources.append(src)
        if not any(len(s.index[0]) for s in self.sources if s.index):
            raise DataError(f"no (input, target) pair with lead {lead_times!r} fits in the selected time range")
        self._units = self._make_units(block_size, max_lead_steps)
        per_unit = [u[4] for u in self._units]
        self.buffer_size = int(buffer_size) if buffer_size else max(2 * self.batch_size, int(np.median(per_unit)))
        self.buffer_size = max(self.buffer_size, self.batch_size)

    @staticmethod
    def _check_stats(st: Mapping[str, Any], names: Sequence[str]) -> None:
        bad = [v for v in names if not np.isfinite(st[v][1]) or st[v][1] <= 0]
        if bad:
            raise DataError(f"normalisation std must be positive and finite; got {[(v, st[v][1]) for v in bad]}")

    def _make_units(self, block_size: int | None, max_lead_steps: int) -> list[tuple]:
        """Blocks of input times: (source no., series, start, stop, n inputs), chunk-aligned."""
        units = []
        for s_no, src in enumerate(self.sources):
            bounds = src.bounds
            chunk = int(np.max(src.chunks))
            if block_size is None:
                step_bytes = src.reader.step_bytes
                budget = max(1, int(512e6 // (2 * step_bytes)))
                want = min(max(chunk, 2 * max_lead_steps), budget)
                n_chunks = max(1, -(-want // chunk))
            else:
                n_chunks = max(1, int(round(block_size / chunk)))
            edges = bounds[::n_chunks]
            if edges[-1] != bounds[-1]:
                edges = np.append(edges, bounds[-1])
            for series, idx in enumerate(src.index):
                for a, b in zip(edges[:-1], edges[1:]):
                    n = int(np.unique(idx.input[(idx.input >= a) & (idx.input < b)]).size)
                    if n:
                        units.append((s_no, series, int(a), int(b), n))
        return units

    # -- planning (pure) ------------------------------------------------------------------

    def __len__(self) -> int:
        """Batches per epoch."""
        n = {}
        for u in self._units:
            n[u[0]] = n.get(u[0], 0) + u[4]
        return sum(-(-v // self.batch_size) for v in n.values())

    def plan(self, epoch: int) -> list[list[tuple[int, int, int, float]]]:
        """The batches of an epoch as lists of ``(unit, input, target, lead_hours)``; reads no data."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self._units)) if self.shuffle else np.arange(len(self._units))
        pools: dict[int, list] = {}
        batches = []
        for u in order:
            s_no, series, a, b, _ = self._units[u]
            idx = self.sources[s_no].index[series]
            sel = (idx.input >= a) & (idx.input < b)
            inp, tgt, lead = idx.input[sel], idx.target[sel], idx.lead_hours[sel]
            _, starts, counts = np.unique(inp, return_index=True, return_counts=True)
            pick = starts + (rng.integers(0, counts) if self.shuffle else counts - 1)
            pool = pools.setdefault(s_no, [])
            pool.extend((int(u), int(inp[k]), int(tgt[k]), float(lead[k])) for k in pick)
            while len(pool) >= self.buffer_size:
                batches.append(self._draw(pool, rng))
        for s_no in sorted(pools):
            pool = pools[s_no]
            while pool:
                batches.append(self._draw(pool, rng))
        return batches

    def _draw(self, pool: list, rng: np.random.Generator) -> list:
        n = min(self.batch_size, len(pool))
        if self.shuffle:
            take = set(rng.choice(len(pool), n, replace=False).tolist())
        else:
            take = set(range(n))
        batch = [pool[i] for i in sorted(take)]
        pool[:] = [s for i, s in enumerate(pool) if i not in take]
        return batch

    # -- reading ----------------------------------------------------------------------------

    def _read(self, s_no: int, series: int, chunks: Sequence[int]) -> dict[int, np.ndarray]:
        """Normalised float32 ``[steps, V, lat, lon]`` of time chunks of one series, in one compute."""
        src = self.sources[s_no]
        pos = tuple(int(p) for p in np.unravel_index(series, src.series_shape)) if src.series_shape else ()
        runs = _runs(chunks)
        spans = [(int(src.bounds[r[0]]), int(src.bounds[r[-1] + 1])) for r in runs]
        out = {}
        for run, (lo, _), (raw, owned) in zip(runs, spans, src.reader.read(pos, spans, runs)):
            block = self._normalise(src, raw, lo, owned)
            out.update({c: block[src.bounds[c] - lo: src.bounds[c + 1] - lo] for c in run})
        return out

    @staticmethod
    def _normalise(src: _Source, raw: np.ndarray, t0: int, owned: bool) -> np.ndarray:
        """``(raw - mean) / std`` in float32 (in place when ``raw`` is a float32 array of our own)."""
        block = raw if owned and raw.dtype == np.float32 else raw.astype(np.float32)
        np.subtract(block, src.mean, out=block)
        np.divide(block, src.std, out=block)
        if not np.isfinite(block.sum()):  # a cheap test; the full one only if it fails (or overflows)
            bad = ~np.isfinite(block).all(axis=(1, 2, 3))
            if bad.any():
                raise DataError(
                    f"non-finite values in source {src.name!r} at time {src.times[t0 + np.nonzero(bad)[0][0]]}; "
                    "fill or drop them before training"
                )
        return block

    def _batches(self, plan: list, start: int) -> Iterator[Batch]:
        from collections import defaultdict, deque
        from concurrent.futures import ThreadPoolExecutor

        import torch

        plan = plan[start:]

        def key(u: int, t: int) -> tuple[int, int, int]:  # (source, series, time chunk) holding step t
            s_no, series = self._units[u][:2]
            return s_no, series, int(self.sources[s_no].chunk_of[t])

        needs = [sorted({key(u, t) for u, i, j, _ in batch for t in (i, j)}) for batch in plan]
        uses: dict[tuple, deque] = defaultdict(deque)  # chunk -> batch numbers needing it
        unit_keys: dict[int, set] = defaultdict(set)
        order: list[int] = []  # units by first use
        for b, (batch, need) in enumerate(zip(plan, needs)):
            for k in need:
                uses[k].append(b)
            for u, i, j, _ in batch:
                if u not in unit_keys:
                    order.append(u)
                unit_keys[u].update((key(u, i), key(u, j)))
        order_pos = {u: n for n, u in enumerate(order)}
        cache: dict[tuple, np.ndarray] = {}
        pending: dict[int, tuple[Any, set]] = {}  # unit -> (future, chunks it reads)
        inflight: set[tuple] = set()
        opened: set[int] = set()
        pool = ThreadPoolExecutor(self.readers, thread_name_prefix="xclimax-read") if self.prefetch > 0 else None
        ahead = 0  # position in ``order`` of the next unit to read ahead

        def missing(ks: Any, skip: set = frozenset()) -> dict[tuple[int, int], list[int]]:
            groups: dict[tuple[int, int], list[int]] = defaultdict(list)
            for s_no, series, c in sorted(k for k in ks if k not in cache and uses[k] and k not in skip):
                groups[s_no, series].append(c)
            return groups

        def read(groups: Mapping[tuple[int, int], list[int]]) -> dict[tuple, np.ndarray]:
            return {(s, r, c): v for (s, r), cs in groups.items() for c, v in self._read(s, r, cs).items()}

        def store(got: Mapping[tuple, np.ndarray]) -> None:
            cache.update({k: v for k, v in got.items() if uses[k] and k not in cache})

        def resolve(u: int) -> None:
            future, keys = pending.pop(u)
            inflight.difference_update(keys)
            store(future.result())

        try:
            for b, batch in enumerate(plan):
                for u in dict.fromkeys(s[0] for s in batch):
                    if u not in opened:  # a new block: all its chunks in one read
                        opened.add(u)
                        for earlier in [p for p in pending if order_pos[p] < order_pos[u]]:
                            resolve(earlier)  # (they hold chunks this block may need)
                        if u in pending:
                            resolve(u)
                        else:
                            store(read(missing(unit_keys[u])))
                store(read(missing(needs[b])))  # chunks dropped from a full cache
                if pool is not None:  # keep ``readers`` blocks being read ahead
                    while len(pending) < self.readers:
                        while ahead < len(order) and (order[ahead] in opened or order[ahead] in pending):
                            ahead += 1
                        if ahead == len(order):
                            break
                        u = order[ahead]
                        groups = missing(unit_keys[u], inflight)
                        keys = {(s_, r_, c_) for (s_, r_), cs in groups.items() for c_ in cs}
                        inflight.update(keys)
                        pending[u] = (pool.submit(read, groups), keys)
                yield self._assemble(batch, cache, key, torch)
                for k in needs[b]:
                    uses[k].popleft()
                    if not uses[k]:
                        cache.pop(k, None)
                size = sum(v.nbytes for v in cache.values())
                while size > self.cache_bytes and cache:
                    victim = max(cache, key=lambda k: uses[k][0])
                    if uses[victim][0] <= b + 1:
                        break
                    size -= cache.pop(victim).nbytes
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _assemble(self, batch: list, cache: Mapping[tuple, np.ndarray], key: Any, torch: Any) -> Batch:
        src = self.sources[self._units[batch[0][0]][0]]
        shape = src.reader.shape
        x = torch.empty((len(batch), len(src.in_ids), *shape), dtype=torch.float32, pin_memory=self.pin_memory)
        y = torch.empty((len(batch), len(src.out_ids), *shape), dtype=torch.float32, pin_memory=self.pin_memory)
        for out, ids, which in ((x.numpy(), src.in_ids, 1), (y.numpy(), src.out_ids, 2)):
            every = np.array_equal(ids, np.arange(src.mean.shape[0]))
            for k, sample in enumerate(batch):
                u, t = sample[0], sample[which]
                step = cache[key(u, t)][t - src.bounds[src.chunk_of[t]]]
                if every:
                    out[k] = step
                else:
                    np.take(step, ids, axis=0, out=out[k])
        lead = torch.tensor([s[3] for s in batch], dtype=torch.float32)
        if self.pin_memory:
            lead = lead.pin_memory()
        times = src.times[[s[1] for s in batch]]
        return Batch(x, y, lead, src.inputs, src.outputs, src.name, times)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Iterate over the batches of ``epoch``, beginning at batch number ``start`` (for resuming).

        With ``prefetch > 0`` the batches are prepared in a background thread. Close the
        iterator (or exhaust it) to stop the thread.
        """
        gen = self._batches(self.plan(epoch), start)
        return _Prefetcher(gen, self.prefetch) if self.prefetch > 0 else gen


class _Prefetcher:
    """Run a generator in a daemon thread, ``depth`` items ahead; errors are re-raised in the consumer.

    The thread holds no reference to this object, so a consumer that stops early (``break``)
    and drops it stops the thread too (``__del__``).
    """

    _DONE = object()

    def __init__(self, gen: Iterator, depth: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(gen, self._queue, self._stop), daemon=True,
                                        name="xclimax-prefetch")
        self._thread.start()

    @staticmethod
    def _put(q: queue.Queue, stop: threading.Event, item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    @classmethod
    def _run(cls, gen: Iterator, q: queue.Queue, stop: threading.Event) -> None:
        try:
            for item in gen:
                if not cls._put(q, stop, item):
                    return
            cls._put(q, stop, cls._DONE)
        except BaseException as err:  # forwarded to the consumer
            cls._put(q, stop, err)
        finally:
            close = getattr(gen, "close", None)
            if close is not None:
                close()  # runs the generator's cleanup (its reader thread) in this thread

    def __iter__(self) -> "_Prefetcher":
        return self

    def __next__(self) -> Any:
        item = self._queue.get()
        if item is self._DONE:
            self._thread.join()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        """Stop the background thread."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)

    def __del__(self) -> None:
        self.close()
