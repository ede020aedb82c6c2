"""Read and write ClimaX checkpoints (torch and safetensors only; never imports xarray).

Three kinds of file are read by :func:`load_checkpoint`:

* the released official checkpoints (``5.625deg.ckpt``, ``1.40625deg.ckpt``): PyTorch
  Lightning dictionaries with the weights under ``"state_dict"``, keys prefixed ``net.`` and
  the older ``channel_embed`` / ``channel_query`` / ``channel_agg`` names;
* files written by :func:`save_checkpoint` (``.safetensors`` with the configuration, variable
  names, normalisation statistics and metadata as JSON in the header, or a weights-only torch
  file);
* a plain state dict with the official key names (with or without a ``net.`` prefix).

Files are only ever read with ``torch.load(..., weights_only=True)`` or safetensors, so a
checkpoint cannot run code. The model configuration is inferred from tensor shapes where the
file does not record it, variables are matched by name, and the positional embedding is
interpolated when the grid changes.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .._utils import atomic_write
from .._version import __version__
from ..exceptions import CheckpointError, XClimaxWarning
from ..vocab import CLIMAX_VARIABLES, canonical_name
from .model import ClimaX

__all__ = ["load_checkpoint", "save_checkpoint", "remap_variables"]

logger = logging.getLogger(__name__)

#: Format tag and version of the files written by :func:`save_checkpoint`.
FORMAT = "xclimax"
FORMAT_VERSION = 1

#: Heads of the official checkpoints cannot be inferred from shapes; this is their value.
DEFAULT_NUM_HEADS = 16
_OFFICIAL_DROP = {"drop_path": 0.1, "drop_rate": 0.1}
# older official names -> current names
_RENAMES = (("channel_embed", "var_embed"), ("channel_query", "var_query"), ("channel_agg.", "var_agg."))
_SHOWN = 8  # how many keys an error message lists


# --------------------------------------------------------------------------- reading
def _show(keys: Sequence[str] | set[str]) -> str:
    keys = sorted(keys)
    more = f" ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _sniff(path: Path) -> str:
    """Return ``"safetensors"``, ``"zip"`` (torch) or ``"pickle"`` (legacy torch) from the first bytes."""
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: expected an existing file at {str(path)!r}")
    if not path.is_file():
        raise CheckpointError(f"expected a checkpoint file, found a directory or special file at {str(path)!r}")
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(9)
    if size == 0:
        raise CheckpointError(f"checkpoint {str(path)!r} is empty (0 bytes)")
    if head[:4] == b"PK\x03\x04":
        return "zip"
    if head[:1] == b"\x80":
        return "pickle"
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") <= size - 8:
        return "safetensors"
    raise CheckpointError(
        f"{str(path)!r} is not a checkpoint: expected a PyTorch file (zip or pickle) or a safetensors file, "
        f"found leading bytes {head!r}"
    )


def _torch_load(path: Path, kind: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=kind == "zip")
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... on bad files
        message = str(err)
        if "weights only" in message.lower() or "weights_only" in message.lower():
            unsafe: list[str] = []
            if kind == "zip":
                try:  # static scan of the pickle opcodes, executes nothing
                    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
                except Exception:  # pragma: no cover - best effort for the message only
                    pass
            found = f" ({_show(unsafe)})" if unsafe else ""
            raise CheckpointError(
                f"refusing to load {str(path)!r}: it contains pickled Python objects{found}, not only tensors "
                "and plain containers, and unpickling them could run arbitrary code. xclimax only reads "
                "checkpoints with torch.load(weights_only=True) or safetensors. If you trust the file, extract "
                "the weights yourself (e.g. torch.load(path, weights_only=False)['state_dict']), save them with "
                "torch.save(state_dict, 'weights.pt') and load that file instead."
            ) from None
        raise CheckpointError(
            f"could not read {str(path)!r} as a PyTorch checkpoint (truncated or corrupt?): "
            f"{type(err).__name__}: {message.splitlines()[0] if message else ''}"
        ) from None


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise CheckpointError(
            f"could not read {str(path)!r} as a safetensors file (truncated or corrupt?): {type(err).__name__}: {err}"
        ) from None
    if header.get("format") != FORMAT:
        return sd, {"format": "state_dict"}
    try:
        info = {key: json.loads(header[key]) for key in ("format_version", "config", "variables", "stats", "metadata")}
    except (KeyError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{str(path)!r} is tagged as an xclimax checkpoint but its header is incomplete or not valid JSON: {err!r}"
        ) from None
    return sd, {**info, "format": FORMAT, "xclimax_version": header.get("xclimax_version")}


def _unwrap(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a loaded torch object into (state dict, info about the file)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a dict in {str(path)!r}, found {type(obj).__name__}")
    if obj.get("format") == FORMAT:
        missing = {"format_version", "config", "variables", "state_dict"} - set(obj)
        if missing:
            raise CheckpointError(f"xclimax checkpoint {str(path)!r} lacks entries {_show(missing)}")
        info = {k: obj.get(k, {}) for k in ("format_version", "config", "variables", "stats", "metadata")}
        return dict(obj["state_dict"]), {**info, "format": FORMAT, "xclimax_version": obj.get("xclimax_version")}
    if isinstance(obj.get("state_dict"), Mapping):  # PyTorch Lightning (the official release) or similar
        return dict(obj["state_dict"]), {"format": "lightning"}
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj), {"format": "state_dict"}
    raise CheckpointError(
        f"{str(path)!r} holds a dict with keys {_show([str(k) for k in obj])}: expected a state dict of tensors, "
        "a Lightning checkpoint with a 'state_dict' entry, or an xclimax checkpoint"
    )


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    kind = _sniff(path)
    if kind == "safetensors":
        sd, info = _read_safetensors(path)
    else:
        sd, info = _unwrap(_torch_load(path, kind), path)
    bad = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"expected tensors under string keys in the state dict, found other entries: {_show(bad)}"
        )
    if info["format"] == FORMAT and int(info["format_version"]) > FORMAT_VERSION:
        raise CheckpointError(
            f"{str(path)!r} has xclimax format version {info['format_version']} (written by xclimax "
            f"{info.get('xclimax_version')}); this xclimax ({__version__}) reads up to version {FORMAT_VERSION}"
        )
    return sd, info


def _normalise_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip a wrapper prefix (``net.``, ``module.``), rename ``channel_*`` and unfold a parallel patch embed."""
    ends = [k[: -len("pos_embed")] for k in sd if k == "pos_embed" or k.endswith(".pos_embed")]
    if not ends:
        raise CheckpointError(
            f"no 'pos_embed' tensor found (with or without a 'net.' prefix): this does not look like a ClimaX "
            f"state dict; found keys {_show(list(sd))}"
        )
    prefix = min(ends, key=len)
    ignored = [k for k in sd if not k.startswith(prefix)]
    if ignored:
        logger.info("ignoring %d entries outside %r: %s", len(ignored), prefix, _show(ignored))
    out = {}
    for key, value in sd.items():
        if not key.startswith(prefix):
            continue
        key = key[len(prefix) :]
        for old, new in _RENAMES:
            if key.startswith(old):
                key = new + key[len(old) :]
        out[key] = value
    if "token_embeds.proj_weights" in out:  # official ParallelVarPatchEmbed -> one conv per variable
        weights, biases = out.pop("token_embeds.proj_weights"), out.pop("token_embeds.proj_biases", None)
        for i in range(weights.shape[0]):
            out[f"token_embeds.{i}.proj.weight"] = weights[i]
            if biases is not None:
                out[f"token_embeds.{i}.proj.bias"] = biases[i]
    return out


# --------------------------------------------------------------------------- configuration
def _indices(sd: Mapping[str, torch.Tensor], pattern: str) -> list[int]:
    """Sorted integers ``i`` such that ``pattern.format(i)`` prefixes a key of ``sd``."""
    head, tail = pattern.split("{}")
    found = set()
    for key in sd:
        if key.startswith(head):
            index, _, rest = key[len(head) :].partition(".")
            if index.isdigit() and ("." + rest).startswith(tail):
                found.add(int(index))
    return sorted(found)


def _infer_config(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Infer the architecture of a (key-normalised) official state dict from tensor shapes alone.

    Returns ``embed_dim``, ``n_vars``, ``patch_size``, ``depth``, ``decoder_depth``, ``mlp_ratio``
    and ``n_tokens`` (length of ``pos_embed``). Works on any tensors with a ``shape``, including
    ``meta`` tensors.
    """
    needed = {"pos_embed", "var_embed", "token_embeds.0.proj.weight", "head.0.weight"}
    if not needed <= set(sd):
        raise CheckpointError(
            f"cannot infer the model configuration: expected keys {_show(needed)}, missing {_show(needed - set(sd))}"
        )
    pos, var = sd["pos_embed"].shape, sd["var_embed"].shape
    if len(pos) != 3 or len(var) != 3 or pos[0] != 1 or var[0] != 1 or pos[2] != var[2]:
        raise CheckpointError(
            f"expected pos_embed [1, L, D] and var_embed [1, V, D], found {tuple(pos)} and {tuple(var)}"
        )
    embed_dim, n_vars = int(var[2]), int(var[1])
    tokens = _indices(sd, "token_embeds.{}.proj")
    if tokens != list(range(n_vars)):
        raise CheckpointError(
            f"var_embed has {n_vars} rows, so expected token_embeds.0..{n_vars - 1}, found indices {tokens[:_SHOWN]}"
            + ("..." if len(tokens) > _SHOWN else "")
        )
    conv = tuple(sd["token_embeds.0.proj.weight"].shape)
    if len(conv) != 4 or conv[:2] != (embed_dim, 1) or conv[2] != conv[3]:
        raise CheckpointError(f"expected token_embeds.0.proj.weight [{embed_dim}, 1, p, p], found {conv}")
    patch_size = int(conv[-1])
    blocks = _indices(sd, "blocks.{}.")
    if blocks != list(range(len(blocks))):
        raise CheckpointError(f"expected transformer blocks numbered 0..n-1, found {blocks}")
    heads = _indices(sd, "head.{}.weight")
    decoder_depth = len(heads) - 1
    if heads != list(range(0, 2 * decoder_depth + 1, 2)):
        raise CheckpointError(f"expected head Linear layers at even indices 0, 2, ..., found head.{heads}")
    last = tuple(sd[f"head.{heads[-1]}.weight"].shape)
    if last != (n_vars * patch_size**2, embed_dim):
        raise CheckpointError(
            f"expected head.{heads[-1]}.weight of shape {(n_vars * patch_size**2, embed_dim)} "
            f"({n_vars} variables x patch {patch_size}^2), found {last}"
        )
    mlp_ratio = 4.0
    if blocks:
        hidden = int(sd["blocks.0.mlp.fc1.weight"].shape[0]) if "blocks.0.mlp.fc1.weight" in sd else 4 * embed_dim
        mlp_ratio = hidden / embed_dim
    return {
        "embed_dim": embed_dim,
        "n_vars": n_vars,
        "patch_size": patch_size,
        "depth": len(blocks),
        "decoder_depth": decoder_depth,
        "mlp_ratio": mlp_ratio,
        "n_tokens": int(pos[1]),
    }


def _official_shapes(
    n_vars: int, embed_dim: int, depth: int, decoder_depth: int, mlp_ratio: float, patch_size: int, n_tokens: int
) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official serial ClimaX state dict (``climax.md`` §2.1)."""
    D, hidden, p = embed_dim, int(embed_dim * mlp_ratio), patch_size
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(n_vars):
        shapes[f"token_embeds.{i}.proj.weight"] = (D, 1, p, p)
        shapes[f"token_embeds.{i}.proj.bias"] = (D,)
    shapes |= {
        "var_embed": (1, n_vars, D),
        "var_query": (1, 1, D),
        "var_agg.in_proj_weight": (3 * D, D),
        "var_agg.in_proj_bias": (3 * D,),
        "var_agg.out_proj.weight": (D, D),
        "var_agg.out_proj.bias": (D,),
        "pos_embed": (1, n_tokens, D),
        "lead_time_embed.weight": (D, 1),
        "lead_time_embed.bias": (D,),
    }
    for b in range(depth):
        for name, shape in (
            ("norm1.weight", (D,)),
            ("norm1.bias", (D,)),
            ("attn.qkv.weight", (3 * D, D)),
            ("attn.qkv.bias", (3 * D,)),
            ("attn.proj.weight", (D, D)),
            ("attn.proj.bias", (D,)),
            ("norm2.weight", (D,)),
            ("norm2.bias", (D,)),
            ("mlp.fc1.weight", (hidden, D)),
            ("mlp.fc1.bias", (hidden,)),
            ("mlp.fc2.weight", (D, hidden)),
            ("mlp.fc2.bias", (D,)),
        ):
            shapes[f"blocks.{b}.{name}"] = shape
    shapes |= {"norm.weight": (D,), "norm.bias": (D,)}
    for j in range(decoder_depth):
        shapes[f"head.{2 * j}.weight"], shapes[f"head.{2 * j}.bias"] = (D, D), (D,)
    shapes[f"head.{2 * decoder_depth}.weight"] = (n_vars * p * p, D)
    shapes[f"head.{2 * decoder_depth}.bias"] = (n_vars * p * p,)
    return shapes


def _check_keys(
    sd: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], strict: bool, path: Path
) -> None:
    wrong = {k: (expected[k], tuple(v.shape)) for k, v in sd.items() if k in expected and tuple(v.shape) != expected[k]}
    if wrong:
        listed = "; ".join(f"{k}: expected {e}, found {f}" for k, (e, f) in list(wrong.items())[:_SHOWN])
        raise CheckpointError(f"tensors of {str(path)!r} have inconsistent shapes: {listed}")
    missing, unexpected = set(expected) - set(sd), set(sd) - set(expected)
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"{str(path)!r} does not match the ClimaX layout it implies (strict=True): "
            + (f"missing keys {_show(missing)}" if missing else "")
            + ("; " if missing and unexpected else "")
            + (f"unexpected keys {_show(unexpected)}" if unexpected else "")
        )
    if missing:
        warnings.warn(
            f"checkpoint lacks {len(missing)} tensors, which keep their fresh initialisation: {_show(missing)}",
            XClimaxWarning,
            stacklevel=3,
        )
    if unexpected:
        warnings.warn(
            f"ignoring {len(unexpected)} unexpected tensors: {_show(unexpected)}", XClimaxWarning, stacklevel=3
        )


def _pair(value: Any, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        pair = tuple(int(v) for v in value)
        ok = len(pair) == 2 and all(v > 0 for v in pair) and all(int(v) == v for v in value)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise CheckpointError(f"expected {name} as two positive integers (lat, lon), found {value!r}")
    return pair  # type: ignore[return-value]


def _token_grid(
    n_tokens: int, patch_size: int, known: tuple[int, int] | None, wanted: tuple[int, int] | None, what: str
):
    """Token grid (h, w) of the stored pos_embed: from the known image size, else the wanted one, else 1:2."""
    for size in (known, wanted):
        tokens = None if size is None else (-(-size[0] // patch_size), -(-size[1] // patch_size))  # padded grids
        if tokens is not None and tokens[0] * tokens[1] == n_tokens:
            return tokens
        if tokens is not None and size is known:
            raise CheckpointError(
                f"{what} has img_size={list(known)} with patch {patch_size}, i.e. "
                f"{tokens[0] * tokens[1]} tokens, but pos_embed has {n_tokens}"
            )
    h = math.isqrt(n_tokens // 2)
    if 2 * h * h != n_tokens:
        raise CheckpointError(
            f"cannot tell the token grid of pos_embed with {n_tokens} tokens: it is not a 1:2 (lat:lon) grid; "
            "pass source_img_size=(H, W), the image size the checkpoint was trained on"
        )
    return h, 2 * h


def global_grid(img_size: Sequence[int]) -> dict[str, list[float]]:
    """The global ClimaX grid of ``img_size=(H, W)`` as ``{"lat": [...], "lon": [...]}``.

    Latitudes are the cell centres ``-90 + d/2 + d*i`` (``d = 180/H``), longitudes ``360/W * j``.

    Examples
    --------
    >>> global_grid((2, 4))
    {'lat': [-45.0, 45.0], 'lon': [0.0, 90.0, 180.0, 270.0]}
    """
    h, w = (int(v) for v in img_size)
    return {"lat": [-90.0 + 180.0 / h * (i + 0.5) for i in range(h)], "lon": [360.0 / w * j for j in range(w)]}


def _resize_grid(grid: Any, img_size: Sequence[int]) -> dict[str, list[float]]:
    """A model's grid record for ``img_size``: kept when it fits, else the same area at the new size.

    No record (official checkpoints, older files): the global ClimaX grid. A record of another size
    (``load_checkpoint(..., img_size=)``): the global grid if it was global, else the same
    limited area (outer cell edges) evenly divided into ``img_size`` cells.
    """
    h, w = (int(v) for v in img_size)
    if not isinstance(grid, Mapping) or "lat" not in grid or "lon" not in grid:
        return global_grid((h, w))
    lat = [float(v) for v in grid["lat"]]
    lon = [float(v) for v in grid["lon"]]
    if (len(lat), len(lon)) == (h, w):
        return {"lat": lat, "lon": lon}
    old = global_grid((len(lat), len(lon)))
    if all(abs(a - b) < 1e-3 for a, b in zip(lat + lon, old["lat"] + old["lon"])):
        return global_grid((h, w))

    def spread(c: list[float], n: int) -> list[float]:
        if len(c) < 2:
            raise CheckpointError(f"cannot resize a grid with a single point ({c}) to {n} points")
        d = (c[-1] - c[0]) / (len(c) - 1)
        lo, hi = c[0] - d / 2, c[-1] + d / 2
        return [lo + (hi - lo) / n * (i + 0.5) for i in range(n)]

    logger.info("resized the model's limited-area grid from %dx%d to %dx%d points", len(lat), len(lon), h, w)
    return {"lat": spread(lat, h), "lon": spread(lon, w)}


def _interpolate_pos_embed(pos_embed: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """Bicubic interpolation (``align_corners=False``) of a ``[1, h*w, D]`` embedding to a new token grid."""
    if tuple(src) == tuple(dst):
        return pos_embed
    D = pos_embed.shape[-1]
    grid = pos_embed.reshape(1, src[0], src[1], D).permute(0, 3, 1, 2)
    dtype = grid.dtype if grid.dtype == torch.float64 else torch.float32
    out = F.interpolate(grid.to(dtype), size=tuple(dst), mode="bicubic", align_corners=False)
    return out.permute(0, 2, 3, 1).reshape(1, dst[0] * dst[1], D).to(pos_embed.dtype)


def _take_rows(src: torch.Tensor, fresh: torch.Tensor, index: Sequence[int | None], patch_cells: int) -> torch.Tensor:
    """Select variables from a head tensor whose first dim is ``f = cell * V + v`` (variable fastest).

    ``src`` has ``patch_cells * V_src`` rows, ``fresh`` ``patch_cells * len(index)``; row ``j`` of the result
    takes variable ``index[j]`` of ``src`` or, where that is ``None``, variable ``j`` of ``fresh``.
    """
    rest = src.shape[1:]
    a = src.reshape(patch_cells, -1, *rest)
    out = fresh.reshape(patch_cells, len(index), *rest).clone()
    for j, i in enumerate(index):
        if i is not None:
            out[:, j] = a[:, i]
    return out.reshape(patch_cells * len(index), *rest)


def _remap(
    sd: Mapping[str, torch.Tensor],
    fresh: Mapping[str, torch.Tensor],
    index: Sequence[int | None],
    patch_size: int,
    decoder_depth: int,
    grids: tuple[tuple[int, int], tuple[int, int]],
) -> dict[str, torch.Tensor]:
    """Map a source state dict onto the target model: variables by ``index``, pos_embed to the new grid."""
    per_variable = ("token_embeds.", "var_embed", f"head.{2 * decoder_depth}.")
    out = {k: v for k, v in sd.items() if not k.startswith(per_variable) and k != "pos_embed"}
    if "pos_embed" in sd:
        out["pos_embed"] = _interpolate_pos_embed(sd["pos_embed"], *grids)
    for j, i in enumerate(index):
        for name in ("weight", "bias"):
            key = f"token_embeds.{j}.proj.{name}"
            src_key = f"token_embeds.{i}.proj.{name}"
            out[key] = sd[src_key] if i is not None and src_key in sd else fresh[key]
    if "var_embed" in sd:
        out["var_embed"] = _take_rows(sd["var_embed"][0], fresh["var_embed"][0], index, 1)[None]
    for name in ("weight", "bias"):
        key = f"head.{2 * decoder_depth}.{name}"
        if key in sd:
            out[key] = _take_rows(sd[key], fresh[key], index, patch_size**2)
    return out


def _resolve_config(
    shape: Mapping[str, Any],
    stored: Mapping[str, Any],
    overrides: Mapping[str, Any],
    patch_size: int | None,
    num_heads: int | None,
    path: Path,
) -> dict[str, Any]:
    """Constructor arguments: explicit > overrides > stored > inferred / official defaults; shapes win."""
    config: dict[str, Any] = {**_OFFICIAL_DROP, **stored}
    config.update(
        embed_dim=shape["embed_dim"],
        depth=shape["depth"],
        decoder_depth=shape["decoder_depth"],
        patch_size=shape["patch_size"],
        mlp_ratio=stored.get("mlp_ratio", shape["mlp_ratio"]),
    )
    conflicts = {
        k: (config[k], v)
        for k, v in {**stored, **overrides, "patch_size": patch_size}.items()
        if k in ("embed_dim", "depth", "decoder_depth", "patch_size") and v is not None and v != config[k]
    }
    ratio = overrides.get("mlp_ratio", config["mlp_ratio"])
    if shape["depth"] and int(shape["embed_dim"] * ratio) != round(shape["embed_dim"] * shape["mlp_ratio"]):
        conflicts["mlp_ratio"] = (shape["mlp_ratio"], ratio)
    if conflicts:
        listed = "; ".join(f"{k}: tensors imply {a}, requested or recorded {b}" for k, (a, b) in conflicts.items())
        raise CheckpointError(f"the configuration does not fit the tensors of {str(path)!r}: {listed}")
    config.update(overrides)
    config["num_heads"] = int(num_heads or stored.get("num_heads") or DEFAULT_NUM_HEADS)
    if config["embed_dim"] % config["num_heads"]:
        raise CheckpointError(
            f"expected num_heads dividing embed_dim {config['embed_dim']}, found num_heads={config['num_heads']} "
            "(the official checkpoints use 16; pass num_heads=)"
        )
    return config


def _source_names(info: Mapping[str, Any], n_vars: int, given: Sequence[str] | None, path: Path) -> list[str]:
    """Names of the checkpoint's variables, in token order."""
    names = info.get("variables") if info["format"] == FORMAT else None
    if given is not None:
        given = [canonical_name(v) for v in given]
        if names is not None and [canonical_name(v) for v in names] != given:
            raise CheckpointError(
                f"checkpoint_variables={given} contradicts the names stored in the file, {list(names)}"
            )
        names = given
    if names is None and n_vars == len(CLIMAX_VARIABLES):
        names = list(CLIMAX_VARIABLES)
    if names is None:
        raise CheckpointError(
            f"{str(path)!r} has {n_vars} variables but does not name them (only the official 48 are known); "
            "pass checkpoint_variables=[...] in token order"
        )
    names = [canonical_name(v) for v in names]
    if len(names) != n_vars or len(set(names)) != len(names):
        raise CheckpointError(f"expected {n_vars} distinct variable names for the checkpoint's tokens, found {names}")
    return names


def load_checkpoint(
    path: str | os.PathLike[str],
    *,
    variables: Sequence[str] | None = None,
    img_size: Sequence[int] | None = None,
    patch_size: int | None = None,
    num_heads: int | None = None,
    map_location: str | torch.device = "cpu",
    strict: bool = True,
    checkpoint_variables: Sequence[str] | None = None,
    source_img_size: Sequence[int] | None = None,
    **overrides: Any,
) -> ClimaX:
    """Build a :class:`~xclimax.ClimaX` model from a checkpoint file.

    Reads the released official ClimaX checkpoints (PyTorch Lightning ``.ckpt``), files written
    by :func:`save_checkpoint` (``.safetensors`` or torch) and plain state dicts. Files are read
    with ``torch.load(weights_only=True)`` or safetensors only, memory-mapped where possible, and
    never written to.

    Parameters
    ----------
    path : str or path-like
        The checkpoint file. Its format is recognised from its content, not its name.
    variables : sequence of str, optional
        Variables of the returned model, in this order. Matched **by name** with the checkpoint's
        (aliases such as ``"latitude"`` accepted): their token embeddings, variable-embedding
        rows and prediction-head rows are selected and reordered. Names the checkpoint lacks get
        fresh weights, as in a new model, and an :class:`~xclimax.XClimaxWarning` lists them
        (useful to fine-tune on new variables). Default: the checkpoint's variables.
    img_size : (int, int), optional
        Image size ``(lat, lon)`` of the returned model. If its token grid differs from the
        checkpoint's, ``pos_embed`` is interpolated bicubically. Default: the checkpoint's.
    patch_size : int, optional
        Expected patch size; it cannot change, so a different value raises
        :class:`~xclimax.CheckpointError`.
    num_heads : int, optional
        Attention heads. Shapes do not determine it: default is the value stored by xclimax or
        16 (the official checkpoints' value).
    map_location : str or torch.device, default "cpu"
        Device of the returned model.
    strict : bool, default True
        Require exactly the tensors the inferred architecture needs. With ``strict=False``
        missing tensors keep their fresh initialisation and extra ones are ignored, with a warning.
    checkpoint_variables : sequence of str, optional
        Names of the checkpoint's variables in token order, for files that do not record them
        (files with other than the 48 official variables). Otherwise not needed.
    source_img_size : (int, int), optional
        Image size the checkpoint was trained on, for files that do not record it and whose
        token grid is not 1:2 (lat:lon) or does not match ``img_size``.
    **overrides
        Other :class:`~xclimax.ClimaX` constructor arguments, e.g. ``drop_path=0.0``. Arguments
        fixed by the tensor shapes must agree with them.

    Returns
    -------
    ClimaX
        The model, in ``eval()`` mode, with ``stats`` and ``metadata`` restored from xclimax
        files (for the kept variables).

    Raises
    ------
    CheckpointError
        Missing, empty, truncated, corrupt or unsafe (code-carrying pickle) file; tensors whose
        shapes or names do not fit a ClimaX model; a configuration that contradicts the file.

    See Also
    --------
    save_checkpoint

    Examples
    --------
    >>> import tempfile, torch
    >>> from xclimax import ClimaX, load_checkpoint, save_checkpoint
    >>> model = ClimaX(variables=["2m_temperature", "geopotential_500", "latitude"], img_size=(8, 16),
    ...                embed_dim=32, depth=1, num_heads=4)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = save_checkpoint(model, f"{tmp}/tiny.safetensors")
    ...     sub = load_checkpoint(path, variables=["geopotential_500", "2m_temperature"], img_size=(16, 32))
    >>> sub.variables, sub.img_size
    (('geopotential_500', '2m_temperature'), (16, 32))
    >>> old, new = model.state_dict(), sub.state_dict()
    >>> torch.equal(new["token_embeds.0.proj.weight"], old["token_embeds.1.proj.weight"])
    True
    """
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"path must be the path of a checkpoint file (str or os.PathLike); got {type(path).__name__}")
    path = Path(path)
    device = torch.device(map_location)
    params = set(inspect.signature(ClimaX).parameters)
    explicit = {"variables", "img_size", "patch_size", "num_heads"}
    unknown = set(overrides) - params
    if unknown or explicit & set(overrides):
        raise TypeError(
            f"load_checkpoint() got unexpected keyword arguments {sorted(unknown | (explicit & set(overrides)))}"
        )
    wanted_img = _pair(img_size, "img_size")
    known_img = _pair(source_img_size, "source_img_size")
    if isinstance(variables, str):
        variables = [variables]
    target_vars = None if variables is None else tuple(canonical_name(v) for v in variables)
    if target_vars is not None and (len(set(target_vars)) != len(target_vars) or not target_vars):
        raise CheckpointError(f"expected a non-empty list of distinct variable names, found {list(variables)}")

    sd, info = _read(path)
    if info["format"] == FORMAT and (info.get("config") or {}).get("kind") == "climatebench":
        from .climatebench import ClimaXClimateBench  # a ClimateBench (projection) model: rebuilt as saved

        if variables is not None or img_size is not None or overrides:
            raise CheckpointError(f"{str(path)!r} holds a ClimateBench projection model: it is loaded as saved "
                                  "(variables=, img_size= and overrides do not apply)")
        bench = ClimaXClimateBench.from_state(sd, info["config"], stats=info.get("stats"), metadata=info.get("metadata"),
                                              source=repr(str(path)))
        return bench.to(device)
    sd = _normalise_keys(sd)
    shape = _infer_config(sd)
    p = shape["patch_size"]
    stored = dict(info.get("config") or {}) if info["format"] == FORMAT else {}
    config = _resolve_config(shape, stored, overrides, patch_size, num_heads, path)
    names = _source_names(info, shape["n_vars"], checkpoint_variables, path)
    target_vars = target_vars or tuple(names)
    src_index = {v: i for i, v in enumerate(names)}
    index = [src_index.get(v) for v in target_vars]
    new = [v for v in target_vars if v not in src_index]

    # grids
    src_img = _pair(stored.get("img_size"), "the stored img_size") if stored else None
    src_grid = _token_grid(shape["n_tokens"], p, known_img or src_img, wanted_img, "the checkpoint")
    target_img = wanted_img or known_img or src_img or (src_grid[0] * p, src_grid[1] * p)
    dst_grid = (-(-target_img[0] // p), -(-target_img[1] // p))  # a size that is not a multiple of p is padded

    expected = _official_shapes(
        shape["n_vars"],
        shape["embed_dim"],
        shape["depth"],
        shape["decoder_depth"],
        config["mlp_ratio"],
        p,
        shape["n_tokens"],
    )
    _check_keys(sd, expected, strict, path)

    accepted = {k: v for k, v in config.items() if k in params}
    dropped = set(config) - set(accepted)
    if dropped:
        logger.warning("ignoring stored configuration entries this ClimaX does not know: %s", sorted(dropped))
    model = ClimaX(**{**accepted, "variables": target_vars, "img_size": target_img})
    fresh = model.state_dict()
    adapted = _remap(sd, fresh, index, p, shape["decoder_depth"], (src_grid, dst_grid))
    try:
        model.load_state_dict({**fresh, **{k: v for k, v in adapted.items() if k in fresh}}, strict=True)
    except RuntimeError as err:  # a model whose layout differs from the official one
        raise CheckpointError(f"the adapted weights do not fit ClimaX: {err}") from None

    if new:
        warnings.warn(
            f"variables not in the checkpoint get freshly initialised weights (fine-tune before use): {new}",
            XClimaxWarning,
            stacklevel=2,
        )
    if src_grid != dst_grid:
        logger.info("interpolated pos_embed from a %dx%d to a %dx%d token grid", *src_grid, *dst_grid)
    stats = {canonical_name(k): (float(v[0]), float(v[1])) for k, v in (info.get("stats") or {}).items()}
    model.stats = stats if variables is None else {v: stats[v] for v in target_vars if v in stats}
    model.metadata = (
        dict(info.get("metadata") or {})
        if info["format"] == FORMAT
        else {"source_checkpoint": path.name, "source_format": info["format"]}
    )
    # the model's grid: recorded by xclimax, else (official checkpoints) the global ClimaX grid of its size
    if model.metadata.get("grid") is None or isinstance(model.metadata["grid"], Mapping):
        model.metadata["grid"] = _resize_grid(model.metadata.get("grid"), target_img)
    logger.info(
        "loaded %s checkpoint %s: %d variables (%d new), grid %s, embed_dim %d, depth %d",
        info["format"],
        path,
        len(target_vars),
        len(new),
        list(target_img),
        config["embed_dim"],
        config["depth"],
    )
    return model.eval().to(device)


def remap_variables(model: ClimaX, variables: Sequence[str], *, warn: bool = True) -> ClimaX:
    """A copy of ``model`` whose variables are ``variables``, weights matched by name.

    The in-memory counterpart of ``load_checkpoint(path, variables=...)``: variables of
    ``model`` keep their token embedding, variable-embedding row and prediction-head rows
    (moved to their new position), variables not in ``model`` get the fresh weights of a new
    :class:`~xclimax.ClimaX` with the same configuration, and variables left out are dropped.
    All other weights are copied, so predictions of known variables from known inputs are
    unchanged. Use it to add variables before fine-tuning or to reorder a model's tokens.

    Parameters
    ----------
    model : ClimaX
        The source model; it is not modified.
    variables : sequence of str
        Variables of the new model, in token order (aliases such as ``"latitude"`` accepted).
    warn : bool, default True
        Warn (:class:`~xclimax.XClimaxWarning`) when some variables get fresh weights.

    Returns
    -------
    ClimaX
        A new model on ``model``'s device, dtype and training mode, with ``config`` equal to
        ``model.config`` except ``variables``, ``stats`` kept for the known variables and a copy
        of ``metadata``.

    Raises
    ------
    CheckpointError
        If ``model`` is not a ClimaX or ``variables`` is empty or has duplicates.

    See Also
    --------
    load_checkpoint

    Examples
    --------
    >>> import torch
    >>> from xclimax import ClimaX
    >>> model = ClimaX(["2m_temperature", "geopotential_500"], img_size=(4, 8), embed_dim=16, depth=1, num_heads=2)
    >>> model.stats = {"2m_temperature": (278.0, 21.0), "geopotential_500": (54000.0, 3300.0)}
    >>> wide = remap_variables(model, ["geopotential_500", "2m_temperature", "latitude"], warn=False)
    >>> wide.variables, wide.stats["geopotential_500"], "lattitude" in wide.stats
    (('geopotential_500', '2m_temperature', 'lattitude'), (54000.0, 3300.0), False)
    >>> torch.equal(wide.state_dict()["token_embeds.0.proj.weight"], model.state_dict()["token_embeds.1.proj.weight"])
    True
    """
    if not isinstance(model, ClimaX):
        raise CheckpointError(f"remap_variables expects a ClimaX model, found {type(model).__name__}")
    if isinstance(variables, str):
        variables = [variables]
    target = [canonical_name(v) for v in variables]
    if not target or len(set(target)) != len(target):
        raise CheckpointError(f"expected a non-empty list of distinct variable names, found {list(variables)}")
    position = {v: i for i, v in enumerate(model.variables)}
    index = [position.get(v) for v in target]
    new = [v for v, i in zip(target, index) if i is None]
    like = next(model.parameters())
    out = ClimaX(**{**model.config, "variables": target}).to(device=like.device, dtype=like.dtype)
    grid = (-(-model.img_size[0] // model.patch_size), -(-model.img_size[1] // model.patch_size))
    fresh = out.state_dict()
    state = _remap(model.state_dict(), fresh, index, model.patch_size, model.config["decoder_depth"], (grid, grid))
    out.load_state_dict({**fresh, **state}, strict=True)
    out.stats = {v: model.stats[v] for v in target if v in model.stats}
    out.metadata = copy.deepcopy(model.metadata)
    if new and warn:
        warnings.warn(
            f"variables not in the model get freshly initialised weights (fine-tune before use): {new}",
            XClimaxWarning,
            stacklevel=2,
        )
    logger.info("remapped %d variables onto %d (%d new: %s)", len(model.variables), len(target), len(new), new)
    return out.train(model.training)


# --------------------------------------------------------------------------- writing
def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"model.{what} must be JSON-serialisable to be saved, found {err}") from None


def save_checkpoint(model: ClimaX, path: str | os.PathLike[str]) -> Path:
    """Save a model with its configuration, variables, statistics and metadata.

    ``.safetensors`` paths get a safetensors file (the configuration, variable names, ``stats``
    and ``metadata`` as JSON in its header); any other name gets a weights-only torch file
    ``{"format": "xclimax", "format_version": 1, "config", "variables", "stats", "metadata",
    "state_dict"}``. Both are read back by :func:`load_checkpoint`. Writing is atomic: the file
    is written to a temporary file in the same directory, flushed to disk and then renamed, so
    an existing file is only replaced by a complete new one.

    Parameters
    ----------
    model : ClimaX
        The model to save (on any device; tensors are written from CPU copies).
    path : str or path-like
        Destination. Its directory must exist.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    CheckpointError
        The directory does not exist, or ``config``/``stats``/``metadata`` are not JSON-serialisable.

    Examples
    --------
    >>> import tempfile
    >>> from xclimax import ClimaX, load_checkpoint, save_checkpoint
    >>> model = ClimaX(variables=["2m_temperature"], img_size=(8, 16), embed_dim=32, depth=1, num_heads=4)
    >>> model.stats = {"2m_temperature": (278.5, 21.2)}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = save_checkpoint(model, f"{tmp}/tiny.pt")
    ...     load_checkpoint(path).stats
    {'2m_temperature': (278.5, 21.2)}
    """
    if not isinstance(model, ClimaX):
        raise CheckpointError(f"model must be an xclimax.ClimaX to save; got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"path must be a file path (str or os.PathLike) to save to; got {type(path).__name__}")
    path = Path(path)
    if not path.parent.is_dir():
        raise CheckpointError(f"cannot save to {str(path)!r}: directory {str(path.parent)!r} does not exist")
    header = {
        "config": _json(model.config, "config"),
        "variables": _json(list(model.variables), "variables"),
        "stats": _json({k: [float(m), float(s)] for k, (m, s) in model.stats.items()}, "stats"),
        "metadata": _json(model.metadata, "metadata"),
    }
    tensors, seen = {}, set()
    for key, value in model.state_dict().items():
        value = value.detach().to("cpu").contiguous()
        if value.data_ptr() in seen and value.numel():  # safetensors refuses shared memory
            value = value.clone()
        seen.add(value.data_ptr())
        tensors[key] = value

    def write(tmp: str) -> None:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            meta = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "xclimax_version": __version__, **header}
            save_file(tensors, tmp, metadata=meta)
        else:
            payload = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "xclimax_version": __version__,
                **{k: json.loads(v) for k, v in header.items()},
                "state_dict": tensors,
            }
            torch.save(payload, tmp)

    atomic_write(path, write)
    logger.info("saved %s (%d tensors)", path, len(tensors))
    return path
