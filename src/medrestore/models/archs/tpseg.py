"""TP-Seg (CVPR 2026 Findings): task-prompted unified lesion segmentation.

"TP-Seg: Task-Prototype Framework for Unified Medical Lesion Segmentation". One network segments
the lesions of many tasks (modalities); a task id per image selects the task-specific parts.
Our own implementation of the released network class, checked against it for the parameter
count of every part (``tests/test_tpseg.py``).

Network (released configuration: 8 tasks, Hiera-L, adapter rank 64, M = 6 experts):

* **Frozen backbone**: the SAM2 Hiera trunk, here timm's ``HieraDet`` (``sam2_hiera_large``:
  embed 144, stages 2/6/36/4, channels 144/288/576/1152 at strides 4/8/16/32), built with
  ``pretrained=False``; SAM2 or timm weights come from a local file (``backbone_weights``, read
  with the library's one loader). timm's class carries a classifier head whose LayerNorm
  (``head.norm``, 2 × 1152 = 2,304 parameters) SAM2's trunk does not have and whose output the
  stage features never pass through: it is removed, so the trunk holds 212,149,296 parameters
  (timm's whole model 212,151,600), as the authors' ``sam2`` trunk does.
* **Task adapters** (:class:`~medrestore.models.layers.adapters.TaskAdapter`): one before every
  backbone block (48 for Hiera-L), on the block's input tokens (channels last), routed by the
  sample's task id; up-projections start at zero, so the frozen trunk's features are unchanged
  at initialisation.
* **Neck**: RFB-style multi-branch blocks reduce the four stages to 64/128/256/512 channels.
* **Task embedding** ``nn.Embedding(num_tasks, 64)``: read by the prototype initialiser.
* **Prototype-guided decoder** (:class:`PrototypeStage`, three stages top-down: (x3, x4) →
  (x2, ·) → (x1, ·), widths 256/128/128) and a depthwise head on x4: four logit maps, each the
  channel of the sample's task out of ``num_tasks``, up-sampled to the input size; a learned
  per-task softmax over the four (initialised to favour the finest) fuses them.

``forward(image, task_ids, masks=None)`` returns ``(fused, out1, out2, out3)`` — logits
``B×1×H×W`` (the fused map first, then the three decoder stages, finest first; the x4 head
enters only the fusion, as in the authors' code). ``masks`` (``B×1×H×W`` in [0, 1]) feed the
prototypes' moving averages in training mode only.

Departures from the authors' class (none changes a parameter count):

* ``sim_norm`` (default ``"sample"``): the similarity map behind the logit bias is divided by the
  mean of its absolute value over each sample's own map; the authors take that mean over the
  whole batch (``"batch"`` reproduces it), which makes a sample's prediction depend on its
  batch-mates and on the evaluation batch size.
* The M experts' kernels are mixed by their gate before one per-sample depthwise convolution;
  the authors convolve with all M kernels (unfold + einsum) and mix the results. Convolution is
  linear in the kernel, so both give the same output; ours needs 1/M of the memory.
* Outputs are up-sampled to the input size (theirs: a fixed 512).
* Parts the released class builds but never calls are kept only with ``keep_unused=True``
  (default, for the released parameter count; 440,034 parameters at the released sizes):
  three extra RFB blocks to 32 channels on the 128/256/512 neck outputs (``unused_rfb``:
  431,936), two more task heads on the 256- and 128-channel decoder features (``unused_heads``:
  7,696; only the head on x4 is used) and each decoder stage's scale router (133 + 1), whose
  output the released network computes and discards. They are trainable, as in the
  authors' class, but receive no gradient (AdamW skips them). ``keep_unused=False`` drops them.
  Also unused in the released code and not built here: ``LearnableSplitGate`` (a learned split
  between shared and task-specific blocks) and the prototypes' contrastive term.

``freeze_backbone=False`` trains the trunk too (a departure; meant for a randomly initialised
trunk, e.g. the CPU demo where no pretrained Hiera is available offline).

Parts that receive no gradient in the released design (as here): the task embedding and the
prototype initialiser (they only seed the prototype buffers, under ``no_grad``). Training under
DDP therefore needs ``find_unused_parameters=True``.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medrestore.errors import ConfigError, MedrestoreError
from medrestore.models.layers.adapters import TaskAdapter
from medrestore.models.layers.dynamic import dynamic_depthwise_conv2d

__all__ = ["TPSeg", "PrototypeStage", "RFBBlock", "tpseg", "tpseg_hiera_tiny", "tpseg_tiny",
           "TINY_HIERA", "SIM_NORMS"]

SIM_NORMS = ("sample", "batch")

#: a randomly initialised Hiera small enough for CPU tests (timm's HieraDet arguments)
TINY_HIERA: dict[str, Any] = {"embed_dim": 16, "num_heads": 1, "stages": (1, 1, 1, 1),
                              "global_att_blocks": (), "window_spec": (8, 4, 4, 2)}


# ----------------------------------------------------------------------------- neck
def _conv_gn_relu(cin: int, cout: int, kernel: int | tuple[int, int], padding: Any = 0,
                  dilation: int = 1) -> nn.Sequential:
    """Bias-free conv → GroupNorm(1) → ReLU (the neck's unit)."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=padding, dilation=dilation, bias=False),
                         nn.GroupNorm(1, cout), nn.ReLU(inplace=True))


class RFBBlock(nn.Module):
    """Receptive-field block: a 1×1 branch and three branches (1×1 → 1×k → k×1 → 3×3 dilated
    k, for k = 3, 5, 7), concatenated and fused by a 3×3, plus a 1×1 shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList([nn.Sequential(_conv_gn_relu(cin, cout, 1))])
        for k in (3, 5, 7):
            self.branches.append(nn.Sequential(
                _conv_gn_relu(cin, cout, 1),
                _conv_gn_relu(cout, cout, (1, k), padding=(0, k // 2)),
                _conv_gn_relu(cout, cout, (k, 1), padding=(k // 2, 0)),
                _conv_gn_relu(cout, cout, 3, padding=k, dilation=k)))
        self.fuse = _conv_gn_relu(4 * cout, cout, 3, padding=1)
        self.shortcut = _conv_gn_relu(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.fuse(torch.cat([b(x) for b in self.branches], dim=1))
        return F.relu(y + self.shortcut(x))


def _task_head(channels: int, num_tasks: int) -> nn.Sequential:
    """Depthwise 3×3 → GroupNorm(1) → GELU → 1×1 to one logit channel per task."""
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
                         nn.GroupNorm(1, channels), nn.GELU(), nn.Conv2d(channels, num_tasks, 1))


def _task_channel(logits: Tensor, task_ids: Tensor) -> Tensor:
    """``B×T×H×W`` → ``B×1×H×W``: each sample's own task channel."""
    idx = task_ids.long().view(-1, 1, 1, 1).expand(-1, 1, *logits.shape[-2:])
    return logits.gather(1, idx)


# ----------------------------------------------------------------------------- decoder
class PrototypeStage(nn.Module):
    """One stage of the prototype-guided task decoder.

    ``x_low`` (``c_low``) and ``x_high`` (``c_high``, resized to ``x_low``) are projected and
    fused into ``channels`` = C. Per task the stage keeps a foreground and a background
    prototype (buffer ``prototypes`` ``T×2×C``, unit length): seeded on a task's first forward
    from an MLP on the task embedding, then in training moved by an exponential moving average
    (``proto_momentum``) toward the mean of the L2-normalised features under the ground-truth
    foreground (mask > ``fg_threshold``) / background (mask < ``bg_threshold``) of each sample,
    when that region has more than ``min_region`` pixels; no gradient reaches them.

    From the features ``f`` (a grouped 3×3 encoder of the fused map):

    * similarity ``s = cos(f, p_fg) − cos(f, p_bg)`` per pixel;
    * cross-attention with the two prototypes as queries and ``f``'s pixels as keys / values;
      ``[a_fg, a_bg, a_fg − a_bg]`` → linear → a per-sample vector ``v``;
    * ``v`` generates M depthwise 3×3 kernels per channel, each blended with the identity kernel
      (``mix``·K + (1 − ``mix``)·I, ``mix`` learnable, 0.3 at start) and weighted by a softmax gate
      on ``v``; the fused map gated by ``1 + 0.5·σ(s)`` is filtered with them;
    * a depthwise head gives ``num_tasks`` logit maps; the sample's task channel gets the bias
      ``λ·g·tanh((s / mean|s|) / τ)`` (λ = ``logit_lambda``, learnable gain g = 1, τ = 0.1).

    Returns ``(logit B×1×h×w, features B×C×h×w)``.
    """

    def __init__(self, c_low: int, c_high: int, channels: int, num_tasks: int, task_dim: int = 64,
                 num_experts: int = 6, heads: int = 4, proto_momentum: float = 0.995,
                 logit_lambda: float = 5.0, min_region: int = 10, fg_threshold: float = 0.5,
                 bg_threshold: float = 0.1, sim_norm: str = "sample", keep_unused: bool = True) -> None:
        super().__init__()
        c = channels
        if c % 4 or c % heads or c < 4:
            raise ConfigError(f"model.net.decoder_channels: {c} must be a multiple of 4 and of "
                              f"attn_heads={heads}")
        if sim_norm not in SIM_NORMS:
            raise ConfigError(f"model.net.sim_norm={sim_norm!r}; expected one of {list(SIM_NORMS)}")
        if not 0.0 <= proto_momentum < 1.0:
            raise ConfigError(f"model.net.proto_momentum={proto_momentum}; expected a value in [0, 1)")
        self.channels, self.num_tasks, self.num_experts = c, num_tasks, num_experts
        self.logit_lambda, self.min_region = float(logit_lambda), int(min_region)
        self.fg_threshold, self.bg_threshold = float(fg_threshold), float(bg_threshold)
        self.sim_norm = sim_norm

        self.proj_low = nn.Sequential(nn.Conv2d(c_low, c // 2, 1, bias=False), nn.GroupNorm(1, c // 2), nn.GELU())
        self.proj_high = nn.Sequential(nn.Conv2d(c_high, c, 1, bias=False), nn.GroupNorm(1, c), nn.GELU())
        self.fuse = nn.Sequential(nn.Conv2d(c + c // 2, c, 1, bias=False), nn.GroupNorm(1, c), nn.GELU())

        self.register_buffer("prototypes", torch.zeros(num_tasks, 2, c))
        self.register_buffer("proto_ready", torch.zeros(num_tasks, dtype=torch.bool))
        self.register_buffer("proto_momentum", torch.tensor(float(proto_momentum)))
        identity = torch.zeros(c, 1, 3, 3)
        identity[:, 0, 1, 1] = 1.0
        self.register_buffer("identity_kernel", identity)

        self.proto_init = nn.Sequential(nn.Linear(task_dim, 2 * c), nn.GELU(), nn.Linear(2 * c, 2 * c))
        self.encoder = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, groups=c // 4),
                                     nn.GroupNorm(min(4, c), c), nn.GELU(), nn.Conv2d(c, c, 1))
        self.attn = nn.MultiheadAttention(c, heads, batch_first=True)
        self.proto_fuse = nn.Linear(3 * c, c)
        self.kernel_gen = nn.Sequential(nn.Linear(c, 2 * c), nn.GELU(), nn.Linear(2 * c, num_experts * c * 9))
        self.expert_gate = nn.Linear(c, num_experts)
        self.mix = nn.Parameter(torch.tensor(0.3))
        self.sim_temperature = nn.Parameter(torch.tensor(0.1))
        self.sim_gain = nn.Parameter(torch.tensor(1.0))
        self.head = _task_head(c, num_tasks)
        if keep_unused:  # built and never called by the released class (module docstring)
            self.unused_scale_router = nn.Sequential(nn.Linear(task_dim, 2), nn.GELU(), nn.Linear(2, 1))
            self.unused_scale_weights = nn.Parameter(torch.ones(1))

    # -------------------------------------------------------------- prototypes
    @torch.no_grad()
    def seed_prototypes(self, task_ids: Tensor, task_emb: Tensor) -> None:
        """Seed the prototypes of tasks seen for the first time from the task embedding (the
        first sample of that task in the batch), L2-normalised."""
        ready = self.proto_ready[task_ids]
        if bool(ready.all()):
            return
        init = F.normalize(self.proto_init(task_emb).view(-1, 2, self.channels).float(), dim=-1)
        for b, t in enumerate(task_ids.tolist()):
            if not bool(self.proto_ready[t]):
                self.prototypes[t] = init[b].to(self.prototypes.dtype)
                self.proto_ready[t] = True

    @torch.no_grad()
    def update_prototypes(self, feats: Tensor, masks: Tensor, task_ids: Tensor) -> None:
        """Moving-average step toward the ground-truth-masked feature means (module docstring);
        samples are applied in batch order, so two samples of one task make two steps."""
        feats = F.normalize(feats.detach().float(), dim=1)
        m = masks.detach().float()
        if m.shape[-2:] != feats.shape[-2:]:
            m = F.interpolate(m, size=feats.shape[-2:], mode="bilinear", align_corners=True)
        m = m[:, 0]
        regions = torch.stack([(m > self.fg_threshold), (m < self.bg_threshold)], 1).float()  # B×2×h×w
        area = regions.flatten(2).sum(-1)                                                     # B×2
        means = torch.einsum("bkhw,bchw->bkc", regions, feats) / (area.unsqueeze(-1) + 1e-6)
        keep = (area > self.min_region).tolist()
        mom = self.proto_momentum.float()
        for b, t in enumerate(task_ids.tolist()):
            for k in (0, 1):
                if keep[b][k]:
                    new = mom * self.prototypes[t, k].float() + (1.0 - mom) * means[b, k]
                    self.prototypes[t, k] = F.normalize(new, dim=0).to(self.prototypes.dtype)

    # -------------------------------------------------------------- forward
    def forward(self, x_low: Tensor, x_high: Tensor, task_ids: Tensor, task_emb: Tensor,
                masks: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if x_high.shape[-2:] != x_low.shape[-2:]:
            x_high = F.interpolate(x_high, size=x_low.shape[-2:], mode="bilinear", align_corners=True)
        x = self.fuse(torch.cat([self.proj_high(x_high), self.proj_low(x_low)], dim=1))
        b, c, h, w = x.shape
        self.seed_prototypes(task_ids, task_emb)

        feats = self.encoder(x)
        protos = F.normalize(self.prototypes[task_ids].to(x.dtype), dim=-1)    # B×2×C (copies)
        fn = F.normalize(feats, dim=1)
        cos = torch.einsum("bchw,bkc->bkhw", fn, protos)
        sim = cos[:, :1] - cos[:, 1:]                                            # B×1×h×w
        attended, _ = self.attn(protos, feats.flatten(2).transpose(1, 2),
                                feats.flatten(2).transpose(1, 2), need_weights=False)
        fg, bg = attended[:, 0], attended[:, 1]
        vec = self.proto_fuse(torch.cat([fg, bg, fg - bg], dim=-1))             # B×C

        if self.training and masks is not None:
            self.update_prototypes(feats, masks, task_ids)

        kernels = self.kernel_gen(vec).view(b, self.num_experts, c, 9)
        identity = self.identity_kernel.view(1, 1, c, 9).to(kernels.dtype)
        kernels = self.mix * kernels + (1.0 - self.mix) * identity
        gate = torch.softmax(self.expert_gate(vec), dim=-1)                     # B×M
        kernel = torch.einsum("bm,bmcr->bcr", gate, kernels).reshape(b, c, 3, 3)
        y = dynamic_depthwise_conv2d(x * (1.0 + 0.5 * torch.sigmoid(sim)), kernel)

        logit = _task_channel(self.head(y), task_ids)
        if self.sim_norm == "sample":
            scale = sim.abs().mean(dim=(1, 2, 3), keepdim=True)
        else:
            scale = sim.abs().mean()
        bias = torch.tanh((sim / (scale + 1e-6)) / self.sim_temperature.clamp(min=1e-3))
        return logit + self.logit_lambda * self.sim_gain * bias, y


class TaskLogitFusion(nn.Module):
    """Per-task softmax weights over the deep-supervision outputs (finest favoured at start:
    logits ``[2, 0, 0, 0]``)."""

    def __init__(self, num_tasks: int, num_outputs: int = 4) -> None:
        super().__init__()
        self.logits = nn.Embedding(num_tasks, num_outputs)
        with torch.no_grad():
            self.logits.weight.zero_()
            self.logits.weight[:, 0] = 2.0

    def forward(self, outputs: Sequence[Tensor], task_ids: Tensor) -> Tensor:
        w = torch.softmax(self.logits(task_ids), dim=-1)                         # B×K
        stacked = torch.stack(list(outputs), dim=1)                              # B×K×1×H×W
        return (stacked * w.view(*w.shape, 1, 1, 1).to(stacked.dtype)).sum(1)


# ----------------------------------------------------------------------------- network
def build_backbone(name: str, kwargs: Mapping[str, Any] | None = None) -> nn.Module:
    """A timm Hiera (``HieraDet``) trunk, randomly initialised (``pretrained=False``: weights
    only ever come from a local file), without timm's classifier head."""
    import timm

    if not str(name).startswith(("sam2_hiera", "hieradet")):
        raise ConfigError(f"model.net.backbone={name!r}; expected a timm SAM2 Hiera "
                          "(sam2_hiera_large, sam2_hiera_base_plus, sam2_hiera_small, sam2_hiera_tiny)")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(kwargs or {}).items()}
    try:
        trunk = timm.create_model(name, pretrained=False, num_classes=0, **kw)
    except (RuntimeError, TypeError, ValueError, AssertionError) as exc:
        raise ConfigError(f"model.net.backbone={name!r} with backbone_kwargs={dict(kwargs or {})}: "
                          f"timm refused ({type(exc).__name__}: {exc})") from None
    trunk.head = nn.Identity()  # SAM2's trunk has no final norm / classifier (module docstring)
    return trunk


class TPSeg(nn.Module):
    """TP-Seg network (module docstring). ``in_channels`` = 3 (RGB, ImageNet-normalised),
    ``out_channels`` = 1 (a lesion logit for the sample's task)."""

    def __init__(self, num_tasks: int = 8, backbone: str = "sam2_hiera_large",
                 backbone_kwargs: Mapping[str, Any] | None = None, backbone_weights: str | None = None,
                 adapter_rank: int = 64, neck_channels: Sequence[int] = (64, 128, 256, 512),
                 decoder_channels: Sequence[int] = (128, 128, 256), task_dim: int = 64,
                 num_experts: int = 6, attn_heads: int = 4, proto_momentum: float = 0.995,
                 logit_lambda: float = 5.0, min_region: int = 10, sim_norm: str = "sample",
                 keep_unused: bool = True, checkpoint_blocks: bool = False,
                 freeze_backbone: bool = True, in_channels: int = 3, out_channels: int = 1) -> None:
        super().__init__()
        if int(num_tasks) < 1:
            raise ConfigError(f"model.net.num_tasks={num_tasks}; expected >= 1")
        if in_channels != 3 or out_channels != 1:
            raise ConfigError(f"model.net.in_channels/out_channels={in_channels}/{out_channels}; "
                              "TP-Seg takes RGB images (3) and predicts one lesion logit (1)")
        if len(neck_channels) != 4 or len(decoder_channels) != 3:
            raise ConfigError(f"model.net.neck_channels={list(neck_channels)} / decoder_channels="
                              f"{list(decoder_channels)}; expected 4 and 3 widths")
        self.num_tasks, self.in_channels, self.out_channels = int(num_tasks), 3, 1
        self.checkpoint_blocks = bool(checkpoint_blocks)

        self.trunk = build_backbone(backbone, backbone_kwargs)
        self.trunk.requires_grad_(not freeze_backbone)
        self.stage_ends = list(self.trunk.stage_ends)
        dims = [blk.dim for blk in self.trunk.blocks]                 # each block's input width
        stage_dims = [self.trunk.blocks[i].dim_out for i in self.stage_ends]
        # inputs must tile Hiera's windowed position embedding and its total stride
        patch = int(self.trunk.patch_embed.proj.stride[0])
        stride = patch * 2 ** len(self.trunk.q_pool_blocks)
        self.size_multiple = math.lcm(stride, patch * int(self.trunk.window_spec[0]))
        self.adapters = nn.ModuleList(TaskAdapter(d, self.num_tasks, adapter_rank) for d in dims)

        n1, n2, n3, n4 = (int(c) for c in neck_channels)
        d1, d2, d3 = (int(c) for c in decoder_channels)
        self.task_embedding = nn.Embedding(self.num_tasks, task_dim)
        self.rfb1, self.rfb2 = RFBBlock(stage_dims[0], n1), RFBBlock(stage_dims[1], n2)
        self.rfb3, self.rfb4 = RFBBlock(stage_dims[2], n3), RFBBlock(stage_dims[3], n4)
        if keep_unused:  # built, never called in the released class (module docstring)
            self.unused_rfb = nn.ModuleList([RFBBlock(n2, 32), RFBBlock(n3, 32), RFBBlock(n4, 32)])
            self.unused_heads = nn.ModuleList([_task_head(d3, self.num_tasks), _task_head(d2, self.num_tasks)])
        stage = dict(num_tasks=self.num_tasks, task_dim=task_dim, num_experts=num_experts,
                     heads=attn_heads, proto_momentum=proto_momentum, logit_lambda=logit_lambda,
                     min_region=min_region, sim_norm=sim_norm, keep_unused=keep_unused)
        self.dec3 = PrototypeStage(n3, n4, d3, **stage)
        self.dec2 = PrototypeStage(n2, d3, d2, **stage)
        self.dec1 = PrototypeStage(n1, d2, d1, **stage)
        self.head4 = _task_head(n4, self.num_tasks)
        self.fusion = TaskLogitFusion(self.num_tasks, 4)
        if backbone_weights:
            self.load_backbone(backbone_weights)

    # -------------------------------------------------------------- weights
    def load_backbone(self, path: str, option: str = "model.net.backbone_weights") -> None:
        """Load the trunk from a local SAM2 checkpoint (``{"model": {"image_encoder.trunk.…"}}``),
        a timm state dict of the same Hiera, or a state dict of ``trunk.*`` keys; strict, one
        line on a mismatch."""
        from medrestore.models.pretrained import load_state_dict_strict, read_weights

        obj = read_weights(path, option)
        sd = obj.get("model", obj) if isinstance(obj, Mapping) else obj
        if not isinstance(sd, Mapping):
            raise ConfigError(f"{option}={path}: expected a state dict")
        for prefix in ("image_encoder.trunk.", "trunk.", "net.trunk."):
            if any(str(k).startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items() if str(k).startswith(prefix)}
                break
        # SAM2 names the MLP layers layers.0 / layers.1 (timm: fc1 / fc2); timm's own files may
        # carry the head norm that this trunk does not have
        sd = {k.replace("mlp.layers.0", "mlp.fc1").replace("mlp.layers.1", "mlp.fc2"): v
              for k, v in sd.items() if not str(k).startswith("head.")}
        load_state_dict_strict(self.trunk, sd, f"{option}={path}")

    # -------------------------------------------------------------- forward
    def encode(self, image: Tensor, task_ids: Tensor) -> list[Tensor]:
        """The four stage features (``B×C×h×w``) of the adapted trunk."""
        x = self.trunk._pos_embed(self.trunk.patch_embed(image))               # B×h×w×C
        feats = []
        for i, (adapter, block) in enumerate(zip(self.adapters, self.trunk.blocks)):
            if self.checkpoint_blocks and self.training and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                x = checkpoint(lambda t, a=adapter, blk=block: blk(a(t, task_ids)), x,
                               use_reentrant=False)
            else:
                x = block(adapter(x, task_ids))
            if i in self.stage_ends:
                feats.append(x.permute(0, 3, 1, 2))
        return feats

    def forward(self, image: Tensor, task_ids: Tensor,
                masks: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        h, w = image.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise MedrestoreError(f"TP-Seg input {h}x{w}: height and width must be multiples of "
                                  f"{self.size_multiple} (the Hiera trunk's window grid); resize "
                                  "the images (data.image_size)")
        task_ids = task_ids.long().reshape(-1).to(image.device)
        emb = self.task_embedding(task_ids)
        x1, x2, x3, x4 = self.encode(image, task_ids)
        x1, x2, x3, x4 = self.rfb1(x1), self.rfb2(x2), self.rfb3(x3), self.rfb4(x4)
        masks = masks if self.training else None
        out4 = _task_channel(self.head4(x4), task_ids)
        out3, y3 = self.dec3(x3, x4, task_ids, emb, masks)
        out2, y2 = self.dec2(x2, y3, task_ids, emb, masks)
        out1, _ = self.dec1(x1, y2, task_ids, emb, masks)
        up = [F.interpolate(o, size=(h, w), mode="bilinear", align_corners=True)
              for o in (out1, out2, out3, out4)]
        return self.fusion(up, task_ids), up[0], up[1], up[2]

    # -------------------------------------------------------------- parameter groups
    def parameter_counts(self) -> dict[str, int]:
        """Parameters by part: trainable, adapters, frozen trunk, total; and buffer elements."""
        count = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
        return {"trainable": count(p for p in self.parameters() if p.requires_grad),
                "adapters": count(self.adapters.parameters()),
                "frozen": count(p for p in self.parameters() if not p.requires_grad),
                "total": count(self.parameters()),
                "buffers": count(self.buffers())}


# ----------------------------------------------------------------------------- factories
def tpseg(**kwargs: Any) -> TPSeg:
    """The released configuration: SAM2 Hiera-L trunk, 8 tasks, rank 64, M = 6."""
    return TPSeg(**kwargs)


def tpseg_hiera_tiny(**kwargs: Any) -> TPSeg:
    """TP-Seg on SAM2's Hiera-T trunk (embed 96, stages 1/2/7/2), otherwise as released."""
    kwargs.setdefault("backbone", "sam2_hiera_tiny")
    return TPSeg(**kwargs)


def tpseg_tiny(**kwargs: Any) -> TPSeg:
    """A randomly initialised tiny Hiera (16 channels, one block per stage) with narrow neck and
    decoder, for tests and CPU demos; same code path as the released network."""
    kwargs.setdefault("backbone", "sam2_hiera_tiny")
    kwargs.setdefault("backbone_kwargs", dict(TINY_HIERA))
    kwargs.setdefault("adapter_rank", 8)
    kwargs.setdefault("neck_channels", (16, 16, 32, 32))
    kwargs.setdefault("decoder_channels", (16, 16, 32))
    kwargs.setdefault("task_dim", 16)
    kwargs.setdefault("num_experts", 2)
    kwargs.setdefault("keep_unused", False)
    return TPSeg(**kwargs)
