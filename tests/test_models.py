"""Models: layer shapes, parameter count, VGG16 mapping, backend parity, SegNet's fused
convolution, checkpoints."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import deconvkernels as dk
from deconvkernels.models import DeconvNet, SegNet, build_model, load_vgg16_, model_config
from deconvkernels.nn import UnpoolConv2d, UnpoolConvTranspose2d
from deconvkernels.train import load_checkpoint, load_model, save_checkpoint


def _convs(model: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in model.modules() if type(m) is kind]


def test_deconvnet_paper_size_layers_and_parameter_count():
    with torch.device("meta"):
        model = DeconvNet()
    n = sum(p.numel() for p in model.parameters())
    # 251.8M: VGG16's convs, fc6 (7x7x512x4096), fc7, fc6-deconv, decoder, score; plus BN.
    assert n == 251_805_653
    assert abs(n - 251.8e6) < 0.05e6
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 13 + 2 + 1 + 13 + 1  # encoder, fc6/fc7, fc6-deconv, decoder, score
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == len(convs) - 1  # BN after everything but the score
    assert [m.kernel_size for m in (model.fc6[0], model.fc7[0], model.fc6_deconv[0])] == [
        (7, 7), (1, 1), (7, 7)]
    assert model.fc6[0].padding == (0, 0) and model.fc6[0].out_channels == 4096
    fused = _convs(model, UnpoolConvTranspose2d)
    assert len(fused) == 5  # the first deconvolution of each decoder stage
    decoder_out = [
        [s.unpool_conv.conv.out_channels] + [b[0].out_channels for b in s.layers]
        for s in model.decoder
    ]
    assert decoder_out == [[512, 512, 512], [512, 512, 256], [256, 256, 128], [128, 64], [64, 64]]
    assert all(m.kernel_size == (3, 3) and m.padding == (1, 1) for m in fused)
    assert model.score.kernel_size == (1, 1) and model.score.out_channels == 21


def test_deconvnet_forward_shapes_and_switch_flow():
    model = DeconvNet(num_classes=4, width=1 / 16, input_size=64)
    assert model.fc6[0].kernel_size == (2, 2)
    assert model.fc6[0].out_channels == 256
    x = torch.randn(2, 3, 64, 64)
    assert model(x).shape == (2, 4, 64, 64)
    model.eval()  # one image: fc6's 1x1 map has no batch statistics
    # Larger input: fc6 slides, every unpool still restores its pool's size (odd sizes too).
    assert model(torch.randn(1, 3, 96, 80)).shape == (1, 4, 96, 80)
    assert model(torch.randn(1, 3, 70, 67)).shape == (1, 4, 70, 67)
    with pytest.raises(ValueError, match="H, W >= 64"):
        model(torch.randn(1, 3, 32, 64))


def test_deconvnet_argument_errors():
    with pytest.raises(ValueError, match="multiple of 32"):
        DeconvNet(input_size=100)
    with pytest.raises(ValueError, match="width"):
        DeconvNet(width=0)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("unet", 3)


def test_decoder_uses_fused_op(monkeypatch):
    """The decoder's unpooling runs through the fused op: never the unpool op itself."""
    calls = {"fused": 0, "unpool": 0}
    fused, unpool = dk.ops.unpool_deconv2d, dk.ops.max_unpool2d_with_switches

    def count_fused(*a, **k):
        calls["fused"] += 1
        return fused(*a, **k)

    def count_unpool(*a, **k):
        calls["unpool"] += 1
        return unpool(*a, **k)

    monkeypatch.setattr(dk.ops, "unpool_deconv2d", count_fused)
    monkeypatch.setattr(dk.ops, "max_unpool2d_with_switches", count_unpool)
    DeconvNet(3, width=1 / 16, input_size=64).eval()(torch.randn(1, 3, 64, 64))
    SegNet(3, width=1 / 16)(torch.randn(1, 3, 64, 64))
    assert calls == {"fused": 10, "unpool": 0}


@pytest.mark.parametrize("name", ["deconvnet", "segnet"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_backend_parity(name, layout):
    """The same model on the reference backend gives the same outputs and gradients."""
    model = build_model(name, 5, width=1 / 8, input_size=64)
    model.eval()  # BN statistics fixed, so both passes see the same function
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model = model.to(memory_format=fmt)
    x = torch.randn(2, 3, 64, 64).to(memory_format=fmt)
    outs, grads = [], []
    for backend in ("extension", "reference"):
        model.zero_grad()
        with dk.use_backend(backend):
            out = model(x)
            out.square().mean().backward()
        outs.append(out.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    rel = (outs[0] - outs[1]).abs().max() / outs[1].abs().max()
    assert rel < 1e-4, rel
    grel = (grads[0] - grads[1]).abs().max() / grads[1].abs().max()
    assert grel < 1e-3, grel


def test_unpool_conv2d_equals_unpool_then_conv():
    torch.manual_seed(0)
    for groups, k, pad, dil in [(1, 3, 1, 1), (2, 3, 1, 1), (1, 1, 0, 1), (1, 5, 2, 1),
                                (2, 3, 2, 2), (1, 3, 0, 1)]:
        m = UnpoolConv2d(8, 6, k, padding=pad, dilation=dil, groups=groups).double()
        x = torch.randn(2, 8, 10, 12, dtype=torch.double)
        y, s = dk.max_pool2d_with_switches(x, 2)
        ref = F.conv2d(dk.max_unpool2d_with_switches(y, s, 2, output_size=(10, 12)), m.weight,
                       m.bias, padding=pad, dilation=dil, groups=groups)
        torch.testing.assert_close(m(y, s, output_size=(10, 12)), ref)
    # Same state_dict as nn.Conv2d.
    conv = nn.Conv2d(8, 6, 3, padding=1)
    fused = UnpoolConv2d(8, 6, 3, padding=1)
    fused.load_state_dict(conv.state_dict())
    with pytest.raises(ValueError, match="stride"):
        UnpoolConv2d(8, 6, 3, stride=2)
    with pytest.raises(ValueError, match="padding"):
        UnpoolConv2d(8, 6, 3, padding=3)


def test_unpool_conv2d_gradcheck():
    m = UnpoolConv2d(3, 2, 3, padding=1).double()
    x = torch.randn(1, 3, 6, 6, dtype=torch.double)
    y, s = dk.max_pool2d_with_switches(x, 2)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda y, w, b: dk.unpool_deconv2d(
            y, s, w.transpose(0, 1).flip(-2, -1), b, output_size=(6, 6), padding=1),
        (y, m.weight, m.bias))


def test_segnet_layers():
    with torch.device("meta"):
        model = SegNet(21)
    assert len(_convs(model, UnpoolConv2d)) == 5
    assert len(_convs(model, UnpoolConvTranspose2d)) == 0
    n = sum(p.numel() for p in model.parameters())
    assert 29.4e6 < n < 29.5e6  # VGG16-BN encoder (14.7M) + mirrored decoder + classifier
    assert model.score.kernel_size == (3, 3)
    small = SegNet(3, width=1 / 16)
    assert small(torch.randn(1, 3, 64, 96)).shape == (1, 3, 64, 96)


def test_initialisation_as_original():
    model = DeconvNet(3, width=0.25, input_size=64)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1)
            assert torch.allclose(m.bias, torch.full_like(m.bias, 1e-3))
    w = torch.cat([s.unpool_conv.conv.weight.flatten() for s in model.decoder])
    assert abs(w.std().item() - 0.01) < 0.001 and abs(w.mean().item()) < 0.001


def _fake_vgg16_state(model: DeconvNet | SegNet, batchnorm: bool) -> dict[str, torch.Tensor]:
    """A torchvision-format VGG16(-BN) state dict shaped for ``model`` (its width), with
    distinct values per tensor so a wrong mapping shows."""
    state: dict[str, torch.Tensor] = {}
    idx = 0
    blocks = [b for stage in model.encoder.stages for b in stage]
    gen = torch.Generator().manual_seed(1)
    for stage_i, stage in enumerate(model.encoder.stages):
        for block in stage:
            conv = block[0]
            state[f"features.{idx}.weight"] = torch.randn(conv.weight.shape, generator=gen)
            state[f"features.{idx}.bias"] = torch.randn(conv.bias.shape, generator=gen)
            if batchnorm:
                c = conv.out_channels
                state[f"features.{idx + 1}.weight"] = torch.rand(c, generator=gen)
                state[f"features.{idx + 1}.bias"] = torch.randn(c, generator=gen)
                state[f"features.{idx + 1}.running_mean"] = torch.randn(c, generator=gen)
                state[f"features.{idx + 1}.running_var"] = torch.rand(c, generator=gen) + 0.5
                state[f"features.{idx + 1}.num_batches_tracked"] = torch.tensor(7)
                idx += 3
            else:
                idx += 2
        idx += 1  # the stage's pool
        del stage_i
    assert len(blocks) == 13
    if isinstance(model, DeconvNet):
        fc6, fc7 = model.fc6[0], model.fc7[0]
        state["classifier.0.weight"] = torch.randn(fc6.out_channels, fc6.weight[0].numel(),
                                                   generator=gen)
        state["classifier.0.bias"] = torch.randn(fc6.out_channels, generator=gen)
        state["classifier.3.weight"] = torch.randn(fc7.out_channels, fc7.in_channels,
                                                   generator=gen)
        state["classifier.3.bias"] = torch.randn(fc7.out_channels, generator=gen)
        state["classifier.6.weight"] = torch.randn(1000, fc7.out_channels, generator=gen)
        state["classifier.6.bias"] = torch.randn(1000, generator=gen)
    return state


@pytest.mark.parametrize("batchnorm", [False, True], ids=["vgg16", "vgg16_bn"])
def test_vgg16_mapping(tmp_path, batchnorm):
    model = DeconvNet(3, width=1 / 16, input_size=64)
    state = _fake_vgg16_state(model, batchnorm)
    path = tmp_path / "vgg16.pth"
    torch.save(state, path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    load_vgg16_(model, path)
    convs = (0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40) if batchnorm else (
        0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    blocks = [b for stage in model.encoder.stages for b in stage]
    for block, i in zip(blocks, convs, strict=True):
        assert torch.equal(block[0].weight, state[f"features.{i}.weight"])
        assert torch.equal(block[0].bias, state[f"features.{i}.bias"])
        if batchnorm:
            assert torch.equal(block[1].running_var, state[f"features.{i + 1}.running_var"])
        else:  # BN stays as initialised
            assert torch.equal(block[1].bias, torch.full_like(block[1].bias, 1e-3))
    assert torch.equal(model.fc6[0].weight.flatten(1), state["classifier.0.weight"])
    assert torch.equal(model.fc7[0].weight.flatten(1), state["classifier.3.weight"])
    # fc6 reshape is (out, in, kh, kw), row-major like torchvision's flatten of pool5.
    assert torch.equal(model.fc6[0].weight[0, 0, 0, 1], state["classifier.0.weight"][0, 1])
    # The decoder is untouched.
    for k, v in model.state_dict().items():
        if k.startswith(("decoder", "score", "fc6_deconv")):
            assert torch.equal(v, before[k]), k
    # SegNet takes the encoder only.
    segnet = SegNet(3, width=1 / 16)
    load_vgg16_(segnet, path)
    assert torch.equal(segnet.encoder.stages[4][2][0].weight, blocks[-1][0].weight)


def test_vgg16_errors_name_keys_and_files(tmp_path):
    model = DeconvNet(3, width=1 / 16, input_size=64)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_vgg16_(model, tmp_path / "nowhere.pth")
    state = _fake_vgg16_state(model, False)
    del state["features.5.weight"], state["classifier.3.bias"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"features\.5\.weight.*classifier\.3\.bias"):
        load_vgg16_(model, tmp_path / "partial.pth")
    other = _fake_vgg16_state(DeconvNet(3, width=1 / 8, input_size=64), False)
    torch.save(other, tmp_path / "wide.pth")
    with pytest.raises(ValueError, match=r"features\.0\.weight.*shape"):
        load_vgg16_(model, tmp_path / "wide.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_vgg16_(model, tmp_path / "junk.pth")


def test_checkpoint_round_trip_and_corruption(tmp_path):
    model = DeconvNet(4, width=1 / 16, input_size=64).eval()
    path = save_checkpoint(tmp_path / "m.pt", model, class_names=list("abcd"), step=3)
    loaded, ckpt = load_model(path)
    assert ckpt["class_names"] == list("abcd") and ckpt["step"] == 3
    assert model_config(loaded) == {"name": "deconvnet", "num_classes": 4, "width": 1 / 16,
                                    "input_size": 64}
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert not list(tmp_path.glob(".tmp-*"))  # the temporary file was renamed away
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pt"):
        load_checkpoint(tmp_path / "cut.pt")
    with pytest.raises(FileNotFoundError, match="gone.pt"):
        load_checkpoint(tmp_path / "gone.pt")


def test_autocast_bfloat16_runs_the_ops_in_bfloat16():
    """Under CPU autocast the fused op and the pool run natively in bfloat16 (no upcast of
    whole tensors to float32) and agree with the reference backend."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: dict[str, set] = {}

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.__name__ if hasattr(func, "__name__") else str(func)
            if "deconvkernels" in str(func):
                dtypes = {a.dtype for a in args if isinstance(a, torch.Tensor)}
                seen.setdefault(name.split(".")[0], set()).update(dtypes)
            return func(*args, **(kwargs or {}))

    model = DeconvNet(3, width=1 / 16, input_size=64)
    x = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with Record():
            out = model(x)
            out.float().mean().backward()
        with dk.use_backend("reference"), torch.no_grad():
            ref = model(x)
    assert out.dtype == torch.bfloat16
    assert seen["unpool_deconv2d"] == {torch.bfloat16, torch.uint8}
    assert seen["max_pool2d_with_switches"] == {torch.bfloat16}
    assert any(k.startswith("unpool_deconv2d_backward") for k in seen), seen
    assert all(torch.float32 not in v for v in seen.values()), seen
    assert model.decoder[0].unpool_conv.conv.weight.grad.dtype == torch.float32
    torch.testing.assert_close(out.float(), ref.float(), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("fused", [True, False])
def test_autocast_leaves_float64_alone(fused):
    """Autocast never lowers float64 (ATen's eligibility rule): the fused op and the stock
    chain it replaces both stay in float64 under a bfloat16 autocast region."""
    layer = dk.nn.UnpoolConvTranspose2d(4, 3, kernel_size=3, padding=1, fused=fused).double()
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    y, switches = dk.max_pool2d_with_switches(x, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(y, switches)
        direct = dk.unpool_deconv2d(y, switches, layer.weight, layer.bias,
                                    output_size=None, pool_kernel_size=2, padding=1)
    assert out.dtype == direct.dtype == torch.float64
    torch.testing.assert_close(out, direct)
