"""Sphinx configuration for the xclimax documentation (``sphinx-build docs docs/_build``)."""

import xclimax

project = "xclimax"
author = "xclimax developers"
release = version = xclimax.__version__
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_autosummary_accessors",
    "myst_parser",
]
autosummary_generate = True
numpydoc_show_class_members = False
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
html_theme = "furo"
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "xarray": ("https://docs.xarray.dev/en/stable", None),
    "torch": ("https://pytorch.org/docs/stable", None),
    "cf_xarray": ("https://cf-xarray.readthedocs.io/en/latest", None),
}
