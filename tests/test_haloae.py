"""HaloAE: shapes, halo attention against a brute-force reference, Cut&Paste, loss, end to end."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

os.environ["HF_HUB_OFFLINE"] = "1"

from PIL import Image  # noqa: E402

from anobench.config import method_config  # noqa: E402
from anobench.errors import AnobenchError  # noqa: E402
from anobench.hardware import create_hardware  # noqa: E402
from anobench.methods import haloae  # noqa: E402
from anobench.methods.base import MethodContext  # noqa: E402
from anobench.methods.cutpaste import cutpaste_3way, cutpaste_normal, cutpaste_scar  # noqa: E402
from anobench.methods.halo_attention import HaloAttention  # noqa: E402
from anobench.methods.haloae import HaloAE, HaloAEConfig, HaloAENet, loss_weights, ssim  # noqa: E402
from anobench.methods.ops import imagenet_normalize  # noqa: E402
from bench.gpumodel.autocast import cuda_autocast  # noqa: E402
from bench.gpumodel.trace import OpTracer  # noqa: E402
from tests.helpers import HALOAE_NARROW as NARROW  # noqa: E402
from tests.helpers import HALOAE_VGG as VGG  # noqa: E402
from tests.helpers import compose_config, run_demo_cell  # noqa: E402
from tests.reference_haloae import explicit_halo_attention, float64_ssim  # noqa: E402


def _method(**overrides: object) -> HaloAE:
    torch.manual_seed(0)
    cfg = HaloAEConfig(**{"image_size": 64, **overrides})  # type: ignore[arg-type]
    context = MethodContext(hardware=create_hardware("cpu"), backbone=VGG, progress=False)
    return HaloAE(cfg, context)


@pytest.fixture(scope="module")
def narrow_method() -> HaloAE:
    """Paper layers and logic at 32 px (8x8 features, one 4x4 block) with narrow widths."""
    return _method(**{**NARROW, "image_size": 32, "block_size": 4})


def test_config_composes_with_paper_values() -> None:
    cfg = compose_config("method=haloae")
    method = method_config(cfg)
    assert isinstance(method, HaloAEConfig)
    assert (method.image_size, method.block_size, method.halo_size, method.dim_head) == (
        256,
        12,
        2,
        16,
    )
    assert method.stem_channels == 234 and method.encoder_channels == [234, 117, 58, 29]
    assert method.encoder_heads == [4, 8, 8, 8] and method.decoder_heads == [4, 8, 8, 8, 8]
    assert method.decoder_channels == [29, 59, 118, 237, 704]
    assert method.image_decoder_channels == [380, 190, 95, 47, 23, 3, 3]
    assert (method.epochs, method.samples_per_epoch, method.batch_size) == (251, 3000, 4)
    assert (method.lr, method.weight_decay) == (1e-4, 1e-5)
    assert (method.blur_sigma, method.blur_size, method.image_score) == (0.0, 3, "mean")
    assert method.halo_mask_compat is False and method.vgg_border_compat is False
    assert cfg.backbone.name == "vgg19.tv_in1k" and cfg.backbone.padding_mode == "reflect"
    assert list(cfg.backbone.layers) == ["features.1", "features.6", "features.11", "features.17"]
    demo = method_config(compose_config("method=haloae", "experiment=demo"))
    assert demo.epochs < method.epochs and demo.samples_per_epoch < method.samples_per_epoch


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", -1),
        ("batch_size", 0),
        ("samples_per_epoch", 0),
        ("image_size", 100),  # 100/4 - 4 = 21 is not a multiple of 12
        ("image_size", 66),  # not divisible by 4
        ("image_score", "median"),
        ("encoder_heads", [4, 8]),
        ("image_decoder_channels", [16, 4]),
        ("area_ratio", [0.2, 0.1]),
    ],
)
def test_invalid_values_raise(key: str, value: object) -> None:
    with pytest.raises(AnobenchError, match=key.split("_")[0]):
        HaloAEConfig(**{key: value})  # type: ignore[arg-type]


def test_every_layer_and_stage_has_the_paper_shape() -> None:
    method = _method()
    images = imagenet_normalize(torch.rand(1, 3, 64, 64))
    maps = method.extractor(images)
    assert [tuple(m.shape) for m in maps] == [
        (1, 64, 64, 64),
        (1, 128, 32, 32),
        (1, 256, 16, 16),
        (1, 256, 16, 16),
    ]
    features = method.features(images)
    assert features.shape == (1, 704, 16, 16)  # image/4, 64+128+256+256 channels
    net = method.net.eval()
    with torch.no_grad():
        x = net.stem(features)
        assert x.shape == (1, 234, 12, 12)  # 5x5 unpadded stem
        for stage, channels in zip(net.encoder, [234, 117, 58, 29], strict=True):
            x = stage(x)
            assert x.shape == (1, channels, 12, 12)
        for stage, channels in zip(net.decoder, [29, 59, 118, 237, 704], strict=True):
            x = stage(x)
            assert x.shape == (1, channels, 12, 12)
        widths = [stage.attention.to_out.out_features for stage in net.decoder]
        assert widths == [29, 58, 118, 236, 703]
        logits, reconstructed, image = net(features)
    assert reconstructed.shape == (1, 704, 16, 16)
    assert image.shape == (1, 3, 64, 64) and (image >= 0).all()  # final ReLU
    assert logits.shape == (1, 2) and net.classifier.in_features == 3 * 64 * 64


def test_encoder_keeps_60x60_through_all_stages_at_paper_size() -> None:
    cfg = HaloAEConfig(**NARROW)  # type: ignore[arg-type]
    net = HaloAENet(cfg, 704).eval()
    assert net.classifier.in_features == 3 * 256 * 256
    with torch.no_grad():
        x = net.stem(torch.rand(1, 704, 64, 64))
        sizes = [tuple(x.shape[-2:])]
        for stage in [*net.encoder, *net.decoder]:
            x = stage(x)
            sizes.append(tuple(x.shape[-2:]))
    assert sizes == [(60, 60)] * 10


def _brute_force_halo(attn: HaloAttention, x: torch.Tensor, compat: bool) -> torch.Tensor:
    """Each query pixel attends over its tile's window, one pixel at a time."""
    batch, channels, height, width = x.shape
    block, halo, window, heads = attn.block, attn.halo, attn.window, attn.heads
    padded = F.pad(x, (halo, halo, halo, halo))
    out = torch.zeros_like(x)
    for b in range(batch):
        for r in range(height):
            for c in range(width):
                top, left = (r // block) * block, (c // block) * block
                keys = (
                    padded[b, :, top : top + window, left : left + window].reshape(channels, -1).t()
                )
                rows = torch.arange(top - halo, top - halo + window)
                cols = torch.arange(left - halo, left - halo + window)
                valid = ((rows >= 0) & (rows < height))[:, None] & ((cols >= 0) & (cols < width))[
                    None
                ]
                q = attn.to_q(x[b, :, r, c]).view(heads, -1) * attn.scale
                k, v = (t.view(-1, heads, attn.dim_head) for t in attn.to_kv(keys).chunk(2, dim=-1))
                rel_h = attn.rel_height[rows - r + halo + window - 1]  # [window, d]
                rel_w = attn.rel_width[cols - c + halo + window - 1]
                heads_out = []
                for h in range(heads):
                    logits = (k[:, h] @ q[h]).view(window, window)
                    logits = logits + (rel_h @ q[h])[:, None] + (rel_w @ q[h])[None, :]
                    if compat:
                        logits = logits.masked_fill(valid, -torch.finfo(logits.dtype).max)
                    else:
                        logits = logits.masked_fill(~valid, float("-inf"))
                    weights = logits.flatten().softmax(0)
                    heads_out.append(weights @ v[:, h])
                out[b, :, r, c] = attn.to_out(torch.cat(heads_out))
    return out


@pytest.mark.parametrize("compat", [False, True])
def test_halo_attention_matches_brute_force(compat: bool) -> None:
    torch.manual_seed(0)
    attn = HaloAttention(6, heads=2, dim_head=4, block_size=4, halo_size=1, mask_compat=compat)
    attn = attn.double()
    x = torch.randn(1, 6, 12, 12, dtype=torch.float64)
    with torch.no_grad():
        fast = attn(x)
        reference = _brute_force_halo(attn, x, compat)
    torch.testing.assert_close(fast, reference, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("block", "halo", "height", "width"), [(4, 1, 12, 12), (12, 2, 24, 36)])
@pytest.mark.usefixtures("one_torch_thread")
def test_halo_attention_equals_the_explicit_form(
    compat: bool, channels_last: bool, block: int, halo: int, height: int, width: int
) -> None:
    torch.manual_seed(0)
    attn = HaloAttention(10, 3, 8, block_size=block, halo_size=halo, mask_compat=compat)
    x = torch.randn(2, 10, height, width)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    out, reference = attn(x), explicit_halo_attention(attn, x)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5 * reference.abs().max().item())
    grad = torch.randn_like(out)
    inputs = [x, *attn.parameters()]
    grads = torch.autograd.grad(out, inputs, grad, allow_unused=True)
    for new, old in zip(grads, torch.autograd.grad(reference, inputs, grad), strict=True):
        # compat: to_q and the relative tables never reach the output (gradient 0 before, none now)
        new = torch.zeros_like(old) if new is None else new
        torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-5 * old.abs().max().item())


@pytest.mark.usefixtures("one_torch_thread")
def test_halo_attention_in_bf16_is_as_close_to_float32_as_the_explicit_form() -> None:
    """bf16 tolerance: 8 significant bits round q, k, v and the output projection's input at
    2^-9 (0.2%) each, so ~0.5% of the output scale; the fused form (float32 logits inside the
    kernel) must be within 1% and no worse than the explicit form, which rounds the logits too."""
    torch.manual_seed(0)
    attn = HaloAttention(29, 8, 16, block_size=12, halo_size=2)
    x = torch.randn(2, 29, 24, 36)
    with torch.no_grad():
        exact = attn(x)
        with cuda_autocast():  # CUDA autocast's dtypes, replayed on the CPU
            fused, explicit = attn(x).float(), explicit_halo_attention(attn, x).float()
    scale = exact.abs().max()
    fused_error = (fused - exact).abs().max() / scale
    explicit_error = (explicit - exact).abs().max() / scale
    assert fused_error < 0.01 and fused_error <= 1.1 * explicit_error


@pytest.mark.usefixtures("one_torch_thread")
def test_halo_attention_projects_keys_once_per_pixel_in_one_fused_call() -> None:
    attn = HaloAttention(6, 2, 4, block_size=4, halo_size=1)
    rows: list[int] = []
    attn.to_kv.register_forward_hook(lambda _m, args, _out: rows.append(args[0].shape[:-1].numel()))
    tracer = OpTracer()
    with tracer:
        attn(torch.randn(2, 6, 12, 12))
    assert rows == [2 * 12 * 12]  # not 2 images x 9 tiles x 6 x 6 window pixels = 648
    names = [record.name for record in tracer.records]
    assert sum("scaled_dot_product" in name for name in names) == 1
    assert not any("softmax" in name for name in names)  # no materialised attention weights


def test_correct_mask_gives_padding_zero_weight_and_compat_inverts_it() -> None:
    torch.manual_seed(0)
    x = torch.randn(1, 6, 12, 12, dtype=torch.float64)
    correct = HaloAttention(6, 2, 4, block_size=4, halo_size=1).double()
    compat = HaloAttention(6, 2, 4, block_size=4, halo_size=1, mask_compat=True).double()
    compat.load_state_dict(correct.state_dict())
    with torch.no_grad():
        # correct masking: a corner tile's output does not change when the padding would hold data
        out = correct(x)[..., :4, :4]
        bigger = correct(F.pad(x, (4, 0, 4, 0)))[..., 4:8, 4:8]
        assert not torch.allclose(out, bigger)  # with data there instead of padding, it changes
        inverted = compat(x)
        bias = compat.to_out.bias.view(1, -1, 1, 1)
        # compat: border tiles attend only to zero padding -> output is the to_out bias
        torch.testing.assert_close(inverted[..., :4, :], bias.expand(1, 6, 4, 12))
        torch.testing.assert_close(inverted[..., :, -4:], bias.expand(1, 6, 12, 4))
        # compat: the interior tile attends uniformly to its 6x6 window
        window = x[..., 3:9, 3:9].flatten(2).transpose(1, 2)  # [1, 36, C]
        v = compat.to_kv(window).chunk(2, dim=-1)[1].mean(dim=1)
        centre = compat.to_out(v).view(1, 6, 1, 1).expand(1, 6, 4, 4)
        torch.testing.assert_close(inverted[..., 4:8, 4:8], centre)
        assert not torch.allclose(out, inverted[..., :4, :4])


def _coordinate_images(batch: int, size: int) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    image = torch.stack(
        [ys / (size - 1), xs / (size - 1), torch.full_like(ys, 0.5, dtype=torch.float32)]
    )
    return image.float().expand(batch, -1, -1, -1).clone()


def test_cutpaste_normal_moves_one_rectangle_and_nothing_else() -> None:
    size = 64
    images = _coordinate_images(8, size)
    torch.manual_seed(0)
    pasted, mask = cutpaste_normal(images, (0.02, 0.15), 0.3, jitter=0.0)
    assert torch.equal(torch.where(mask[:, None], images, pasted), images)  # outside untouched
    for b in range(8):
        rows, cols = mask[b].nonzero(as_tuple=True)
        box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert mask[b].sum() == box  # one filled rectangle
        assert 0.015 * size**2 <= box <= 0.16 * size**2
        source_y = torch.round(pasted[b, 0, rows, cols] * (size - 1))
        source_x = torch.round(pasted[b, 1, rows, cols] * (size - 1))
        assert torch.unique(source_y - rows).numel() == 1  # a pure translation
        assert torch.unique(source_x - cols).numel() == 1


def test_cutpaste_scar_pastes_a_thin_rotated_patch() -> None:
    size = 256
    images = _coordinate_images(8, size)
    torch.manual_seed(1)
    pasted, mask = cutpaste_scar(images, (2.0, 16.0), (10.0, 25.0), 45.0, jitter=0.0)
    assert torch.equal(torch.where(mask[:, None], images, pasted), images)
    for b in range(8):
        rows, cols = mask[b].nonzero(as_tuple=True)
        assert 0 < rows.numel() <= 16 * 25 + 8
        source_y = torch.round(pasted[b, 0, rows, cols] * (size - 1))
        source_x = torch.round(pasted[b, 1, rows, cols] * (size - 1))
        assert source_x.max() - source_x.min() < 16 and source_y.max() - source_y.min() < 25


def test_cutpaste_3way_labels_mark_exactly_the_changed_images() -> None:
    torch.manual_seed(0)
    images = torch.rand(4, 3, 64, 64)
    batch = cutpaste_3way(
        images,
        area_ratio=(0.02, 0.15),
        aspect_ratio=0.3,
        scar_width=(2.0, 16.0),
        scar_height=(10.0, 25.0),
        scar_rotation=45.0,
        jitter=0.1,
    )
    assert batch.images.shape == (12, 3, 64, 64)
    assert batch.labels.tolist() == [0] * 4 + [1] * 8
    changed = (batch.images != images.repeat(3, 1, 1, 1)).any(dim=1)  # [12, H, W]
    assert not (changed & ~batch.masks).any()  # only pasted pixels change
    assert changed.flatten(1).any(dim=1).long().tolist() == batch.labels.tolist()


def test_loss_weights_follow_the_logistic_schedule() -> None:
    schedules = [[1.0, 0.4, 80.0, 0.07], [-1e-8, 1.2, 150.0, 0.05], [-1e-8, 2.0, 300.0, 0.05]]
    expected = {0: (0.971, 0.028, 0.001), 100: (0.274, 0.625, 0.102), 250: (0.112, 0.335, 0.554)}
    for epoch, weights in expected.items():
        assert loss_weights(epoch, schedules) == pytest.approx(weights, abs=1e-3)
    cfg = HaloAEConfig()
    assert [cfg.ce_schedule, cfg.feature_schedule, cfg.image_schedule] == schedules


def test_ssim_matches_a_2d_gaussian_window_reference() -> None:
    torch.manual_seed(0)
    a = torch.rand(2, 3, 20, 17, dtype=torch.float64)
    b = a + 0.1 * torch.randn_like(a)
    assert ssim(a, b).item() == pytest.approx(float64_ssim(a, b).item(), abs=1e-6)
    assert ssim(a, a).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize(
    ("offset", "spread", "noise"),
    [(0.0, 1.0, 0.1), (5.0, 0.01, 0.001), (50.0, 3.0, 0.5)],  # plain, large mean tiny variance
)
@pytest.mark.usefixtures("one_torch_thread")
def test_ssim_and_its_gradient_are_float32_exact(
    offset: float, spread: float, noise: float
) -> None:
    # the variances are differences of filtered squares: centring keeps float32 exact where
    # E[x^2] >> var (float64 filtering then float32 variances was off by 2e-5 in case 2)
    torch.manual_seed(0)
    ramp = torch.linspace(0, 4 * spread, 24).view(1, 1, 1, 24)  # spatial structure
    a = (offset + spread * torch.rand(2, 5, 19, 24) + ramp).requires_grad_()
    b = (a.detach() + noise * torch.randn_like(a)).requires_grad_()
    value, exact = ssim(a, b), float64_ssim(a, b)
    assert value.item() == pytest.approx(exact.item(), abs=1e-6)
    grads = torch.autograd.grad(value, [a, b])
    exact_grads = torch.autograd.grad(exact, [a, b])
    for grad, reference in zip(grads, exact_grads, strict=True):
        scale = reference.abs().max().item()
        torch.testing.assert_close(grad, reference.float(), rtol=1e-4, atol=1e-4 * scale)


def test_an_epoch_is_3000_samples_whatever_the_train_size(narrow_method: HaloAE) -> None:
    assert narrow_method.cfg.samples_per_epoch == 3000 and narrow_method.cfg.batch_size == 4
    for n_train in (5, 37, 3001):
        batches = narrow_method.epoch_batches(n_train)(torch.Generator().manual_seed(0))
        assert sum(len(b) for b in batches) == 3000 and len(batches) == 750
        assert all(len(b) == 4 for b in batches)
        indices = torch.cat(batches)
        assert indices.max() < n_train
        assert torch.unique(indices).numel() == min(n_train, 3000)  # full passes, shuffled


def test_loss_decreases_over_a_few_steps(narrow_method: HaloAE) -> None:
    method = narrow_method
    torch.manual_seed(0)
    method.train_images = torch.rand(4, 3, 32, 32)
    index = torch.arange(4)
    optimizer = torch.optim.Adam(method.net.parameters(), lr=3e-3)
    method.net.train()
    losses = []
    for _ in range(10):
        torch.manual_seed(123)  # the same augmentation every step: one fixed objective
        loss = method.loss(index, epoch=100)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    method.train_images = None
    assert losses[-1] < 0.9 * losses[0], losses  # observed ~0.83 after 10 steps


@pytest.fixture(scope="module")
def float64_method() -> HaloAE:
    """48 px (8x8 maps, 4x4 tiles of 2 with halo 2: interior and border tiles), narrow widths,
    the net in float64; the frozen VGG stays float32 (both sides of a comparison share it)."""
    method = _method(**{**NARROW, "image_size": 48, "block_size": 2})
    method.net.double()
    method.image_mean, method.image_std = method.image_mean.double(), method.image_std.double()
    vgg = method.features
    method.features = lambda images: vgg(images.float()).double()  # type: ignore[method-assign]
    method.train_images = torch.rand(4, 3, 48, 48, dtype=torch.float64)
    return method


@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.usefixtures("one_torch_thread")
def test_loss_and_gradients_equal_the_explicit_step(
    float64_method: HaloAE, compat: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole training loss (augmentation, VGG, net, SSIM) against the explicit attention and
    the float64 SSIM, in float64: a random narrow net with train-mode BatchNorm on 4 images is
    too ill-conditioned for a float32 comparison of whole-network gradients (either form is
    ~8% off its float64 self); the modules are compared in float32 above."""
    method = float64_method
    for module in method.net.modules():
        if isinstance(module, HaloAttention):
            monkeypatch.setattr(module, "mask_compat", compat)
    params = list(method.net.parameters())

    def step() -> tuple[torch.Tensor, list[torch.Tensor]]:
        torch.manual_seed(7)
        loss = method.loss(torch.arange(4), epoch=100)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        zero = [torch.zeros_like(p) for p in params]
        return loss, [z if g is None else g for z, g in zip(zero, grads, strict=True)]

    loss, grads = step()
    monkeypatch.setattr(HaloAttention, "forward", explicit_halo_attention)
    monkeypatch.setattr(haloae, "ssim", float64_ssim)
    reference_loss, reference_grads = step()
    assert loss.item() == pytest.approx(reference_loss.item(), rel=1e-6)
    for grad, reference in zip(grads, reference_grads, strict=True):
        scale = reference.abs().max().item()
        torch.testing.assert_close(grad, reference, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.usefixtures("one_torch_thread")
def test_training_step_never_waits_for_the_device(narrow_method: HaloAE) -> None:
    narrow_method.train_images = torch.rand(4, 3, 32, 32)
    tracer = OpTracer()
    with tracer:
        narrow_method.loss(torch.arange(4), epoch=100).backward()
    narrow_method.train_images = None
    # no .item()/.tolist() of a device value, no tensor built from Python numbers (on CUDA each
    # is a blocking copy); only the CPU-side colour-jitter order remains on the host
    assert not [r.name for r in tracer.records if r.kind in ("sync", "h2d")]


def _write_blob_class(root: Path, size: int = 64) -> None:
    """A tiny MVTec-layout class: smooth noisy grey textures; defects are bright red squares."""
    generator = np.random.default_rng(0)

    def texture() -> np.ndarray:
        noise = generator.normal(0.5, 0.04, (size, size, 1)).repeat(3, axis=2)
        return noise * np.array([0.9, 0.95, 1.0])

    def save(array: np.ndarray, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((np.clip(array, 0, 1) * 255).astype(np.uint8)).save(path)

    for i in range(8):
        save(texture(), root / "blob" / "train" / "good" / f"{i:03d}.png")
    for i in range(6):
        save(texture(), root / "blob" / "test" / "good" / f"{i:03d}.png")
        image, mask = texture(), np.zeros((size, size))
        top, left = generator.integers(4, size - 24, 2)
        image[top : top + 20, left : left + 20] = (1.0, 0.1, 0.1)
        mask[top : top + 20, left : left + 20] = 1.0
        save(image, root / "blob" / "test" / "square" / f"{i:03d}.png")
        save(
            mask[..., None].repeat(3, axis=2),
            root / "blob" / "ground_truth" / "square" / f"{i:03d}_mask.png",
        )


@pytest.mark.slow
def test_short_demo_run_detects_obvious_defects(tmp_path: Path) -> None:
    _write_blob_class(tmp_path / "data")
    record = run_demo_cell(
        tmp_path,
        "haloae",
        "blob",
        "dataset.synthetic=null",
        f"dataset.root={tmp_path / 'data'}",
        "dataset.categories=[blob]",
        "method.epochs=2",
        "method.samples_per_epoch=16",
    )
    assert record["status"] == "done" and record["method"] == "haloae"
    assert record["n_test"] == 12 and record["config"]["method"]["image_size"] == 48
    # a 20x20 saturated red square on a grey texture changes every VGG layer's features over a
    # sixth of the map, so even 16 training samples with random VGG weights separate the classes
    # (observed image AUROC 1.0 for seeds 0 and 1, pixel AUROC 0.78-0.87); the thresholds are
    # clearly above chance (0.5) and below every observed value.
    # The real synthetic classes are much subtler: bench/results/demo_cpu.md has the demo numbers.
    assert record["metrics"]["image_auroc"] > 0.8
    assert record["metrics"]["pixel_auroc"] > 0.65


def test_ssim_is_float32_exact_under_bfloat16_autocast() -> None:
    torch.manual_seed(0)
    a = 5.0 + 0.01 * torch.rand(2, 8, 13, 16)  # large mean, tiny variance
    b = a + 0.001 * torch.randn_like(a)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ssim(a, b).item() == pytest.approx(float64_ssim(a, b).item(), abs=1e-6)
