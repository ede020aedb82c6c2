"""Write a lazy Dataset to zarr region by region, resuming an interrupted write.

:func:`write_regions` cuts a dask-backed Dataset along one dimension (``time``) into regions
of whole zarr chunks and writes them one after another with ``to_zarr(region=...)``; each
region is computed in parallel (one task per chunk, on the active dask scheduler or Client),
so worker memory is bounded by a few chunks whatever the size of the whole. After a region
is written, its flag is set in a small marker array stored next to the data
(``<store>/_xclimax/regions``, one zarr chunk per region, invisible to ``xr.open_zarr``),
together with a fingerprint of what is being written. A later call with ``resume=True``
checks the fingerprint and writes only the regions whose flag is not set; the result equals an
uninterrupted write.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from typing import Any, Mapping

import numpy as np
import xarray as xr

from ..exceptions import DataError
from ..options import OPTIONS

__all__ = ["write_regions", "regions_done"]

logger = logging.getLogger(__name__)

_MARKER = "_xclimax/regions"
_FORMAT = 1


def _open_marker(store: Any, mode: str, storage_options: Mapping | None, **kwargs: Any) -> Any:
    import zarr

    kw = {"storage_options": dict(storage_options)} if storage_options and isinstance(store, str) else {}
    return zarr.open_array(store=_store_arg(store), path=_MARKER, mode=mode, **kw, **kwargs)


def _store_arg(store: Any) -> Any:
    return os.fspath(store) if isinstance(store, os.PathLike) else store


def _exists(store: Any, storage_options: Mapping | None) -> bool:
    import zarr

    kw = {"storage_options": dict(storage_options)} if storage_options and isinstance(store, str) else {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            zarr.open_group(store=_store_arg(store), mode="r", **kw)
    except (FileNotFoundError, KeyError):
        return False
    except Exception as err:  # "nothing here" has other names in some zarr versions
        if type(err).__name__ in ("GroupNotFoundError", "NodeNotFoundError", "PathNotFoundError"):
            return False
        raise
    return True


def regions_done(store: Any, *, storage_options: Mapping | None = None) -> np.ndarray | None:
    """Flags of the regions already written to ``store`` by :func:`write_regions` (None: no marker).

    Examples
    --------
    >>> regions_done("/nonexistent/store.zarr") is None
    True
    """
    try:
        marker = _open_marker(store, "r", storage_options)
    except Exception:
        return None
    return np.asarray(marker[:], dtype=bool)


def _fingerprint(ds: xr.Dataset, dim: str, region_size: int, chunk: int, extra: Mapping | None) -> dict:
    """What must match for a write to be resumed: layout, variables, coordinates, caller's extras."""
    h = hashlib.sha256()
    for name in sorted(ds.coords):
        var = ds[name].variable
        if var.chunks is None:  # in-memory coordinates (time, lead_time, lat, lon, ...)
            h.update(name.encode())
            h.update(np.ascontiguousarray(var.values).tobytes())
    return {
        "format": _FORMAT,
        "dim": dim,
        "region_size": int(region_size),
        "chunk": int(chunk),
        "sizes": {str(k): int(v) for k, v in ds.sizes.items()},
        "variables": {str(k): [list(map(str, v.dims)), str(v.dtype)] for k, v in ds.data_vars.items()},
        "coords": h.hexdigest(),
        "extra": json.loads(json.dumps(dict(extra or {}), sort_keys=True, default=str)),
    }


def _uniform_chunk(ds: xr.Dataset, dim: str) -> int:
    sizes = {c for v in ds.data_vars.values() if v.chunks is not None and dim in v.dims
             for c in v.chunksizes.get(dim, ())[:-1] or v.chunksizes.get(dim, ())}
    return max(sizes) if sizes else max(1, ds.sizes[dim])


def _parallelism() -> int:
    from .workers import active_client

    client = active_client()
    if client is not None:
        try:
            return max(1, sum(w["nthreads"] for w in client.scheduler_info()["workers"].values()))
        except Exception:  # pragma: no cover - scheduler gone: the write fails later with a clear error
            return 1
    return max(1, os.cpu_count() or 1)


def write_regions(
    ds: xr.Dataset,
    store: Any,
    *,
    dim: str = "time",
    region_size: int | None = None,
    resume: bool = True,
    fingerprint: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    desc: str = "xclimax to_zarr",
) -> Any:
    """Write ``ds`` to the zarr ``store`` region by region along ``dim``, resuming when asked.

    Parameters
    ----------
    ds : xarray.Dataset
        Usually lazy (dask-backed); its chunks along ``dim`` become the zarr chunks (made uniform
        when they are not).
    store : str, path or zarr store
        Where to write (a local path, an fsspec URL with ``storage_options``, or a zarr store).
    dim : str
        The dimension cut into regions.
    region_size : int, optional
        Steps of ``dim`` per region, rounded up to whole chunks. Default: the regions of the write
        being resumed, else two chunks per thread of the active Client (or per CPU core
        in-process), so that every worker has work.
    resume : bool
        Continue an interrupted write into ``store``: regions already written are skipped. The
        store must hold the same layout, coordinates and ``fingerprint`` (else
        :class:`~xclimax.DataError`). ``False`` writes everything, replacing ``store``.
    fingerprint : mapping, optional
        Extra JSON-able facts that must match for a resume (e.g. the model's content hash).
    storage_options : mapping, optional
        fsspec options for URL stores.

    Returns
    -------
    The ``store`` argument.

    Examples
    --------
    >>> import tempfile, dask.array as da
    >>> ds = xr.Dataset({"a": (("time", "x"), da.arange(12.0, chunks=2).reshape(6, 2, merge_chunks=False))},
    ...                 coords={"time": np.arange(6)})
    >>> path = tempfile.mkdtemp() + "/out.zarr"
    >>> _ = write_regions(ds, path, region_size=2)
    >>> regions_done(path).tolist()
    [True, True, True]
    >>> bool((xr.open_zarr(path)["a"] == ds["a"]).all())
    True
    """
    if not isinstance(ds, xr.Dataset):
        raise TypeError(f"expected an xarray.Dataset; got {type(ds).__name__}")
    if dim not in ds.dims:
        raise DataError(f"cannot cut the write along {dim!r}: the Dataset has dimensions {tuple(ds.dims)}")
    n = int(ds.sizes[dim])
    chunk = _uniform_chunk(ds, dim)
    ds = ds.chunk({dim: chunk})  # uniform zarr chunks along dim (lazy; in-memory data become dask-backed)
    old = None
    if resume and _exists(store, storage_options):
        try:
            old = dict(_open_marker(store, "r", storage_options).attrs).get("fingerprint") or {}
        except Exception:  # no marker: reported below
            old = {}
    if region_size is None:  # a resumed write keeps its regions (the cluster may have another size now)
        region_size = (old or {}).get("region_size") or 2 * _parallelism() * chunk
    if isinstance(region_size, bool) or not isinstance(region_size, (int, np.integer)) or region_size < 1:
        raise DataError(f"region_size must be a positive integer; got {region_size!r}")
    region_size = int(-(-int(region_size) // chunk) * chunk)  # whole zarr chunks: regions never share one
    edges = list(range(0, n, region_size)) + [n]
    regions = list(zip(edges[:-1], edges[1:]))
    fp = _fingerprint(ds, dim, region_size, chunk, fingerprint)

    for var in ds.variables.values():
        var.encoding = {k: v for k, v in var.encoding.items() if k not in ("chunks", "preferred_chunks")}
    encoding = {name: {"chunks": tuple(c[0] if c else 1 for c in var.chunks)}
                for name, var in ds.data_vars.items() if var.chunks is not None}

    done = None
    if old is not None:
        done = regions_done(store, storage_options=storage_options)
        if done is None:
            raise DataError(
                f"{store!r} exists but was not written by xclimax region by region, so it cannot be resumed; "
                "pass resume=False to replace it"
            )
        if old != fp:
            diff = sorted(k for k in set(fp) | set(old or {}) if (old or {}).get(k) != fp.get(k))
            raise DataError(
                f"{store!r} holds a different write (differs in {diff}); pass resume=False to replace it, "
                "or write to another store"
            )
        logger.info("resuming the write to %r: %d of %d regions already written", store, int(done.sum()), len(regions))
    if done is None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            ds.to_zarr(_store_arg(store), mode="w", compute=False, encoding=encoding, storage_options=storage_options)
        marker = _open_marker(store, "w", storage_options, shape=(len(regions),), chunks=(1,), dtype="u1",
                              fill_value=0)
        marker.attrs["fingerprint"] = fp
        done = np.zeros(len(regions), bool)
    marker = _open_marker(store, "r+", storage_options)

    from tqdm.auto import tqdm

    todo = [i for i in range(len(regions)) if not done[i]]
    drop = [name for name, var in ds.variables.items() if dim not in var.dims]
    with tqdm(total=len(regions), initial=len(regions) - len(todo), desc=desc, unit="region",
              disable=not OPTIONS["progress"]) as bar, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        for i in todo:
            a, b = regions[i]
            part = ds.isel({dim: slice(a, b)}).drop_vars(drop)
            part.to_zarr(_store_arg(store), region={dim: slice(a, b)}, storage_options=storage_options)
            marker[i] = 1  # after the data: an interruption in between rewrites the region (idempotent)
            bar.update(1)
    return store
