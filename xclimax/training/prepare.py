"""Training data preparation shared by the tasks: canonical arrays, statistics, regions, widening and freezing models."""

from __future__ import annotations

import copy
import logging
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import xarray as xr

from ..cf import checks as _checks
from ..cf import grid as _grid
from ..cf import stats as _normalize
from ..cf import tokens as _tokens
from ..exceptions import DataError, GridError
from ..loading import split_times, time_step
from ..nn import checkpoint as _checkpoint
from ..nn.model import ClimaX
from ..scoring import metrics as _metrics

logger = logging.getLogger(__name__)


#: Named regions (lat range, lon range in degrees east), the boxes of ClimaX's regional forecasting.
REGIONS: dict[str, dict[str, tuple[float, float]]] = {
    "NorthAmerica": {"lat": (15, 65), "lon": (220, 300)},
    "SouthAmerica": {"lat": (-55, 20), "lon": (270, 330)},
    "Europe": {"lat": (30, 65), "lon": (0, 40)},
    "SouthAsia": {"lat": (-15, 45), "lon": (25, 110)},
    "EastAsia": {"lat": (5, 65), "lon": (70, 150)},
    "Australia": {"lat": (-50, 10), "lon": (100, 180)},
    "Global": {"lat": (-90, 90), "lon": (0, 360)},
}

#: Default architecture of a model built by :func:`pretrain` (``model_kwargs`` overrides it).
DEFAULT_MODEL = dict(embed_dim=256, depth=4, decoder_depth=2, num_heads=8, mlp_ratio=4.0, drop_path=0.1, drop_rate=0.1)


def lat_weights(lat: Sequence[float] | np.ndarray) -> np.ndarray:
    """ClimaX's latitude weights ``cos(lat) / mean(cos(lat))`` as a numpy array."""
    return _metrics.lat_weights(np.asarray(lat, dtype=np.float64), flavour="climax").values


def region_mask(lat: np.ndarray, lon: np.ndarray, region: str | Mapping[str, Any], patch_size: int) -> np.ndarray:
    """Pixels of the patches that lie entirely inside a lat/lon box: bool ``[lat, lon]``.

    Latitudes are matched by value, so the mask is right for ascending (south-to-north)
    grids; ClimaX's ``get_region_info`` reversed the latitudes and selected the mirrored band.

    Parameters
    ----------
    lat, lon : numpy.ndarray
        Grid coordinates (lon in degrees east, any range).
    region : str or dict
        A name in :data:`REGIONS` or ``{"lat": (south, north), "lon": (west, east)}``;
        ``west > east`` (after wrapping to [0, 360)) means a box crossing 0°E.
    patch_size : int

    Examples
    --------
    >>> from xclimax.testing import grid_coords
    >>> lat, lon = grid_coords(32, 64)
    >>> m = region_mask(lat, lon, "Europe", 2)
    >>> lat[m.any(axis=1)].min() > 30, lat[m.any(axis=1)].max() < 65
    (np.True_, np.True_)
    """
    if isinstance(region, str):
        if region not in REGIONS:
            raise DataError(f"unknown region {region!r}; expected one of {sorted(REGIONS)} or dict(lat=(a, b), lon=(c, d))")
        region = REGIONS[region]
    if not isinstance(region, Mapping) or set(region) != {"lat", "lon"}:
        raise DataError(f"region must be a name or dict(lat=(south, north), lon=(west, east)); got {region!r}")
    (s, n), (w, e) = region["lat"], region["lon"]
    lat, lon = np.asarray(lat, float), np.asarray(lon, float) % 360
    in_lat = (lat >= s) & (lat <= n)
    if e - w >= 360:
        in_lon = np.ones(lon.shape, bool)
    else:
        w, e = w % 360, e % 360 if e % 360 or e == 0 else 360.0
        in_lon = (lon >= w) & (lon <= e) if w <= e else (lon >= w) | (lon <= e)
    inside = in_lat[:, None] & in_lon[None, :]
    p = int(patch_size)
    H, W = inside.shape
    padded = np.pad(inside, ((0, -H % p), (0, -W % p)))  # the model pads grids to whole patches
    patches = padded.reshape(padded.shape[0] // p, p, padded.shape[1] // p, p).all(axis=(1, 3))
    if not patches.any():
        raise DataError(f"no whole {p}x{p} patch of the grid lies inside the region {region}")
    return np.repeat(np.repeat(patches, p, 0), p, 1)[:H, :W]



# ----------------------------------------------------------------------------- data preparation


def _canonical(
    ds: Any, variables: Sequence[str] | None, extra_variables: Any, variable_map: Any
) -> tuple[xr.DataArray, xr.Dataset | xr.DataArray]:
    """The canonical ``(*batch, time, variable, lat, lon)`` array of a Dataset (or a canonical
    DataArray), and what to feed the loader.

    A dask-backed Dataset is fed as the grid-normalised Dataset: the loader's Dataset reader
    loads each source variable once per block (no per-read culling of the large ``to_array``
    graph; straight from the zarr store when it can, see ``batching.ZarrDirect``), and the
    canonical array stays lazy (statistics and checks only). A Dataset opened without dask
    (``chunks=None``) is fed the same way, its canonical array chunked by the on-disk time
    chunks, so memory stays bounded. For in-memory data ``to_array`` has already built the
    canonical array, and slicing it is the cheapest read. All feeds give identical batches.
    """
    if isinstance(ds, xr.DataArray):
        da = ds
        names = [str(v) for v in da["variable"].values] if "variable" in da.coords else None
        if names is None or not {"time", "lat", "lon"} <= set(da.dims):
            raise DataError(f"a DataArray must have dims (*batch, time, variable, lat, lon) with variable names; got {da.dims}")
        if variables is not None:
            missing = [v for v in variables if v not in names]
            if missing:
                raise DataError(f"variables {missing} are not in the DataArray's variables {names}")
            da = da.sel(variable=list(variables))
        da = da.transpose(..., "time", "variable", "lat", "lon")
        return da, da
    if not isinstance(ds, xr.Dataset):
        raise DataError(f"expected an xarray.Dataset (or a list/dict of them); got {type(ds).__name__}")
    norm, _ = _grid.normalize_grid(ds)
    found = _tokens.find_variables(norm, variables, extra_variables=extra_variables, variable_map=variable_map, strict=variables is not None)
    if not found:
        raise DataError(f"no ClimaX variable found in the Dataset (data variables: {list(ds.data_vars)})")
    _checks.check_dtypes(norm, found)
    on_disk = [v for v in norm.data_vars.values() if v.chunks is None and not v.variable._in_memory]
    if on_disk:  # opened lazily without dask (``chunks=None``): statistics by on-disk time chunks, bounded memory
        step = max([v.encoding.get("preferred_chunks", {}).get("time") or 0 for v in on_disk] or [0]) or 16
        da = _tokens.to_array(norm.chunk({"time": step}), list(found), extra_variables=extra_variables,
                              variable_map=variable_map)
        _check_first_step(da, found)
        return da, norm
    da = _tokens.to_array(norm, list(found), extra_variables=extra_variables, variable_map=variable_map)
    _check_first_step(da, found)
    return da, (norm if da.chunks is not None else da)


def _check_first_step(da: xr.DataArray, found: Mapping[str, Any]) -> None:
    """Finite, plausible values in the first time step (one cheap read), before statistics and training."""
    names = [str(v) for v in da["variable"].values]
    checker = _checks.ValueChecker.build(found, order=names, what="training data (first time step)")
    checker(np.asarray(da.isel(time=[0]).values))


def _sources(ds: Any) -> dict[str, Any]:
    if isinstance(ds, (str, os.PathLike)):  # a zarr store (path or fsspec URL), opened lazily
        return {"data": xr.open_zarr(ds)}
    if isinstance(ds, (xr.Dataset, xr.DataArray)):
        return {"data": ds}
    if isinstance(ds, Mapping):
        if not ds:
            raise DataError("got an empty mapping of datasets")
        return {str(k): v for k, v in ds.items()}
    if isinstance(ds, (list, tuple)):
        if not ds:
            raise DataError("got an empty list of datasets")
        return {f"source{i}": v for i, v in enumerate(ds)}
    return {"data": ds}


def grid_size(arrays: Mapping[str, xr.DataArray], model: ClimaX | None) -> tuple[int, int]:
    """The ``(lat, lon)`` size of the training grid, shared by all sources (global or limited-area, any size).

    A given model must have that size (``xclimax.load_checkpoint(path, img_size=...)`` adapts one);
    its grid becomes the data's (``grid_record``), so a model can be fine-tuned onto another area.
    """
    shapes = {(a.sizes["lat"], a.sizes["lon"]) for a in arrays.values()}
    if len(shapes) != 1:
        raise GridError(f"all sources must share one grid; found lat x lon sizes {sorted(shapes)}")
    first_name, first = next(iter(arrays.items()))
    for name, a in arrays.items():
        try:
            _grid.check_grid(a, first)
        except GridError as err:
            raise GridError(f"all sources must share one grid: source {name!r} differs from source {first_name!r}: "
                            f"{err}") from None
    img = shapes.pop()
    if model is not None:
        if tuple(model.img_size) != img:
            raise GridError(
                f"grid shape mismatch: the model expects (lat, lon) = {tuple(model.img_size)}, found {img} "
                f"({_grid.grid_domain(first)}); regrid the data onto the model's grid with "
                "xclimax.grid.regrid(ds, *xclimax.grid.model_grid(model)), or load the checkpoint at the data's size "
                f"with xclimax.load_checkpoint(path, img_size={img})"
            )
        try:
            _grid.check_grid(first, model)
        except GridError:
            logger.info("training on a grid other than the model's recorded one (%s): the trained model takes "
                        "the data's grid", _grid.grid_domain(first))
    return img  # type: ignore[return-value]


def grid_record(arrays: Mapping[str, xr.DataArray]) -> dict[str, list[float]]:
    """The training grid as ``model.metadata["grid"]`` records it."""
    first = next(iter(arrays.values()))
    return _grid.grid_metadata(first["lat"].values, first["lon"].values)


def source_stats(arrays: Mapping[str, xr.DataArray], masks: Mapping[str, np.ndarray], pooled: bool) -> tuple[dict, dict]:
    """Per-source ``{var: (mean, std)}`` over the training times, and their pooled combination."""
    per: dict[str, dict] = {}
    moments: dict[str, list] = {}
    for name, da in arrays.items():
        sub = da.isel(time=np.nonzero(masks[name])[0])
        # statistics and a count of non-finite values (NaN are skipped by the means) in one pass over the data
        others = [d for d in da.dims if d != "variable"]
        lazy_stats, nonfinite = _normalize.compute_stats(sub), (~np.isfinite(da)).sum(others)
        if lazy_stats.chunks or nonfinite.chunks:
            import dask

            lazy_stats, nonfinite = dask.compute(lazy_stats, nonfinite)
        bad = {str(v): int(n) for v, n in zip(nonfinite["variable"].values, np.asarray(nonfinite.values)) if n}
        if bad:
            per = da.size // max(1, da.sizes["variable"])
            raise DataError(
                f"training source {name!r} contains non-finite values (NaN or inf; expected finite numbers "
                f"everywhere): {', '.join(f'{v}: {n} of {per}' for v, n in bad.items())}. Fill or drop them before "
                "training (ds.fillna / ds.dropna / ds.interpolate_na)"
            )
        st = _normalize.stats_to_dict(lazy_stats)
        n = sub.size // max(1, sub.sizes["variable"])
        per[name] = st
        for v, (m, s) in st.items():
            moments.setdefault(v, []).append((n, m, s))
    pool = {}
    for v, rows in moments.items():
        n = np.array([r[0] for r in rows], float)
        m = np.array([r[1] for r in rows], float)
        s = np.array([r[2] for r in rows], float)
        mean = float((n * m).sum() / n.sum())
        var = float((n * (s**2 + m**2)).sum() / n.sum() - mean**2)
        pool[v] = (mean, math.sqrt(max(var, 0.0)))
    return (pool if pooled else per), pool


def widen_model(model: ClimaX, variables: Sequence[str]) -> ClimaX:
    """A copy of ``model`` whose vocabulary also holds ``variables``: new ones get fresh weights."""
    new = [v for v in dict.fromkeys(variables) if v not in model.variables]
    if not new:
        return copy.deepcopy(model)
    wide = _checkpoint.remap_variables(model, list(model.variables) + new, warn=False)
    logger.info("added fresh token embeddings, var_embed rows and head rows for %s", new)
    return wide


def freeze_parameters(model: ClimaX, freeze: Any, new_vars: Sequence[str]) -> list:
    """Freeze parameters by group name or prefix; returns hook handles to remove after training."""
    groups = {
        "encoder": ("token_embeds", "var_embed", "var_query", "var_agg", "pos_embed", "lead_time_embed", "blocks", "norm"),
        "embeddings": ("token_embeds", "var_embed", "var_query", "var_agg", "pos_embed", "lead_time_embed"),
        "blocks": ("blocks",),
        "head": ("head",),
    }
    if freeze is None:
        return []
    prefixes = list(groups.get(freeze, (freeze,))) if isinstance(freeze, str) else list(freeze)
    names = [n for n, _ in model.named_parameters()]
    unknown = [p for p in prefixes if not any(n == p or n.startswith(p + ".") for n in names)]
    if unknown:
        raise DataError(f"freeze={freeze!r}: no parameters start with {unknown}; groups are {sorted(groups)} or module prefixes")
    new_ids = [model.variables.index(v) for v in new_vars]
    hooks = []
    for n, p in model.named_parameters():
        if any(n == q or n.startswith(q + ".") for q in prefixes):
            m = re.match(r"token_embeds\.(\d+)\.", n)
            if m and int(m.group(1)) in new_ids:
                continue  # new variables stay trainable
            if n == "var_embed" and new_ids:
                keep = torch.zeros_like(p)
                keep[:, new_ids] = 1
                hooks.append(p.register_hook(lambda g, keep=keep: g * keep))  # only the new rows learn
                continue
            p.requires_grad_(False)
    return hooks



@dataclass
class _Data:
    """Training (or validation) sources: lazy canonical arrays (statistics, grid and time checks),
    what the loader reads (grid-normalised Datasets or canonical DataArrays) and usable-time masks."""

    arrays: dict[str, xr.DataArray]
    feeds: dict[str, xr.Dataset | xr.DataArray]
    masks: dict[str, np.ndarray]

    def variables(self) -> dict[str, list[str]]:
        """The ClimaX variables of each source, in the order of its canonical array."""
        return {k: [str(v) for v in a["variable"].values] for k, a in self.arrays.items()}

    def loader_kwargs(self, extra_variables: Any, variable_map: Any) -> dict[str, Any]:
        """Sources and variables for :class:`~xclimax.loading.BatchLoader` (via ``ForecastTask.loader``)."""
        return dict(sources=self.feeds, mask=self.masks, variables=self.variables(), extra_variables=extra_variables,
                    variable_map=variable_map)


def prepare_data(
    ds: Any, val: Any, variables: Sequence[str] | None, extra_variables: Any, variable_map: Any
) -> tuple[_Data, _Data | None]:
    """Training data and validation data (the same sources with other masks, separate data, or None)."""
    def load(obj: Any) -> tuple[dict, dict]:
        pairs = {k: _canonical(v, variables, extra_variables, variable_map) for k, v in _sources(obj).items()}
        return {k: p[0] for k, p in pairs.items()}, {k: p[1] for k, p in pairs.items()}

    arrays, feeds = load(ds)
    for name, a in arrays.items():
        _checks.check_times(a, "time", what=f"training source {name!r}", sorted_=True)
        time_step(a["time"].values)  # validates the time axis early
    if isinstance(val, (xr.Dataset, xr.DataArray, Mapping, list, tuple)):
        val_arrays, val_feeds = load(val)
        every = lambda arrs: {k: np.ones(a.sizes["time"], bool) for k, a in arrs.items()}  # noqa: E731
        return _Data(arrays, feeds, every(arrays)), _Data(val_arrays, val_feeds, every(val_arrays))
    split = {k: split_times(a["time"].values, val) for k, a in arrays.items()}
    train = _Data(arrays, feeds, {k: s[0] for k, s in split.items()})
    if val is None:
        return train, None
    return train, _Data(arrays, feeds, {k: s[1] for k, s in split.items()})


