"""The one module that relies on private internals of xarray, dask and zarr: direct zarr reads.

Everything here has a public-API fallback (the caller reads through xarray when
:meth:`ZarrDirect.attach` returns None), and each fallback is logged at WARNING.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
import xarray as xr

logger = logging.getLogger(__name__)

_SLICING_LAYERS = ("original-open_dataset-", "open_dataset-", "getitem-", "rechunk-")
_LAZY_INDEXING = ("MemoryCachedArray", "CopyOnWriteArray", "LazilyIndexedArray", "LazilyVectorizedIndexedArray",
                  "ImplicitToExplicitIndexingAdapter")


def _fast_codec_pipeline() -> str | None:
    """zarr codec pipeline for the loader's direct reads: ``zarrs`` (Rust, parallel decoding) when it is
    installed and the ``zarrs`` option allows it, else None (zarr's own)."""
    from ..options import OPTIONS

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


class ZarrDirect:
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
    def attach(cls, ds: xr.Dataset) -> "ZarrDirect | None":
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
        except Exception as err:  # any store or zarr API problem: fall back to xarray's public reads
            logger.warning("reading %s through xarray: direct zarr reads failed (%s: %s)", source, type(err).__name__, err)
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
            logger.warning("reading %s through xarray: direct zarr reads failed their check (%s: %s)", source,
                           type(err).__name__, err)
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


