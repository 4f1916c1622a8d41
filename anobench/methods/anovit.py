"""AnoViT: a ViT encoder fine-tuned with a convolutional decoder to reconstruct normal images.

Lee & Kang, "AnoViT: Unsupervised Anomaly Detection and Localization With Vision Transformer-Based
Encoder-Decoder", IEEE Access 10:46717-46724, 2022; arXiv 2203.10808.
Code: https://github.com/yukyunglee/LG_ES_Transformer (folder AnoViT/: decoder, data, early
stopping, a training log; the scoring notebook is missing) and the same lab's complete 2024
notebook https://github.com/hwk0702/2024_LG_ES_External_Lecture
(240703_Transformer/03_AnoViT_Image_anomaly_detection.ipynb).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from anobench.backbones import FeatureExtractor, create_backbone
from anobench.errors import AnobenchError, require_positive
from anobench.features import cache_key, extract_features
from anobench.hardware import Hardware
from anobench.methods.base import MethodContext, Scores, register
from anobench.methods.ops import gaussian_blur
from anobench.training import index_batches, train

DECODERS = ("bundle", "lecture2024")
IMAGE_SCORES = ("max", "max_rgb_mean", "max_blurred")


@dataclass
class AnoViTConfig:
    name: str = "anovit"
    image_size: int = 384
    resize: str = "bicubic"  # the bundle resizes with PIL ANTIALIAS (Lanczos); nearest offered here
    decoder: str = "bundle"  # bundle: six ConvT blocks + tanh | lecture2024: five + conv + sigmoid
    final_relu: bool = True  # bundle: its 16->3 block ends in InstanceNorm + ReLU before tanh
    freeze_encoder: bool = False  # the authors fine-tune the ViT with the decoder
    epochs: int = 200
    patience: int = 12  # early stopping on validation MSE
    val_fraction: float = 0.1  # part of train/good held out for early stopping
    batch_size: int = 8
    lr: float = 1e-4
    beta1: float = 0.5
    beta2: float = 0.999
    blur_sigma: float = 6.0  # Gaussian blur of the pixel map
    image_score: str = "max"  # raw error, max over channels and pixels | max_rgb_mean | max_blurred

    def __post_init__(self) -> None:
        require_positive(
            "method",
            image_size=self.image_size,
            epochs=self.epochs,
            patience=self.patience,
            batch_size=self.batch_size,
            lr=self.lr,
        )
        if self.decoder not in DECODERS:
            raise AnobenchError(
                f"method.decoder={self.decoder!r} is not valid; use {' or '.join(DECODERS)}."
            )
        if self.image_score not in IMAGE_SCORES:
            raise AnobenchError(
                f"method.image_score={self.image_score!r} is not valid; "
                f"use {' or '.join(IMAGE_SCORES)}."
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise AnobenchError(
                f"method.val_fraction={self.val_fraction} must lie strictly between 0 and 1."
            )
        if not (0.0 <= self.beta1 < 1.0 and 0.0 <= self.beta2 < 1.0):
            raise AnobenchError(
                f"method.beta1={self.beta1} and beta2={self.beta2} must lie in [0, 1)."
            )
        if self.blur_sigma < 0:
            raise AnobenchError(
                f"method.blur_sigma={self.blur_sigma} must be 0 (no blur) or positive."
            )


def _up_block(c_in: int, c_out: int, stride: int, relu: bool = True) -> nn.Sequential:
    """ConvTranspose2d 3x3 + InstanceNorm2d (+ ReLU): size s -> s+2 (stride 1), 2s-1 (stride 2)."""
    padding = 1 if stride == 2 else 0
    layers: list[nn.Module] = [
        nn.ConvTranspose2d(c_in, c_out, 3, stride=stride, padding=padding),
        nn.InstanceNorm2d(c_out),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _upsample(blocks: nn.ModuleList, grid: Tensor, image_size: int) -> Tensor:
    """Run the up-convolution blocks, then resize bilinearly (align_corners=True) to image_size."""
    out = grid
    for block in blocks:
        out = block(out)
    return F.interpolate(out, size=(image_size,) * 2, mode="bilinear", align_corners=True)


class AnoViTDecoder(nn.Module):
    """The bundle's decoder (AnoViT/model.py): 768x24x24 -> 3x233x233 -> bilinear to S -> tanh."""

    def __init__(self, image_size: int, dim: int = 768, final_relu: bool = True) -> None:
        super().__init__()
        widths = (dim, 256, 128, 64, 32, 16, 3)
        strides = (1, 1, 1, 2, 2, 2)
        self.blocks = nn.ModuleList(
            _up_block(widths[i], widths[i + 1], strides[i], relu=final_relu or i < 5)
            for i in range(6)
        )
        self.image_size = image_size

    def forward(self, grid: Tensor) -> Tensor:
        return torch.tanh(_upsample(self.blocks, grid, self.image_size))


class LectureDecoder(nn.Module):
    """The 2024 notebook's decoder: five blocks to 16 channels, bilinear to S, conv 3x3, sigmoid."""

    def __init__(self, image_size: int, dim: int = 768) -> None:
        super().__init__()
        widths = (dim, 256, 128, 64, 32, 16)
        strides = (1, 1, 1, 2, 2)
        self.blocks = nn.ModuleList(
            _up_block(widths[i], widths[i + 1], strides[i]) for i in range(5)
        )
        self.output = nn.Conv2d(16, 3, 3, padding=1)
        self.image_size = image_size

    def forward(self, grid: Tensor) -> Tensor:
        return torch.sigmoid(self.output(_upsample(self.blocks, grid, self.image_size)))


class AnoViTModel(nn.Module):
    """ViT tokens after the final LayerNorm (class token dropped) as a grid, then the decoder."""

    def __init__(self, encoder: FeatureExtractor, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def forward(self, images: Tensor) -> Tensor:
        return self.decoder(self.encoder(images)[0])


class EarlyStopping:
    """Epoch hook: stop after `patience` epochs without a better validation loss; keep best weights.

    As the bundle's EarlyStop (AnoViT/funcs.py), a validation loss equal to the best counts as an
    improvement. The best weights live in the hook's state, so a resumed run keeps them.
    """

    def __init__(self, model: nn.Module, validate: Callable[[], float], patience: int) -> None:
        self.model = model
        self.validate = validate
        self.patience = patience
        self.best_loss = float("inf")
        self.bad_epochs = 0
        self.best_epoch = -1
        self.best_state: dict[str, Tensor] | None = None
        self.val_losses: list[float] = []

    def __call__(self, epoch: int, train_loss: float) -> bool:
        val_loss = self.validate()
        self.val_losses.append(val_loss)
        if val_loss <= self.best_loss:
            self.best_loss, self.best_epoch, self.bad_epochs = val_loss, epoch, 0
            state = self.model.state_dict()
            if self.best_state is None or self.best_state.keys() != state.keys():
                self.best_state = {k: v.detach().clone() for k, v in state.items()}
            else:  # one multi-tensor copy instead of a kernel per tensor (~200 for ViT-B)
                torch._foreach_copy_(list(self.best_state.values()), list(state.values()))
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def restore(self) -> None:
        """Load the best weights seen into the model."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        return {
            "best_loss": self.best_loss,
            "bad_epochs": self.bad_epochs,
            "best_epoch": self.best_epoch,
            "best_state": self.best_state,
            "val_losses": list(self.val_losses),
        }

    def load_state_dict(self, state: dict) -> None:
        self.best_loss = state["best_loss"]
        self.bad_epochs = state["bad_epochs"]
        self.best_epoch = state["best_epoch"]
        self.best_state = state["best_state"]
        self.val_losses = list(state["val_losses"])


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """(train, validation) indices: a seeded shuffle, at least one image on each side."""
    if n < 2:
        raise AnobenchError(
            f"AnoViT needs at least 2 training images (one for early-stopping validation), got {n}."
        )
    n_val = min(max(int(n * val_fraction), 1), n - 1)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:], order[:n_val]


def channel_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and (population) std over all pixels of images [N, 3, H, W], float64."""
    flat = images.transpose(0, 1).reshape(images.shape[1], -1).double()
    mean = flat.mean(dim=1)
    std = flat.std(dim=1, correction=0).clamp_min(1e-6)
    return mean, std


def image_score(squared: Tensor, maps: Tensor, rule: str) -> Tensor:
    """Image scores [B] from the squared error [B, 3, S, S] and the blurred map [B, S, S].

    max: the 2024 notebook's test() (its image AUROC), the max over channels AND pixels of the raw
    error; max_rgb_mean: the max of the raw RGB-mean error; max_blurred: the max of the map.
    """
    if rule == "max":
        return squared.amax(dim=(1, 2, 3))
    if rule == "max_rgb_mean":
        return squared.mean(dim=1).amax(dim=(1, 2))
    return maps.amax(dim=(1, 2))


@register("anovit", AnoViTConfig, scoring_keys=("image_score", "blur_sigma"))
class AnoViT:
    """Reconstruct (standardised) images; pixel map = blurred squared error, image score = max."""

    def __init__(self, cfg: AnoViTConfig, context: MethodContext) -> None:
        self.cfg = cfg
        self.hw: Hardware = context.hardware
        self.context = context
        encoder = create_backbone(
            context.backbone, cfg.image_size, trainable=not cfg.freeze_encoder
        )
        patch = (
            encoder.model.patch_embed.patch_size if hasattr(encoder.model, "patch_embed") else None
        )
        if patch is not None and cfg.image_size % patch[0]:
            raise AnobenchError(
                f"method.image_size={cfg.image_size} is not a multiple of the ViT patch size "
                f"{patch[0]}; use e.g. {max(patch[0], cfg.image_size // patch[0] * patch[0])}."
            )
        dim = encoder.channels(cfg.image_size)[0]
        decoder = (
            AnoViTDecoder(cfg.image_size, dim, cfg.final_relu)
            if cfg.decoder == "bundle"
            else LectureDecoder(cfg.image_size, dim)
        )
        self.model = self.hw.prepare(AnoViTModel(encoder, decoder))
        # the bundle standardises with per-class statistics; the 2024 notebook keeps [0, 1]
        self.mean = torch.zeros(1, 3, 1, 1, device=self.hw.device)
        self.std = torch.ones(1, 3, 1, 1, device=self.hw.device)
        self.history: list[float] = []
        self.val_losses: list[float] = []

    def standardize(self, images: Tensor) -> Tensor:
        return (self.hw.to_device(images).float() - self.mean) / self.std

    def fit(self, train_loader: DataLoader) -> None:
        cfg = self.cfg
        images = torch.cat([batch["image"] for batch in train_loader])  # [N, 3, S, S] in [0, 1]
        if cfg.decoder == "bundle":
            # statistics over all of train/good (validation part included): never test images
            mean, std = channel_stats(images)
            self.mean = mean.float().view(1, 3, 1, 1).to(self.hw.device)
            self.std = std.float().view(1, 3, 1, 1).to(self.hw.device)
        targets = torch.cat([self.standardize(chunk) for chunk in images.split(64)])  # [N, 3, S, S]
        train_idx, val_idx = split_indices(len(targets), cfg.val_fraction, self.context.seed)
        train_idx, val_idx = self.hw.to_device(train_idx), self.hw.to_device(val_idx)
        if cfg.freeze_encoder:
            # the encoder is frozen and inputs are not augmented: encode every image once
            encoder = self.model.encoder
            paths = [path for batch in train_loader for path in batch["path"]]
            key = cache_key(
                self.context.backbone,
                cfg.image_size,
                paths,
                extra=f"anovit:{self.mean.flatten().tolist()}:{self.std.flatten().tolist()}",
            )
            inputs = extract_features(
                lambda x: encoder(self.standardize(x))[0],
                train_loader,
                self.hw,
                cache_dir=self.context.cache_dir,
                key=key,
                progress=self.context.progress,
            )
            network: nn.Module = self.model.decoder
        else:
            # the encoder is trained, so its features change every step: nothing to cache
            inputs, network = targets, self.model

        def reconstruct(index: Tensor) -> Tensor:
            batch_inputs = self.hw.to_device(inputs[index.to(inputs.device)]).float()
            with self.hw.autocast():
                return network(batch_inputs)

        def loss_fn(index: Tensor, _epoch: int) -> Tensor:
            return F.mse_loss(reconstruct(index).float(), targets[index])

        @torch.no_grad()
        def validate() -> float:
            network.eval()
            total = torch.zeros((), device=self.hw.device)
            for index in val_idx.split(cfg.batch_size):
                total += F.mse_loss(reconstruct(index).float(), targets[index], reduction="sum")
            network.train()
            return total.item() / (len(val_idx) * targets[0].numel())

        def batches(generator: torch.Generator) -> list[Tensor]:
            order = index_batches(len(train_idx), cfg.batch_size, generator)
            return [train_idx[self.hw.to_device(b)] for b in order]

        params = [p for p in network.parameters() if p.requires_grad]
        optimizer = self.hw.optimizer(
            torch.optim.Adam, params, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2)
        )
        stopper = EarlyStopping(network, validate, cfg.patience)
        history = train(
            network,
            optimizer,
            loss_fn,
            batches,
            epochs=cfg.epochs,
            hardware=self.hw,
            seed=self.context.seed,
            desc="anovit",
            checkpoint_path=self.context.checkpoint_path,
            checkpoint_every=self.context.checkpoint_every,
            progress=self.context.progress,
            epoch_hook=stopper,
        )
        stopper.restore()
        self.model.eval()
        self.history, self.val_losses = history.losses, stopper.val_losses

    @torch.no_grad()
    def predict(self, images: Tensor) -> Scores:
        self.model.eval()
        inputs = self.standardize(images)  # [B, 3, S, S]
        with self.hw.autocast():
            recon = self.model(inputs)
        squared = (recon.float() - inputs).pow(2)  # [B, 3, S, S]
        error = squared.mean(dim=1)  # [B, S, S]
        # 2024 notebook: scipy.ndimage.gaussian_filter(error, sigma=6), whose default border
        # `reflect` repeats the edge pixel (torch's `reflect` does not: that is scipy's `mirror`)
        maps = gaussian_blur(error, self.cfg.blur_sigma, padding_mode="symmetric")
        return Scores(
            anomaly_maps=maps, image_scores=image_score(squared, maps, self.cfg.image_score)
        )

    def trained_state(self) -> dict[str, Tensor]:
        """The decoder, and the ViT encoder too unless it stayed frozen (it is fine-tuned)."""
        kept = self.model.decoder if self.cfg.freeze_encoder else self.model
        prefix = "model.decoder." if self.cfg.freeze_encoder else "model."
        return {prefix + k: v for k, v in kept.state_dict().items()}

    def scoring_state(self) -> dict[str, Any]:
        """The per-channel standardisation statistics of the training images."""
        return {"mean": self.mean, "std": self.std}

    def load_state(self, trained: dict[str, Tensor], scoring: dict[str, Any]) -> None:
        kept = self.model.decoder if self.cfg.freeze_encoder else self.model
        prefix = "model.decoder." if self.cfg.freeze_encoder else "model."
        kept.load_state_dict({k.removeprefix(prefix): v for k, v in trained.items()})
        self.mean = self.hw.to_device(scoring["mean"]).float()
        self.std = self.hw.to_device(scoring["std"]).float()
        self.model.eval()
