"""HaloAE scoring and init against the authors' code: cv2.GaussianBlur, PyTorch's default Linear."""

from __future__ import annotations

import math
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ["HF_HUB_OFFLINE"] = "1"

from anobench.hardware import create_hardware  # noqa: E402
from anobench.methods.base import MethodContext  # noqa: E402
from anobench.methods.haloae import HaloAE, HaloAEConfig, HaloAENet  # noqa: E402
from tests.helpers import HALOAE_NARROW_32PX as NARROW  # noqa: E402
from tests.helpers import HALOAE_VGG as VGG  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _method(**overrides: object) -> HaloAE:
    torch.manual_seed(0)
    cfg = HaloAEConfig(**{**NARROW, **overrides})  # type: ignore[arg-type]
    context = MethodContext(hardware=create_hardware("cpu"), backbone=VGG, progress=False)
    method = HaloAE(cfg, context)
    method.net.eval()
    return method


def test_predict_blurs_as_cv2_gaussian_blur_3x3_sigma_0() -> None:
    method = _method()
    generator = torch.Generator().manual_seed(0)
    train, test = torch.rand(4, 3, 32, 32, generator=generator).split(2)
    method.mean_error = method.feature_error(train).mean(dim=0)  # what fit() keeps, [8, 8]
    scores = method.predict(test)
    normalised = (method.feature_error(test) - method.mean_error).abs().numpy()
    # scores.py: cv2.GaussianBlur(map, (3, 3), 0) on each |error - mean| map, then the mean
    blurred = np.stack([cv2.GaussianBlur(m, (3, 3), 0) for m in normalised])
    np.testing.assert_allclose(scores.image_scores.numpy(), blurred.mean(axis=(1, 2)), rtol=1e-5)
    upsampled = F.interpolate(torch.from_numpy(blurred)[:, None], size=(32, 32), mode="bilinear")
    np.testing.assert_allclose(scores.anomaly_maps.numpy(), upsampled[:, 0].numpy(), rtol=1e-5)


def test_blur_size_1_leaves_the_map_unblurred() -> None:
    method = _method(blur_size=1)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    method.mean_error = torch.zeros(8, 8)
    expected = method.feature_error(images).mean(dim=(1, 2))
    torch.testing.assert_close(method.predict(images).image_scores, expected)


def test_classifier_keeps_pytorch_default_init_and_the_rest_is_kaiming() -> None:
    # HaloAE.py: initialize_weights(halonetE, HalonetD) never sees the classifier `self.out`
    torch.manual_seed(0)
    net = HaloAENet(HaloAEConfig(**NARROW), 704)  # type: ignore[arg-type]
    weight, bias = net.classifier.weight, net.classifier.bias
    bound = 1 / math.sqrt(weight.shape[1])  # nn.Linear's default: U(-1/sqrt(fan_in), ..)
    assert weight.abs().max() <= bound and bias.abs().max() <= bound
    assert bias.abs().min() > 0  # default init draws the bias; the Kaiming loop zeroes it
    assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    conv = net.image_decoder[1]  # Kaiming normal (fan_in), zero bias
    fan_in = conv.weight[0].numel()
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.1)
    assert not conv.bias.any()
