"""Synthetic IMSCT phantoms: sagittal T2w + gadolinium T1w spine MRI with tumor, edema, cavity.

Public API::

    from imsct_train.phantoms import generate_case, write_dataset, split_seeds
    case = generate_case(123)          # in-memory nibabel images + labels + metadata
    write_dataset("out", split_seeds("train", 100), jobs=2)

See ``docs/phantoms.md`` for the model, its parameters and the seed split convention.
"""
from __future__ import annotations

from .dataset import (LABEL_KEYS, SPLITS, Case, case_paths, generate_case, split_of, split_seeds,
                      params_digest, write_case, write_dataset)
from .params import CaseParams, sample_case_params

__all__ = ["Case", "CaseParams", "LABEL_KEYS", "SPLITS", "case_paths", "generate_case", "params_digest", "sample_case_params",
           "split_of", "split_seeds", "write_case", "write_dataset"]
