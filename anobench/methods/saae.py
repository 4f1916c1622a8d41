"""SAAE: a self-attention autoencoder reconstructing frozen ViT features.

Yang, "Self-Attention Autoencoder for Anomaly Segmentation", Preprints 2021, 2021080570
(doi 10.20944/preprints202108.0570.v1; no arXiv version). Official code:
https://github.com/YangYang-SHU/SAAE-DFR (src/anoseg_dfr.py, src/autoencoder.py, src/vit.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from anobench.backbones import create_backbone
from anobench.errors import AnobenchError, require_positive
from anobench.features import FeatureStore, cache_key
from anobench.methods.base import MethodContext, Scores, register
from anobench.methods.ops import normalize, resize_maps
from anobench.training import index_batches, train

log = logging.getLogger("anobench")

# Latent size d per class, hard-coded in the official code (src/main.py, `dims`).
PAPER_LATENT_DIMS: dict[str, int] = {
    "bottle": 113,
    "cable": 213,
    "capsule": 105,
    "hazelnut": 156,
    "metal_nut": 168,
    "pill": 126,
    "screw": 165,
    "toothbrush": 108,
    "transistor": 199,
    "zipper": 168,
    "carpet": 287,
    "grid": 249,
    "leather": 278,
    "tile": 260,
    "wood": 267,
}
# Input normalisation: the code trains on [0,1] (NormalDataset(normalize=False)); its
# alternative is Normalize(mean=0.5, std=0.5).
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "none": None,
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
LATENT_MODES = ("paper", "auto")


@dataclass
class SAAEConfig:
    name: str = "saae"
    image_size: int = 384
    resize: str = "nearest"
    normalization: str = "none"  # none = [0,1] | half = mean = std = 0.5
    latent_dim: Any = "paper"  # int | auto (PCA) | paper (per-class table, else auto)
    pca_variance: float = 0.8  # variance kept by `auto`
    pca_images: int = 16  # first training images whose per-position vectors the PCA sees
    backbone_dropout: bool = True  # ViT in train mode (dropout on) while the autoencoder trains
    heads: int = 3
    head_dim: int = 64
    mlp_ratio: float = 2.0  # transformer MLP width = mlp_ratio * d
    epochs: int = 700
    batch_size: int = 32
    lr: float = 1e-4

    def __post_init__(self) -> None:
        require_positive(
            "method",
            image_size=self.image_size,
            pca_images=self.pca_images,
            heads=self.heads,
            head_dim=self.head_dim,
            mlp_ratio=self.mlp_ratio,
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
        )
        if not 0 < self.pca_variance <= 1:
            raise AnobenchError(f"method.pca_variance={self.pca_variance} must be in (0, 1].")
        if self.normalization not in NORMALIZATIONS:
            raise AnobenchError(
                f"method.normalization={self.normalization!r} is not valid; "
                f"use one of {', '.join(NORMALIZATIONS)}."
            )
        latent = self.latent_dim
        valid_int = isinstance(latent, int) and not isinstance(latent, bool) and latent > 0
        if not valid_int and latent not in LATENT_MODES:
            raise AnobenchError(
                f"method.latent_dim={latent!r} is not valid; use a positive integer, auto or paper."
            )


def pca_latent_dim(vectors: Tensor, variance: float) -> int:
    """Fewest principal components explaining `variance` of vectors [M, C] (sklearn's rule)."""
    centered = vectors.float() - vectors.float().mean(dim=0)
    # X X^T and X^T X share their nonzero eigenvalues: take the smaller Gram matrix.
    small = centered if centered.shape[0] <= centered.shape[1] else centered.T
    eigenvalues = torch.linalg.eigvalsh(small @ small.T).clamp_min(0).double().flip(0)
    ratio = eigenvalues.cumsum(0) / eigenvalues.sum().clamp_min(1e-30)
    target = torch.tensor([variance], dtype=ratio.dtype, device=ratio.device)
    count = int(torch.searchsorted(ratio, target, right=True).item()) + 1
    return max(1, min(count, vectors.shape[1]))


def _mlp_1x1(widths: list[int]) -> nn.Sequential:
    """1x1 convs through `widths`; BatchNorm + ReLU after all but the last (src/autoencoder.py)."""
    layers: list[nn.Module] = []
    for index, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Conv2d(c_in, c_out, kernel_size=1))
        if index < len(widths) - 2:
            layers += [nn.BatchNorm2d(c_out), nn.ReLU()]
    return nn.Sequential(*layers)


class PreNormAttention(nn.Module):
    """Residual multi-head attention; ONE LayerNorm normalises queries and memory (PreNormAttn)."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim  # 3 x 64 = 192 whatever d is
        self.norm = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_k = nn.Linear(dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)

    def _split(self, tokens: Tensor) -> Tensor:
        b, n, _ = tokens.shape
        return tokens.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # [B, heads, N, hd]

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        query, context = self.norm(x), self.norm(memory)
        q = self._split(self.to_q(query))
        k, v = self._split(self.to_k(context)), self._split(self.to_v(context))
        out = F.scaled_dot_product_attention(q, k, v)  # scale head_dim ** -0.5, as the code
        return x + self.to_out(out.transpose(1, 2).flatten(2))


class FeedForward(nn.Module):
    """Residual pre-norm MLP: Linear, GELU, Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(self.norm(x))


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, hidden: int) -> None:
        super().__init__()
        self.attn = PreNormAttention(dim, heads, head_dim)
        self.ff = FeedForward(dim, hidden)

    def forward(self, x: Tensor) -> Tensor:
        return self.ff(self.attn(x, x))


class DecoderLayer(nn.Module):
    """Self-attention on the queries, cross-attention on the encoder memory, then the MLP."""

    def __init__(self, dim: int, heads: int, head_dim: int, hidden: int) -> None:
        super().__init__()
        self.self_attn = PreNormAttention(dim, heads, head_dim)
        self.cross_attn = PreNormAttention(dim, heads, head_dim)
        self.ff = FeedForward(dim, hidden)

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        return self.ff(self.cross_attn(self.self_attn(x, x), memory))


class SelfAttentionAutoencoder(nn.Module):
    """1x1 convs C -> d, a transformer encoder-decoder over the grid, 1x1 convs d -> C."""

    def __init__(
        self,
        in_channels: int,
        latent_dim: int,
        num_tokens: int,
        heads: int,
        head_dim: int,
        mlp_dim: int,
    ) -> None:
        super().__init__()
        d, mid = latent_dim, (in_channels + 2 * latent_dim) // 2
        self.cnn_encoder = _mlp_1x1([in_channels, mid, 2 * d, d])
        self.token_embedding = nn.Linear(d, d)
        # One position embedding for the encoder input and the queries (randn / rand as the code).
        self.pos_embedding = nn.Parameter(torch.randn(1, num_tokens, d))
        self.queries = nn.Parameter(torch.rand(1, num_tokens, d))
        self.encoder = EncoderLayer(d, heads, head_dim, mlp_dim)
        self.decoder = DecoderLayer(d, heads, head_dim, mlp_dim)
        self.token_out = nn.Linear(d, d)
        self.cnn_decoder = _mlp_1x1([d, 2 * d, mid, in_channels])

    def forward(self, features: Tensor) -> Tensor:
        latent = self.cnn_encoder(features)  # [B, d, h, w]
        b, d, h, w = latent.shape
        tokens = self.token_embedding(latent.flatten(2).transpose(1, 2)) + self.pos_embedding
        memory = self.encoder(tokens)  # [B, hw, d]
        queries = (self.queries + self.pos_embedding).expand(b, -1, -1)
        decoded = self.token_out(self.decoder(queries, memory))  # [B, hw, d]
        return self.cnn_decoder(decoded.transpose(1, 2).reshape(b, d, h, w))  # [B, C, h, w]


def resolve_latent_dim(latent_dim: Any, category: str | None) -> int | None:
    """The configured latent size: an int, the paper's per-class value, or None (= PCA)."""
    if latent_dim == "auto":
        return None
    if latent_dim == "paper":
        if category in PAPER_LATENT_DIMS:
            return PAPER_LATENT_DIMS[category]
        log.info(
            "saae: no published latent size for class %r; latent_dim=paper falls back to auto "
            "(PCA keeping the configured variance)",
            category,
        )
        return None
    return int(latent_dim)


@register("saae", SAAEConfig)
class SAAE:
    """Reconstruct stacked ViT tokens; score = squared error averaged over channels; image = max."""

    def __init__(self, cfg: SAAEConfig, context: MethodContext) -> None:
        self.cfg = cfg
        self.context = context
        self.hw = context.hardware
        self.extractor = self.hw.prepare(create_backbone(context.backbone, cfg.image_size))
        patch_embed = getattr(self.extractor.model, "patch_embed", None)
        if patch_embed is not None:
            patch = int(patch_embed.patch_size[0])
            if cfg.image_size % patch:
                raise AnobenchError(
                    f"method.image_size={cfg.image_size} is not divisible by the backbone's "
                    f"patch size {patch}; use a multiple of {patch}."
                )
        with torch.no_grad():
            probe = self.extractor(
                torch.zeros(1, 3, cfg.image_size, cfg.image_size, device=self.hw.device)
            )
        if len({tuple(f.shape[-2:]) for f in probe}) != 1:
            raise AnobenchError(
                f"backbone.layers={list(context.backbone.layers)} give maps of different sizes; "
                "SAAE stacks tokens of one grid (use a ViT's patch_embed and blocks)."
            )
        self.in_channels = sum(f.shape[1] for f in probe)  # 5 x 768 = 3840 for ViT-B
        self.grid = tuple(probe[0].shape[-2:])  # 24 x 24 at 384
        self.latent_dim: int | None = None
        self.model: SelfAttentionAutoencoder | None = None

    def features(self, images: Tensor) -> Tensor:
        """Stacked token grids [B, C, h, w] of images [B, 3, S, S] in [0,1] (backbone as it is)."""
        stats = NORMALIZATIONS[self.cfg.normalization]
        images = self.hw.to_device(images)
        if stats is not None:
            images = normalize(images, *stats)
        with torch.no_grad(), self.hw.autocast():
            return torch.cat(self.extractor(images), dim=1)

    def _build(self, latent_dim: int) -> None:
        self.latent_dim = latent_dim
        model = SelfAttentionAutoencoder(
            self.in_channels,
            latent_dim,
            self.grid[0] * self.grid[1],
            self.cfg.heads,
            self.cfg.head_dim,
            round(self.cfg.mlp_ratio * latent_dim),
        )
        self.model = self.hw.prepare(model)
        self._forward = self.hw.maybe_compile(self.model)

    def fit(self, train_loader: DataLoader) -> None:
        dropout = self.cfg.backbone_dropout
        # With dropout on, the features change at every step, so they can NOT be cached across
        # epochs: the store then runs the ViT (train mode) on each batch. The code never calls
        # extractor.eval() before training, so its PCA for `auto` sees dropout too.
        self.extractor.train(dropout)
        # Absolute image paths where the dataset has them: its relative paths repeat per class.
        samples = getattr(train_loader.dataset, "samples", ())
        paths = [str(s.image_path) for s in samples if hasattr(s, "image_path")]
        paths = paths or [p for batch in train_loader for p in batch["path"]]
        extra = f"saae:{self.cfg.normalization}:{self.context.category}"
        store = FeatureStore(
            self.features,
            train_loader,
            self.hw,
            cache=self.context.cache_features and not dropout,
            cache_dir=self.context.cache_dir,
            key=cache_key(self.context.backbone, self.cfg.image_size, paths, extra),
            progress=self.context.progress,
            desc="saae features",
        )
        latent_dim = resolve_latent_dim(self.cfg.latent_dim, self.context.category)
        if latent_dim is None:
            first = torch.arange(min(self.cfg.pca_images, len(store)))
            vectors = store[first].permute(0, 2, 3, 1).flatten(0, 2)  # [n*h*w, C]
            latent_dim = pca_latent_dim(vectors, self.cfg.pca_variance)
            log.info("saae: latent_dim=auto chose d=%d", latent_dim)
        self._build(latent_dim)
        assert self.model is not None

        def loss_fn(index: Tensor, _epoch: int) -> Tensor:
            target = store[index]  # [B, C, h, w] float32
            with self.hw.autocast():
                reconstruction = self._forward(target)
            return F.mse_loss(reconstruction.float(), target)

        optimizer = self.hw.optimizer(
            torch.optim.Adam, self.model.parameters(), lr=self.cfg.lr, weight_decay=0.0
        )
        train(
            self.model,
            optimizer,
            loss_fn,
            lambda generator: index_batches(len(store), self.cfg.batch_size, generator),
            epochs=self.cfg.epochs,
            hardware=self.hw,
            seed=self.context.seed,
            desc="saae",
            checkpoint_path=self.context.checkpoint_path,
            checkpoint_every=self.context.checkpoint_every,
            progress=self.context.progress,
        )
        self.extractor.eval()

    @torch.no_grad()
    def predict(self, images: Tensor) -> Scores:
        if self.model is None:
            raise RuntimeError("SAAE.predict called before fit")
        self.extractor.eval()
        self.model.eval()
        features = self.features(images).float()  # [B, C, h, w]
        with self.hw.autocast():
            reconstruction = self._forward(features)
        errors = (reconstruction.float() - features).pow(2).mean(dim=1)  # [B, h, w]
        maps = resize_maps(errors, self.cfg.image_size, align_corners=True)
        return Scores(anomaly_maps=maps, image_scores=maps.amax(dim=(1, 2)))

    def trained_state(self) -> dict[str, Tensor]:
        """The autoencoder's weights and BatchNorm statistics (the ViT is rebuilt, not kept)."""
        if self.model is None:
            raise RuntimeError("SAAE.trained_state called before fit")
        return {f"model.{k}": v for k, v in self.model.state_dict().items()}

    def scoring_state(self) -> dict[str, Any]:
        """The latent size the autoencoder was built with (chosen by PCA under `auto`)."""
        return {"latent_dim": self.latent_dim}

    def load_state(self, trained: dict[str, Tensor], scoring: dict[str, Any]) -> None:
        self._build(int(scoring["latent_dim"]))
        assert self.model is not None
        self.model.load_state_dict({k.removeprefix("model."): v for k, v in trained.items()})
        self.model.eval()
        self.extractor.eval()
