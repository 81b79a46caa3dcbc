"""deepseg-imsct: intramedullary spinal cord tumor segmentation on T2w + gadolinium T1w MRI.

Inference only (ONNX Runtime on CPU). Importing this package never imports torch.
The public API is re-exported lazily so that ``import deepseg_imsct`` stays cheap.
"""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["DeepsegError", "Predictor", "PostprocessConfig", "segment_files", "__version__"]


def __getattr__(name: str):  # PEP 562: lazy re-exports keep the command's start-up fast
    if name == "DeepsegError":
        from .errors import DeepsegError

        return DeepsegError
    if name in ("Predictor", "segment_files"):
        from . import pipeline

        return getattr(pipeline, name)
    if name == "PostprocessConfig":
        from .postprocess import PostprocessConfig

        return PostprocessConfig
    raise AttributeError(f"module 'deepseg_imsct' has no attribute {name!r}")
