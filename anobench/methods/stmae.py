"""ST-MAE: Siamese Transition Masked Autoencoders.

Haiming Yao, Xue Wang, Wenyong Yu, "Siamese Transition Masked Autoencoders as Uniform Unsupervised
Visual Anomaly Detector", 2022, arXiv 2211.00349. No authors' code; the unofficial
https://github.com/TSTB-dev/ST-MAE gives the hyperparameters. Its decoder reads the tokens of both
halves in split order as if they were in raster order, so predictions land at the wrong positions;
here every prediction is written back to the position it was asked for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn
from torch.utils.data import DataLoader

from anobench.backbones import create_backbone
from anobench.errors import AnobenchError, require_positive
from anobench.features import FeatureStore, cache_key
from anobench.methods.base import MethodContext, Scores, register
from anobench.methods.ops import gaussian_blur, imagenet_normalize, resize_maps
from anobench.training import TrainHistory, index_batches, train

COSINE_MODES = ("sample", "token", "position")


@dataclass
class STMAEConfig:
    name: str = "stmae"
    image_size: int = 256
    resize: str = "bilinear"
    feature_size: int = 64  # backbone maps resized bilinearly to this (960 x 64 x 64)
    patch_size: int = 4  # Conv2d patch embedding: 64 / 4 -> 16 x 16 = 256 tokens
    embed_dim: int = 768  # ViT-Base encoder
    depth: int = 12
    num_heads: int = 12
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    mlp_ratio: float = 4.0
    joint_decoder: bool = False  # True: one decoder pass over both halves (the public code)
    qkv_bias: bool = True  # False: the public code's attention (no qkv bias)
    shared_block_norm: bool = False  # True: one LayerNorm for every block of a stack (public code)
    final_norms: bool = True  # False: no LayerNorm after the encoder and decoder (public code)
    cos_weight: float = 5.0  # loss = MSE + cos_weight * (1 - cosine similarity)
    cosine: str = "sample"  # loss cosine over: sample (flattened map) | token | position
    lr: float = 1e-4
    weight_decay: float = 0.05
    batch_size: int = 8
    epochs: int = 400
    test_splits: int = 1  # random splits per test image, maps averaged
    blur_sigma: float = 4.0  # at feature resolution, before upsampling
    blur_kernel: int = 7

    def __post_init__(self) -> None:
        require_positive(
            "method",
            image_size=self.image_size,
            feature_size=self.feature_size,
            patch_size=self.patch_size,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            decoder_dim=self.decoder_dim,
            decoder_depth=self.decoder_depth,
            decoder_heads=self.decoder_heads,
            mlp_ratio=self.mlp_ratio,
            lr=self.lr,
            batch_size=self.batch_size,
            epochs=self.epochs,
            test_splits=self.test_splits,
            blur_kernel=self.blur_kernel,
        )
        for key in ("weight_decay", "cos_weight", "blur_sigma"):
            if getattr(self, key) < 0:
                raise AnobenchError(f"method.{key}={getattr(self, key)} must not be negative.")
        if self.feature_size % self.patch_size:
            raise AnobenchError(
                f"method.feature_size={self.feature_size} is not divisible by "
                f"method.patch_size={self.patch_size}; pick sizes that divide."
            )
        if (self.feature_size // self.patch_size) ** 2 % 2:
            raise AnobenchError(
                f"method.feature_size/patch_size={self.feature_size // self.patch_size} gives "
                "an odd token count that cannot be split into two equal halves; use an even ratio."
            )
        if self.embed_dim % self.num_heads or self.decoder_dim % self.decoder_heads:
            raise AnobenchError(
                f"method.embed_dim={self.embed_dim} / decoder_dim={self.decoder_dim} must be "
                f"divisible by num_heads={self.num_heads} / decoder_heads={self.decoder_heads}."
            )
        if self.cosine not in COSINE_MODES:
            raise AnobenchError(
                f"method.cosine={self.cosine!r} is not valid; use one of {', '.join(COSINE_MODES)}."
            )
        if self.blur_kernel % 2 == 0:
            raise AnobenchError(f"method.blur_kernel={self.blur_kernel} must be odd.")


def random_split(batch: int, n_tokens: int, generator: torch.Generator | None = None) -> Tensor:
    """A per-sample token order [B, N]: first half = subset A, second half = subset B.

    Each half is sorted (raster order), so A's i-th token is paired with B's i-th position.
    """
    noise = torch.rand(batch, n_tokens, generator=generator)
    order = noise.argsort(dim=1)
    half = n_tokens // 2
    return torch.cat([order[:, :half].sort(dim=1).values, order[:, half:].sort(dim=1).values], 1)


def epoch_batches(
    n: int, batch_size: int, n_tokens: int, generator: torch.Generator
) -> list[tuple[Tensor, Tensor]]:
    """One epoch of (sample indices, split order) pairs, all drawn from the epoch's generator.

    Splits come from the (seed, epoch) generator, not the global RNG: a resumed run and a run
    that recomputes features draw the same splits.
    """
    batches = index_batches(n, batch_size, generator)
    return [(index, random_split(len(index), n_tokens, generator)) for index in batches]


def _gather_tokens(tokens: Tensor, index: Tensor) -> Tensor:
    """tokens [B, N, D] at index [B, M] -> [B, M, D]."""
    return tokens.gather(1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class SharedNormStack(nn.Module):
    """Pre-norm ViT blocks that all use ONE LayerNorm before every attention and MLP.

    The public code's VisionTransformerEncoder/Decoder (`self.layer_norm`); the blocks' own
    norm1/norm2 are unused (Identity), so no parameter is shared between modules.
    """

    def __init__(self, dim: int, blocks: list[Block]) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        for block in blocks:
            block.norm1, block.norm2 = nn.Identity(), nn.Identity()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = x + block.attn(self.norm(x))
            x = x + block.mlp(self.norm(x))
        return x


def transformer_stack(
    dim: int, depth: int, heads: int, mlp_ratio: float, qkv_bias: bool, shared_norm: bool
) -> nn.Module:
    """`depth` pre-norm ViT blocks with PyTorch's LayerNorm (eps 1e-5, as the public code)."""
    blocks = [
        Block(dim, heads, mlp_ratio, qkv_bias=qkv_bias, norm_layer=nn.LayerNorm)
        for _ in range(depth)
    ]
    return SharedNormStack(dim, blocks) if shared_norm else nn.Sequential(*blocks)


class SiameseTransitionMAE(nn.Module):
    """Patch embedding, shared encoder on each half, transition, decoder back to feature maps."""

    @classmethod
    def from_config(cls, in_channels: int, cfg: STMAEConfig) -> SiameseTransitionMAE:
        """The network a method config describes, on `in_channels` backbone channels."""
        return cls(
            in_channels,
            cfg.feature_size,
            cfg.patch_size,
            cfg.embed_dim,
            cfg.depth,
            cfg.num_heads,
            cfg.decoder_dim,
            cfg.decoder_depth,
            cfg.decoder_heads,
            cfg.mlp_ratio,
            cfg.joint_decoder,
            cfg.qkv_bias,
            cfg.shared_block_norm,
            cfg.final_norms,
        )

    def __init__(
        self,
        in_channels: int,
        feature_size: int,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        decoder_dim: int,
        decoder_depth: int,
        decoder_heads: int,
        mlp_ratio: float = 4.0,
        joint_decoder: bool = False,
        qkv_bias: bool = True,
        shared_block_norm: bool = False,
        final_norms: bool = True,
    ) -> None:
        super().__init__()
        self.grid = feature_size // patch_size
        self.num_tokens = self.grid**2
        self.joint_decoder = joint_decoder
        self.patch_embed = nn.Conv2d(in_channels, embed_dim, patch_size, stride=patch_size)
        # randn init as the public code (vision_transformer.py PosEmbedding): a strong position
        # signal, which the transition relies on to tell the decoder where to predict
        self.pos_embed = nn.Parameter(torch.randn(1, self.num_tokens, embed_dim))
        self.embed_norm = nn.LayerNorm(embed_dim)
        self.encoder = transformer_stack(
            embed_dim, depth, num_heads, mlp_ratio, qkv_bias, shared_block_norm
        )
        self.encoder_norm = nn.LayerNorm(embed_dim) if final_norms else nn.Identity()
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.decoder = transformer_stack(
            decoder_dim, decoder_depth, decoder_heads, mlp_ratio, qkv_bias, shared_block_norm
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim) if final_norms else nn.Identity()
        self.head = nn.ConvTranspose2d(decoder_dim, in_channels, patch_size, stride=patch_size)
        for module in [*self.encoder.modules(), *self.decoder.modules(), self.decoder_embed]:
            if isinstance(module, nn.Linear):  # xavier as the public code and MAE
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @staticmethod
    def split_positions(order: Tensor) -> tuple[Tensor, Tensor]:
        """(seen, targets), each [2B, N/2]: the positions each half encodes and predicts.

        Rows 0..B-1 are subset A (predicting B's positions), rows B..2B-1 subset B (predicting A's).
        """
        half = order.shape[1] // 2
        first, second = order[:, :half], order[:, half:]
        return torch.cat([first, second]), torch.cat([second, first])

    def forward(self, features: Tensor, order: Tensor) -> Tensor:
        """Features [B, C, H, W] and a split order [B, N] -> predicted features [B, C, H, W].

        Every position is predicted once, from the half that did not contain it.
        """
        b = features.shape[0]
        tokens = self.patch_embed(features).flatten(2).transpose(1, 2)  # [B, N, D]
        tokens = self.embed_norm(tokens + self.pos_embed)
        seen, targets = self.split_positions(order)
        tokens = _gather_tokens(tokens.repeat(2, 1, 1), seen)  # [2B, N/2, D]
        latent = self.encoder_norm(self.encoder(tokens))  # [2B, N/2, D]
        # transition: each half's latents carry the position embeddings of the other half
        pos = _gather_tokens(self.pos_embed.expand(2 * b, -1, -1), targets)
        x = self.decoder_embed(latent + pos)  # [2B, N/2, Dd]
        if self.joint_decoder:
            x = torch.cat(self.decoder(torch.cat(x.split(b), dim=1)).split(x.shape[1], dim=1))
        else:
            x = self.decoder(x)
        x = self.decoder_norm(x)
        # put every prediction back at its own target position, then to the grid
        preds = torch.cat(
            x.split(b), dim=1
        )  # [B, N, Dd], token order = torch.cat(targets.split(b))
        index = torch.cat(targets.split(b), dim=1).unsqueeze(-1).expand_as(preds)
        grid = torch.zeros_like(preds).scatter(1, index, preds)  # [B, N, Dd] raster order
        grid = grid.transpose(1, 2).reshape(b, -1, self.grid, self.grid)
        return self.head(grid)  # [B, C, H, W]


def cosine_similarity(a: Tensor, b: Tensor, dim: int, eps: float = 1e-8) -> Tensor:
    """F.cosine_similarity's value, a.b / (max(|a|, eps) max(|b|, eps)), from three reductions:
    ATen normalises both inputs first, two more full-size passes forward and backward."""
    dot = (a * b).sum(dim)
    return dot / (a.norm(dim=dim).clamp_min(eps) * b.norm(dim=dim).clamp_min(eps))


def stmae_loss(
    pred: Tensor, target: Tensor, cos_weight: float, cosine: str, patch_size: int
) -> Tensor:
    """MSE + cos_weight * (1 - cosine similarity), in float32."""
    pred, target = pred.float(), target.float()
    mse = F.mse_loss(pred, target)
    if cosine == "sample":  # the public code: one cosine over each sample's flattened map
        similarity = cosine_similarity(pred.flatten(1), target.flatten(1), dim=1)
    elif cosine == "token":  # one cosine per patch token (C * p * p values)
        similarity = cosine_similarity(
            F.pixel_unshuffle(pred, patch_size), F.pixel_unshuffle(target, patch_size), dim=1
        )
    else:  # one cosine per feature position over the channels, as the score
        similarity = cosine_similarity(pred, target, dim=1)
    return mse + cos_weight * (1 - similarity).mean()


def anomaly_map(pred: Tensor, target: Tensor) -> Tensor:
    """Channel-mean squared error x (1 - channel cosine similarity) per position, [B, H, W]."""
    pred, target = pred.float(), target.float()
    squared = (pred - target).pow(2).mean(dim=1)
    return squared * (1 - F.cosine_similarity(pred, target, dim=1))


def score_maps(maps: Tensor, blur_sigma: float, blur_kernel: int, image_size: int) -> Scores:
    """Feature-size maps [B, F, F] -> blurred maps upsampled to image_size, image score = max.

    evaluate.py blurs at the feature size and takes the max of that blurred map; the max of the
    upsampled map would be slightly lower (bilinear interpolation never reaches a peak).
    """
    blurred = gaussian_blur(maps, blur_sigma, blur_kernel)
    return Scores(resize_maps(blurred, image_size), blurred.amax(dim=(1, 2)))


@register("stmae", STMAEConfig, scoring_keys=("test_splits", "blur_sigma", "blur_kernel"))
class STMAE:
    """Frozen VGG19 features rebuilt by a Siamese transition MAE; score = feature residual."""

    def __init__(self, cfg: STMAEConfig, context: MethodContext) -> None:
        self.cfg = cfg
        self.context = context
        self.hw = context.hardware
        self.extractor = self.hw.prepare(create_backbone(context.backbone, cfg.image_size))
        channels = sum(self.extractor.channels(cfg.image_size))
        self.model = self.hw.prepare(SiameseTransitionMAE.from_config(channels, cfg))
        self.model.eval()
        self.history: TrainHistory | None = None
        self.generator = torch.Generator().manual_seed(context.seed)  # test-time splits

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """Images [B, 3, S, S] in [0,1] on the device -> concatenated maps [B, C, F, F] float32."""
        size = (self.cfg.feature_size, self.cfg.feature_size)
        maps = self.extractor(imagenet_normalize(images))
        resized = [
            F.interpolate(m.float(), size=size, mode="bilinear", align_corners=False) for m in maps
        ]
        return torch.cat(resized, dim=1)

    def loss(self, features: Tensor, order: Tensor, net: nn.Module | None = None) -> Tensor:
        """Training loss of features [B, C, F, F] under the split order [B, N], on the device."""
        target = features.float()
        return stmae_loss(
            (net or self.model)(target, order),
            target,
            self.cfg.cos_weight,
            self.cfg.cosine,
            self.cfg.patch_size,
        )

    def fit(self, train_loader: DataLoader) -> None:
        cfg, context = self.cfg, self.context
        samples = getattr(train_loader.dataset, "samples", None)
        key = None
        if samples is not None:
            paths = [str(s.image_path) for s in samples]
            extra = f"stmae:{cfg.feature_size}:{cfg.resize}"
            key = cache_key(context.backbone, cfg.image_size, paths, extra)
        # frozen backbone, no augmentation: the features are computed once and reused every epoch
        # (hardware.cache_features=false recomputes them every step: the naive loop)
        features = FeatureStore(
            self.features,
            train_loader,
            self.hw,
            cache=context.cache_features,
            cache_dir=context.cache_dir,
            key=key,
            progress=context.progress,
            desc="vgg19 features",
        )
        n = len(features)
        net = self.hw.maybe_compile(self.model)

        def batches(generator: torch.Generator) -> list[tuple[Tensor, Tensor]]:
            pairs = epoch_batches(n, cfg.batch_size, self.model.num_tokens, generator)
            return [(index.to(features.device), self.hw.to_device(order)) for index, order in pairs]

        def loss_fn(batch: tuple[Tensor, Tensor], _epoch: int) -> Tensor:
            index, order = batch
            return self.loss(features[index], order, net)

        optimizer = self.hw.optimizer(
            torch.optim.AdamW, self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.history = train(
            self.model,
            optimizer,
            loss_fn,
            batches,
            epochs=cfg.epochs,
            hardware=self.hw,
            seed=context.seed,
            desc="stmae",
            checkpoint_path=context.checkpoint_path,
            checkpoint_every=context.checkpoint_every,
            progress=context.progress,
        )

    @torch.no_grad()
    def predict(self, images: Tensor) -> Scores:
        images = self.hw.to_device(images)
        with self.hw.autocast():
            target = self.features(images)  # [B, C, F, F]
        maps = torch.zeros(target.shape[0], *target.shape[-2:], device=target.device)
        for _ in range(self.cfg.test_splits):
            order = random_split(target.shape[0], self.model.num_tokens, self.generator)
            with self.hw.autocast():
                pred = self.model(target, self.hw.to_device(order))
            maps += anomaly_map(pred, target)
        cfg = self.cfg
        return score_maps(maps / cfg.test_splits, cfg.blur_sigma, cfg.blur_kernel, cfg.image_size)

    def trained_state(self) -> dict[str, Tensor]:
        """The transition MAE's weights (the VGG is rebuilt, not kept)."""
        return {f"model.{k}": v for k, v in self.model.state_dict().items()}

    def scoring_state(self) -> dict[str, Any]:
        # the test-time splits come from a generator seeded with the cell's seed: nothing to keep
        return {}

    def load_state(self, trained: dict[str, Tensor], scoring: dict[str, Any]) -> None:
        self.model.load_state_dict({k.removeprefix("model."): v for k, v in trained.items()})
        self.model.eval()
