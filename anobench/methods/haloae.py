"""HaloAE: a HaloNet local-attention autoencoder on VGG19 features, with Cut&Paste.

Mathian et al., "HaloAE: An HaloNet based Local Transformer Auto-Encoder for Anomaly Detection
and Localization", 2022 (VISAPP 2023), arXiv 2208.03486. Official code: https://github.com/IARCbioinfo/HaloAE
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from anobench import training
from anobench.backbones import create_backbone
from anobench.errors import AnobenchError, require_positive
from anobench.methods.aligned_conv import AlignedConv2d, AlignedConvTranspose2d
from anobench.methods.base import MethodContext, Scores, register
from anobench.methods.cutpaste import color_jitter, cutpaste_3way
from anobench.methods.halo_attention import HaloAttention
from anobench.methods.ops import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    gaussian_kernel1d,
    imagenet_normalize,
    opencv_gaussian_kernel1d,
    resize_maps,
    separable_blur,
)
from anobench.reflect_pad import ReflectionPad2d

FEATURE_STRIDE = 4  # maps are resized to the image size, then averaged over 4x4 blocks
STEM_KERNEL = 5  # unpadded: 64 -> 60


@dataclass
class HaloAEConfig:
    name: str = "haloae"
    image_size: int = 256
    resize: str = "bilinear"
    block_size: int = 12
    halo_size: int = 2
    dim_head: int = 16
    stem_channels: int = 234
    encoder_channels: list[int] = field(default_factory=lambda: [234, 117, 58, 29])
    encoder_heads: list[int] = field(default_factory=lambda: [4, 8, 8, 8])
    encoder_kernels: list[int] = field(default_factory=lambda: [3, 3, 5, 5])
    decoder_widths: list[int] = field(default_factory=lambda: [29, 58, 118, 236, 703])
    decoder_channels: list[int] = field(default_factory=lambda: [29, 59, 118, 237, 704])
    decoder_heads: list[int] = field(default_factory=lambda: [4, 8, 8, 8, 8])
    decoder_kernels: list[int] = field(default_factory=lambda: [3, 3, 3, 5, 1])
    image_decoder_channels: list[int] = field(default_factory=lambda: [380, 190, 95, 47, 23, 3, 3])
    halo_mask_compat: bool = False
    vgg_border_compat: bool = False
    color_jitter: float = 0.1
    area_ratio: list[float] = field(default_factory=lambda: [0.02, 0.15])
    aspect_ratio: float = 0.3
    scar_width: list[float] = field(default_factory=lambda: [2.0, 16.0])
    scar_height: list[float] = field(default_factory=lambda: [10.0, 25.0])
    scar_rotation: float = 45.0
    patch_jitter: float = 0.1
    ce_schedule: list[float] = field(default_factory=lambda: [1.0, 0.4, 80.0, 0.07])
    feature_schedule: list[float] = field(default_factory=lambda: [-1e-8, 1.2, 150.0, 0.05])
    image_schedule: list[float] = field(default_factory=lambda: [-1e-8, 2.0, 300.0, 0.05])
    epochs: int = 251
    samples_per_epoch: int = 3000
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 1e-5
    blur_sigma: float = 0.0  # cv2.GaussianBlur's sigma: <= 0 derives the taps from blur_size
    blur_size: int = 3  # 1 = no blur
    image_score: str = "mean"

    def __post_init__(self) -> None:
        require_positive(
            "method",
            image_size=self.image_size,
            block_size=self.block_size,
            halo_size=self.halo_size,
            dim_head=self.dim_head,
            stem_channels=self.stem_channels,
            epochs=self.epochs,
            samples_per_epoch=self.samples_per_epoch,
            batch_size=self.batch_size,
            lr=self.lr,
            blur_size=self.blur_size,
            aspect_ratio=self.aspect_ratio,
        )
        side = self.image_size // FEATURE_STRIDE - (STEM_KERNEL - 1)
        if self.image_size % FEATURE_STRIDE or side <= 0 or side % self.block_size:
            raise AnobenchError(
                f"method.image_size={self.image_size} gives a {side}x{side} encoder map "
                f"(image_size/{FEATURE_STRIDE} - {STEM_KERNEL - 1}); choose an image size "
                f"divisible by {FEATURE_STRIDE} whose map is a positive multiple of "
                f"method.block_size={self.block_size} (e.g. 256 with block 12, 64 with block 12)."
            )
        lists = {
            "encoder": (self.encoder_channels, self.encoder_heads, self.encoder_kernels),
            "decoder": (self.decoder_channels, self.decoder_heads, self.decoder_kernels),
        }
        for part, values in lists.items():
            if len({len(v) for v in values}) != 1 or not values[0]:
                raise AnobenchError(
                    f"method.{part}_channels, _heads and _kernels must be "
                    "non-empty lists of the same length."
                )
            if min(min(v) for v in values) <= 0 or any(k % 2 == 0 for k in values[2]):
                raise AnobenchError(f"method.{part}_* values must be positive, kernels odd.")
        if len(self.decoder_widths) != len(self.decoder_channels) or min(self.decoder_widths) <= 0:
            raise AnobenchError("method.decoder_widths needs one positive width per decoder stage.")
        if len(self.image_decoder_channels) < 2 or min(self.image_decoder_channels) <= 0:
            raise AnobenchError("method.image_decoder_channels needs at least two positive widths.")
        if self.image_decoder_channels[-1] != 3:
            raise AnobenchError("method.image_decoder_channels must end with 3 (an RGB image).")
        for key in ("ce_schedule", "feature_schedule", "image_schedule"):
            if len(getattr(self, key)) != 4:
                raise AnobenchError(f"method.{key} must be four numbers (a, b, c, d).")
        ranges = {
            "area_ratio": self.area_ratio,
            "scar_width": self.scar_width,
            "scar_height": self.scar_height,
        }
        for key, pair in ranges.items():
            if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
                raise AnobenchError(
                    f"method.{key}={pair} must be [low, high] with 0 < low <= high."
                )
        if self.area_ratio[1] > 1 or self.aspect_ratio > 1:
            raise AnobenchError("method.area_ratio and method.aspect_ratio must be at most 1.")
        if min(self.color_jitter, self.patch_jitter, self.weight_decay, self.blur_sigma) < 0:
            raise AnobenchError(
                "method.color_jitter, patch_jitter, weight_decay and blur_sigma "
                "must not be negative."
            )
        if self.blur_size % 2 == 0:
            raise AnobenchError(f"method.blur_size={self.blur_size} must be odd (1 = no blur).")
        if self.image_score not in ("mean", "max"):
            raise AnobenchError(f"method.image_score={self.image_score!r} must be mean or max.")

    @property
    def feature_size(self) -> int:
        return self.image_size // FEATURE_STRIDE

    @property
    def encoder_size(self) -> int:
        return self.feature_size - (STEM_KERNEL - 1)


def loss_weights(epoch: int, schedules: list[list[float]]) -> list[float]:
    """Logistic weights (a-b)/(1+exp(d(x-c/2)))+b per loss term at epoch x, normalised to sum 1."""
    raw = [
        (a - b) / (1 + math.exp(min(d * (epoch - c / 2), 700.0))) + b for a, b, c, d in schedules
    ]
    total = sum(raw)
    return [w / total for w in raw]


def _depthwise_filter(maps: Tensor, taps: Tensor) -> Tensor:
    """maps [N, C, H + k - 1, W + k - 1] -> [N, C, H, W]: the separable window, valid positions.

    Depthwise float32 convolutions on contiguous maps run CUDA's direct depthwise kernel (full
    float32, never TF32) and oneDNN's on a CPU.
    """
    channels, size = maps.shape[1], taps.numel()
    row = taps.view(1, 1, 1, size).expand(channels, 1, 1, size).contiguous()
    out = F.conv2d(maps, row, groups=channels)
    return F.conv2d(out, row.view(channels, 1, size, 1), groups=channels)


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM of [B, C, H, W] maps: Gaussian window, C1=0.01^2, C2=0.03^2, zero padding.

    Float32 throughout, exact whatever TF32/autocast settings are on: each map is shifted by
    its mean c (the zero padding becomes -c), so the variances E[y^2] - E[y]^2 are taken of
    centred values and do not cancel (the shift changes no statistic: mu = E[y] + c, variances
    and covariance are shift-free). The window is two depthwise convolutions over four maps
    (y_a, y_b, y_a^2 + y_b^2, y_a y_b).
    """
    # float32 NCHW: depthwise convolutions on channels-last maps would go to cuDNN (TF32)
    a, b = (t.to(torch.float32, memory_format=torch.contiguous_format) for t in (a, b))
    radius = window // 2
    with torch.autocast(a.device.type, enabled=False):
        taps = gaussian_kernel1d(sigma, window, device=a.device)
        shift = a.detach().mean(dim=(-2, -1), keepdim=True)  # [B, C, 1, 1]
        pad = (radius, radius, radius, radius)
        ya, yb = F.pad(a, pad) - shift, F.pad(b, pad) - shift
        stacked = torch.cat([ya, yb, ya * ya + yb * yb, ya * yb])
        mean_a, mean_b, squares, cross = _depthwise_filter(stacked, taps).chunk(4)
    c1, c2 = 0.01**2, 0.03**2
    mu_a, mu_b = mean_a + shift, mean_b + shift
    numerator_mu = 2 * mu_a * mu_b + c1
    centred = mean_a - mean_b
    value = (numerator_mu * (2 * (cross - mean_a * mean_b) + c2)) / (
        (centred * centred + numerator_mu) * (squares - mean_a * mean_a - mean_b * mean_b + c2)
    )
    return value.mean()


class HaloBottleneck(nn.Module):
    """1x1 conv+BN+ReLU -> halo attention -> ReLU -> kxk conv+BN, + shortcut, ReLU.

    The decoder's blocks use transposed convolutions (decoder/HalonetDecoder.py). Convolutions
    compute on channel counts padded to multiples of 8 in 16-bit types (aligned_conv.py).
    """

    def __init__(
        self,
        in_ch: int,
        width: int,
        out_ch: int,
        heads: int,
        kernel: int,
        transposed: bool,
        block: int,
        halo: int,
        dim_head: int,
        mask_compat: bool,
    ) -> None:
        super().__init__()
        conv = AlignedConvTranspose2d if transposed else AlignedConv2d
        self.reduce = nn.Sequential(
            conv(in_ch, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        self.attention = HaloAttention(width, heads, dim_head, block, halo, mask_compat)
        self.expand = nn.Sequential(
            conv(width, out_ch, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(out_ch)
        )
        self.shortcut: nn.Module = nn.Identity()
        if in_ch != out_ch:
            self.shortcut = nn.Sequential(
                conv(in_ch, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.expand(F.relu(self.attention(self.reduce(x))))
        return F.relu(out + self.shortcut(x))


def image_decoder(in_ch: int, channels: list[int]) -> nn.Sequential:
    """Reflect-padded 3x3 conv + ReLU layers, x2 nearest upsampling after each of the last two."""
    layers: list[nn.Module] = []
    for i, out_ch in enumerate(channels):
        layers += [ReflectionPad2d(1), AlignedConv2d(in_ch, out_ch, 3), nn.ReLU()]
        if i >= len(channels) - 2:
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        in_ch = out_ch
    return nn.Sequential(*layers)


class HaloAENet(nn.Module):
    """Stem, HaloNet encoder and decoder on feature maps, image decoder, Cut&Paste classifier."""

    def __init__(self, cfg: HaloAEConfig, feature_channels: int) -> None:
        super().__init__()
        if cfg.decoder_channels[-1] != feature_channels:
            raise AnobenchError(
                f"method.decoder_channels ends with {cfg.decoder_channels[-1]} but the backbone "
                f"layers give {feature_channels} feature channels; make them equal."
            )
        common = {
            "block": cfg.block_size,
            "halo": cfg.halo_size,
            "dim_head": cfg.dim_head,
            "mask_compat": cfg.halo_mask_compat,
        }
        self.stem = nn.Sequential(
            AlignedConv2d(feature_channels, cfg.stem_channels, STEM_KERNEL, bias=False),
            nn.BatchNorm2d(cfg.stem_channels),
            nn.ReLU(),
        )
        encoder, in_ch = [], cfg.stem_channels
        for out_ch, heads, kernel in zip(
            cfg.encoder_channels, cfg.encoder_heads, cfg.encoder_kernels, strict=True
        ):
            encoder.append(HaloBottleneck(in_ch, out_ch, out_ch, heads, kernel, False, **common))
            in_ch = out_ch
        decoder = []
        for width, out_ch, heads, kernel in zip(
            cfg.decoder_widths,
            cfg.decoder_channels,
            cfg.decoder_heads,
            cfg.decoder_kernels,
            strict=True,
        ):
            decoder.append(HaloBottleneck(in_ch, width, out_ch, heads, kernel, True, **common))
            in_ch = out_ch
        self.encoder = nn.Sequential(*encoder)
        self.decoder = nn.Sequential(*decoder)
        self.image_decoder = image_decoder(feature_channels, cfg.image_decoder_channels)
        self.classifier = nn.Linear(3 * cfg.image_size**2, 2)
        # HaloAE.py: initialize_weights(halonetE, HalonetD) re-initialises the autoencoder and the
        # image decoder; the Cut&Paste classifier (`self.out`) keeps PyTorch's default init
        for part in (self.stem, self.encoder, self.decoder, self.image_decoder):
            for module in part.modules():
                if isinstance(module, nn.Conv2d | nn.ConvTranspose2d | nn.Linear):
                    nn.init.kaiming_normal_(module.weight)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """features [B, C, s, s] -> (logits [B, 2], features [B, C, s, s], image [B, 3, S, S])."""
        decoded = self.decoder(self.encoder(self.stem(features)))
        reconstructed = F.interpolate(decoded, size=features.shape[-2:], mode="nearest")
        image = self.image_decoder(reconstructed)
        return self.classifier(image.flatten(1)), reconstructed, image


@register("haloae", HaloAEConfig, scoring_keys=("image_score", "blur_sigma", "blur_size"))
class HaloAE:
    """Feature reconstruction error, minus its mean over train/good, blurred; image score = mean."""

    def __init__(self, cfg: HaloAEConfig, context: MethodContext) -> None:
        self.cfg = cfg
        self.hw = context.hardware
        self.context = context
        self.extractor = self.hw.prepare(create_backbone(context.backbone, cfg.image_size))
        channels = sum(self.extractor.channels(cfg.image_size))
        self.net = self.hw.prepare(HaloAENet(cfg, channels))
        self.forward = self.hw.maybe_compile(self.net)
        self._compiled_loss = self.hw.compile_function(self.weighted_loss)
        self._epoch_weights: tuple[int, Tensor] | None = None
        self.train_images: Tensor | None = None  # [N, 3, S, S] on the device
        # built once on the device: a tensor from Python numbers per step is a blocking copy
        self.image_mean, self.image_std = (
            torch.tensor(values, device=self.hw.device).view(1, 3, 1, 1)
            for values in (IMAGENET_MEAN, IMAGENET_STD)
        )
        self.mean_error: Tensor | None = None  # [s, s] mean train/good feature error

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """Normalised images [B, 3, S, S] -> VGG maps at S, 4x4-averaged: [B, C, S/4, S/4]."""
        size, maps = self.cfg.image_size, self.extractor(images)
        if self.cfg.vgg_border_compat:
            # the authors' VGG returns relu1_1/2_1/3_1 after the reflection padding of the next conv
            maps = [F.pad(m, (1, 1, 1, 1), mode="reflect") for m in maps[:-1]] + maps[-1:]
        pooled = []
        for m in maps:
            factor = size // m.shape[-1]
            if m.shape[-1] * factor == size and FEATURE_STRIDE % factor == 0:
                # nearest x factor then 4x4 average == (4/factor)x(4/factor) average
                pooled.append(F.avg_pool2d(m, FEATURE_STRIDE // factor))
            else:
                m = F.interpolate(m, size=(size, size), mode="nearest")
                pooled.append(F.avg_pool2d(m, FEATURE_STRIDE))
        return torch.cat(pooled, dim=1)

    def loss(self, index: Tensor, epoch: int) -> Tensor:
        """CE on Cut&Paste labels + weighted (MSE + 1 - SSIM) on features and image of originals."""
        cfg = self.cfg
        weights = loss_weights(epoch, [cfg.ce_schedule, cfg.feature_schedule, cfg.image_schedule])
        if not self.hw.compile:
            return self.weighted_loss(index, weights)
        # compiled: the whole step's forward is one graph; the weights enter as a device tensor
        # (made once per epoch) so that a new epoch neither recompiles nor copies per step
        if self._epoch_weights is None or self._epoch_weights[0] != epoch:
            self._epoch_weights = (epoch, torch.tensor(weights, device=self.hw.device))
        return self._compiled_loss(index, self._epoch_weights[1])

    def weighted_loss(self, index: Tensor, weights: list[float] | Tensor) -> Tensor:
        """The loss of a batch of training-image indices with the (CE, feature, image) weights.

        Colour jitter, Cut&Paste, the VGG features, the network and the losses: no host sync and
        static shapes, so `hardware.compile=true` compiles it whole (`_compiled_loss`).
        """
        cfg = self.cfg
        if self.train_images is None:
            raise RuntimeError("HaloAE.loss needs the training images; call fit")
        # train.py: ColorJitter on the whole image, then Cut&Paste of the jittered image
        originals = color_jitter(self.train_images[index], cfg.color_jitter)
        scale = cfg.image_size / 256  # scar sizes are pixels of the authors' 256 px images
        batch = cutpaste_3way(
            originals,
            area_ratio=tuple(cfg.area_ratio),
            aspect_ratio=cfg.aspect_ratio,
            scar_width=(cfg.scar_width[0] * scale, cfg.scar_width[1] * scale),
            scar_height=(cfg.scar_height[0] * scale, cfg.scar_height[1] * scale),
            scar_rotation=cfg.scar_rotation,
            jitter=cfg.patch_jitter,
        )
        images = (batch.images - self.image_mean) / self.image_std  # = imagenet_normalize
        # the frozen VGG runs on every augmented batch: features of random augmentations can't be
        # cached (the mean train/good error map, un-augmented, is computed once after training)
        features = self.features(images)
        logits, rec_features, rec_images = self.forward(features)
        n = index.shape[0]
        target_f, rec_f = features[:n].float(), rec_features[:n].float()
        target_i, rec_i = images[:n].float(), rec_images[:n].float()
        w_ce, w_feat, w_img = weights
        ce = F.cross_entropy(logits.float(), batch.labels)
        feat = F.mse_loss(rec_f, target_f) + 1 - ssim(target_f, rec_f)
        img = F.mse_loss(rec_i, target_i) + 1 - ssim(rec_i, target_i)
        return w_ce * ce + w_feat * feat + w_img * img

    def epoch_batches(self, n: int) -> Callable[[torch.Generator], list[Tensor]]:
        """One epoch = samples_per_epoch samples by repeated shuffled passes over n images."""

        def batches(generator: torch.Generator) -> list[Tensor]:
            index = training.sampled_batches(
                n, self.cfg.samples_per_epoch, self.cfg.batch_size, generator
            )
            sizes = [len(b) for b in index]
            return list(self.hw.to_device(torch.cat(index)).split(sizes))  # one copy per epoch

        return batches

    def fit(self, train: DataLoader) -> None:
        cfg = self.cfg
        self.train_images = self.hw.to_device(torch.cat([b["image"] for b in train]))
        optimizer = self.hw.optimizer(
            torch.optim.Adam, self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        training.train(
            self.net,
            optimizer,
            self.loss,
            self.epoch_batches(len(self.train_images)),
            epochs=cfg.epochs,
            hardware=self.hw,
            seed=self.context.seed,
            desc="haloae",
            checkpoint_path=self.context.checkpoint_path,
            checkpoint_every=self.context.checkpoint_every,
            progress=self.context.progress,
        )
        self.net.eval()
        # the normalising map comes from train/good (the authors' code uses test/good: a leak)
        errors = [self.feature_error(chunk) for chunk in self.train_images.split(16)]
        self.mean_error = torch.cat(errors).mean(dim=0)
        self.train_images = None

    @torch.no_grad()
    def feature_error(self, images: Tensor) -> Tensor:
        """Images [B, 3, S, S] in [0, 1] -> mean squared feature error over channels [B, s, s]."""
        with self.hw.autocast():
            features = self.features(imagenet_normalize(self.hw.to_device(images)))
            _, reconstructed, _ = self.forward(features)
        return (features.float() - reconstructed.float()).pow(2).mean(dim=1)

    @torch.no_grad()
    def predict(self, images: Tensor) -> Scores:
        if self.mean_error is None:
            raise RuntimeError("HaloAE.predict called before fit")
        self.net.eval()
        maps = (self.feature_error(images) - self.mean_error).abs()
        # scores.py: cv2.GaussianBlur(map, (3, 3), 0): OpenCV's taps and border (BORDER_REFLECT_101)
        taps = opencv_gaussian_kernel1d(self.cfg.blur_size, self.cfg.blur_sigma, maps.device)
        maps = separable_blur(maps, taps, padding_mode="reflect")
        image_scores = (
            maps.mean(dim=(1, 2)) if self.cfg.image_score == "mean" else maps.amax(dim=(1, 2))
        )
        return Scores(resize_maps(maps, self.cfg.image_size), image_scores)

    def trained_state(self) -> dict[str, Tensor]:
        """The whole network (autoencoder, image decoder, classifier); the VGG is rebuilt."""
        return {f"net.{k}": v for k, v in self.net.state_dict().items()}

    def scoring_state(self) -> dict[str, Any]:
        """The mean train/good feature error map that scoring subtracts."""
        if self.mean_error is None:
            raise RuntimeError("HaloAE.scoring_state called before fit")
        return {"mean_error": self.mean_error}

    def load_state(self, trained: dict[str, Tensor], scoring: dict[str, Any]) -> None:
        self.net.load_state_dict({k.removeprefix("net."): v for k, v in trained.items()})
        self.net.eval()
        self.mean_error = self.hw.to_device(scoring["mean_error"]).float()
