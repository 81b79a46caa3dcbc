"""Tissue classes of the anatomy model and their nominal MR signal.

Signals are relative to CSF on T2w (= 1) for T2w (fast spin echo) and to subcutaneous fat
(= 1) for gadolinium T1w (spin echo, no fat saturation). ``tex`` is the amplitude of the
multiplicative texture (heterogeneity) of each tissue.
"""
from __future__ import annotations

from enum import IntEnum

import numpy as np


class T(IntEnum):
    """Tissue labels (uint8)."""

    AIR = 0
    FAT = 1
    SKIN = 2
    MUSCLE = 3
    CORTEX = 4
    MARROW = 5
    ANNULUS = 6
    NUCLEUS = 7
    CSF = 8
    CORD = 9
    EPIFAT = 10
    LIGAMENT = 11
    SOFT = 12
    VESSEL = 13
    LUNG = 14
    BRAIN = 15
    CEREBELLUM = 16
    BOWEL = 17
    ROOT = 18
    HEART = 19
    FATSOFT = 20
    VEIN = 21
    JOINT = 22
    BRAINSTEM = 23
    WHITE = 24
    GRAY = 25  # the cord's gray matter (generator 2.2)


N_TISSUES = len(T)
FAT_T1 = 1.0  # the T1w table's reference: unsaturated subcutaneous fat (also enhancement's, generator 2.3)
CORD_T2_RANGE = (0.25, 0.6)  # healthy cord T2w relative to CSF (generator 2; 1.x: 0.25-0.45)
GRAY_T2_RATIO, GRAY_T1_RATIO = (1.06, 1.22), (0.90, 0.97)  # cord gray matter / white matter (generator 2.2)
# generator 2.3: a share of T1w scans where the cord is bright (3D gradient-echo / MPRAGE-like T1w, or a
# tight field of view with little fat), as in the real T1w scans a healthy cord was called tumor on:
# cord / fat 0.6-0.95 (spin echo: ~0.5), CSF / cord 0.2-1.0 (spin echo: under 0.5)
P_BRIGHT_CORD_T1 = 0.35
BRIGHT_CORD_T1_FAT, BRIGHT_CORD_CSF_T1 = (0.6, 0.95), (0.2, 1.0)

# name: (T2w, T1w-Gd, texture amplitude)
NOMINAL: dict[T, tuple[float, float, float]] = {
    T.AIR: (0.0, 0.0, 0.0),
    T.FAT: (0.78, 1.0, 0.10),
    T.SKIN: (0.35, 0.55, 0.10),
    T.MUSCLE: (0.17, 0.38, 0.18),
    T.CORTEX: (0.04, 0.05, 0.2),
    T.MARROW: (0.42, 0.78, 0.22),
    T.ANNULUS: (0.12, 0.32, 0.12),
    T.NUCLEUS: (0.62, 0.36, 0.15),
    T.CSF: (1.0, 0.12, 0.03),
    T.CORD: (0.34, 0.52, 0.04),
    T.EPIFAT: (0.72, 0.95, 0.12),
    T.LIGAMENT: (0.06, 0.08, 0.2),
    T.SOFT: (0.25, 0.45, 0.2),
    T.VESSEL: (0.05, 0.08, 0.3),
    T.LUNG: (0.02, 0.02, 0.5),
    T.BRAIN: (0.42, 0.45, 0.12),
    T.CEREBELLUM: (0.40, 0.46, 0.15),
    T.BOWEL: (0.7, 0.2, 0.35),
    T.ROOT: (0.22, 0.45, 0.05),
    T.HEART: (0.22, 0.45, 0.25),
    T.FATSOFT: (0.55, 0.8, 0.2),
    T.VEIN: (0.45, 0.9, 0.25),
    T.JOINT: (0.7, 0.15, 0.1),
    T.BRAINSTEM: (0.33, 0.5, 0.05),
    T.WHITE: (0.30, 0.55, 0.06),
}


def tissue_tables(contrast: dict, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-case tissue signal tables ``t2``, ``t1`` and texture ``tex`` (index = tissue id).

    Each tissue gets an independent log-normal jitter; fat saturation and bright flow
    (slow-flow / enhancing vessels on T1w) are applied as switches.
    """
    sd = contrast["jitter_sd"]
    t2 = np.zeros(N_TISSUES, np.float32)
    t1 = np.zeros(N_TISSUES, np.float32)
    tex = np.zeros(N_TISSUES, np.float32)
    for tissue, (a, b, c) in NOMINAL.items():
        j = np.exp(rng.normal(0, sd, 2))
        t2[tissue], t1[tissue], tex[tissue] = a * j[0], b * j[1], c * rng.uniform(0.6, 1.4)
    t2[T.CSF] = 1.0
    t1[T.FAT] = FAT_T1
    # keep the clinically meaningful orderings
    # generator 2: healthy cord over a wide range relative to CSF, so that absolute brightness does
    # not separate healthy cord from edema or tumor (lesion signals are set relative to the cord)
    t2[T.CORD] = rng.uniform(*CORD_T2_RANGE)
    t1[T.CSF] = np.clip(t1[T.CSF], 0.05, 0.5 * t1[T.CORD])
    t2[T.BRAINSTEM], t1[T.BRAINSTEM] = t2[T.CORD] * 0.98, t1[T.CORD]
    if contrast.get("t1_fatsat"):
        for tissue in (T.FAT, T.EPIFAT, T.FATSOFT, T.MARROW):
            t1[tissue] *= 0.18
        t1[T.VEIN] = 0.9  # enhancement stands out even more
    if contrast.get("t2_fatsat"):
        for tissue in (T.FAT, T.EPIFAT, T.FATSOFT, T.MARROW):
            t2[tissue] *= 0.2
    if contrast.get("flow_void_t1_bright"):
        t1[T.VESSEL] = 0.7
    # generator 2.2: the cord's gray matter, brighter than its white matter on T2w and darker on T1w
    # (drawn last, so every other tissue keeps its generator-2.1 value)
    t2[T.GRAY] = t2[T.CORD] * rng.uniform(*GRAY_T2_RATIO)
    t1[T.GRAY] = t1[T.CORD] * rng.uniform(*GRAY_T1_RATIO)
    tex[T.GRAY] = tex[T.CORD]
    # generator 2.3 (drawn last and always, so that every other case keeps its generator-2.2 tables)
    bright, cord_fat, csf_cord = rng.random(), rng.uniform(*BRIGHT_CORD_T1_FAT), rng.uniform(*BRIGHT_CORD_CSF_T1)
    if bright < P_BRIGHT_CORD_T1:
        k = cord_fat * FAT_T1 / t1[T.CORD]  # relative to unsaturated fat, whatever the fat saturation
        for tissue in (T.CORD, T.GRAY, T.BRAINSTEM):
            t1[tissue] *= k
        t1[T.CSF] = t1[T.CORD] * csf_cord
    return {"t2": t2, "t1": t1, "tex": tex}
