"""MTMed3D architecture (models/archs/mtmed3d.py) and detection utilities (losses/detection.py)."""

from __future__ import annotations

from unittest import mock

import pytest
import torch

from medrestore.errors import ConfigError
from medrestore.models.archs.mtmed3d import MTMed3D, mtmed3d, mtmed3d_tiny

# The authors' network with all three decoders, counted from their public code.
RELEASED = {"encoder": 8_063_154, "seg_decoder": 54_128_787, "cls_decoder": 11_288_578,
            "det_decoder": 3_218_051}


def _count(module) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _meta(**kwargs) -> MTMed3D:
    """Build on the meta device (no memory). MONAI's Swin computes its drop-path schedule with
    ``linspace(...).item()``, which meta tensors cannot answer: that one call runs on the CPU."""
    linspace = torch.linspace
    with torch.device("meta"), mock.patch("monai.networks.nets.swin_unetr.torch.linspace",
                                          lambda *a, **k: linspace(*a, **{**k, "device": "cpu"})):
        return mtmed3d(**kwargs)


def test_released_parameter_counts_equal_the_authors():
    net = _meta()
    for part, n in RELEASED.items():
        assert _count(getattr(net, part)) == n, part
    assert _count(net) == 76_698_570


@pytest.mark.parametrize("tasks, cls_input, total", [
    (["seg"], "cascade", 62_191_941),           # = MONAI SwinUNETR(feature_size 48, 4 -> 3)
    (["det"], "cascade", 11_281_205),
    (["cls"], "cascade", 73_480_519),           # the authors' single-task grading keeps the seg decoder
    (["cls"], "encoder", 8_064_692),            # our option: pooled h4 + linear
    (["seg", "det", "cls"], "encoder", 65_411_530),
])
def test_single_and_multi_task_totals(tasks, cls_input, total):
    assert _count(_meta(tasks=tasks, cls_input=cls_input)) == total


BUILDS = [(("seg", "det", "cls"), "cascade"), (("seg",), "cascade"), (("det",), "cascade"),
          (("cls",), "cascade"), (("cls",), "encoder"), (("seg", "cls"), "encoder")]


@pytest.mark.parametrize("tasks, cls_input", BUILDS)
def test_tiny_head_shapes_batch_two(tasks, cls_input):
    torch.manual_seed(0)
    net = mtmed3d_tiny(tasks=tasks, cls_input=cls_input).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 4, 32, 32, 32))
    assert set(out) == {"seg": "seg", "det": "det", "cls": "cls"}.keys() & set(tasks)
    if "seg" in tasks:
        assert out["seg"].shape == (2, 3, 32, 32, 32)
    if "cls" in tasks:
        assert out["cls"].shape == (2, 2)
    if "det" in tasks:
        # FPN levels on h1..h4: strides 4, 8, 16, 32; 5 anchors x (1 class | 6 deltas)
        assert [tuple(m.shape) for m in out["det"]["classification"]] == \
            [(2, 5, s, s, s) for s in (8, 4, 2, 1)]
        assert [tuple(m.shape) for m in out["det"]["box_regression"]] == \
            [(2, 30, s, s, s) for s in (8, 4, 2, 1)]
    # single-task grading in cascade mode runs the segmentation decoder (as the authors)
    assert (net.seg_decoder is not None) == ("seg" in tasks or ("cls" in tasks and cls_input == "cascade"))
    assert (net.det_decoder is not None) == ("det" in tasks)


def test_shared_parameter_is_the_encoders_last_and_every_head_reaches_it():
    torch.manual_seed(0)
    net = mtmed3d_tiny()
    w = net.shared_parameter()
    assert w is list(net.encoder.parameters())[-1]
    out = net(torch.randn(1, 4, 32, 32, 32))
    for name, y in (("seg", out["seg"]), ("cls", out["cls"]), ("det", out["det"]["box_regression"][0])):
        (g,) = torch.autograd.grad(y.square().mean(), w, retain_graph=True)
        assert g.abs().sum() > 0, name


def test_bad_options_are_config_errors():
    with pytest.raises(ConfigError, match="tasks"):
        mtmed3d_tiny(tasks=["seg", "grading"])
    with pytest.raises(ConfigError, match="cls_input"):
        mtmed3d_tiny(cls_input="pooled")
    with pytest.raises(ConfigError, match="cls_activation"):
        mtmed3d_tiny(cls_activation="softmax")


def test_cascade_options_change_what_the_grader_reads_and_where_its_loss_stops():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 32, 32, 32)
    theirs = mtmed3d_tiny(tasks=("seg", "cls")).eval()
    ours = mtmed3d_tiny(tasks=("seg", "cls"), cls_activation="sigmoid", cls_detach=True).eval()
    ours.load_state_dict(theirs.state_dict())          # the options add no parameters
    seen = []
    for net in (theirs, ours):
        hook = net.cls_decoder.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        out = net(x)
        hook.remove()
        # the grading loss reaches the segmentation decoder in the authors' cascade only
        (g,) = torch.autograd.grad(out["cls"].sum(), net.seg_decoder.out.conv.conv.weight,
                                   allow_unused=True, retain_graph=True)
        assert (g is not None and g.abs().sum() > 0) == (net is theirs)
        # ... and the segmentation loss still trains both
        (g,) = torch.autograd.grad(out["seg"].mean(), net.seg_decoder.out.conv.conv.weight)
        assert g.abs().sum() > 0
    torch.testing.assert_close(seen[1], torch.sigmoid(seen[0]).detach())
    assert seen[0].min() < 0 and 0 <= seen[1].min() and seen[1].max() <= 1


# ------------------------------------------------------------------ detection utilities
def _flat_to_maps(flat: torch.Tensor, sizes, anchors: int, channels: int) -> list[torch.Tensor]:
    """Inverse of MONAI's head-map flattening (B, H, W, D, A, C order per level)."""
    maps, i = [], 0
    for s in sizes:
        n = s ** 3 * anchors
        maps.append(flat[i:i + n].reshape(s, s, s, anchors, channels).permute(3, 4, 0, 1, 2)
                    .reshape(1, anchors * channels, s, s, s))
        i += n
    return maps


def test_detection_matches_decodes_and_scores_a_hand_made_box():
    from medrestore.losses.detection import RetinaDetection

    det = RetinaDetection(anchor_shapes=[[8, 8, 8], [12, 10, 8]], anchor_scales=[1, 2, 4, 8])
    image, sizes, a = torch.zeros(1, 4, 64, 64, 64), (16, 8, 4, 2), 2
    gt, label = torch.tensor([[20.0, 22.0, 18.0, 36.0, 40.0, 30.0]]), torch.tensor([0])
    blank = {"classification": [torch.full((1, a, s, s, s), -8.0) for s in sizes],
             "box_regression": [torch.zeros(1, a * 6, s, s, s) for s in sizes]}
    matched = det.matched_anchors(image, blank, [gt], [label])[0]
    pos = torch.where(matched >= 0)[0]
    assert len(pos) >= 1
    before = det.loss(image, blank, [gt], [label])
    assert before["cls"] > 0 and before["box"] > 0
    # the perfect prediction: matched anchors fire and regress exactly onto the box
    anchors = det.detector.anchors[0]
    cls_flat = torch.full((len(anchors), 1), -8.0)
    reg_flat = torch.zeros(len(anchors), 6)
    cls_flat[pos] = 8.0
    reg_flat[pos] = det.detector.box_coder.encode_single(gt.expand(len(pos), 6), anchors[pos])
    perfect = {"classification": _flat_to_maps(cls_flat, sizes, a, 1),
               "box_regression": _flat_to_maps(reg_flat, sizes, a, 6)}
    after = det.loss(image, perfect, [gt], [label])
    assert after["box"] < 1e-6 and after["cls"] < before["cls"] / 100
    (found,) = det.decode(image, perfect)
    assert found["boxes"].shape == (1, 6)            # the authors' cap: one detection per image
    torch.testing.assert_close(found["boxes"], gt, atol=1e-3, rtol=0)
    assert float(found["scores"][0]) > 0.99
    # an image without a tumour contributes negatives only
    empty = det.loss(image, perfect, [torch.zeros(0, 6)], [torch.zeros(0, dtype=torch.long)])
    assert float(empty["box"]) == 0.0 and empty["cls"] > after["cls"]


def test_authors_anchors_are_larger_than_their_crop():
    from medrestore.losses.detection import RetinaDetection

    det = RetinaDetection()                     # the authors' shapes x 2/4/8/16
    cells = det.detector.anchor_generator.cell_anchors
    sides = [c[:, 3:] - c[:, :3] for c in cells]
    assert float(sides[0].min()) == 60.0         # finest level: 30 x 2
    assert all(float(s.min()) > 96 for s in sides[1:])   # every coarser anchor exceeds 96^3
    with pytest.raises(ConfigError, match="anchor_shapes"):
        RetinaDetection(anchor_shapes=[[8, 8]])
