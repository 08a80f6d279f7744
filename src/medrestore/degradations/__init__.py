"""Physically motivated degradation operators (numpy in, numpy out; ``torch_ops``: torch).

Every random operator takes an explicit ``rng`` (a :class:`numpy.random.Generator`); use
:func:`medrestore.degradations.rng.keyed_rng` so that one image key and one seed always give
the same degraded image.

**Start with** :mod:`~medrestore.degradations.simulators`: ``simulate(name, gt, rng=...,
normalisation=..., spacing=..., **params)`` degrades a clean image given in physical units
and returns the result in the same units and shape; ``SIMULATORS`` names every degradation
(``ct_low_dose``, ``mri_kspace``, ``mri_bicubic``, ``pet_low_count``, ``bicubic``,
``rs_bicubic``, ``gaussian_noise``, ``rain``, ``motion_blur``, ``haze``, ``cloud``) and
``default_simulator(task)`` picks one per task. ``docs/degradations.md`` documents each model.

Modules (import the one you need; nothing heavy is imported here):

- :mod:`~medrestore.degradations.rng` -- ``keyed_rng(key, seed)``: reproducible per-image RNG.
- :mod:`~medrestore.degradations.simulators` -- the named, seeded interface above.
- :mod:`~medrestore.degradations.resize` -- ``imresize`` (MATLAB-compatible bicubic resize,
  anti-aliased when shrinking) and ``bicubic_sr`` (the bicubic SR degradation, re-upsampled).
- :mod:`~medrestore.degradations.ct` -- ``low_dose_ct`` (HU -> attenuation, parallel-beam
  projection, Poisson photon counts at reduced dose, ramp-filtered back-projection -> HU),
  ``fbp_roundtrip`` (the same pipeline without noise).
- :mod:`~medrestore.degradations.mri` -- ``kspace_truncate`` (central k-space crop, zero-fill,
  magnitude), ``downsample`` (k-space or bicubic, optional Rician noise), ``rician_noise``.
- :mod:`~medrestore.degradations.pet` -- ``low_count_pet`` (Poisson thinning of emission counts).
- :mod:`~medrestore.degradations.torch_ops` -- the CT, MRI k-space and PET simulators batched
  in torch on any device (``simulate_batch``; CT as scikit-image's exact radon / iradon
  geometry in sparse operators), seeded per sample with ``torch_seed(seed, draw)``; what
  ``data.degrade_on=device`` runs after the batch reaches the training device.
- :mod:`~medrestore.degradations.natural` -- ``bicubic_down_up`` (torch bicubic, used by the
  demo data), ``gaussian_noise``, ``rain_streaks``, ``motion_blur``, ``haze``.
- :mod:`~medrestore.degradations.remote_sensing` -- ``cloud_overlay`` (thin clouds over a cloud
  mask or opacity map), ``fractal_field`` / ``fractal_cloud`` (power-law synthetic clouds at a
  requested cover), ``landsat_qa_cloud_mask``, ``haze`` (re-exported from ``natural``).

Each function's docstring states its physical model and where it simplifies (e.g.
parallel-beam CT geometry, image-domain PET noise, single-layer clouds).
"""
