"""The ClimaX network (torch only; this module never imports xarray).

:class:`ClimaX` computes exactly the function of the official serial module
(``src/climax/arch.py`` of microsoft/ClimaX) and has its state_dict keys, shapes and
initialisation, but evaluates the variable tokenisation and aggregation in folded form.

The per-variable patch embedding, the variable embedding and the key/value projections of
the aggregating cross-attention are all affine in the ``p*p`` pixels of a patch, and the
query is a single learned vector. For head ``h`` and input variable ``v`` the attention score
of patch ``l`` is therefore ``a[h, v] . P[v, l] + beta[h, v]`` and the aggregated token is
``sum_{h, v} alpha[h, v, l] (N[h, v] P[v, l] + n[h, v]) + b_o``, where the small matrices ``a``
(``[heads, V, p*p + 1]``) and ``N`` (``[heads * V * (p*p + 1), D]``) are folded from the
parameters at every call (autograd flows through the folding, so training works). This
never materialises the ``[B, V, L, D]`` token tensor nor the ``V`` key/value projections per
patch, which dominate the cost of the official module.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from ..exceptions import GridError, XClimaxError
from ..vocab import CLIMAX_VARIABLES, canonical_name

__all__ = ["ClimaX", "sincos_1d", "sincos_2d"]


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    """1-D sine-cosine code of positions ``pos``: ``[sin(pos * w_k), cos(pos * w_k)]``.

    ``w_k = 10000 ** (-k / (dim / 2))`` for ``k = 0 .. dim/2 - 1`` (the MAE/ClimaX formula).

    Examples
    --------
    >>> sincos_1d(4, np.arange(2)).round(3)
    array([[0.   , 0.   , 1.   , 1.   ],
           [0.841, 0.01 , 0.54 , 1.   ]])
    """
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", np.asarray(pos).reshape(-1).astype(np.float64), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_2d(dim: int, h: int, w: int) -> np.ndarray:
    """2-D sine-cosine code of an ``h x w`` patch grid (row-major), shape ``[h * w, dim]``.

    As in ClimaX, the first half of the channels encodes the column, the second the row.

    Examples
    --------
    >>> emb = sincos_2d(8, 2, 3)
    >>> emb.shape
    (6, 8)
    >>> bool(np.allclose(emb[4, :4], sincos_1d(4, np.array([1]))))  # row 1, column 1
    True
    """
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)


def _split_tokenizer_state(module: "_VariableTokenizer", state_dict: dict, prefix: str, local_metadata: Any) -> None:
    """state_dict post-hook: stacked ``weight``/``bias`` -> official ``{i}.proj.weight/bias`` keys."""
    weight, bias = state_dict.pop(prefix + "weight"), state_dict.pop(prefix + "bias")
    keep = weight.requires_grad  # state_dict(keep_vars=True): hand out views of the parameter
    for i in range(weight.shape[0]):
        # clones: separate storages, as safetensors requires
        state_dict[f"{prefix}{i}.proj.weight"] = weight[i] if keep else weight[i].clone()
        state_dict[f"{prefix}{i}.proj.bias"] = bias[i] if keep else bias[i].clone()


def _stack_tokenizer_state(module: "_VariableTokenizer", state_dict: dict, prefix: str, *args: Any) -> None:
    """load_state_dict pre-hook: official per-variable (or ``parallel_patch_embed``) keys -> stacked."""
    for name, parallel in (("weight", "proj_weights"), ("bias", "proj_biases")):
        if prefix + parallel in state_dict and prefix + name not in state_dict:
            state_dict[prefix + name] = state_dict.pop(prefix + parallel)
        keys = []
        while f"{prefix}{len(keys)}.proj.{name}" in state_dict:
            keys.append(f"{prefix}{len(keys)}.proj.{name}")
        if keys and prefix + name not in state_dict and len({state_dict[k].shape for k in keys}) == 1:
            state_dict[prefix + name] = torch.stack([state_dict.pop(k) for k in keys])


class _VariableTokenizer(nn.Module):
    """The per-variable patch embeddings (``Conv2d(1, D, p, stride=p)`` each), stored stacked.

    Parameters ``weight [V, D, 1, p, p]`` and ``bias [V, D]``; ``state_dict`` shows them under
    the official keys ``{i}.proj.weight`` / ``{i}.proj.bias`` and ``load_state_dict`` accepts
    those (or the ``proj_weights`` / ``proj_biases`` of the official parallel patch embed).
    """

    def __init__(self, num_vars: int, patch_size: int, embed_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_vars, embed_dim, 1, patch_size, patch_size))
        self.bias = nn.Parameter(torch.empty(num_vars, embed_dim))
        self.register_state_dict_post_hook(_split_tokenizer_state)
        self.register_load_state_dict_pre_hook(_stack_tokenizer_state)

    def reset_parameters(self) -> None:
        """trunc_normal(0.02) weights (as ClimaX) and PyTorch's default Conv2d bias init."""
        V, D, _, p, _ = self.weight.shape
        nn.init.trunc_normal_(self.weight, std=0.02)
        nn.init.uniform_(self.bias, -1.0 / p, 1.0 / p)  # 1 / sqrt(fan_in), fan_in = p * p


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, proj_drop: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, D = x.shape
        q, k, v = self.qkv(x).reshape(B, L, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # B, heads, L, dh (attention dropout 0, as official)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(B, L, D)))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))


def _drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample, rescaled by 1 / keep (timm ``drop_path``)."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask.div_(keep) if keep > 0 else x * mask


class _Block(nn.Module):
    """Pre-norm transformer block with the timm 0.6.12 ``Block(drop=...)`` semantics."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, drop: float, drop_path: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _Attention(dim, num_heads, drop)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio), drop)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + _drop_path(self.attn(self.norm1(x)), self.drop_path, self.training)
        return x + _drop_path(self.mlp(self.norm2(x)), self.drop_path, self.training)


class ClimaX(nn.Module):
    """ClimaX (Nguyen et al., 2023) with the official state_dict layout and a fast forward.

    Parameters
    ----------
    variables : sequence of str
        The model's variables, in token order (default: the 48 official ClimaX variables).
        ``"latitude"`` is accepted for the upstream spelling ``"lattitude"``.
    img_size : (int, int)
        Grid size ``(H, W)``, any size: a grid that is not a multiple of ``patch_size`` is padded
        internally (edge values repeated, at the northern and eastern ends of the canonical
        layout) up to :attr:`padded_size` and the output cropped back, so the padding never
        reaches the caller or the loss.
    patch_size, embed_dim, depth, decoder_depth, num_heads, mlp_ratio, drop_path, drop_rate
        As in the official ``climax.arch.ClimaX``.
    checkpoint_activations : bool, default False
        In training (``model.train()`` with gradients enabled), recompute the variable
        aggregation and each transformer block in the backward pass instead of keeping their
        activations (:func:`torch.utils.checkpoint.checkpoint`): the same outputs and gradients
        for about a third more compute, with much less activation memory per sample (see
        ``docs/performance.md``). A plain attribute: not part of ``config`` or the state_dict.

    Notes
    -----
    ``model(x, lead_times, variables)`` equals the official ``ClimaX.forward(x, None,
    lead_times / 100, variables, out_variables, None, None)[1]`` with the same weights (up to
    float rounding). Dropout and stochastic depth follow the official module in training mode;
    the official ``.squeeze()`` failure for ``B * L == 1`` is not reproduced.
    Parameters of the per-variable patch embeddings are held stacked (``token_embeds.weight``
    ``[V, D, 1, p, p]`` and ``token_embeds.bias [V, D]``); ``state_dict()`` and
    ``load_state_dict()`` use the official per-variable keys ``token_embeds.{i}.proj.*``.

    Examples
    --------
    >>> _ = torch.manual_seed(0)
    >>> model = ClimaX(["2m_temperature", "geopotential_500", "latitude"], img_size=(4, 8),
    ...                embed_dim=16, depth=1, num_heads=2).eval()
    >>> x = torch.randn(2, 2, 4, 8)
    >>> model(x, torch.tensor([6.0, 24.0]), ["geopotential_500", "2m_temperature"]).shape
    torch.Size([2, 3, 4, 8])
    >>> model(x, torch.tensor([6.0, 24.0]), ["geopotential_500", "2m_temperature"],
    ...       out_variables=["2m_temperature"]).shape
    torch.Size([2, 1, 4, 8])
    """

    def __init__(
        self,
        variables: Sequence[str] = CLIMAX_VARIABLES,
        img_size: Sequence[int] = (32, 64),
        patch_size: int = 2,
        embed_dim: int = 1024,
        depth: int = 8,
        decoder_depth: int = 2,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.1,
        drop_rate: float = 0.1,
        checkpoint_activations: bool = False,
    ) -> None:
        super().__init__()
        #: recompute activations in the backward pass (training only); see the class docstring
        self.checkpoint_activations = bool(checkpoint_activations)
        self.variables = tuple(canonical_name(v) for v in variables)
        self.img_size = tuple(int(s) for s in img_size)
        self.patch_size = int(patch_size)
        if len(set(self.variables)) != len(self.variables):
            raise XClimaxError(f"model variables must be unique; got {list(self.variables)}")
        if len(self.img_size) != 2 or any(s < 1 for s in self.img_size) or self.patch_size < 1:
            raise GridError(f"img_size must be two positive integers (lat, lon); got {self.img_size}")
        #: the token grid's image size: ``img_size`` padded up to multiples of ``patch_size``
        self.padded_size = tuple(-(-s // self.patch_size) * self.patch_size for s in self.img_size)
        if embed_dim % num_heads or embed_dim % 4:
            raise XClimaxError(f"embed_dim must be a multiple of num_heads and of 4; got {embed_dim}, {num_heads} heads")
        self.config = dict(
            variables=list(self.variables), img_size=list(self.img_size), patch_size=self.patch_size,
            embed_dim=embed_dim, depth=depth, decoder_depth=decoder_depth, num_heads=num_heads,
            mlp_ratio=mlp_ratio, drop_path=drop_path, drop_rate=drop_rate,
        )
        #: per-variable normalisation statistics {name: (mean, std)}; not part of state_dict
        self.stats: dict[str, tuple[float, float]] = {}
        #: free-form metadata saved with xclimax checkpoints (grid, time step, provenance)
        self.metadata: dict = {}
        self._var_index = {v: i for i, v in enumerate(self.variables)}
        self._ids_cache: dict[tuple, torch.Tensor] = {}
        V, p = len(self.variables), self.patch_size
        L = (self.padded_size[0] // p) * (self.padded_size[1] // p)
        # registration order gives the official state_dict key order
        self.var_embed = nn.Parameter(torch.zeros(1, V, embed_dim))
        self.var_query = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, L, embed_dim))
        self.token_embeds = _VariableTokenizer(V, p, embed_dim)
        self.var_agg = nn.MultiheadAttention(embed_dim, num_heads, batch_first=True)
        self.lead_time_embed = nn.Linear(1, embed_dim)
        self.pos_drop = nn.Dropout(drop_rate)
        dpr = [x.item() for x in torch.linspace(0, drop_path, depth, device="cpu")]  # stochastic depth decay rule
        self.blocks = nn.ModuleList([_Block(embed_dim, num_heads, mlp_ratio, drop_rate, dpr[i]) for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        head: list[nn.Module] = []
        for _ in range(decoder_depth):
            head += [nn.Linear(embed_dim, embed_dim), nn.GELU()]
        head.append(nn.Linear(embed_dim, V * p**2))
        self.head = nn.Sequential(*head)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise all parameters as the official ``initialize_weights`` does."""
        D, (h, w) = self.pos_embed.shape[-1], (s // self.patch_size for s in self.padded_size)
        with torch.no_grad():
            self.pos_embed.copy_(torch.from_numpy(sincos_2d(D, h, w)).float()[None])
            self.var_embed.copy_(torch.from_numpy(sincos_1d(D, np.arange(len(self.variables)))).float()[None])
            self.var_query.zero_()
            self.token_embeds.reset_parameters()
            self.var_agg._reset_parameters()  # xavier in_proj, zero biases
            for m in self.modules():
                if isinstance(m, nn.Linear):  # includes var_agg.out_proj
                    nn.init.trunc_normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)
                elif isinstance(m, nn.LayerNorm):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

    def var_ids(self, variables: Sequence[str]) -> list[int]:
        """Token indices of ``variables`` (aliases accepted).

        Raises
        ------
        XClimaxError
            If a name is not one of the model's variables.

        Examples
        --------
        >>> ClimaX(["2m_temperature", "lattitude"], img_size=(4, 8), embed_dim=8, depth=0,
        ...        num_heads=2).var_ids(["latitude", "2m_temperature"])
        [1, 0]
        """
        if isinstance(variables, str):
            raise XClimaxError(f"variables must be a sequence of names, got the string {variables!r}")
        names = [canonical_name(v) for v in variables]
        unknown = [v for v in names if v not in self._var_index]
        if unknown:
            raise XClimaxError(f"unknown variable(s) {unknown}: expected names among the model's {list(self.variables)}")
        return [self._var_index[v] for v in names]

    def _ids(self, variables: Sequence[str], device: torch.device) -> torch.Tensor:
        key = (tuple(variables), str(device))
        if key not in self._ids_cache:
            self._ids_cache[key] = torch.tensor(self.var_ids(variables), dtype=torch.long, device=device)
        return self._ids_cache[key]

    def aggregate(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Tokenise, embed and aggregate the variables of ``x [B, V, H, W]`` -> ``[B, L, D]``.

        Exactly the official per-variable ``PatchEmbed`` + ``var_embed`` + ``var_agg`` cross-attention
        with the learned query, computed in folded form (see the module docstring).
        """
        B, V, H, W = x.shape
        p, agg = self.patch_size, self.var_agg
        D, nh = self.pos_embed.shape[-1], agg.num_heads
        dh, K = D // nh, p * p + 1
        # pixels of each patch plus a constant 1 (for the affine parts): B, V, L, K
        patches = x.reshape(B, V, H // p, p, W // p, p).permute(0, 1, 2, 4, 3, 5).reshape(B, V, -1, p * p)
        patches = torch.cat([patches, patches.new_ones(()).expand(*patches.shape[:-1], 1)], -1)
        # affine map pixels -> token of each input variable: V, D, K (last column: bias + var_embed)
        tok_w = self.token_embeds.weight.index_select(0, ids).reshape(V, D, p * p)
        tok_c = self.token_embeds.bias.index_select(0, ids) + self.var_embed[0].index_select(0, ids)
        T = torch.cat([tok_w, tok_c.unsqueeze(-1)], -1)
        Wq, Wk, Wv = agg.in_proj_weight.chunk(3)
        bq, _, bv = agg.in_proj_bias.chunk(3)  # the key bias adds the same score to every variable: no effect
        q = F.linear(self.var_query.reshape(1, D), Wq, bq).reshape(nh, dh) * dh**-0.5
        a = torch.einsum("he,hed,vdk->hvk", q, Wk.reshape(nh, dh, D), T)  # scores are <a[h, v], patch>: nh, V, K
        N = torch.einsum("hed,vdk->hvek", Wv.reshape(nh, dh, D), T)  # value of each head: nh, V, dh, K
        N = N + F.pad(bv.reshape(nh, 1, dh, 1), (p * p, 0))  # value bias on the constant column
        N = torch.einsum("ohe,hvek->hvko", agg.out_proj.weight.reshape(D, nh, dh), N).reshape(nh * V * K, D)
        alpha = torch.einsum("bvlk,hvk->blhv", patches, a).softmax(-1)  # B, L, nh, V
        feats = alpha.unsqueeze(-1) * patches.permute(0, 2, 1, 3).unsqueeze(2)  # B, L, nh, V, K
        out = torch.addmm(agg.out_proj.bias, feats.reshape(-1, nh * V * K), N)
        return out.reshape(B, -1, D)

    def forward(
        self,
        x: torch.Tensor,
        lead_times: torch.Tensor,
        variables: Sequence[str],
        out_variables: Sequence[str] | None = None,
    ) -> torch.Tensor:
        """Predict ``out_variables`` from normalised ``x``.

        Parameters
        ----------
        x : torch.Tensor
            ``[B, Vin, H, W]`` normalised inputs, channels named by ``variables``.
        lead_times : torch.Tensor
            ``[B]`` (or scalar) lead times in **hours** (ClimaX's hours / 100 scaling is applied here).
        variables : sequence of str
            Names of the input channels: any subset of the model's variables, in any order.
        out_variables : sequence of str, optional
            Variables to return (default: all of the model's variables, in model order).

        Returns
        -------
        torch.Tensor
            ``[B, Vout, H, W]`` normalised predictions.

        Raises
        ------
        XClimaxError
            Unknown variable names or a channel count that does not match ``variables``.
        GridError
            ``(H, W)`` differs from ``img_size``.

        Examples
        --------
        >>> model = ClimaX(["2m_temperature", "lattitude"], img_size=(4, 8), embed_dim=8, depth=1,
        ...                num_heads=2).eval()
        >>> model(torch.zeros(1, 1, 4, 8), torch.tensor([6.0]), ["2m_temperature"]).shape
        torch.Size([1, 2, 4, 8])
        """
        B, V, H, W = x.shape
        if isinstance(variables, str) or len(variables) != V:
            raise XClimaxError(f"x has {V} channels but {len(variables)} variable names were given: {variables!r}")
        if (H, W) != self.img_size:
            raise GridError(f"expected inputs on the model grid {self.img_size}, got {(H, W)}")
        if lead_times.numel() not in (1, B):
            raise XClimaxError(f"expected one lead time per sample ({B}) or a scalar, got shape {tuple(lead_times.shape)}")
        p, Vall = self.patch_size, len(self.variables)
        if self.padded_size != self.img_size:  # pad to whole patches (edge values); cropped off below
            H, W = self.padded_size
            x = F.pad(x, (0, W - x.shape[-1], 0, H - x.shape[-2]), mode="replicate")
        recompute = self.checkpoint_activations and self.training and torch.is_grad_enabled()
        ids = self._ids(variables, x.device)
        if recompute:  # (the RNG state is restored for the recomputation: same dropout masks)
            t = torch.utils.checkpoint.checkpoint(self.aggregate, x, ids, use_reentrant=False)
        else:
            t = self.aggregate(x, ids)  # B, L, D
        lead = self.lead_time_embed((lead_times.to(self.lead_time_embed.weight.dtype) / 100.0).reshape(-1, 1))
        t = self.pos_drop(t + self.pos_embed + lead.unsqueeze(1))
        for blk in self.blocks:
            t = torch.utils.checkpoint.checkpoint(blk, t, use_reentrant=False) if recompute else blk(t)
        t = self.head[:-1](self.norm(t))  # B, L, D
        last = self.head[-1]
        if out_variables is None or tuple(out_variables) == self.variables:
            Vout, t = Vall, last(t)  # B, L, p*p*Vall
        else:
            # only the head rows of the requested variables; row index f = (a*p + b) * Vall + v
            out_ids = self._ids(out_variables, x.device)
            rows = (torch.arange(p * p, device=x.device).unsqueeze(1) * Vall + out_ids).reshape(-1)
            Vout, t = len(out_variables), F.linear(t, last.weight[rows], last.bias[rows])  # B, L, p*p*Vout
        t = t.reshape(B, H // p, W // p, p, p, Vout).permute(0, 5, 1, 3, 2, 4)  # B, Vout, h, p, w, p
        t = t.reshape(B, Vout, H, W)
        return t[..., : self.img_size[0], : self.img_size[1]] if (H, W) != self.img_size else t
