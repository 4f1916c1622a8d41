"""Feature extraction from any timm model by layer name: hooks, early exit, token grids."""

from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
from torch import Tensor, nn

from anobench.errors import AnobenchError
from anobench.reflect_pad import reflect_pad2d


@dataclass
class BackboneConfig:
    """A timm model (name with weights tag), the layers to read, and where its weights come from."""

    name: str = "resnet18.a1_in1k"
    layers: list[str] = field(default_factory=lambda: ["layer2", "layer3"])
    pretrained: bool = True
    weights: str | None = None  # local checkpoint file; wins over the hub
    padding_mode: str = "zeros"  # "reflect" rewrites every Conv2d (HaloAE's VGG)
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model args
    layer_norm_eps: float | None = None  # set the eps of every LayerNorm (null: the model's own)


class _StopForward(Exception):
    """Raised by the last hook so layers after it never run."""


class FeatureExtractor(nn.Module):
    """Returns the outputs of named modules of a timm model as [B, C, h, w] maps.

    Transformer token outputs ([B, N, C]) are turned into grids, prefix (class) tokens dropped.
    The forward stops after the last requested layer, so unused blocks cost nothing.
    """

    def __init__(self, model: nn.Module, layers: list[str]) -> None:
        super().__init__()
        self.model = model
        self.layers = list(layers)
        modules = dict(model.named_modules())
        unknown = [name for name in self.layers if name not in modules]
        if unknown:
            candidates = [n for n in modules if n and n.count(".") <= 1]
            hint = difflib.get_close_matches(unknown[0], candidates, n=3)
            raise AnobenchError(
                f"backbone layer {unknown[0]!r} does not exist in this model"
                + (f"; did you mean {', '.join(hint)}?" if hint else "")
                + f" Valid top-level layers: {', '.join(candidates[:40])}."
            )
        self._outputs: dict[str, Tensor] = {}
        self._last = max(self.layers, key=list(modules).index)
        for name in set(self.layers):
            modules[name].register_forward_hook(self._make_hook(name))
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        patch_embed = getattr(model, "patch_embed", None)
        self.grid_size: tuple[int, int] | None = (
            tuple(patch_embed.grid_size) if patch_embed is not None else None
        )

    def _make_hook(self, name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
            self._outputs[name] = output
            if name == self._last:
                raise _StopForward

        return hook

    def _to_grid(self, tokens: Tensor) -> Tensor:
        if tokens.ndim == 4:
            return tokens
        if self.grid_size is None:
            raise AnobenchError("a layer returned tokens but the model has no patch grid.")
        height, width = self.grid_size
        tokens = tokens[:, tokens.shape[1] - height * width :]  # drop class/register tokens
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], height, width)

    def forward(self, images: Tensor) -> list[Tensor]:
        self._outputs = {}
        with contextlib.suppress(_StopForward):
            self.model(images)
        outputs = [self._to_grid(self._outputs[name]) for name in self.layers]
        self._outputs = {}
        return outputs

    @torch.no_grad()
    def channels(self, image_size: int) -> list[int]:
        """Channel count of each requested layer (one dry forward on CPU-sized zeros)."""
        device = next(self.model.parameters()).device
        return [f.shape[1] for f in self(torch.zeros(1, 3, image_size, image_size, device=device))]


def _timm_kwargs(name: str, image_size: int | None, extra: dict[str, Any]) -> dict:
    kwargs: dict = dict(extra)
    if image_size is not None and _is_vision_transformer(name):
        kwargs["img_size"] = image_size
    return kwargs


def _is_vision_transformer(name: str) -> bool:
    arch = name.split(".")[0]
    return arch.startswith(("vit_", "deit", "eva", "beit"))


def create_model(cfg: BackboneConfig, image_size: int | None = None) -> nn.Module:
    """Build the timm model with the configured weights; clear errors when weights are missing."""
    kwargs = _timm_kwargs(cfg.name, image_size, cfg.model_kwargs)
    if cfg.name.split(".")[0] not in timm.list_models():
        hint = difflib.get_close_matches(cfg.name.split(".")[0], timm.list_models(), n=3)
        raise AnobenchError(
            f"backbone.name={cfg.name!r} is not a timm model"
            + (f"; did you mean {', '.join(hint)}?" if hint else "; see timm.list_models().")
        )
    if cfg.weights:
        path = Path(cfg.weights).expanduser()
        if not path.is_file():
            raise AnobenchError(
                f"backbone.weights={cfg.weights} does not exist; give a checkpoint file."
            )
        try:
            model = timm.create_model(
                cfg.name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
            )
        except (RuntimeError, KeyError, ValueError, OSError) as err:
            raise AnobenchError(
                f"backbone.weights={path} does not fit {cfg.name} ({str(err).splitlines()[0]})."
            ) from err
    else:
        try:
            model = timm.create_model(cfg.name, pretrained=cfg.pretrained, **kwargs)
        except (OSError, RuntimeError, ValueError) as err:
            if not cfg.pretrained:
                raise
            raise AnobenchError(
                f"pretrained weights for {cfg.name} could not be loaded "
                f"({str(err).splitlines()[0]}); "
                "download them once with internet (they are cached by huggingface_hub), or set "
                "backbone.weights=PATH to a local checkpoint, or backbone.pretrained=false "
                "for random weights."
            ) from err
    if cfg.padding_mode != "zeros":
        if cfg.padding_mode not in ("reflect", "replicate", "circular"):
            raise AnobenchError(
                f"backbone.padding_mode={cfg.padding_mode!r} is not valid; "
                "use zeros, reflect, replicate or circular."
            )
        for module in model.modules():
            if isinstance(module, nn.Conv2d) and module.padding != (0, 0):
                if cfg.padding_mode == "reflect":  # the same padding, channels-last kept
                    module.register_forward_pre_hook(partial(_reflect, padding=module.padding))
                    module.padding = (0, 0)
                else:
                    module.padding_mode = cfg.padding_mode
    if cfg.layer_norm_eps is not None:
        set_layer_norm_eps(model, cfg.layer_norm_eps)
    return model


def _reflect(_module: nn.Module, args: tuple, padding: tuple[int, int]) -> tuple:
    return (reflect_pad2d(args[0], padding), *args[1:])


def set_layer_norm_eps(model: nn.Module, eps: float) -> None:
    """Give every LayerNorm of the model this eps (timm's ViTs use 1e-6, PyTorch's default 1e-5)."""
    if not eps > 0:
        raise AnobenchError(f"backbone.layer_norm_eps={eps} must be positive (or null).")
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    if not norms:
        raise AnobenchError(
            f"backbone.layer_norm_eps={eps} is set but the model has no LayerNorm; "
            "set it to null for this backbone."
        )
    for norm in norms:
        norm.eps = eps


def validate_backbone(cfg: BackboneConfig, image_size: int | None = None) -> None:
    """Check the model name, layer names and weights path without loading weights (meta device)."""
    if cfg.weights and not Path(cfg.weights).expanduser().is_file():
        raise AnobenchError(
            f"backbone.weights={cfg.weights} does not exist; give a checkpoint file."
        )
    with torch.device("meta"):
        model = create_model(
            BackboneConfig(**{**vars(cfg), "pretrained": False, "weights": None}), image_size
        )
    FeatureExtractor(model, cfg.layers)


def create_backbone(
    cfg: BackboneConfig, image_size: int | None = None, trainable: bool = False
) -> FeatureExtractor:
    """A feature extractor; frozen (no grad, eval mode) unless `trainable`."""
    extractor = FeatureExtractor(create_model(cfg, image_size), cfg.layers)
    if not trainable:
        extractor.requires_grad_(False)
        extractor.eval()
    return extractor
