"""Training-side tools of deepseg-imsct (phantom generator, training utilities).

Not a runtime dependency of the inference package ``deepseg_imsct``.
"""
from __future__ import annotations

__version__ = "0.1.0"
