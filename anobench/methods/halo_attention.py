"""Blocked local self-attention with a halo (HaloNet, Vaswani et al., CVPR 2021, arXiv 2103.12731).

Queries are the pixels of non-overlapping `block x block` tiles; each tile attends to its own
pixels plus a border of `halo` pixels around it (keys and values from the zero-padded map).
Relative position logits (one table per axis) follow lucidrains' halonet-pytorch, which the
HaloAE authors' code (`halonet_pytorch/halonet_pytorch.py`) uses: the logit of query (x, y) in
its tile for key (i, j) in the halo window adds
q . rel_height[i - x + W - 1] + q . rel_width[j - y + W - 1], with W = block + 2 * halo and
tables of 2W - 1 rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# added to the logits of keys in the zero padding: exp() of it underflows to exactly 0 in float32
# (as -inf would), and it is a power of two, exact in bfloat16
MASKED_LOGIT = -(2.0**14)


class HaloAttention(nn.Module):
    """Halo attention over a feature map [B, C, H, W] -> [B, C, H, W] (H, W divisible by block).

    Keys that fall in the zero padding around the map get zero attention weight. With
    `mask_compat` the authors' inverted mask is reproduced instead: valid keys get the most
    negative logit and padded keys keep theirs, so interior tiles attend uniformly to every key
    and border tiles attend only to padding (whose values are zero).

    One fused attention call per layer (F.scaled_dot_product_attention): the relative position
    logits and the padding mask enter as extra query/key dimensions, q' = [q, r_rows + m_rows,
    r_cols + m_cols] and k' = [k, onehot(i), onehot(j)], so q' . k' = q . k + r_rows[i] +
    r_cols[j] + mask, exactly the logits of the explicit form without materialising them.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        dim_head: int,
        block_size: int,
        halo_size: int,
        mask_compat: bool = False,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.dim_head = dim_head
        self.block = block_size
        self.halo = halo_size
        self.window = block_size + 2 * halo_size
        self.mask_compat = mask_compat
        self.scale = dim_head**-0.5
        inner = heads * dim_head
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim)
        self.rel_height = nn.Parameter(torch.randn(2 * self.window - 1, dim_head) * self.scale)
        self.rel_width = nn.Parameter(torch.randn(2 * self.window - 1, dim_head) * self.scale)
        # row of the relative table for query offset x in the tile and key offset i in the window
        offsets = torch.arange(self.window)[None, :] - torch.arange(block_size)[:, None]
        self.register_buffer("rel_index", offsets + self.window - 1, persistent=False)  # [b, W]
        # key (i, j) of a window as one-hot row and column selectors: [W*W, 2W]
        eye = torch.eye(self.window)
        selectors = torch.cat(
            [eye.repeat_interleave(self.window, 0), eye.repeat(self.window, 1)], dim=1
        )
        self.register_buffer("key_selectors", selectors, persistent=False)
        # per map size, dtype and device: the masks and selectors, built once (no kernels/step)
        self._constants: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}

    def key_validity(self, height: int, width: int, device: torch.device) -> Tensor:
        """[n_blocks, W*W] True where a tile's key lies inside the map (not in the padding)."""
        rows = self._inside(height, device)  # [nh, W]
        cols = self._inside(width, device)  # [nw, W]
        valid = rows[:, None, :, None] & cols[None, :, None, :]  # [nh, nw, W, W]
        return valid.flatten(2).flatten(0, 1)

    def _inside(self, size: int, device: torch.device) -> Tensor:
        """[size / block, W]: True where window row i of tile row t lies inside the map."""
        start = torch.arange(0, size, self.block, device=device)[:, None] - self.halo
        position = start + torch.arange(self.window, device=device)
        return (position >= 0) & (position < size)

    def relative_logits(self, q: Tensor) -> tuple[Tensor, Tensor]:
        """q [..., block*block, d] -> row and column logits, each [..., block*block, W]."""
        b = self.block
        q = q.unflatten(-2, (b, b))  # [..., x, y, d]
        rows = torch.einsum("...xyd,xid->...xyi", q, self.rel_height[self.rel_index])
        cols = torch.einsum("...xyd,yjd->...xyj", q, self.rel_width[self.rel_index])
        return rows.flatten(-3, -2), cols.flatten(-3, -2)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        b, w, heads, d = self.block, self.window, self.heads, self.dim_head
        if height % b or width % b:
            raise ValueError(f"feature map {height}x{width} is not divisible by block size {b}")
        nh, nw = height // b, width // b
        pixels = x.permute(0, 2, 3, 1)  # [B, H, W, C]: a view of a channels-last map
        # K/V once per pixel, then windows: 1.78x less work than projecting each overlapping
        # window (block 12, halo 2), and the same numbers since to_kv has no bias (0 -> 0)
        kv = F.pad(self.to_kv(pixels), (0, 0, self.halo, self.halo, self.halo, self.halo))
        kv = kv.unfold(1, w, b).unfold(2, w, b).permute(0, 1, 2, 4, 5, 3)  # [B,nh,nw,W,W,2hd]
        kv = kv.reshape(batch * nh * nw, w * w, 2, heads, d).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)  # [N, h, W*W, d]
        if self.mask_compat:
            out = self._compat(v, height, width)
        else:
            q = self.to_q(pixels)  # [B, H, W, h*d]; scaled inside the attention call
            q = q.reshape(batch, nh, b, nw, b, heads, d).permute(0, 1, 3, 5, 2, 4, 6)
            q = q.reshape(batch * nh * nw, heads, b * b, d)  # [N, h, b*b, d]
            out = self._attend(q, k, v, height, width)
        out = self.to_out(out.transpose(1, 2).flatten(2))  # [N, b*b, C]
        out = out.reshape(batch, nh, nw, b, b, channels).permute(0, 1, 3, 2, 4, 5)
        return out.reshape(batch, height, width, channels).permute(0, 3, 1, 2)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, height: int, width: int) -> Tensor:
        """Softmax attention with relative logits; padded keys get zero weight. -> [N, h, b*b, d]"""
        nh, nw, w = height // self.block, width // self.block, self.window
        row_mask, col_mask, selectors = self._masks_and_selectors(height, width, q)
        rows, cols = self.relative_logits(q)  # [N, h, b*b, W] each
        # a padded key lies in a window row or column outside the map: push that logit down
        rows = (rows.unflatten(0, (-1, nh, nw)) + row_mask).flatten(0, 2)
        cols = (cols.unflatten(0, (-1, nh, nw)) + col_mask).flatten(0, 2)
        query = torch.cat([q, rows, cols], dim=-1)  # [N, h, b*b, d+2W]
        key = torch.cat([k, selectors.expand(*k.shape[:2], w * w, 2 * w)], dim=-1)
        # fused kernels (flash on CUDA and on the CPU) want one head size for q, k and v
        value = F.pad(v, (0, 2 * w))
        # all logits are linear in q, so SDPA's scale gives (q*s).k + rel(q*s) (masks stay huge)
        out = F.scaled_dot_product_attention(query, key, value, scale=self.scale)
        return out[..., : self.dim_head]

    def _masks_and_selectors(
        self, height: int, width: int, like: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Row mask [nh, 1, 1, 1, W], column mask [1, nw, 1, 1, W] (0 inside the map,
        MASKED_LOGIT outside) and the key selectors [W*W, 2W], in `like`'s dtype and device."""
        if torch.compiler.is_compiling():
            # built inside the compiled graph (constant-folded there): filling the cache while
            # tracing would change what the graph was guarded on and compile it a second time
            return self._build_constants(height, width, like)
        key = (height, width, like.dtype, like.device)
        if key not in self._constants:
            self._constants[key] = self._build_constants(height, width, like)
        return self._constants[key]

    def _build_constants(
        self, height: int, width: int, like: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        rows, cols = (
            torch.where(self._inside(size, like.device), 0.0, MASKED_LOGIT).to(like.dtype)
            for size in (height, width)
        )
        selectors = self.key_selectors.to(like.device, like.dtype)
        return rows[:, None, None, None], cols[None, :, None, None], selectors

    def _compat(self, v: Tensor, height: int, width: int) -> Tensor:
        """The authors' inverted mask in closed form. Interior tiles: every logit is replaced by
        the same -max, so the weights are uniform (the mean of the window's values). Border
        tiles: only padded keys keep a finite logit and their values are zero (to_kv has no
        bias), so the output is 0. Neither depends on q or k, so no softmax is needed."""
        valid = self.key_validity(height, width, v.device)  # [nh*nw, W*W]
        interior = valid.all(dim=1).repeat(v.shape[0] // valid.shape[0])  # [N]
        mean = v.mean(dim=2, keepdim=True)  # [N, h, 1, d]
        out = mean * interior.to(v.dtype)[:, None, None, None]
        return out.expand(-1, -1, self.block * self.block, -1)
