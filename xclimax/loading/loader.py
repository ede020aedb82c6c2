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

import logging
import os
import queue
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import xarray as xr

from ..cf.stats import stats_arrays
from ..exceptions import DataError
from .index import SampleIndex, sample_index
from .readers import ArrayReader, DatasetReader, canonical_order, chunk_runs

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- loader


@dataclass
class Batch:
    """One batch: normalised ``x [B, Vin, H, W]``, ``y [B, Vout, H, W]`` and ``lead_hours [B]``.

    ``source`` names the dataset the batch comes from (all samples of a batch share their
    variables); ``time`` holds the input times (datetime64 or cftime, as in the data).
    """

    x: Any
    y: Any
    lead_hours: Any
    variables: tuple[str, ...]
    out_variables: tuple[str, ...]
    source: str
    time: np.ndarray
    #: data-parallel training (``BatchLoader(rank=, world_size=)``): samples in the whole global batch, and
    #: per-sample weights of this rank's part (0 for the stand-in sample of a rank whose part is empty)
    global_size: int | None = None
    weight: Any = None

    def to(self, device: Any, non_blocking: bool = False) -> "Batch":
        """Move the tensors to ``device``."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return Batch(move(self.x), move(self.y), move(self.lead_hours), self.variables, self.out_variables,
                     self.source, self.time, self.global_size, None if self.weight is None else move(self.weight))


@dataclass
class _Source:
    name: str
    reader: Any  # ArrayReader or DatasetReader
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
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self._args = {k: v for k, v in locals().items() if k not in ("self", "__class__")}  # see __reduce__
        if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank must be in [0, world_size) with world_size >= 1; got rank={rank!r}, "
                            f"world_size={world_size!r}")
        self.rank, self.world_size = int(rank), int(world_size)
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
                    reader = DatasetReader(obj, None, **mapping)
                names = want if want is not None else reader.names
            elif isinstance(obj, xr.DataArray):
                da = canonical_order(obj)
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
                reader = ArrayReader(da if used == have else da.sel(variable=list(used)))
            elif reader is None or reader.names != used:  # read only what the batches use
                reader = DatasetReader(obj, list(used), **mapping)
            st = stats[name] if isinstance(stats.get(name), Mapping) else stats
            missing = [v for v in reader.names if v not in st]
            if missing:
                raise DataError(f"no normalisation statistics for {missing} (source {name!r})")
            mean, std = stats_arrays(st, reader.names, f"source {name!r}")
            m = None if mask is None else mask.get(name)
            idx = sample_index(reader.times, lead_times, mask=m)
            n_series = int(np.prod(reader.series_shape, dtype=np.int64))
            src = _Source(
                name, reader, reader.times, ins, outs, [idx] * n_series, reader.chunks,
                mean=mean[:, None, None],
                std=std[:, None, None],
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
        runs = chunk_runs(chunks)
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
        shares = None
        if self.world_size > 1:  # data-parallel: this rank reads and serves only its part of each global batch
            shares = [self.share(batch) for batch in plan]
            plan = [s[0] for s in shares]

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
                out = self._assemble(batch, cache, key, torch)
                if shares is not None:
                    out.global_size, out.weight = shares[b][1], torch.tensor(shares[b][2], dtype=torch.float32)
                yield out
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

    def share(self, batch: list) -> tuple[list, int, list[float]]:
        """This rank's part of a global batch: ``(samples, global batch size, sample weights)``.

        The samples are ordered by block and input time and cut into ``world_size`` contiguous
        parts of (nearly) equal size, so that each rank tends to read other time chunks. A rank
        whose part is empty (a global batch smaller than ``world_size``) gets the first sample
        with weight 0: every rank takes part in each gradient exchange. The global plan is the
        same on every rank (it depends on the seed only), so the parts cover each batch once.
        """
        ordered = sorted(batch, key=lambda s: (s[0], s[1]))
        parts = np.array_split(np.arange(len(ordered)), self.world_size)
        mine = [ordered[i] for i in parts[self.rank]]
        if not mine:
            return [ordered[0]], len(batch), [0.0]
        return mine, len(batch), [1.0] * len(mine)

    def __reduce__(self) -> tuple:
        """Pickled as its arguments, rebuilt where it is unpickled (a data-parallel rank on a dask
        worker re-opens the data there: a zarr-backed Dataset is read straight from its store)."""
        return (_rebuild_loader, (type(self), self._args))

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Iterate over the batches of ``epoch``, beginning at batch number ``start`` (for resuming).

        With ``prefetch > 0`` the batches are prepared in a background thread. Close the
        iterator (or exhaust it) to stop the thread.
        """
        gen = self._batches(self.plan(epoch), start)
        return _Prefetcher(gen, self.prefetch) if self.prefetch > 0 else gen


def _rebuild_loader(cls: type, args: dict) -> BatchLoader:
    return cls(**args)


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
