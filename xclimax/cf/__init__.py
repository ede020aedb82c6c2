"""The xarray/CF layer: variables, units, grids, time axes and normalisation statistics.

Everything here takes and returns xarray objects and knows nothing of training.
"""
