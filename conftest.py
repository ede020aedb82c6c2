"""Fixtures shared by the test suite and the doctests."""

import numpy as np
import pytest
import torch
import xarray as xr

import xclimax
from xclimax.testing import synthetic_dataset


@pytest.fixture(autouse=True)
def _quiet_and_seeded():
    torch.manual_seed(0)
    np.random.seed(0)
    with xclimax.set_options(progress=False):
        yield


@pytest.fixture(params=["numpy", "dask"])
def backend(request):
    """Parametrise a test over numpy- and dask-backed inputs: use ``tests.as_backend(ds, backend)``."""
    return request.param


@pytest.fixture
def era5_ds():
    return synthetic_dataset(8)


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace):
    doctest_namespace["xr"] = xr
    doctest_namespace["np"] = np
    doctest_namespace["xclimax"] = xclimax
