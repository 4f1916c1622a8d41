"""HaloAE's step as it was before the GPU rework (issue 24), kept as references for equivalence.

`explicit_halo_attention` is the previous HaloAttention.forward: windows unfolded from the input,
then projected; logits materialised (q k^T + relative logits, masked), softmax, weighted sum.
`float64_ssim` is the SSIM definition computed entirely in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from anobench.methods.halo_attention import HaloAttention
from anobench.methods.ops import gaussian_kernel1d


def explicit_halo_attention(attn: HaloAttention, x: Tensor) -> Tensor:
    """HaloAttention's previous forward, [B, C, H, W] -> [B, C, H, W]."""
    batch, channels, height, width = x.shape
    b, w, heads, d = attn.block, attn.window, attn.heads, attn.dim_head
    nh, nw = height // b, width // b
    tiles = x.reshape(batch, channels, nh, b, nw, b).permute(0, 2, 4, 3, 5, 1)
    q_in = tiles.reshape(batch * nh * nw, b * b, channels)
    kv_in = F.unfold(x, w, stride=b, padding=attn.halo)  # [B, C*W*W, L]
    kv_in = kv_in.reshape(batch, channels, w * w, nh * nw).permute(0, 3, 2, 1)
    kv_in = kv_in.reshape(batch * nh * nw, w * w, channels)
    q = attn.to_q(q_in).unflatten(-1, (heads, d)).transpose(1, 2) * attn.scale
    k, v = (t.unflatten(-1, (heads, d)).transpose(1, 2) for t in attn.to_kv(kv_in).chunk(2, dim=-1))
    q5 = q.unflatten(-2, (b, b))
    rows = torch.einsum("...xyd,xid->...xyi", q5, attn.rel_height[attn.rel_index])
    cols = torch.einsum("...xyd,yjd->...xyj", q5, attn.rel_width[attn.rel_index])
    relative = (rows[..., :, None] + cols[..., None, :]).reshape(*q.shape[:-1], w * w)
    sim = q @ k.transpose(-1, -2) + relative  # [N, h, b*b, W*W]
    ones = torch.ones(1, 1, height, width, dtype=x.dtype)
    valid = F.unfold(ones, w, stride=b, padding=attn.halo)[0].t() > 0.5  # [L, W*W]
    valid = valid.repeat(batch, 1)[:, None, None, :]
    if attn.mask_compat:
        sim = sim.masked_fill(valid, -torch.finfo(sim.dtype).max)
    else:
        sim = sim.masked_fill(~valid, float("-inf"))
    out = attn.to_out((sim.softmax(dim=-1) @ v).transpose(1, 2).flatten(2))  # [N, b*b, C]
    out = out.reshape(batch, nh, nw, b, b, channels).permute(0, 5, 1, 3, 2, 4)
    return out.reshape(batch, channels, height, width)


def float64_ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM, everything in float64: 2-D Gaussian window as a zero-padded depthwise conv."""
    a, b = a.double(), b.double()
    taps = gaussian_kernel1d(sigma, window, dtype=torch.float64)
    kernel = (taps[:, None] * taps[None, :]).expand(a.shape[1], 1, window, window)

    def blur(t: Tensor) -> Tensor:
        return F.conv2d(t, kernel, padding=window // 2, groups=a.shape[1])

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return value.mean()
