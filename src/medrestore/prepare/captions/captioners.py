"""Captioners: clean image -> one caption per *perspective* (content, main objects, colour,
brightness, viewpoint / modality), behind one interface.

* :class:`LlavaCaptioner` (``llava``) — LLaVA-1.5 through ``transformers`` from a local weights
  directory: one prompt per perspective, batched greedy decoding (deterministic), bf16 on GPU
  and fp32 on CPU. The paper's captioner (LLaVA-1.5-7B); its prompts are not published, so
  ours (:data:`LLAVA_PROMPTS`, overridable in the config) are our own.
* :class:`TemplateCaptioner` (``template``) — offline and model-free: factual sentences built
  from the sample's metadata (domain, modality, pixel spacing) and image statistics
  (brightness, RMS contrast, colourfulness, dominant colour, edge density, texture). It is a
  stand-in that works everywhere, **not** a multimodal language model, and its fingerprint says
  ``template``.

Images reach a captioner as :class:`CaptionInput` — the clean (gt) image as float32
``C×H×W`` in [0, 1] (the sample's own normalisation window) plus its metadata.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from medrestore.errors import ConfigError
from medrestore.prepare.captions.common import (
    CAPTIONERS,
    build_component,
    check_vocab,
    resolve_device,
    resolve_dtype,
    tokenizer_sha256,
    weights_sha256,
)

#: the perspectives of the paper's figure (content/objects, colour, brightness, viewpoint)
PERSPECTIVES = ("content", "objects", "colour", "brightness", "viewpoint")

#: default LLaVA prompts, one per perspective (ours: the paper does not publish its prompts)
LLAVA_PROMPTS = {
    "content": "Describe the content of this image in one sentence.",
    "objects": "What are the main objects or structures in this image? Answer in one sentence.",
    "colour": "Describe the colours of this image in one sentence.",
    "brightness": "Describe the brightness and contrast of this image in one sentence.",
    "viewpoint": "What kind of image is this (photograph, medical scan, or satellite or aerial "
                 "image), and from what viewpoint was it taken? Answer in one sentence.",
}
#: the LLaVA-1.5 conversation format (``<image>`` is expanded by the processor)
LLAVA_FORMAT = "USER: <image>\n{prompt} ASSISTANT:"


@dataclass
class CaptionInput:
    """One clean image to caption: ``image`` float32 ``C×H×W`` in [0, 1] and its metadata."""

    key: str
    image: np.ndarray
    domain: str
    modality: str
    task: str = ""
    spacing: Sequence[float] | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)


class Captioner(ABC):
    """``caption(items)`` -> one ``{perspective: caption}`` dict per item, in
    :attr:`perspectives` order; :meth:`fingerprint` identifies everything that changes the
    text (model, weights, prompts, dtype) without loading the model."""

    name: str = ""

    @property
    @abstractmethod
    def perspectives(self) -> list[str]: ...

    @abstractmethod
    def fingerprint(self) -> dict[str, Any]: ...

    @abstractmethod
    def caption(self, items: Sequence[CaptionInput]) -> list[dict[str, str]]: ...


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """``C×H×W`` in [0, 1] -> ``H×W×3`` uint8 (1 channel replicated; of more than 3 channels
    the first three are shown — a simplification for multispectral stacks)."""
    x = np.asarray(image, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    if x.shape[0] == 1:
        x = np.repeat(x, 3, axis=0)
    elif x.shape[0] == 2:
        x = np.repeat(x.mean(axis=0, keepdims=True), 3, axis=0)
    x = np.clip(x[:3], 0.0, 1.0)
    return np.ascontiguousarray((x * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0))


# ----------------------------------------------------------------------------- template
def _block_mean(x: np.ndarray, max_side: int) -> np.ndarray:
    """Area-average ``C×H×W`` down by an integer factor so the longer side is <= max_side."""
    f = int(np.ceil(max(x.shape[1:]) / max_side))
    if f <= 1:
        return x
    c, h, w = x.shape
    x = x[:, : h - h % f, : w - w % f]
    return x.reshape(c, h // f, f, w // f, f).mean(axis=(2, 4))


def image_statistics(image: np.ndarray, max_side: int = 256) -> dict[str, Any]:
    """Statistics the template captions are written from (image in [0, 1], ``C×H×W``).

    Computed on an area-averaged copy with the longer side <= ``max_side`` (a simplification:
    edge and texture measures therefore describe structure at that scale).

    * ``brightness`` — mean luminance (Rec. 601 weights for RGB);
    * ``contrast`` — RMS contrast, the standard deviation of luminance;
    * ``colourfulness`` — Hasler & Süsstrunk's M on the 0–255 scale (0 for 1 channel);
    * ``dominant_colour`` / ``colour_share`` — the most frequent hue name among saturated
      pixels, and its share of them (``None`` when under 10 % of pixels are saturated);
    * ``edge_density`` — fraction of pixels whose luminance gradient magnitude exceeds 0.1
      (per pixel, [0, 1] scale);
    * ``texture`` — standard deviation of the luminance minus its 3×3 box blur;
    * ``foreground`` — fraction of pixels brighter than 0.1 (the imaged object against an
      empty, dark background in medical images).
    """
    x = _block_mean(np.clip(np.asarray(image, dtype=np.float32), 0, 1), max_side)
    c = x.shape[0]
    rgb = c >= 3
    lum = (0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]) if rgb else x.mean(axis=0)
    gy, gx = np.gradient(lum)
    grad = np.hypot(gx, gy)
    pad = np.pad(lum, 1, mode="edge")
    blur = sum(pad[i:i + lum.shape[0], j:j + lum.shape[1]] for i in range(3) for j in range(3)) / 9
    stats: dict[str, Any] = {
        "channels": int(c),
        "brightness": float(lum.mean()),
        "contrast": float(lum.std()),
        "edge_density": float((grad > 0.1).mean()),
        "texture": float((lum - blur).std()),
        "foreground": float((lum > 0.1).mean()),
        "colourfulness": 0.0, "dominant_colour": None, "colour_share": 0.0,
    }
    if rgb:
        r, g, b = (x[i] * 255.0 for i in range(3))
        rg, yb = r - g, 0.5 * (r + g) - b
        stats["colourfulness"] = float(np.hypot(rg.std(), yb.std())
                                       + 0.3 * np.hypot(rg.mean(), yb.mean()))
        hue, sat, val = _hsv(x[:3])
        chroma = (sat > 0.2) & (val > 0.15)
        if chroma.mean() >= 0.1:
            names = [_hue_name(h) for h in hue[chroma].ravel()[:: max(1, chroma.sum() // 20000)]]
            counts = {n: names.count(n) for n in set(names)}
            top = max(sorted(counts), key=counts.get)
            stats["dominant_colour"], stats["colour_share"] = top, counts[top] / len(names)
    return stats


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB ``3×H×W`` in [0, 1] -> hue in degrees, saturation, value."""
    r, g, b = rgb
    mx, mn = rgb.max(axis=0), rgb.min(axis=0)
    d = mx - mn
    safe = np.where(d > 0, d, 1.0)
    h = np.where(mx == r, ((g - b) / safe) % 6, np.where(mx == g, (b - r) / safe + 2,
                                                         (r - g) / safe + 4)) * 60.0
    h = np.where(d > 0, h, 0.0)
    s = np.where(mx > 0, d / np.where(mx > 0, mx, 1.0), 0.0)
    return h, s, mx


_HUES = ((15, "red"), (45, "orange"), (70, "yellow"), (160, "green"), (200, "cyan"),
         (260, "blue"), (290, "purple"), (335, "magenta"), (360, "red"))


def _hue_name(h: float) -> str:
    for upper, name in _HUES:
        if h < upper:
            return name
    return "red"


def _bin(value: float, edges: Sequence[tuple[float, str]], last: str) -> str:
    for upper, word in edges:
        if value < upper:
            return word
    return last


_BRIGHTNESS = ((0.2, "very dark"), (0.4, "dark"), (0.6, "of medium brightness"), (0.8, "bright"))
_CONTRAST = ((0.08, "low"), (0.18, "moderate"))
# Hasler & Süsstrunk's perceptual categories of M
_COLOURFUL = ((15, "not colourful"), (33, "slightly colourful"), (45, "moderately colourful"),
              (59, "averagely colourful"), (82, "quite colourful"), (109, "highly colourful"))
_EDGES = ((0.05, "smooth with few edges"), (0.15, "moderately detailed"))
_TEXTURE = ((0.01, "little fine texture"), (0.03, "some fine texture"))

_MODALITY = {  # how each modality id reads in a sentence
    "CT": "computed tomography (CT) image", "MR": "magnetic resonance (MR) image",
    "PT": "positron emission tomography (PET) image", "RGB": "colour photograph",
    "MSI": "satellite image", "DX": "radiograph", "CR": "radiograph", "US": "ultrasound image",
}
_DOMAIN = {"medical": "medical imaging", "natural": "natural image",
           "remote_sensing": "remote sensing"}
_VIEW = {
    "medical": "a cross-sectional slice of the body shown as a two-dimensional image",
    "natural": "a photograph taken with an ordinary camera",
    "remote_sensing": "an overhead, bird's-eye view of the Earth's surface",
}

#: bump when the wording changes: the fingerprint then changes and old caches are not mixed
TEMPLATE_VERSION = 1


def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


class TemplateCaptioner(Captioner):
    """Factual sentences from metadata and image statistics (see the module docstring).

    No model is involved: this is an honest, offline substitute for an MLLM captioner, good
    for pipelines and demos. The captions vary with domain, modality, brightness, contrast,
    colour, edges and texture, so text embeddings of them carry that information and no more.
    """

    name = "template"

    def __init__(self, perspectives: Sequence[str] = PERSPECTIVES, max_side: int = 256) -> None:
        unknown = sorted(set(perspectives) - set(PERSPECTIVES))
        if unknown or not perspectives:
            raise ConfigError(f"captioner.perspectives {list(perspectives)}: the template "
                              f"captioner writes {list(PERSPECTIVES)}")
        self._perspectives = list(perspectives)
        self.max_side = int(max_side)

    @property
    def perspectives(self) -> list[str]:
        return list(self._perspectives)

    def fingerprint(self) -> dict[str, Any]:
        tables = json.dumps([_BRIGHTNESS, _CONTRAST, _COLOURFUL, _EDGES, _TEXTURE, _MODALITY,
                             _DOMAIN, _VIEW, _HUES])
        return {"name": self.name, "version": TEMPLATE_VERSION, "perspectives": self.perspectives,
                "max_side": self.max_side,
                "tables_sha256": hashlib.sha256(tables.encode()).hexdigest()[:16]}

    def caption(self, items: Sequence[CaptionInput]) -> list[dict[str, str]]:
        return [self._one(it) for it in items]

    def _one(self, it: CaptionInput) -> dict[str, str]:
        st = image_statistics(it.image, self.max_side)
        what = _MODALITY.get(it.modality, f"{it.modality} image")
        domain = _DOMAIN.get(it.domain, it.domain.replace("_", " "))
        edges = _bin(st["edge_density"], _EDGES, "highly detailed with dense edges")
        texture = _bin(st["texture"], _TEXTURE, "strong fine texture")
        out: dict[str, str] = {}
        out["content"] = f"The image is {_article(what)} from the {domain} domain."
        if it.domain == "medical":
            share = int(round(100 * st["foreground"], -1))
            out["objects"] = (f"The imaged anatomy fills about {share} percent of the field of view "
                              f"against a dark background; it is {edges} and has {texture}.")
        else:
            out["objects"] = f"The scene is {edges}; it has {texture}."
        if st["channels"] < 3:
            out["colour"] = "The image is greyscale, with a single intensity channel."
        else:
            colourful = _bin(st["colourfulness"], _COLOURFUL, "extremely colourful")
            if st["dominant_colour"] is None:
                out["colour"] = f"The image is {colourful}, mostly in grey tones."
            else:
                out["colour"] = (f"The image is {colourful}; {st['dominant_colour']} is the "
                                 "dominant colour.")
        out["brightness"] = (f"The image is {_bin(st['brightness'], _BRIGHTNESS, 'very bright')} "
                             f"with {_bin(st['contrast'], _CONTRAST, 'high')} contrast.")
        view = _VIEW.get(it.domain, "a two-dimensional image")
        spacing = ""
        if it.spacing:
            spacing = f", with a pixel spacing of {float(it.spacing[-1]):.2g} mm"
        out["viewpoint"] = f"It is {view}{spacing}."
        return {p: out[p] for p in self._perspectives}


# ----------------------------------------------------------------------------- llava
class LlavaCaptioner(Captioner):
    """LLaVA-1.5 (``LlavaForConditionalGeneration`` + ``AutoProcessor``) from a local directory.

    Args:
        model_dir: a transformers-format LLaVA-1.5 directory (weights, config, processor).
        prompts: ``{perspective: prompt}``; order gives the perspectives.
        prompt_format: the conversation template, ``{prompt}`` replaced and ``<image>``
            expanded by the processor (LLaVA-1.5: ``"USER: <image>\\n{prompt} ASSISTANT:"``).
        max_new_tokens: caption length limit (CLIP reads 77 tokens at most anyway).
        device / dtype: ``auto`` = the rank's GPU in bf16, else CPU in fp32.
        min_vocab: the tokenizer sanity check's minimum vocabulary.

    Every call decodes greedily, one ``generate`` per perspective over the whole batch; all
    prompts of a call are identical, so no sequence is padded and a batch of N gives the same
    captions as N batches of one (up to floating-point reduction order on GPU).
    """

    name = "llava"

    def __init__(self, model_dir: str, prompts: Mapping[str, str] | None = None,
                 prompt_format: str = LLAVA_FORMAT, max_new_tokens: int = 60,
                 device: str = "auto", dtype: str = "auto", min_vocab: int = 1000) -> None:
        if not model_dir:
            raise ConfigError("captioner.model_dir is required: a local LLaVA-1.5 weights directory")
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise ConfigError(f"captioner.model_dir={self.model_dir}: no config.json there "
                              "(expected a transformers-format LLaVA-1.5 directory)")
        self.prompts = dict(prompts or LLAVA_PROMPTS)
        if not self.prompts:
            raise ConfigError("captioner.prompts is empty: give one prompt per perspective")
        if "{prompt}" not in prompt_format or "<image>" not in prompt_format:
            raise ConfigError(f"captioner.prompt_format={prompt_format!r} needs '{{prompt}}' and "
                              "'<image>'")
        self.prompt_format = prompt_format
        self.max_new_tokens = int(max_new_tokens)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.min_vocab = int(min_vocab)
        self._model = None
        self._processor = None

    @property
    def perspectives(self) -> list[str]:
        return list(self.prompts)

    def fingerprint(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model_dir.name,
                "weights_sha256": weights_sha256(self.model_dir, "captioner.model_dir"),
                "tokenizer_sha256": tokenizer_sha256(self.model_dir),
                "prompts": self.prompts, "prompt_format": self.prompt_format,
                "max_new_tokens": self.max_new_tokens, "decoding": "greedy", "dtype": self.dtype}

    def load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoProcessor, LlavaForConditionalGeneration

        proc = AutoProcessor.from_pretrained(str(self.model_dir), local_files_only=True)
        model = LlavaForConditionalGeneration.from_pretrained(
            str(self.model_dir), dtype=getattr(torch, self.dtype), local_files_only=True)
        rows = model.get_input_embeddings().num_embeddings
        check_vocab(len(proc.tokenizer), rows, self.model_dir, self.min_vocab, exact=False)
        proc.tokenizer.padding_side = "left"  # decoder-only generation pads on the left
        self._processor, self._model = proc, model.to(self.device).eval()

    def caption(self, items: Sequence[CaptionInput]) -> list[dict[str, str]]:
        import torch
        from PIL import Image
        from transformers import GenerationConfig

        if not items:
            return []
        self.load()
        proc, model = self._processor, self._model
        tok = proc.tokenizer
        gen = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                               pad_token_id=tok.pad_token_id if tok.pad_token_id is not None
                               else tok.eos_token_id, eos_token_id=tok.eos_token_id)
        images = [Image.fromarray(to_rgb_uint8(it.image)) for it in items]
        out: list[dict[str, str]] = [{} for _ in items]
        for persp, prompt in self.prompts.items():
            text = [self.prompt_format.format(prompt=prompt)] * len(items)
            inputs = proc(images=images, text=text, return_tensors="pt", padding=True)
            inputs = {k: v.to(self.device) for k, v in inputs.items()}
            inputs["pixel_values"] = inputs["pixel_values"].to(getattr(torch, self.dtype))
            with torch.inference_mode():
                ids = model.generate(**inputs, generation_config=gen)
            new = ids[:, inputs["input_ids"].shape[1]:]
            for o, t in zip(out, proc.batch_decode(new, skip_special_tokens=True)):
                o[persp] = " ".join(t.split())  # one line, single spaces
        return out


def build_captioner(cfg: Mapping[str, Any]) -> Captioner:
    """``{name: template|llava|module:Class, **kwargs}`` -> a :class:`Captioner`."""
    cap = build_component(cfg, CAPTIONERS, "captioner")
    if not isinstance(cap, Captioner):
        raise ConfigError(f"captioner {cfg.get('name')!r} does not implement the Captioner interface")
    return cap
