"""ClimaX for climate projection (ClimateBench), torch only (this module never imports xarray).

:class:`ClimaXClimateBench` is the model of the official ``climax.climate_projection.arch``
(microsoft/ClimaX): every one of ``history`` yearly input steps (forcing maps such as CO2, SO2,
CH4 and BC emissions) goes through the ClimaX encoder (variable tokenisation and aggregation,
positional embedding, a learned ``time_pos_embed`` per step, the lead-time embedding of lead 0,
the transformer blocks and the final norm); the tokens of each step are averaged over space
(global average pooling), the ``history`` step vectors are aggregated by one cross-attention
layer with a learned query (``time_agg`` / ``time_query``), and a single linear ``head`` maps
the result to the output maps. With ``freeze_encoder=True`` (the paper's set-up) the
parameters of the transformer blocks are frozen except their LayerNorms.

The state dict has the official keys: those of :class:`~xclimax.nn.model.ClimaX` without its
decoder, plus ``time_pos_embed [1, history, D]``, ``time_query [1, 1, D]``, ``time_agg.*`` and
``head.weight [Vout * H * W, D]`` / ``head.bias``. With one output variable this is exactly the
official layout; several outputs stack their maps (row ``v * H * W + i * W + j``).
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..exceptions import CheckpointError, GridError, XClimaxError
from ..vocab import canonical_name
from .model import ClimaX, sincos_1d

__all__ = ["ClimaXClimateBench", "KIND", "DEFAULT_FORCINGS", "DEFAULT_RESPONSES"]

logger = logging.getLogger(__name__)

#: Value of ``model.config["kind"]`` (and of saved checkpoints' configuration) for this model.
KIND = "climatebench"
#: ClimateBench's input variables, in the order of the official configuration.
DEFAULT_FORCINGS: tuple[str, ...] = ("CO2", "SO2", "CH4", "BC")
#: ClimateBench's output variables.
DEFAULT_RESPONSES: tuple[str, ...] = ("tas", "diurnal_temperature_range", "pr", "pr90")

# parameters that come from the pretrained encoder (copied by from_climax)
_ENCODER_PREFIXES = ("var_query", "var_agg.", "lead_time_embed.", "blocks.", "norm.")


class ClimaXClimateBench(ClimaX):
    """ClimaX's ClimateBench model: a history of yearly forcing maps -> response maps.

    Parameters
    ----------
    variables : sequence of str
        Input (forcing) variables, in token order (default ClimateBench's CO2, SO2, CH4, BC).
    out_variables : sequence of str
        Output (response) variables, e.g. ``("tas",)`` or ClimateBench's four.
    img_size : (int, int)
        Grid size ``(H, W)``, multiples of ``patch_size``.
    history : int
        Number of yearly input steps (the paper: 10); the prediction is for the last one.
    patch_size, embed_dim, depth, num_heads, mlp_ratio, drop_path, drop_rate
        As in :class:`~xclimax.nn.model.ClimaX`.
    freeze_encoder : bool
        Freeze the transformer blocks except their LayerNorms (the paper's set-up; default True).

    Notes
    -----
    ``model(x, variables)`` with ``x [B, history, V, H, W]`` (normalised) returns
    ``[B, Vout, H, W]`` (normalised), the official ``ClimaXClimateBench.forward`` with lead time 0.
    Build one from a pretrained ClimaX with :meth:`from_climax`; save and load it with
    :func:`~xclimax.save_checkpoint` / :func:`~xclimax.load_checkpoint`.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> model = ClimaXClimateBench(["CO2", "SO2"], ["tas", "pr"], img_size=(4, 8), history=3,
    ...                            embed_dim=16, depth=1, num_heads=2)
    >>> model(torch.randn(2, 3, 2, 4, 8), ["CO2", "SO2"]).shape
    torch.Size([2, 2, 4, 8])
    >>> sorted(k for k in model.state_dict() if k.startswith(("time", "head")))
    ['head.bias', 'head.weight', 'time_agg.in_proj_bias', 'time_agg.in_proj_weight', 'time_agg.out_proj.bias', 'time_agg.out_proj.weight', 'time_pos_embed', 'time_query']
    """

    def __init__(
        self,
        variables: Sequence[str] = DEFAULT_FORCINGS,
        out_variables: Sequence[str] = ("tas",),
        img_size: Sequence[int] = (32, 64),
        history: int = 10,
        patch_size: int = 2,
        embed_dim: int = 1024,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
        drop_rate: float = 0.1,
        freeze_encoder: bool = True,
    ) -> None:
        if isinstance(out_variables, str):
            out_variables = [out_variables]
        outs = tuple(canonical_name(v) for v in out_variables)
        if not outs or len(set(outs)) != len(outs):
            raise XClimaxError(f"out_variables must be distinct names, at least one; got {list(out_variables)}")
        if isinstance(history, bool) or not isinstance(history, (int, np.integer)) or history < 1:
            raise XClimaxError(f"history must be a positive number of yearly steps; got {history!r}")
        super().__init__(
            variables, img_size, patch_size, embed_dim, depth, decoder_depth=0, num_heads=num_heads,
            mlp_ratio=mlp_ratio, drop_path=drop_path, drop_rate=drop_rate,
        )
        self.out_variables = outs
        self.history = int(history)
        self.freeze_encoder = bool(freeze_encoder)
        H, W = self.img_size
        # registration order: the official key order (ClimaX keys, then the time aggregation, then the head)
        self.time_pos_embed = nn.Parameter(torch.zeros(1, self.history, embed_dim))
        self.time_agg = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.time_query = nn.Parameter(torch.zeros(1, 1, embed_dim))
        del self.head
        self.head = nn.Linear(embed_dim, len(outs) * H * W)
        self.config = {
            "kind": KIND,
            **{k: v for k, v in self.config.items() if k != "decoder_depth"},
            "out_variables": list(outs),
            "history": self.history,
            "freeze_encoder": self.freeze_encoder,
        }
        self.reset_parameters()
        if self.freeze_encoder:
            self.freeze()

    # ------------------------------------------------------------------ parameters
    def reset_parameters(self) -> None:
        """ClimaX's initialisation plus the official one of the time aggregation.

        ``time_pos_embed`` gets the 1-D sine-cosine code of the step index and ``time_query``
        zeros (so the initial aggregation is the mean over steps); ``head`` trunc_normal(0.02).
        """
        super().reset_parameters()
        if not hasattr(self, "time_agg"):  # called from ClimaX.__init__, before the time layers exist
            return
        with torch.no_grad():
            D = self.time_pos_embed.shape[-1]
            self.time_pos_embed.copy_(torch.from_numpy(sincos_1d(D, np.arange(self.history))).float()[None])
            self.time_query.zero_()
            self.time_agg._reset_parameters()
            nn.init.trunc_normal_(self.time_agg.out_proj.weight, std=0.02)
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)

    def freeze(self) -> None:
        """Freeze the transformer blocks except their LayerNorms (official ``freeze_encoder``).

        Examples
        --------
        >>> m = ClimaXClimateBench(["CO2"], ["tas"], img_size=(4, 8), history=2, embed_dim=8, depth=1,
        ...                        num_heads=2, freeze_encoder=False)
        >>> m.freeze()
        >>> sorted(n for n, p in m.blocks.named_parameters() if p.requires_grad)
        ['0.norm1.bias', '0.norm1.weight', '0.norm2.bias', '0.norm2.weight']
        """
        for name, p in self.blocks.named_parameters():
            p.requires_grad_("norm" in name.lower())
        self.freeze_encoder = True
        self.config["freeze_encoder"] = True

    # ------------------------------------------------------------------ forward
    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        variables: Sequence[str] | None = None,
        out_variables: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Predict the response maps of the last year from ``history`` yearly input steps.

        Parameters
        ----------
        x : torch.Tensor
            ``[B, history, V, H, W]`` normalised inputs (oldest step first).
        variables : sequence of str, optional
            Names of the ``V`` input channels (default: the model's variables, in order).
        out_variables : sequence of str, optional
            Outputs to return (default all, in ``model.out_variables`` order).

        Returns
        -------
        torch.Tensor
            ``[B, Vout, H, W]`` normalised predictions.

        Raises
        ------
        XClimaxError
            Wrong number of steps or channels, or unknown variable names.
        GridError
            ``(H, W)`` differs from ``img_size``.
        """
        if x.ndim != 5:
            raise XClimaxError(
                f"this is a ClimateBench projection model: it takes x of shape [batch, history, variables, lat, lon], "
                f"got {tuple(x.shape)}; run it with xclimax.project(ds, model), not forecast or downscale"
            )
        B, T, V, H, W = x.shape
        variables = self.variables if variables is None else tuple(variables)
        if isinstance(variables, str) or len(variables) != V:
            raise XClimaxError(f"x has {V} channels but {len(variables)} variable names were given: {variables!r}")
        if T != self.history:
            raise XClimaxError(f"expected {self.history} yearly steps (the model's history); got {T}")
        if (H, W) != self.img_size:
            raise GridError(f"expected inputs on the model grid {self.img_size}, got {(H, W)}")
        D = self.pos_embed.shape[-1]
        t = self.aggregate(x.reshape(B * T, V, H, W), self._ids(variables, x.device))  # BT, L, D
        t = t + self.pos_embed
        t = t.reshape(B, T, -1, D) + self.time_pos_embed.unsqueeze(2)
        lead = self.lead_time_embed(t.new_zeros(1, 1))  # lead time 0
        t = self.pos_drop((t + lead.reshape(1, 1, 1, D)).reshape(B * T, -1, D))
        for blk in self.blocks:
            t = blk(t)
        t = self.norm(t).reshape(B, T, -1, D).mean(2)  # global average pooling: B, T, D
        t, _ = self.time_agg(self.time_query.expand(B, -1, -1), t, t, need_weights=False)  # B, 1, D
        n_out = len(self.out_variables)
        if out_variables is None or tuple(out_variables) == self.out_variables:
            return self.head(t[:, 0]).reshape(B, n_out, H, W)
        ids = self.out_ids(out_variables)
        weight = self.head.weight.reshape(n_out, H * W, D)[ids].reshape(-1, D)
        bias = self.head.bias.reshape(n_out, H * W)[ids].reshape(-1)
        return F.linear(t[:, 0], weight, bias).reshape(B, len(ids), H, W)

    def out_ids(self, out_variables: Sequence[str]) -> list[int]:
        """Positions of ``out_variables`` among the model's outputs.

        Examples
        --------
        >>> m = ClimaXClimateBench(["CO2"], ["tas", "pr"], img_size=(4, 8), history=1, embed_dim=8,
        ...                        depth=0, num_heads=2)
        >>> m.out_ids(["pr"])
        [1]
        """
        if isinstance(out_variables, str):
            raise XClimaxError(f"out_variables must be a sequence of names, got the string {out_variables!r}")
        names = [canonical_name(v) for v in out_variables]
        unknown = [v for v in names if v not in self.out_variables]
        if unknown:
            raise XClimaxError(f"unknown output variable(s) {unknown}: the model predicts {list(self.out_variables)}")
        return [self.out_variables.index(v) for v in names]

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_climax(
        cls,
        model: ClimaX,
        variables: Sequence[str] = DEFAULT_FORCINGS,
        out_variables: Sequence[str] = DEFAULT_RESPONSES,
        *,
        history: int = 10,
        img_size: Sequence[int] | None = None,
        freeze_encoder: bool = True,
        **overrides: Any,
    ) -> "ClimaXClimateBench":
        """A ClimateBench model whose encoder comes from a (pretrained) ClimaX.

        As the official ``load_mae_weights``: the positional embedding (interpolated bicubically
        when the grid changes), the variable query and aggregation, the lead-time embedding, the
        transformer blocks and the final norm are copied; the prediction head, the time
        aggregation and the embeddings of new variables are fresh. Unlike the official loader,
        input variables that ``model`` knows (matched by name) keep their token embedding and
        variable-embedding row, and their normalisation statistics.

        Parameters
        ----------
        model : ClimaX
            The source, e.g. ``xclimax.load_checkpoint("5.625deg.ckpt")`` or the demo model. It
            is not modified.
        variables, out_variables : sequence of str
            Inputs (forcings) and outputs (responses) of the new model.
        history : int
            Yearly input steps (default 10, as the paper).
        img_size : (int, int), optional
            Grid of the new model (default: ``model.img_size``).
        freeze_encoder : bool
            Freeze the blocks except their LayerNorms (default True, as the paper).
        **overrides
            ``drop_path``, ``drop_rate`` (the architecture itself comes from ``model``).

        Returns
        -------
        ClimaXClimateBench
            On ``model``'s device and dtype, in training mode of ``model``.

        Raises
        ------
        XClimaxError
            ``model`` is not a ClimaX, or an override would change the architecture.

        Examples
        --------
        >>> base = ClimaX(["2m_temperature", "CO2"], img_size=(4, 8), embed_dim=16, depth=1, num_heads=2)
        >>> bench = ClimaXClimateBench.from_climax(base, ["CO2", "SO2"], ["tas"], history=2)
        >>> torch.equal(bench.blocks[0].attn.qkv.weight, base.blocks[0].attn.qkv.weight)
        True
        >>> torch.equal(bench.token_embeds.weight[0], base.token_embeds.weight[1])  # CO2, by name
        True
        >>> bench.blocks[0].attn.qkv.weight.requires_grad, bench.blocks[0].norm1.weight.requires_grad
        (False, True)
        """
        if not isinstance(model, ClimaX):
            raise XClimaxError(f"from_climax expects a ClimaX model; got {type(model).__name__}")
        allowed = {"drop_path", "drop_rate"}
        bad = set(overrides) - allowed
        if bad:
            raise XClimaxError(f"from_climax: cannot override {sorted(bad)} (the architecture comes from the model)")
        cfg = model.config
        img = tuple(model.img_size if img_size is None else (int(img_size[0]), int(img_size[1])))
        out = cls(
            variables, out_variables, img, history=history, patch_size=model.patch_size,
            embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"], mlp_ratio=cfg["mlp_ratio"],
            drop_path=overrides.get("drop_path", cfg.get("drop_path", 0.1)),
            drop_rate=overrides.get("drop_rate", cfg.get("drop_rate", 0.1)), freeze_encoder=False,
        )
        like = next(model.parameters())
        out = out.to(device=like.device, dtype=like.dtype)
        src = model.state_dict()
        with torch.no_grad():
            state = out.state_dict()
            for key in state:
                if key.startswith(_ENCODER_PREFIXES) and key in src and src[key].shape == state[key].shape:
                    state[key] = src[key]
            p = model.patch_size
            old = (model.img_size[0] // p, model.img_size[1] // p)
            new = (img[0] // p, img[1] // p)
            state["pos_embed"] = _interpolate_pos_embed(src["pos_embed"], old, new)
            position = {v: i for i, v in enumerate(model.variables)}
            for j, name in enumerate(out.variables):
                i = position.get(name)
                if i is None:
                    continue
                state[f"token_embeds.{j}.proj.weight"] = src[f"token_embeds.{i}.proj.weight"]
                state[f"token_embeds.{j}.proj.bias"] = src[f"token_embeds.{i}.proj.bias"]
                state["var_embed"][0, j] = src["var_embed"][0, i]
            out.load_state_dict(state, strict=True)
        if freeze_encoder:
            out.freeze()
        out.stats = {v: model.stats[v] for v in out.variables if v in model.stats}
        out.metadata = {
            "task": "projection",
            "source_model": copy.deepcopy(model.metadata.get("source_checkpoint", type(model).__name__)),
        }
        new_vars = [v for v in out.variables if v not in position]
        logger.info(
            "ClimateBench model from a ClimaX encoder: %d inputs (%d new: %s), outputs %s, history %d, grid %s",
            len(out.variables), len(new_vars), new_vars, list(out.out_variables), out.history, list(img),
        )
        return out.train(model.training)

    @classmethod
    def from_state(
        cls,
        state_dict: Mapping[str, torch.Tensor],
        config: Mapping[str, Any],
        *,
        stats: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        source: str = "the checkpoint",
    ) -> "ClimaXClimateBench":
        """Rebuild a saved model from its state dict and stored configuration (used by ``load_checkpoint``).

        Raises
        ------
        CheckpointError
            The configuration is not a ClimateBench one or the tensors do not fit it.

        Examples
        --------
        >>> m = ClimaXClimateBench(["CO2"], ["tas"], img_size=(4, 8), history=2, embed_dim=8, depth=1,
        ...                        num_heads=2)
        >>> again = ClimaXClimateBench.from_state(m.state_dict(), m.config)
        >>> torch.equal(again.head.weight, m.head.weight), again.history
        (True, 2)
        """
        cfg = dict(config)
        if cfg.pop("kind", None) != KIND:
            raise CheckpointError(f"{source} is not a ClimateBench model: its configuration has kind {config.get('kind')!r}")
        known = {
            "variables", "out_variables", "img_size", "history", "patch_size", "embed_dim", "depth", "num_heads",
            "mlp_ratio", "drop_path", "drop_rate", "freeze_encoder",
        }
        missing = {"variables", "out_variables", "img_size", "history", "patch_size", "embed_dim", "depth"} - set(cfg)
        if missing:
            raise CheckpointError(f"{source}: the ClimateBench configuration lacks {sorted(missing)}")
        ignored = set(cfg) - known
        if ignored:
            logger.warning("ignoring stored configuration entries this ClimaXClimateBench does not know: %s", sorted(ignored))
        model = cls(**{k: v for k, v in cfg.items() if k in known})
        sd = {k[4:] if k.startswith("net.") else k: v for k, v in state_dict.items()}
        expected = model.state_dict()
        wrong = [f"{k}: expected {tuple(expected[k].shape)}, found {tuple(v.shape)}"
                 for k, v in sd.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
        absent, extra = sorted(set(expected) - set(sd)), sorted(set(sd) - set(expected))
        if wrong or absent or extra:
            raise CheckpointError(
                f"{source} does not fit its ClimateBench configuration: "
                + "; ".join(filter(None, [
                    f"wrong shapes: {wrong[:5]}" if wrong else "",
                    f"missing: {absent[:8]}" if absent else "",
                    f"unexpected: {extra[:8]}" if extra else "",
                ]))
            )
        model.load_state_dict(sd, strict=True)
        model.stats = {canonical_name(k): (float(v[0]), float(v[1])) for k, v in (stats or {}).items()}
        model.metadata = dict(metadata or {})
        return model.eval()


def _interpolate_pos_embed(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """``pos [1, h*w, D]`` on an ``old`` token grid -> ``new`` grid, bicubic (as ClimaX's ``interpolate_pos_embed``)."""
    if tuple(old) == tuple(new):
        return pos
    D = pos.shape[-1]
    grid = pos.reshape(1, old[0], old[1], D).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new, mode="bicubic", align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], D).to(pos.dtype)
