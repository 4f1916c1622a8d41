"""Patch kNN: the reference method (SPADE / PatchCore-style, without coreset).

Cohen & Hoshen, "Sub-Image Anomaly Detection with Deep Pyramid Correspondences", arXiv 2005.02357;
Roth et al., "Towards Total Recall in Industrial Anomaly Detection", arXiv 2106.08265.
Not a paper reproduction: a fast, training-free method that exercises the whole pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader

from anobench.backbones import create_backbone
from anobench.errors import require_positive
from anobench.methods.base import MethodContext, Scores, register
from anobench.methods.ops import (
    chunked_min_distance,
    gaussian_blur,
    imagenet_normalize,
    resize_maps,
)


@dataclass
class KNNConfig:
    name: str = "knn"
    image_size: int = 256
    resize: str = "bilinear"
    pool: int = 3  # local neighbourhood averaging of features (PatchCore's aggregation)
    bank_size: int = 16384  # random subset of training patches kept (memory bound)
    blur_sigma: float = 4.0  # PatchCore's smoothing of the upsampled map

    def __post_init__(self) -> None:
        require_positive(
            "method", image_size=self.image_size, pool=self.pool, bank_size=self.bank_size
        )


@register("knn", KNNConfig, scoring_keys=("blur_sigma",))
class KNN:
    """Distance of each test patch to its nearest training patch; image score = max."""

    def __init__(self, cfg: KNNConfig, context: MethodContext) -> None:
        self.cfg = cfg
        self.hw = context.hardware
        self.seed = context.seed
        self.extractor = self.hw.prepare(create_backbone(context.backbone, cfg.image_size))
        self.bank: Tensor | None = None  # [M, C]

    @torch.no_grad()
    def _patch_features(self, images: Tensor) -> Tensor:
        with self.hw.autocast():
            maps = self.extractor(imagenet_normalize(self.hw.to_device(images)))
        size = maps[0].shape[-2:]
        pooled = [
            F.avg_pool2d(m.float(), self.cfg.pool, stride=1, padding=self.cfg.pool // 2)
            for m in maps
        ]
        resized = [
            F.interpolate(m, size=size, mode="bilinear", align_corners=False) for m in pooled
        ]
        return torch.cat(resized, dim=1)  # [B, C, h, w]

    def fit(self, train: DataLoader) -> None:
        patches = []
        for batch in train:
            features = self._patch_features(batch["image"])
            patches.append(features.permute(0, 2, 3, 1).reshape(-1, features.shape[1]))
        bank = torch.cat(patches)
        if bank.shape[0] > self.cfg.bank_size:
            generator = torch.Generator().manual_seed(self.seed)
            keep = torch.randperm(bank.shape[0], generator=generator)[: self.cfg.bank_size]
            bank = bank[keep.to(bank.device)]
        self.bank = bank

    @torch.no_grad()
    def predict(self, images: Tensor) -> Scores:
        if self.bank is None:
            raise RuntimeError("KNN.predict called before fit")
        features = self._patch_features(images)
        b, c, h, w = features.shape
        distances = chunked_min_distance(features.permute(0, 2, 3, 1).reshape(-1, c), self.bank)
        maps = resize_maps(distances.view(b, h, w), self.cfg.image_size)
        maps = gaussian_blur(maps, self.cfg.blur_sigma)
        return Scores(anomaly_maps=maps, image_scores=maps.amax(dim=(1, 2)))

    def trained_state(self) -> dict[str, Tensor]:
        """The memory bank: what fit() gathered (the frozen backbone is rebuilt, not kept)."""
        if self.bank is None:
            raise RuntimeError("KNN.trained_state called before fit")
        return {"bank": self.bank}

    def scoring_state(self) -> dict[str, Any]:
        return {}

    def load_state(self, trained: dict[str, Tensor], scoring: dict[str, Any]) -> None:
        self.bank = self.hw.to_device(trained["bank"]).float()
