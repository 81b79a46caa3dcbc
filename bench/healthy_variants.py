"""Healthy phantoms rendered with the variants real healthy scans showed a model: any false lesion?

Usage (from the repository root, with ``pip install . ./training``)::

    python bench/healthy_variants.py -n 6
    DEEPSEG_IMSCT_REGISTRY=/tmp/reg/model_registry.json python bench/healthy_variants.py -n 6 --segmenter-version 2.0.0

Each healthy case (seeds from the validation split starting at ``--first``, past the campaign's
validation set; never trained on) is rendered once per variant, identical but for the variant:

- ``as drawn``: the case's own parameters;
- ``bright-cord T1w``: generator 2.3's gradient-echo-like T1w (cord 0.6-0.95 of fat) forced on;
- ``1 mm iso``: a 1 mm isotropic T2w and T1w, 52 slices (like the toolbox's real t2);
- ``1 mm iso, sac x 0.7``: the same with the thecal sac 0.7 x the case's (generator 2.4's tight
  sacs reach 0.68; the real t2 has 1-2 mm of CSF in front of and behind the cord);
- ``1 mm iso, dark rim``: the ``1 mm iso`` T2w with a sharp cord surface and a dark rim along A-P
  (:func:`imsct_train.crops.cord_rim`, depth 0.15 of the step to the CSF, on the case's cord
  label): the real t2's cord surface, which healthy phantoms lack (the segmenter learns it from
  the ``p_rim`` augmentation).

Every rendering goes through :class:`deepseg_imsct.pipeline.Predictor` with the task's default
post-processing; prints the whole-tumor volume (cm³) per case and variant (or 'refused', with the
message below the table) and how many are under 0.1 cm³. The real healthy pairs (``bench/real_healthy_pairs.py``) are the check on real scans.
Exits 0 whatever the volumes (a measurement, not a test).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging

import nibabel as nib
import numpy as np

ISO = {"inplane_mm": 1.0, "slice_mm": 1.0, "gap_mm": 0.0, "n_slices": 52}
RIM_DEPTH = 0.15  # the real t2: cord surface 0.11 of the step to its CSF below the cord's interior


def with_dark_rim(case):
    """``case`` with its T2w given a dark cord rim along its A-P axis (same header, int16)."""
    from imsct_train.crops import cord_rim

    img = case.t2w
    axis = next(i for i, c in enumerate(nib.aff2axcodes(img.affine)) if c in "AP")
    cord = np.asarray(case.labels["cord"].dataobj) > 0
    data = cord_rim(np.asarray(img.dataobj, np.float32), cord, axis, RIM_DEPTH)
    t2 = nib.Nifti1Image(np.clip(np.rint(data), 0, 32767).astype(np.int16), img.affine, img.header)
    return dataclasses.replace(case, t2w=t2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=6, help="number of healthy cases")
    p.add_argument("--first", type=int, default=100200, help="first seed (validation split)")
    p.add_argument("--segmenter-version", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from imsct_train.phantoms import generate_case, sample_case_params, tissues

    from deepseg_imsct.errors import DeepsegError
    from deepseg_imsct.pipeline import Predictor

    predictor = Predictor(versions={"imsct_segmenter": args.segmenter_version} if args.segmenter_version else None)
    variants = ("as drawn", "bright-cord T1w", "1 mm iso", "1 mm iso, sac x 0.7", "1 mm iso, dark rim")
    print(f"segmenter {predictor.segmenter.spec.version}; whole tumor, cm³")
    print("| seed | " + " | ".join(variants) + " |")
    print("|---|" + "---|" * len(variants))
    default = tissues.P_BRIGHT_CORD_T1
    clean, refusals = dict.fromkeys(variants, 0), []
    try:
        for seed in range(args.first, args.first + args.n):
            sac = sample_case_params(seed, tumor_type="none").anatomy["sac_scale"]
            overrides = {"as drawn": {}, "bright-cord T1w": {}, "1 mm iso": ISO, "1 mm iso, sac x 0.7": {**ISO, "sac_scale": 0.7 * sac}}
            vols, cases = [], {}
            for name in variants:
                tissues.P_BRIGHT_CORD_T1 = 1.0 if name == "bright-cord T1w" else default  # the table's last draw
                if name == "1 mm iso, dark rim":
                    case = with_dark_rim(cases["1 mm iso"])
                else:
                    case = cases[name] = generate_case(seed, tumor_type="none", **overrides[name])
                try:
                    vol = predictor(case.t2w, case.t1w).stats["Classes"]["whole-tumor"]["volume_cm3"]
                except DeepsegError as exc:  # e.g. judged swapped by the contrast-order check
                    vols.append("refused")
                    refusals.append(f"{seed}, {name}: {exc}")
                    continue
                vols.append(f"{vol:.2f}")
                clean[name] += vol < 0.1
            print(f"| {seed} | " + " | ".join(vols) + " |", flush=True)
    finally:
        tissues.P_BRIGHT_CORD_T1 = default
    print("| under 0.1 cm³ | " + " | ".join(f"{clean[v]} of {args.n}" for v in variants) + " |")
    for line in refusals:
        print(f"refused: {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
