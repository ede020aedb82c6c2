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
   dask compute, normalised once, kept while the plan still needs it and dropped afterwards.
   Batches are assembled in a background thread and optionally pinned for CUDA.

The loader works on the canonical layout: DataArrays with dims
``(*batch_dims, "time", "variable", "lat", "lon")`` (see ``docs/design.md``).
"""

from __future__ import annotations

import logging
import queue
import threading
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
    array: xr.DataArray  # (series, time, variable, lat, lon)
    times: np.ndarray
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    index: list[SampleIndex]  # one per series
    chunks: tuple[int, ...]  # time chunk sizes
    mean: np.ndarray  # [V, 1, 1] over the variables of ``array``
    std: np.ndarray
    in_ids: np.ndarray  # positions of ``inputs`` / ``outputs`` in ``array.variable``
    out_ids: np.ndarray


def _as_series(da: xr.DataArray) -> xr.DataArray:
    missing = [d for d in _CORE_DIMS if d not in da.dims]
    if missing:
        raise DataError(f"expected a DataArray with dims (*batch, time, variable, lat, lon); missing {missing} in {da.dims}")
    extra = [d for d in da.dims if d not in _CORE_DIMS]
    if extra:
        da = da.stack(_series=extra).transpose("_series", *_CORE_DIMS).drop_vars(["_series", *extra], errors="ignore")
    else:
        da = da.transpose(*_CORE_DIMS).expand_dims("_series")
    return da


class BatchLoader:
    """Shuffled, prefetched training batches from one or several canonical DataArrays.

    Parameters
    ----------
    sources : DataArray or mapping of name -> DataArray
        Canonical arrays ``(*batch, time, variable, lat, lon)`` (numpy- or dask-backed), all on the
        same grid. Each batch comes from one source; sources may have different variables.
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
        number of whole chunks covering twice the longest lead (so a block's targets cost
        at most ~50 % extra reading), within a ~512 MB budget.
    buffer_size : int, optional
        Samples in the shuffle pool (default: one block, at least ``2 * batch_size``).
    prefetch : int
        Batches prepared ahead by the background thread (0: no thread).
    pin_memory : bool
        Pin batch tensors (for fast asynchronous copies to CUDA).

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
        sources: xr.DataArray | Mapping[str, xr.DataArray],
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
        pin_memory: bool = False,
    ) -> None:
        if isinstance(sources, xr.DataArray):
            sources = {"data": sources}
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1; got {batch_size}")
        self.batch_size = int(batch_size)
        self.shuffle, self.seed, self.prefetch, self.pin_memory = shuffle, int(seed), int(prefetch), pin_memory
        self.sources: list[_Source] = []
        max_lead_steps = 1
        for name, da in sources.items():
            da = _as_series(da)
            times = np.asarray(da["time"].values, dtype="datetime64[ns]")
            names = tuple(str(v) for v in da["variable"].values)
            ins = names if inputs is None else tuple(v for v in inputs if v in names)
            outs = names if outputs is None else tuple(v for v in outputs if v in names)
            if not ins or not outs:
                raise DataError(f"source {name!r} has variables {list(names)}: no inputs or no outputs among them")
            m = None if mask is None else mask.get(name)
            idx = sample_index(times, lead_times, mask=m)
            st = stats[name] if isinstance(stats.get(name), Mapping) else stats
            missing = [v for v in ins + outs if v not in st]
            if missing:
                raise DataError(f"no normalisation statistics for {missing} (source {name!r})")
            used = tuple(dict.fromkeys(ins + outs))
            da = da.sel(variable=list(used))
            self._check_stats(st, used)
            chunks = da.chunks[1] if da.chunks else (times.size,)
            src = _Source(
                name, da, times, ins, outs, [idx] * da.sizes["_series"], tuple(chunks),
                mean=np.array([st[v][0] for v in used], np.float32)[:, None, None],
                std=np.array([st[v][1] for v in used], np.float32)[:, None, None],
                in_ids=np.array([used.index(v) for v in ins]),
                out_ids=np.array([used.index(v) for v in outs]),
            )
            if len(idx):
                max_lead_steps = max(max_lead_steps, int((idx.target - idx.input).max()))
            self.sources.append(src)
        if not any(len(s.index[0]) for s in self.sources):
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
            bounds = np.concatenate([[0], np.cumsum(src.chunks)])
            chunk = int(np.max(src.chunks))
            if block_size is None:
                step_bytes = src.array.dtype.itemsize * np.prod(src.array.shape[2:])
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

    def _read_unit(self, unit: int, stop: int) -> np.ndarray:
        s_no, series, a, _, _ = self._units[unit]
        src = self.sources[s_no]
        block = src.array.isel(_series=series, time=slice(a, stop)).values  # one dask compute
        block = (block.astype(np.float32, copy=False) - src.mean) / src.std
        if not np.isfinite(block).all():
            bad = src.times[a + np.nonzero(~np.isfinite(block).all(axis=(1, 2, 3)))[0][0]]
            raise DataError(f"non-finite values in source {src.name!r} at time {bad}; fill or drop them before training")
        return block

    def _batches(self, plan: list, start: int) -> Iterator[Batch]:
        import torch

        last_use: dict[int, int] = {}
        stop: dict[int, int] = {}
        for b, batch in enumerate(plan):
            for u, _, t, _ in batch:
                last_use[u] = b
                stop[u] = max(stop.get(u, 0), t + 1)
        cache: dict[int, np.ndarray] = {}
        for b in range(start, len(plan)):
            batch = plan[b]
            for u in {s[0] for s in batch}:
                if u not in cache:
                    cache[u] = self._read_unit(u, stop[u])
            src = self.sources[self._units[batch[0][0]][0]]
            x = np.stack([cache[u][i - self._units[u][2]][src.in_ids] for u, i, _, _ in batch])
            y = np.stack([cache[u][t - self._units[u][2]][src.out_ids] for u, _, t, _ in batch])
            lead = torch.tensor([s[3] for s in batch], dtype=torch.float32)
            x, y = torch.from_numpy(x), torch.from_numpy(y)
            if self.pin_memory:
                x, y, lead = x.pin_memory(), y.pin_memory(), lead.pin_memory()
            times = src.times[[i for _, i, _, _ in batch]]
            for u in [u for u in cache if last_use[u] <= b]:
                del cache[u]
            yield Batch(x, y, lead, src.inputs, src.outputs, src.name, times)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Iterate over the batches of ``epoch``, beginning at batch number ``start`` (for resuming).

        With ``prefetch > 0`` the batches are prepared in a background thread. Close the
        iterator (or exhaust it) to stop the thread.
        """
        gen = self._batches(self.plan(epoch), start)
        return _Prefetcher(gen, self.prefetch) if self.prefetch > 0 else gen


class _Prefetcher:
    """Run a generator in a daemon thread, ``depth`` items ahead; errors are re-raised in the consumer."""

    _DONE = object()

    def __init__(self, gen: Iterator, depth: int) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._gen = gen
        self._thread = threading.Thread(target=self._run, daemon=True, name="xclimax-prefetch")
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._gen:
                if not self._put(item):
                    return
            self._put(self._DONE)
        except BaseException as err:  # forwarded to the consumer
            self._put(err)

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
        self._thread.join(timeout=5)
