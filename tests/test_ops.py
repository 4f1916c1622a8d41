"""Map blurs against their reference libraries: OpenCV (HaloAE) and scipy (AnoViT, others)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch
from scipy import ndimage

from anobench.methods.ops import (
    gaussian_blur,
    opencv_gaussian_kernel1d,
    pad_maps,
    separable_blur,
)


def _random_maps(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def test_opencv_3_tap_kernel_is_the_fixed_quarter_half_quarter() -> None:
    # cv2.GaussianBlur(map, (3, 3), 0), as HaloAE's scores.py calls it: not a sampled Gaussian
    assert opencv_gaussian_kernel1d(3, 0.0).tolist() == [0.25, 0.5, 0.25]
    sampled = [math.exp(-1 / (2 * 0.8**2)), 1.0, math.exp(-1 / (2 * 0.8**2))]
    expected = [w / sum(sampled) for w in sampled]  # [0.239, 0.522, 0.239]
    torch.testing.assert_close(opencv_gaussian_kernel1d(3, 0.8), torch.tensor(expected))


@pytest.mark.parametrize(
    ("size", "sigma"), [(1, 0.0), (3, 0.0), (5, 0.0), (7, 0.0), (11, 0.0), (3, 0.8), (7, 2.0)]
)
def test_opencv_kernel_matches_cv2(size: int, sigma: float) -> None:
    reference = cv2.getGaussianKernel(size, sigma).ravel()
    np.testing.assert_allclose(opencv_gaussian_kernel1d(size, sigma).numpy(), reference, rtol=1e-6)


def test_opencv_border_by_hand_on_a_corner_impulse() -> None:
    # BORDER_REFLECT_101 mirrors about the edge pixel (x[-1] = x[1] = 0 here): the corner keeps
    # 0.5 x 0.5 of the impulse; an edge-repeating border would keep 0.75 x 0.75
    impulse = torch.zeros(1, 5, 5)
    impulse[0, 0, 0] = 1.0
    out = separable_blur(impulse, opencv_gaussian_kernel1d(3), padding_mode="reflect")[0]
    assert out[:2, :2].tolist() == [[0.25, 0.125], [0.125, 0.0625]]
    assert out.sum().item() == pytest.approx(0.5625)  # 0.75 x 0.75 of the impulse stays inside


@pytest.mark.parametrize("shape", [(64, 64), (9, 7)])
def test_haloae_blur_matches_cv2_gaussian_blur(shape: tuple[int, int]) -> None:
    maps = _random_maps(3, *shape)
    ours = separable_blur(maps, opencv_gaussian_kernel1d(3, 0.0), padding_mode="reflect")
    reference = np.stack([cv2.GaussianBlur(m, (3, 3), 0) for m in maps.numpy()])
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-6, atol=1e-7)


def test_symmetric_padding_repeats_the_edge_pixel_by_hand() -> None:
    row = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]])  # [1, 1, 1, 4]
    assert pad_maps(row, 2, "symmetric")[0, 0, 2].tolist() == [2, 1, 1, 2, 3, 4, 4, 3]
    assert pad_maps(row.transpose(-1, -2), 2, "symmetric")[0, 0, :, 2].tolist() == [
        2, 1, 1, 2, 3, 4, 4, 3,
    ]  # fmt: skip
    # torch's `reflect` (= scipy `mirror`) leaves the edge pixel out
    wide = row.expand(1, 1, 3, 4)
    assert pad_maps(wide, 2, "reflect")[0, 0, 2].tolist() == [3, 2, 1, 2, 3, 4, 3, 2]


@pytest.mark.parametrize("shape", [(40, 30), (5, 4)])
def test_symmetric_blur_matches_scipy_gaussian_filter(shape: tuple[int, int]) -> None:
    # AnoViT's pixel map: scipy.ndimage.gaussian_filter(error, sigma=6), default mode `reflect`,
    # truncate 4 -> 49 taps; (5, 4) pads 24 px on a 5 px axis: scipy reflects again and again
    maps = _random_maps(2, *shape)
    ours = gaussian_blur(maps, 6.0, padding_mode="symmetric")
    reference = np.stack([ndimage.gaussian_filter(m.astype(np.float64), 6.0) for m in maps.numpy()])
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-5, atol=1e-6)


def test_default_reflect_blur_is_scipy_mirror_and_differs_near_the_border() -> None:
    maps = _random_maps(2, 60, 60)
    ours = gaussian_blur(maps, 6.0)  # the other methods' border, unchanged
    mirror = np.stack(
        [ndimage.gaussian_filter(m.astype(np.float64), 6.0, mode="mirror") for m in maps.numpy()]
    )
    np.testing.assert_allclose(ours.numpy(), mirror, rtol=1e-5, atol=1e-6)
    symmetric = gaussian_blur(maps, 6.0, padding_mode="symmetric")
    difference = (ours - symmetric).abs()
    assert difference[:, 24:36, 24:36].max() < 1e-6  # more than 24 px from every border: equal
    assert difference[:, :, 0].max() > 1e-4  # at the border they differ
