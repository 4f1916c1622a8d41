"""Blocked local self-attention with a halo (HaloNet, Vaswani et al., CVPR 2021, arXiv 2103.12731).

Queries are the pixels of non-overlapping `block x block` tiles; each tile attends to its own
pixels plus a border of `halo` pixels around it (keys and values from a zero-padded unfold).
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


class HaloAttention(nn.Module):
    """Halo attention over a feature map [B, C, H, W] -> [B, C, H, W] (H, W divisible by block).

    Keys that fall in the zero padding around the map get zero attention weight. With
    `mask_compat` the authors' inverted mask is reproduced instead: valid keys get the most
    negative logit and padded keys keep theirs, so interior tiles attend uniformly to every key
    and border tiles attend only to padding (whose values are zero).
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

    def key_validity(self, height: int, width: int, device: torch.device) -> Tensor:
        """[n_blocks, W*W] True where a tile's key lies inside the map (not in the padding)."""
        ones = torch.ones(1, 1, height, width, device=device)
        valid = F.unfold(ones, self.window, stride=self.block, padding=self.halo)  # [1, W*W, L]
        return valid[0].t() > 0.5

    def relative_logits(self, q: Tensor) -> Tensor:
        """q [..., block*block, d] -> relative position logits [..., block*block, W*W]."""
        b, w = self.block, self.window
        q = q.unflatten(-2, (b, b))  # [..., x, y, d]
        rows = torch.einsum("...xyd,xid->...xyi", q, self.rel_height[self.rel_index])
        cols = torch.einsum("...xyd,yjd->...xyj", q, self.rel_width[self.rel_index])
        logits = rows[..., :, None] + cols[..., None, :]  # [..., x, y, i, j]
        return logits.reshape(*q.shape[:-3], b * b, w * w)

    def forward(self, x: Tensor) -> Tensor:
        batch, channels, height, width = x.shape
        b, w, heads = self.block, self.window, self.heads
        if height % b or width % b:
            raise ValueError(f"feature map {height}x{width} is not divisible by block size {b}")
        nh, nw = height // b, width // b
        tiles = x.reshape(batch, channels, nh, b, nw, b).permute(0, 2, 4, 3, 5, 1)
        q_in = tiles.reshape(batch * nh * nw, b * b, channels)
        kv_in = F.unfold(x, w, stride=b, padding=self.halo)  # [B, C*W*W, L]
        kv_in = kv_in.reshape(batch, channels, w * w, nh * nw).permute(0, 3, 2, 1)
        kv_in = kv_in.reshape(batch * nh * nw, w * w, channels)
        q = self.to_q(q_in).unflatten(-1, (heads, self.dim_head)).transpose(1, 2)  # [N, h, b*b, d]
        k, v = (
            t.unflatten(-1, (heads, self.dim_head)).transpose(1, 2)
            for t in self.to_kv(kv_in).chunk(2, dim=-1)
        )  # [N, h, W*W, d]
        q = q * self.scale
        sim = q @ k.transpose(-1, -2) + self.relative_logits(q)  # [N, h, b*b, W*W]
        valid = self.key_validity(height, width, x.device).repeat(batch, 1)  # [N, W*W]
        valid = valid[:, None, None, :]
        if self.mask_compat:
            # the authors' code fills the *valid* keys (halonet_pytorch.py: masked_fill_(mask, ...))
            sim = sim.masked_fill(valid, -torch.finfo(sim.dtype).max)
        else:
            sim = sim.masked_fill(~valid, float("-inf"))
        out = sim.softmax(dim=-1) @ v  # [N, h, b*b, d]
        out = self.to_out(out.transpose(1, 2).flatten(2))  # [N, b*b, C]
        out = out.reshape(batch, nh, nw, b, b, channels).permute(0, 5, 1, 3, 2, 4)
        return out.reshape(batch, channels, height, width)
