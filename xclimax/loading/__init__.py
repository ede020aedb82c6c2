"""Training input: the pure sample index, readers, the zarr fast path and the prefetching loader."""

from .index import SampleIndex, lead_choices, sample_index, split_times, time_step
from .loader import Batch, BatchLoader

__all__ = ["SampleIndex", "Batch", "BatchLoader", "time_step", "lead_choices", "sample_index", "split_times"]
