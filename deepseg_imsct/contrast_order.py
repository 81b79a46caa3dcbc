"""The contrast-order check of stage 1: refuse a T2w and a T1w given the other way round.

CSF around the spinal cord is bright on a T2w and dark on a T1w. :func:`localize.localize` measures
that contrast around the localizer's cord (:func:`csf_evidence`) on both scans, on the localizer's
block: an order the T2w's own cord confirms needs no second localizer call; otherwise
:func:`check_order` refuses inputs that look swapped (:func:`looks_swapped`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .errors import DeepsegError
from .primitives import dilate

if TYPE_CHECKING:
    from .io import Volume


# CSF around the cord is bright on a T2w and dark on a T1w. :func:`csf_evidence` measures it as
# log(median shell / median cord) on each scan; an order is confirmed (or refused as swapped) when
# both scans agree by more than this margin: the shell at least 22 % brighter than the cord on one
# scan and 18 % darker on the other. Measured with the shipped localizer (docs/errors.md): correct
# pairs 0.36 (testing_data) and 0.42 (real sct_testing_data t2/t1w), swapped pairs 0.34 and 0.54,
# cords the localizer finds on a T1w 0.03 and 0.01, phantoms without CSF 0.03 at most.
SWAP_MARGIN = 0.2
# A cord the localizer finds on the T1w that lies mostly on the T2w's own cord is the same structure
# seen a voxel or two wider (bright-cord T1w, tight sacs): its shell falls in epidural fat and reads
# "swapped". It is a suspect only when less than this share of it is on the T2w's cord. Measured
# (docs/errors.md): the two false refusals among 49 correct pairs overlapped by 41 and 44 %.
OTHER_OVERLAP = 0.3


def csf_evidence(cord: np.ndarray, first: np.ndarray, second: np.ndarray) -> tuple[float, float]:
    """(for the given order, for the swapped order): how far, in log intensity ratio, the shell of
    voxels touching ``cord`` by a face is brighter than the cord on ``first`` and darker on ``second``
    (the smaller of the two), and the reverse. Arrays on the localizer's block, NaN outside the
    fields of view; (0, 0) when there is no shell or no signal."""
    shell = dilate(cord, 1) & ~cord
    logs = []
    for values in (first, second):
        inner, outer = (float(np.nanmedian(v)) if np.isfinite(v).any() else np.nan for v in (values[cord], values[shell]))
        logs.append(np.log(outer / inner) if inner > 0 and outer > 0 else np.nan)
    if not np.all(np.isfinite(logs)):
        return 0.0, 0.0
    return float(min(logs[0], -logs[1])), float(min(-logs[0], logs[1]))


def looks_swapped(cord: np.ndarray, t2_block: np.ndarray, t1_block: np.ndarray) -> bool:
    """True when the CSF around ``cord`` is darker than the cord on the 'T2w' and brighter on the
    'T1w', beyond :data:`SWAP_MARGIN`: the opposite of both contrasts."""
    return csf_evidence(cord, t2_block, t1_block)[1] > SWAP_MARGIN


def check_order(t2: Volume, t1: Volume, cord: np.ndarray | None, other: np.ndarray | None,
                t2_block: np.ndarray, t1_block: np.ndarray) -> None:
    """Refuse inputs whose contrasts look swapped: around the T2w's ``cord``, or around the cord
    found on the T1w (``other``) when the localizer finds more of it there than on the T2w, mostly
    elsewhere (less than :data:`OTHER_OVERLAP` of it on ``cord``).

    The conditions matter: on the T1w the localizer may pick up a lesion instead of the cord, and
    a cavity (bright on T2w, dark on T1w inside the cord) looks "swapped" by the same measure; or
    it may find the T2w's cord again, a little wider, with its shell in epidural fat. A larger cord
    that the localizer finds only on the T1w is the sign of a real swap.
    """
    suspects = [cord] if cord is not None else []
    if other is not None and (cord is None or (other.sum() > cord.sum() and (other & cord).sum() < OTHER_OVERLAP * other.sum())):
        suspects.append(other)
    if any(looks_swapped(mask, t2_block, t1_block) for mask in suspects):
        raise DeepsegError(
            f"the inputs look swapped: the T2w {t2.name} looks like a T1w and the T1w {t1.name} like a T2w "
            "(the CSF around the spinal cord is darker than the cord on the first, brighter on the second): "
            "give the T2w first, or add -c t1 t2 to say that the T1w comes first"
        )
