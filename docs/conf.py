"""Sphinx configuration for the xclimax documentation.

Build (offline, warnings are errors, notebooks executed):

    python3 -m pip install -e ".[docs]" && python3 -m sphinx -W --keep-going -b html docs docs/_build/html

Adding a notebook: write ``docs/notebooks/<name>.md`` (a MyST Markdown notebook, see
``docs/contributing-notebooks.md``) and add ``<name>`` to the toctree in ``docs/notebooks/index.md``.
That is the only change needed: myst-nb executes it at build time.
"""

from __future__ import annotations

import inspect
import os
import re
import types
from pathlib import Path

import sphinx_autosummary_accessors

import xclimax

HERE = Path(__file__).parent

# The public modules (xclimax.tutorial, .baselines, ...) are aliases created on first access;
# touch them so that autodoc can import them by their public names.
for _name in ("tutorial", "baselines", "plot", "metrics", "normalize", "tokens", "grid"):
    getattr(xclimax, _name)

project = "xclimax"
author = "xclimax developers"
copyright = "xclimax developers"
release = version = xclimax.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_autosummary_accessors",
    "myst_nb",  # brings myst_parser: .md pages and MyST Markdown notebooks
]

templates_path = [sphinx_autosummary_accessors.templates_path]
exclude_patterns = ["_build", "jupyter_execute", "**.ipynb_checkpoints", "README.md"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
root_doc = "index"

# --------------------------------------------------------------------------- API reference
autosummary_generate = True
autosummary_imported_members = True
autodoc_typehints = "none"  # numpydoc sections carry the types; signatures stay readable
autodoc_default_options = {"members": False}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# --------------------------------------------------------------------------- offline
# The build never touches the network (none here or in CI). Intersphinx links are off unless
# XCLIMAX_DOCS_INTERSPHINX=1 is set on a machine that can reach the inventories.
intersphinx_mapping: dict[str, tuple[str, None]] = {}
if os.environ.get("XCLIMAX_DOCS_INTERSPHINX") == "1":
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "numpy": ("https://numpy.org/doc/stable", None),
        "xarray": ("https://docs.xarray.dev/en/stable", None),
        "dask": ("https://docs.dask.org/en/stable", None),
        "torch": ("https://docs.pytorch.org/docs/stable", None),
    }

# --------------------------------------------------------------------------- notebooks (myst-nb)
# Every notebook (docs/**/*.md with a jupytext/kernelspec header, or .ipynb) is executed at build
# time. "cache" re-executes only notebooks whose code changed (docs/_build/.jupyter_cache); a fresh
# clone executes all of them. An error in any cell fails the build.
nb_execution_mode = os.environ.get("XCLIMAX_DOCS_EXECUTE", "cache")
nb_execution_timeout = 300  # seconds per cell
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_cache_path = str(HERE / "_build" / ".jupyter_cache")
# XCLIMAX_DOCS_SKIP="notebooks/a.md,notebooks/b.md" renders those notebooks without executing them
# (for local work on other pages; never in CI).
nb_execution_excludepatterns = [p for p in os.environ.get("XCLIMAX_DOCS_SKIP", "").split(",") if p]
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]
myst_heading_anchors = 3

# The kernels inherit this environment: leave matplotlib on Jupyter's inline backend (a
# non-interactive MPLBACKEND such as CI's Agg would turn figures into "<Figure ...>" text).
os.environ.pop("MPLBACKEND", None)

# --------------------------------------------------------------------------- HTML
html_theme = "pydata_sphinx_theme"
html_title = f"xclimax {version}"
html_static_path: list[str] = []
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "header_links_before_dropdown": 6,
    "secondary_sidebar_items": ["page-toc"],
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_context = {"default_mode": "light"}
html_sidebars = {"index": []}


# --------------------------------------------------------------------------- API completeness check
def _check_api_listed(app) -> None:
    """Warn (an error under -W) when a public function or class of ``xclimax`` is not in api.rst.

    New top-level functions (e.g. ``xclimax.project`` when it lands) must be listed in
    ``docs/api.rst``; names that do not exist yet are simply not listed, so the build never
    depends on work in progress.
    """
    from sphinx.util import logging

    listed = set(re.findall(r"^\s+([\w.]+)\s*$", (HERE / "api.rst").read_text(), flags=re.M))
    for name in getattr(xclimax, "__all__", []):
        if name.startswith("_"):
            continue
        try:
            obj = getattr(xclimax, name)
        except AttributeError:
            continue
        if isinstance(obj, types.ModuleType) or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if name not in listed:
            logging.getLogger("xclimax.docs").warning(
                "xclimax.%s is public but not listed in docs/api.rst: add it to an autosummary list there", name
            )


def _accessor_signature(app, what, name, obj, options, signature, return_annotation):
    """Show ``Dataset.climax.<method>(model, ...)`` with its first parameter.

    The accessor's methods carry the signature of the function they call, minus the Dataset;
    autodoc documents them as methods and would drop their first parameter as if it were ``self``.
    """
    if not name.startswith("xarray.Dataset.climax.") or not callable(obj):
        return None
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty)), None


def setup(app):
    app.connect("builder-inited", _check_api_listed)
    app.connect("autodoc-process-signature", _accessor_signature)
