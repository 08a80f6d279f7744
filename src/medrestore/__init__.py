"""medrestore: all-in-one image restoration across medical, natural and remote-sensing domains.

Importing the package is cheap on purpose: it sets offline-friendly defaults for the hub and
W&B (only where the user has not set them) and imports no torch, Lightning or model code.
Import what you need from the submodules (``medrestore.sample``, ``medrestore.registry``,
``medrestore.modules``, ...).
"""

from medrestore.utils.env import apply_offline_defaults

__version__ = "0.1.0"

apply_offline_defaults()
