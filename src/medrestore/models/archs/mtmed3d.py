"""MTMed3D (arXiv 2511.12373): one shared 3-D Swin encoder and three task decoders for brain
tumour segmentation (TC / WT / ET), detection (boxes) and grading (HGG vs LGG).

Pure ``nn.Module`` s built from MONAI parts (no training logic; see
:mod:`medrestore.modules.mtmed3d`):

* **encoder** -- MONAI's 3-D ``SwinTransformer`` as the authors configure it (embed 48, depths
  2/2/2/2, heads 3/6/12/24, window 7, patch 2, MLP ratio 4, qkv bias, no dropout, the original
  ("merging", v1) patch merging, no patch-embedding norm, Swin-UNETR v1 stages), returning the
  five parameter-free LayerNorm-ed maps h0..h4 (strides 2, 4, 8, 16, 32);
* **segmentation decoder** -- the Swin-UNETR decoder (MONAI ``UnetrBasicBlock`` /
  ``UnetrUpBlock`` / ``UnetOutBlock``, residual blocks, instance norm), 3 sigmoid channels;
* **detection decoder** -- RetinaNet heads (MONAI's) over a 3-D FPN on h1..h4 followed by a
  PANet bottom-up pass that re-uses the FPN's 3x3 output convolutions (so it adds no
  parameters, as in the authors' network);
* **classification decoder** -- MONAI ``DenseNet121`` (3-D, 3 -> 2) on the segmentation
  logits (the authors' cascade), or ``cls_input="encoder"``: global average pool of h4 and one
  linear layer. The latter is **our option**, not in the authors' code. Two more options of ours
  for the cascade: ``cls_activation="sigmoid"`` grades from the region probabilities instead of
  the raw logits (bounded input: a logit of +10 and one of +30 say the same thing), and
  ``cls_detach=True`` stops the grading loss at the segmentation output, so it cannot pull the
  segmentation decoder and encoder towards what helps grading alone.

Which decoders exist is set by ``tasks`` (any non-empty subset of ``seg``, ``det``, ``cls``).
With ``cls`` in cascade mode the segmentation decoder is always built and run, since the grade
is read from its logits -- exactly what the authors' single-task classification does; its
segmentation output is then returned only when ``seg`` is one of the tasks.

Parameter counts of the released configuration (4 x 96^3, all three decoders): encoder
8,063,154; segmentation decoder 54,128,787; classification decoder 11,288,578; detection decoder
3,218,051; total 76,698,570 (``tests/test_mtmed3d.py``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

TASKS = ("seg", "det", "cls")
REGIONS = ("tc", "wt", "et")
#: the authors' base anchor shapes (voxels, x/y/z), five per location
AUTHORS_ANCHOR_SHAPES = ((45, 58, 52), (40, 65, 58), (42, 58, 55), (30, 60, 40), (70, 70, 60))
#: the authors' per-level anchor multipliers for the FPN levels on h1..h4
AUTHORS_ANCHOR_SCALES = (2, 4, 8, 16)


def _check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    from medrestore.errors import ConfigError

    tasks = tuple(str(t) for t in tasks)
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks or len(set(tasks)) != len(tasks):
        raise ConfigError(f"model.net.tasks={list(tasks)}: expected a non-empty subset of {list(TASKS)}")
    return tuple(t for t in TASKS if t in tasks)  # canonical order


class SwinEncoder(nn.Module):
    """MONAI's 3-D Swin transformer returning the five normalised stage outputs."""

    def __init__(self, in_channels: int = 4, embed_dim: int = 48, depths: Sequence[int] = (2, 2, 2, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7, patch_size: int = 2,
                 normalize: bool = True, use_checkpoint: bool = False) -> None:
        super().__init__()
        from monai.networks.nets.swin_unetr import SwinTransformer

        self.swin = SwinTransformer(
            in_chans=in_channels, embed_dim=embed_dim, window_size=(window_size,) * 3,
            patch_size=(patch_size,) * 3, depths=tuple(depths), num_heads=tuple(num_heads),
            mlp_ratio=4.0, qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
            norm_layer=nn.LayerNorm, patch_norm=False, use_checkpoint=use_checkpoint,
            spatial_dims=3, downsample="merging", use_v2=False)
        self.normalize = normalize
        self.channels = tuple(embed_dim * 2 ** i for i in range(len(depths) + 1))
        #: input size must be a multiple of this (patch embedding + one merging per stage)
        self.size_divisible = patch_size * 2 ** len(depths)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.swin(x, self.normalize))


class SegmentationDecoder(nn.Module):
    """The Swin-UNETR decoder: convolutional skips from the image and h0..h2, a bottleneck
    residual block on h4, five up-blocks (h3 joins the first), 1x1 output convolution."""

    def __init__(self, in_channels: int = 4, out_channels: int = 3, feature_size: int = 48,
                 norm_name: Any = "instance") -> None:
        super().__init__()
        from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrUpBlock

        f = feature_size

        def basic(cin: int, cout: int) -> nn.Module:
            return UnetrBasicBlock(spatial_dims=3, in_channels=cin, out_channels=cout, kernel_size=3,
                                   stride=1, norm_name=norm_name, res_block=True)

        def up(cin: int, cout: int) -> nn.Module:
            return UnetrUpBlock(spatial_dims=3, in_channels=cin, out_channels=cout, kernel_size=3,
                                upsample_kernel_size=2, norm_name=norm_name, res_block=True)

        self.skip_image, self.skip0, self.skip1, self.skip2 = (
            basic(in_channels, f), basic(f, f), basic(2 * f, 2 * f), basic(4 * f, 4 * f))
        self.bottleneck = basic(16 * f, 16 * f)
        self.up4, self.up3, self.up2 = up(16 * f, 8 * f), up(8 * f, 4 * f), up(4 * f, 2 * f)
        self.up1, self.up0 = up(2 * f, f), up(f, f)
        self.out = UnetOutBlock(spatial_dims=3, in_channels=f, out_channels=out_channels)

    def forward(self, feats: Sequence[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        d = self.up4(self.bottleneck(feats[4]), feats[3])
        d = self.up3(d, self.skip2(feats[2]))
        d = self.up2(d, self.skip1(feats[1]))
        d = self.up1(d, self.skip0(feats[0]))
        d = self.up0(d, self.skip_image(x))
        return self.out(d)


def _panet_fpn_class() -> type:
    from monai.networks.blocks.feature_pyramid_network import FeaturePyramidNetwork

    class PANetFPN(FeaturePyramidNetwork):
        """MONAI's 3-D FPN (1x1 laterals, 3x3 outputs) plus the authors' PANet bottom-up pass:
        each FPN output is summed with the (nearest-resampled) finer output below it, in order
        from fine to coarse, and the same 3x3 output convolutions are applied again. No extra
        pooled level. Takes and returns lists ordered fine to coarse."""

        def forward(self, x: Sequence[torch.Tensor]) -> list[torch.Tensor]:  # type: ignore[override]
            n = len(x)
            last = self.get_result_from_inner_blocks(x[-1], -1)
            outs = [self.get_result_from_layer_blocks(last, -1)]
            for i in range(n - 2, -1, -1):  # top-down
                lateral = self.get_result_from_inner_blocks(x[i], i)
                last = lateral + F.interpolate(last, size=lateral.shape[2:], mode="nearest")
                outs.insert(0, self.get_result_from_layer_blocks(last, i))
            for i in range(1, n):  # bottom-up: a level receives the already-updated finer one
                outs[i] = outs[i] + F.interpolate(outs[i - 1], size=outs[i].shape[2:], mode="nearest")
            return [self.get_result_from_layer_blocks(o, i) for i, o in enumerate(outs)]

    return PANetFPN


class DetectionDecoder(nn.Module):
    """RetinaNet over the PANet-FPN of the last ``len(in_channels)`` encoder maps. Returns
    ``{"classification": [B x A*K x ...], "box_regression": [B x A*6 x ...]}`` per level."""

    def __init__(self, in_channels: Sequence[int] = (96, 192, 384, 768), width: int = 96,
                 num_anchors: int = 5, num_classes: int = 1) -> None:
        super().__init__()
        from monai.apps.detection.networks.retinanet_network import (
            RetinaNetClassificationHead, RetinaNetRegressionHead)

        self.levels = len(in_channels)
        self.fpn = _panet_fpn_class()(spatial_dims=3, in_channels_list=list(in_channels), out_channels=width)
        self.classification_head = RetinaNetClassificationHead(width, num_anchors, num_classes, spatial_dims=3)
        self.regression_head = RetinaNetRegressionHead(width, num_anchors, spatial_dims=3)

    def forward(self, feats: Sequence[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        maps = self.fpn(list(feats[-self.levels:]))
        return {"classification": self.classification_head(maps),
                "box_regression": self.regression_head(maps)}


class CascadeClassifier(nn.Module):
    """A 3-D DenseNet grading the tumour from the segmentation logits (the authors' cascade).
    ``densenet=None``: MONAI ``DenseNet121``; a mapping: ``monai DenseNet`` keyword arguments
    (a small one for the tiny variant)."""

    def __init__(self, in_channels: int = 3, num_classes: int = 2,
                 densenet: Mapping[str, Any] | None = None, pool: str = "avg") -> None:
        super().__init__()
        from monai.networks.nets import DenseNet, DenseNet121

        from medrestore.errors import ConfigError

        if densenet is None:
            self.net = DenseNet121(spatial_dims=3, in_channels=in_channels, out_channels=num_classes)
        else:
            self.net = DenseNet(spatial_dims=3, in_channels=in_channels, out_channels=num_classes, **dict(densenet))
        if pool not in ("avg", "max"):
            raise ConfigError(f"model.net.cls_pool={pool!r}: expected avg | max")
        if pool == "max":
            # ours, not the authors': a global max keeps a small enhancing focus visible where the
            # average over the whole volume dilutes it (same parameters)
            self.net.class_layers.pool = nn.AdaptiveMaxPool3d(1)

    def forward(self, seg_logits: torch.Tensor) -> torch.Tensor:
        return self.net(seg_logits)


class EncoderClassifier(nn.Module):
    """Our option (not the authors'): grade from the globally averaged deepest encoder map."""

    def __init__(self, in_channels: int = 768, num_classes: int = 2) -> None:
        super().__init__()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, deepest: torch.Tensor) -> torch.Tensor:
        return self.fc(deepest.mean(dim=(2, 3, 4)))


class MTMed3D(nn.Module):
    """Shared Swin encoder + the decoders named in ``tasks``.

    ``forward(x)`` takes ``B x C x X x Y x Z`` (each side a multiple of :attr:`size_divisible`)
    and returns a dict with ``seg`` (``B x 3 x X x Y x Z`` logits, TC/WT/ET), ``det`` (the
    RetinaNet maps, see :class:`DetectionDecoder`) and ``cls`` (``B x 2`` logits, index 1 = high
    grade) for the tasks built.
    """

    spatial_dims = 3
    cls_key = "classification"
    box_reg_key = "box_regression"

    def __init__(self, tasks: Sequence[str] = TASKS, in_channels: int = 4, seg_channels: int = 3,
                 embed_dim: int = 48, depths: Sequence[int] = (2, 2, 2, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: int = 7, patch_size: int = 2,
                 normalize: bool = True, use_checkpoint: bool = False, seg_norm: Any = "instance",
                 det_width: int = 96, num_anchors: int = 5, det_classes: int = 1,
                 cls_input: str = "cascade", cls_classes: int = 2,
                 cls_densenet: Mapping[str, Any] | None = None, cls_pool: str = "avg",
                 cls_activation: str = "none", cls_detach: bool = False) -> None:
        super().__init__()
        from medrestore.errors import ConfigError

        self.tasks = _check_tasks(tasks)
        if cls_input not in ("cascade", "encoder"):
            raise ConfigError(f"model.net.cls_input={cls_input!r}: expected cascade | encoder")
        if cls_activation not in ("none", "sigmoid"):
            raise ConfigError(f"model.net.cls_activation={cls_activation!r}: expected none | sigmoid")
        self.cls_activation, self.cls_detach = cls_activation, bool(cls_detach)
        if len(depths) != 4:
            raise ConfigError(f"model.net.depths={list(depths)}: expected 4 stages (5 encoder maps)")
        self.cls_input = cls_input
        self.num_anchors, self.num_classes = num_anchors, det_classes
        self.encoder = SwinEncoder(in_channels, embed_dim, depths, num_heads, window_size, patch_size,
                                   normalize, use_checkpoint)
        self.size_divisible = self.encoder.size_divisible
        ch = self.encoder.channels
        needs_seg = "seg" in self.tasks or ("cls" in self.tasks and cls_input == "cascade")
        # the Swin-UNETR decoder's widths are tied to the encoder's (feature_size = embed_dim)
        self.seg_decoder = (SegmentationDecoder(in_channels, seg_channels, embed_dim, seg_norm)
                            if needs_seg else None)
        self.det_decoder = (DetectionDecoder(ch[1:], det_width, num_anchors, det_classes)
                            if "det" in self.tasks else None)
        if "cls" not in self.tasks:
            self.cls_decoder = None
        elif cls_input == "cascade":
            self.cls_decoder = CascadeClassifier(seg_channels, cls_classes, cls_densenet, cls_pool)
        else:
            self.cls_decoder = EncoderClassifier(ch[-1], cls_classes)

    def shared_parameter(self) -> nn.Parameter:
        """The last parameter of the shared encoder (the final patch merging's projection, which
        produces h4, the map every decoder reads): where GradNorm measures the task gradients."""
        return list(self.encoder.parameters())[-1]

    def decoder_groups(self) -> dict[str, nn.Module]:
        """Named parameter groups for per-group learning rates."""
        groups = {"encoder": self.encoder, "seg": self.seg_decoder, "det": self.det_decoder,
                  "cls": self.cls_decoder}
        return {k: v for k, v in groups.items() if v is not None}

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation logits only (encoder + segmentation decoder): the sliding-window predictor."""
        if self.seg_decoder is None:
            raise RuntimeError("this MTMed3D has no segmentation decoder")
        return self.seg_decoder(self.encoder(x), x)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        feats = self.encoder(x)
        out: dict[str, Any] = {}
        seg = self.seg_decoder(feats, x) if self.seg_decoder is not None else None
        if "seg" in self.tasks:
            out["seg"] = seg
        if self.det_decoder is not None:
            out["det"] = self.det_decoder(feats)
        if self.cls_decoder is not None:
            out["cls"] = self.cls_decoder(self._grading_input(seg) if self.cls_input == "cascade"
                                          else feats[-1])
        return out

    def _grading_input(self, seg: torch.Tensor) -> torch.Tensor:
        # the options are ours; the authors' cascade reads the raw, attached logits
        if self.cls_detach:
            seg = seg.detach()
        return torch.sigmoid(seg) if self.cls_activation == "sigmoid" else seg


# ------------------------------------------------------------------------------ factories
def mtmed3d(**kwargs: Any) -> MTMed3D:
    """The released configuration (4 x 96^3 input; see ``conf/model/mtmed3d.yaml``)."""
    return MTMed3D(**kwargs)


#: tiny variant: same code path, CPU-sized (runs 4 x 32^3 .. 4 x 64^3 well under a second)
TINY = dict(embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 2, 4, 8), window_size=4, det_width=16,
            # group norm: at 32^3 the deepest map is 1^3, where instance norm is undefined
            seg_norm=("group", {"num_groups": 4}),
            cls_densenet={"init_features": 8, "growth_rate": 8, "block_config": (2, 2, 2), "bn_size": 2})


def mtmed3d_tiny(**kwargs: Any) -> MTMed3D:
    return MTMed3D(**{**TINY, **kwargs})
