"""Physically motivated degradation operators (numpy in, numpy out).

Every random operator takes an explicit ``rng`` (a :class:`numpy.random.Generator`); use
:func:`medrestore.degradations.rng.keyed_rng` so that one image key and one seed always give
the same degraded image.

Modules (import the one you need; nothing heavy is imported here):

- :mod:`~medrestore.degradations.rng` -- ``keyed_rng(key, seed)``: reproducible per-image RNG.
- :mod:`~medrestore.degradations.ct` -- ``low_dose_ct`` (HU -> attenuation, parallel-beam
  projection, Poisson photon counts at reduced dose, ramp-filtered back-projection -> HU),
  ``fbp_roundtrip`` (the same pipeline without noise).
- :mod:`~medrestore.degradations.mri` -- ``kspace_truncate`` (central k-space crop, zero-fill,
  magnitude), ``rician_noise``.
- :mod:`~medrestore.degradations.pet` -- ``low_count_pet`` (Poisson thinning of emission counts).
- :mod:`~medrestore.degradations.natural` -- ``bicubic_down_up``, ``gaussian_noise``,
  ``rain_streaks``, ``motion_blur``, ``haze``.
- :mod:`~medrestore.degradations.remote_sensing` -- ``cloud_overlay`` (thin clouds from a real
  cloud mask), ``landsat_qa_cloud_mask``, ``haze`` (re-exported from ``natural``).

These are first versions: each function's docstring states its physical model and where it
simplifies (e.g. parallel-beam CT geometry, image-domain PET noise).
"""
