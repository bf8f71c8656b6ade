"""The paper's inference: aggregation of per-proposal maps, instance-wise prediction, FCN-8s,
the EDeconvNet ensemble and the dense CRF."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deconvkernels.data import Sample
from deconvkernels.infer import (
    aggregate_box_scores,
    dense_crf,
    ensemble_scores,
    evaluate_instances,
    predict_instances,
    predict_scores,
    segment_instances,
    select_proposals,
)
from deconvkernels.models import DeconvNet, load_vgg16_
from deconvkernels.models import init as init_module
from deconvkernels.models.fcn import FCN8s, bilinear_kernel

# --------------------------------------------------------------------------- helpers


def _const(values: list[float], h: int = 2, w: int = 2) -> torch.Tensor:
    """A ``(C, h, w)`` map holding ``values`` at every pixel."""
    return torch.tensor(values, dtype=torch.float32).view(-1, 1, 1).expand(-1, h, w).clone()


def _lively_deconvnet(num_classes: int = 3) -> DeconvNet:
    """A tiny DeconvNet whose outputs vary with the input (the release's std-0.01 decoder
    init gives near-constant logits, which would make every comparison trivially pass)."""
    model = DeconvNet(num_classes, width=1 / 16, input_size=64)
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    with torch.no_grad():
        model.score.weight.mul_(10)
    return model.eval()


class ColourNet(nn.Module):
    """A per-pixel classifier (class 0: neither, 1: reddish, 2: bluish): what a crop's map
    holds at a pixel depends on that pixel only, so geometry errors show up directly."""

    input_size = 32

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        with torch.no_grad():
            weight = torch.tensor([[0, 0, 0], [8, 0, -8], [-8, 0, 8.0]])
            self.conv.weight.copy_(weight[..., None, None])
            self.conv.bias.copy_(torch.tensor([4.0, 0, 0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _two_colour(h: int, w: int, split: int) -> tuple[np.ndarray, np.ndarray]:
    """Red left of column ``split``, blue from it on; labels 1 and 2."""
    image = np.zeros((h, w, 3), np.uint8)
    image[:, :split] = (220, 40, 40)
    image[:, split:] = (40, 40, 220)
    label = np.full((h, w), 2, np.uint8)
    label[:, :split] = 1
    return image, label


# --------------------------------------------------------------------------- aggregation


def test_aggregate_max_and_mean_on_hand_made_maps():
    a = _const([0.8, 0.2], 4, 3)  # over columns 0..2
    b = _const([0.3, 0.7], 4, 4)  # over columns 2..5
    boxes = [[0, 0, 3, 4], [2, 0, 6, 4]]
    raw = aggregate_box_scores([a, b], boxes, (4, 6), "max", normalize=False)
    expect = torch.zeros(2, 4, 6)
    expect[:, :, :2] = _const([0.8, 0.2], 4, 2)
    expect[:, :, 2] = _const([0.8, 0.7], 4, 1)[..., 0]
    expect[:, :, 3:] = _const([0.3, 0.7], 4, 3)
    torch.testing.assert_close(raw, expect)
    # Normalised: the overlap column's max [0.8, 0.7] becomes a distribution.
    probs = aggregate_box_scores([a, b], boxes, (4, 6), "max")
    torch.testing.assert_close(probs[:, 0, 2], torch.tensor([0.8 / 1.5, 0.7 / 1.5]))
    torch.testing.assert_close(probs.sum(0), torch.ones(4, 6))
    mean = aggregate_box_scores([a, b], boxes, (4, 6), "mean")
    torch.testing.assert_close(mean[:, 0, 2], torch.tensor([0.55, 0.45]))
    torch.testing.assert_close(mean[:, 0, 0], torch.tensor([0.8, 0.2]))
    torch.testing.assert_close(mean[:, 0, 5], torch.tensor([0.3, 0.7]))


@pytest.mark.parametrize("mode", ["max", "mean"])
def test_aggregate_uncovered_pixels(mode):
    a = _const([0.1, 0.9], 2, 2)
    out = aggregate_box_scores(a[None], [[0, 0, 2, 2]], (2, 4), mode, normalize=False)
    assert torch.equal(out[:, :, 2:], torch.zeros(2, 2, 2))  # the release's zero map
    probs = aggregate_box_scores(a[None], [[0, 0, 2, 2]], (2, 4), mode)
    assert torch.equal(probs[:, :, 2:], torch.full((2, 2, 2), 0.5))  # uniform
    assert (probs.argmax(0)[:, 2:] == 0).all()  # ... whose argmax is background
    # With a whole-image map, uncovered pixels take it.
    whole = _const([0.6, 0.4], 2, 4)
    probs = aggregate_box_scores(a[None], [[0, 0, 2, 2]], (2, 4), mode, whole=whole)
    torch.testing.assert_close(probs[:, :, 2:], whole[:, :, 2:])
    covered = probs[:, 0, 0]
    expect = torch.tensor([0.6, 0.9]) / 1.5 if mode == "max" else torch.tensor([0.35, 0.65])
    torch.testing.assert_close(covered, expect)


def test_aggregate_box_outside_image_keeps_in_image_part():
    torch.manual_seed(0)
    # Scale 1: the window [-2, -1, 4, 2) holds a 3x6 map, the image shows its columns 2..5
    # and rows 1..2.
    m = torch.rand(2, 3, 6)
    out = aggregate_box_scores([m], [[-2, -1, 4, 2]], (3, 5), normalize=False)
    torch.testing.assert_close(out[:, :2, :4], m[:, 1:, 2:])
    assert torch.equal(out[:, 2:], torch.zeros(2, 1, 5))
    assert torch.equal(out[:, :, 4:], torch.zeros(2, 3, 1))
    # Scale 2 at the far border: resizing the map to the window's full extent (bilinear)
    # and cutting the in-image part out is what the aggregation must match.
    m = torch.rand(3, 4, 6)
    window = [2, 3, 14, 11]  # 12 x 8 px, two thirds inside a 7 x 9 image
    full = F.interpolate(m[None], size=(8, 12), mode="bilinear", align_corners=False)[0]
    out = aggregate_box_scores([m], [window], (7, 9), normalize=False)
    torch.testing.assert_close(out[:, 3:, 2:], full[:, :4, :7])
    assert torch.equal(out[:, :3], torch.zeros(3, 3, 9))
    # A window entirely outside the image changes nothing.
    out = aggregate_box_scores([m], [[20, 20, 30, 30]], (7, 9), normalize=False)
    assert torch.equal(out, torch.zeros(3, 7, 9))


def test_aggregate_errors():
    a = _const([0.5, 0.5])
    with pytest.raises(ValueError, match="2 score maps but 1 boxes"):
        aggregate_box_scores([a, a], [[0, 0, 2, 2]], (2, 2))
    with pytest.raises(ValueError, match="'max' or 'mean'"):
        aggregate_box_scores([a], [[0, 0, 2, 2]], (2, 2), "median")
    with pytest.raises(ValueError, match="empty window"):
        aggregate_box_scores([a], [[1, 0, 1, 2]], (2, 2))
    with pytest.raises(ValueError, match="whole-image map"):
        aggregate_box_scores([a], [[0, 0, 2, 2]], (2, 2), whole=torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match="no score maps"):
        aggregate_box_scores([], np.zeros((0, 4)), (2, 2))


def test_select_proposals_sorts_filters_and_truncates():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 200, 150], [0, 0, 120, 300], [0, 0, 500, 111]],
                     np.float32)
    scores = np.array([0.9, 0.2, 0.5, 0.99], np.float32)
    kept = select_proposals((boxes, scores), top_n=50, min_side=112)
    np.testing.assert_array_equal(kept, boxes[[2, 1]])  # by score, small sides dropped
    np.testing.assert_array_equal(select_proposals(boxes, top_n=1, min_side=0), boxes[:1])
    assert select_proposals(boxes, min_side=1000).shape == (0, 4)


# --------------------------------------------------------------------------- instance-wise


def test_predict_instances_shape_probabilities_determinism():
    model = _lively_deconvnet()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)
    boxes = np.array([[5, 5, 60, 50], [40, 20, 90, 70], [-10, -5, 30, 30]], np.float32)
    probs = predict_instances(model, image, boxes, min_side=20, batch_size=2)
    assert probs.shape == (3, 70, 90) and probs.dtype == torch.float32
    assert probs.device.type == "cpu"
    assert (probs >= 0).all()
    torch.testing.assert_close(probs.sum(0), torch.ones(70, 90))
    again = predict_instances(model, image, boxes, min_side=20, batch_size=3)
    torch.testing.assert_close(again, probs)  # batching does not matter
    mean = predict_instances(model, image, boxes, min_side=20, mode="mean")
    torch.testing.assert_close(mean.sum(0), torch.ones(70, 90))
    assert not torch.allclose(mean, probs)
    model.train()
    predict_instances(model, image, boxes, min_side=20)
    assert model.training  # the caller's mode is restored


def test_one_proposal_over_the_image_is_the_whole_image_prediction():
    model = _lively_deconvnet()
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    whole = predict_scores(model, [image])[0]
    assert whole.max() > 0.9  # the model is not near-uniform: the comparison means something
    box = np.array([[0, 0, 64, 64]], np.float32)
    probs = predict_instances(
        model, image, box, min_side=0, include_whole=False, enlarge=1.0, square=False
    )
    torch.testing.assert_close(probs, whole, atol=1e-5, rtol=0)
    # With the whole image merged in as well, max(whole, whole) renormalised is still whole.
    both = predict_instances(model, image, box, min_side=0, enlarge=1.0, square=False)
    torch.testing.assert_close(both, whole, atol=1e-5, rtol=0)


def test_min_side_filter_falls_back_to_whole_image():
    model = _lively_deconvnet()
    image = np.random.default_rng(2).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    whole = predict_scores(model, [image])[0]
    small = np.array([[0, 0, 20, 20], [10, 10, 40, 25]], np.float32)
    for include_whole in (True, False):
        probs = predict_instances(model, image, small, min_side=112, include_whole=include_whole)
        torch.testing.assert_close(probs, whole, atol=1e-6, rtol=0)
    empty = predict_instances(model, image, np.zeros((0, 4), np.float32))
    torch.testing.assert_close(empty, whole, atol=1e-6, rtol=0)


def test_maps_land_where_their_crops_came_from():
    model = ColourNet()
    image, label = _two_colour(48, 64, split=24)
    # Off-centre, image-leaving proposals; crops are squares 1.2x the box, padded.
    boxes = np.array([[0, 0, 30, 48], [20, 4, 64, 40], [-8, 30, 40, 60]], np.float32)
    probs = predict_instances(model, image, boxes, min_side=0, include_whole=False)
    pred = probs.argmax(0).numpy()
    far = np.abs(np.arange(64) - 24) >= 3  # bilinear resampling blurs the boundary only
    assert (pred[:, far] == label[:, far]).all()
    # Only the left half proposed, no whole image: the right half is uncovered -> class 0.
    left = np.array([[0, 0, 20, 48]], np.float32)
    probs = predict_instances(
        model, image, left, min_side=0, include_whole=False, enlarge=1.0, square=False
    )
    assert (probs.argmax(0)[:, :20] == 1).all()
    torch.testing.assert_close(probs[:, :, 20:], torch.full((3, 48, 44), 1 / 3))


def _sample(image: np.ndarray, label: np.ndarray, name: str) -> Sample:
    h, w = label.shape
    return Sample(
        image=image, label=label, instances=np.zeros((h, w), np.int32),
        boxes=np.zeros((0, 4), np.float32), box_classes=np.zeros(0, np.int64), name=name,
    )


def test_evaluate_instances_counts_every_labelled_pixel():
    image, label = _two_colour(32, 32, split=12)
    label[0, :] = 255  # ignored
    dataset = [_sample(image, label, "a"), None, _sample(image[:, ::-1].copy(),
                                                          label[:, ::-1].copy(), "b")]

    def propose(sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        return np.array([[0, 0, 32, 32]], np.float32), np.ones(1, np.float32)

    cm = evaluate_instances(
        ColourNet(), dataset, 3, propose, min_side=0, enlarge=1.0, square=False,
        progress=False,
    )
    # Per image: 31 labelled rows, 12 red and 20 blue columns, all right.
    expect = np.zeros((3, 3), np.int64)
    expect[1, 1] = 2 * 31 * 12
    expect[2, 2] = 2 * 31 * 20
    np.testing.assert_array_equal(cm.matrix, expect)


# --------------------------------------------------------------------------- FCN-8s


def test_fcn8s_parameter_count_and_layers():
    with torch.device("meta"):
        model = FCN8s()
    n = sum(p.numel() for p in model.parameters())
    vgg = 14_714_688 + (512 * 7 * 7 * 4096 + 4096) + (4096 * 4096 + 4096)  # convs, fc6, fc7
    heads = (4096 + 512 + 256) * 21 + 3 * 21 + 2 * 21 * 21 * 16  # scorers, 2x upsamplers
    bn = 2 * (2 * 64 + 2 * 128 + 3 * 256 + 6 * 512 + 2 * 4096)
    assert n == vgg + heads + bn == 134_401_695
    assert abs(n - 134.4e6) < 0.05e6
    assert model.fc6[0].weight.shape == (4096, 512, 7, 7) and model.fc6[0].padding == (3, 3)
    assert model.fc7[0].weight.shape == (4096, 4096, 1, 1)
    assert (model.num_classes, model.width) == (21, 1.0)
    assert not hasattr(model, "input_size")  # any input size


def test_fcn8s_takes_vgg16_weights(monkeypatch):
    """load_vgg16_ maps torchvision's VGG16 (features + classifier.0/3) into FCN8s unchanged
    (checked on the meta device: keys and shapes, no 0.5 GB of weights)."""
    with torch.device("meta"):
        model = FCN8s()
    convs = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    chans = [3, 64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    state = {}
    for i, (a, b) in zip(convs, zip(chans[:-1], chans[1:], strict=True), strict=True):
        state[f"features.{i}.weight"] = torch.empty(b, a, 3, 3, device="meta")
        state[f"features.{i}.bias"] = torch.empty(b, device="meta")
    for i, (a, b) in ((0, (25088, 4096)), (3, (4096, 4096))):
        state[f"classifier.{i}.weight"] = torch.empty(b, a, device="meta")
        state[f"classifier.{i}.bias"] = torch.empty(b, device="meta")
    monkeypatch.setattr(init_module, "read_state_dict", lambda path: state)
    used = load_vgg16_(model, "vgg16.pth")
    assert "classifier.0.weight" in used and "classifier.3.bias" in used


@pytest.mark.parametrize("size", [(32, 32), (64, 96), (75, 67), (33, 129), (7, 5)])
def test_fcn8s_output_size_matches_any_input(size):
    model = FCN8s(4, width=1 / 16).eval()
    with torch.no_grad():
        y = model(torch.randn(2, 3, *size))
    assert y.shape == (2, 4, *size)
    assert torch.isfinite(y).all()


def test_fcn8s_gradients_reach_every_parameter():
    model = FCN8s(3, width=1 / 16)
    x = torch.randn(2, 3, 64, 64)
    target = torch.randint(0, 3, (2, 64, 64))
    F.cross_entropy(model(x), target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name  # the zero-initialised skips learn too


def test_fcn8s_initialisation():
    model = FCN8s(3, width=1 / 16)
    k = bilinear_kernel(4)
    torch.testing.assert_close(k[1:3, 1:3], torch.full((2, 2), 0.5625))
    for up in (model.upscore2, model.upscore_pool4):
        assert up.kernel_size == (4, 4) and up.stride == (2, 2) and up.bias is None
        w = up.weight.detach()
        for i in range(3):
            torch.testing.assert_close(w[i, i], k)
        off = w.clone()
        off[range(3), range(3)] = 0
        assert torch.equal(off, torch.zeros_like(off))  # class i feeds class i only
        # Bilinear upsampling, away from the border.
        s = torch.randn(1, 3, 5, 6)
        ref = F.interpolate(s, scale_factor=2, mode="bilinear", align_corners=False)
        torch.testing.assert_close(up(s)[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1])
    for skip in (model.score_pool4, model.score_pool3):
        assert not skip.weight.any() and not skip.bias.any()
    assert model.score_fr.weight.std() > 0


def test_fcn8s_argument_errors():
    with pytest.raises(ValueError, match="num_classes"):
        FCN8s(0)
    with pytest.raises(ValueError, match="width"):
        FCN8s(3, width=0)


# --------------------------------------------------------------------------- ensemble


def test_ensemble_product_clips_negatives_then_normalises():
    # One pixel, three classes: raw scores as the release fed them.
    deconv = torch.tensor([2.0, -1.0, 0.5]).view(3, 1, 1)
    fcn = torch.tensor([1.0, -3.0, 4.0]).view(3, 1, 1)
    out = ensemble_scores(deconv, fcn, "product")
    # max(0, .) products: [2, 0, 2]; without the clip class 1 would get +3 and win.
    torch.testing.assert_close(out.flatten(), torch.tensor([0.5, 0.0, 0.5]))
    assert out.flatten().argmax() == 0  # ties go to the first class, as in the release
    p = torch.tensor([[0.7, 0.2], [0.2, 0.5], [0.1, 0.3]]).view(3, 1, 2)
    q = torch.tensor([[0.5, 0.1], [0.4, 0.1], [0.1, 0.8]]).view(3, 1, 2)
    out = ensemble_scores(p, q)
    expect = p * q / (p * q).sum(0)
    torch.testing.assert_close(out, expect)
    # A pixel where every product is 0 gets the uniform distribution.
    one_hot = torch.eye(2).view(2, 2, 1, 1)
    zero = ensemble_scores(one_hot[0], one_hot[1])
    torch.testing.assert_close(zero.flatten(), torch.tensor([0.5, 0.5]))


def test_ensemble_mean_and_errors():
    p = torch.tensor([0.7, 0.2, 0.1]).view(1, 3, 1, 1)  # batched input works too
    q = torch.tensor([0.1, 0.3, 0.6]).view(1, 3, 1, 1)
    out = ensemble_scores(p, q, "mean")
    assert out.shape == (1, 3, 1, 1)
    torch.testing.assert_close(out.flatten(), torch.tensor([0.4, 0.25, 0.35]))
    with pytest.raises(ValueError, match="negative"):
        ensemble_scores(-p, q, "mean")
    with pytest.raises(ValueError, match="one shape"):
        ensemble_scores(p, q[:, :2], "product")
    with pytest.raises(ValueError, match="'product' or 'mean'"):
        ensemble_scores(p, q, "max")


# --------------------------------------------------------------------------- dense CRF


def test_dense_crf_without_the_extra_names_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "pydensecrf", None)
    monkeypatch.setitem(sys.modules, "pydensecrf.densecrf", None)
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ImportError, match=r"pip install 'deconvkernels\[crf\]'"):
        dense_crf(image, torch.full((2, 4, 4), 0.5))


def test_dense_crf_cleans_noisy_labels_towards_the_colour_boundary():
    pytest.importorskip("pydensecrf.densecrf", reason="the [crf] extra is not installed")
    image, label = _two_colour(20, 20, split=10)
    truth = label - 1  # classes 0 (red) and 1 (blue)
    rng = np.random.default_rng(0)
    p_red = np.where(truth == 0, 0.65, 0.35)
    flip = rng.random((20, 20)) < 0.3
    p_red = np.where(flip, 1 - p_red, p_red).astype(np.float32)
    probs = torch.from_numpy(np.stack([p_red, 1 - p_red]))
    noisy = (probs.argmax(0).numpy() == truth).mean()
    assert noisy < 0.8
    labels, marginals = dense_crf(image, probs, return_probabilities=True)
    assert labels.dtype == np.uint8 and labels.shape == (20, 20)
    assert (labels == truth).mean() >= 0.98
    assert marginals.shape == (2, 20, 20)
    np.testing.assert_allclose(marginals.sum(0), 1.0, atol=1e-4)
    # Zero iterations leave the unaries' argmax.
    np.testing.assert_array_equal(dense_crf(image, probs, iterations=0), probs.argmax(0).numpy())
    with pytest.raises(ValueError, match="probabilities"):
        dense_crf(image, probs[:, :10])
    # The whole pipeline with the ensemble and the CRF switched on.
    out = segment_instances(
        ColourNet(), image, np.array([[0, 0, 20, 20]], np.float32), fcn=ColourNet(),
        crf=True, min_side=0,
    )
    np.testing.assert_array_equal(out, label)


def test_whole_image_is_shrunk_without_aliasing_as_training_crops_are():
    """predict_scores shrinks a large image to the network's input antialiased, as
    crop_resize shrinks the training crops (area-averaged): a fine checkerboard becomes a
    flat grey there, not an aliased pattern the network never saw."""
    from deconvkernels.data.samplers import crop_resize
    from deconvkernels.data.transforms import to_tensor

    class Spy(nn.Module):
        input_size = 64

        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(()))
            self.seen = []

        def forward(self, x):
            self.seen.append(x)
            return x[:, :2] * self.w

    yy, xx = np.mgrid[:300, :400]
    image = np.repeat((((yy + xx) % 2) * 255).astype(np.uint8)[..., None], 3, axis=2)
    spy = Spy()
    predict_scores(spy, [image])
    seen = spy.seen[0][0]
    crop, _ = crop_resize(image, None, [0, 0, 400, 300], 64)
    trained = to_tensor(crop)
    assert seen.shape == trained.shape
    # both nearly flat grey (an aliased bilinear sample of the checkerboard has std ~1)
    assert seen.std() < 0.2 and trained.std() < 0.2
    torch.testing.assert_close(seen.mean(), trained.mean(), atol=0.05, rtol=0)
