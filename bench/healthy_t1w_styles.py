"""Healthy phantoms rendered with each T1w style: does the model call a bright T1w cord a tumor?

Usage (from the repository root, with ``pip install . ./training``)::

    python bench/healthy_t1w_styles.py -n 8
    DEEPSEG_IMSCT_REGISTRY=/tmp/reg/model_registry.json python bench/healthy_t1w_styles.py -n 8 --segmenter-version 2.0.0

Each case (healthy, seeds from the validation split starting at ``--first``; never used in
training) is rendered twice, identical but for the T1w tissue table: a spin-echo T1w (cord ~0.5
of fat, CSF under half the cord) and generator 2.3's bright-cord T1w (cord 0.6-0.95 of fat, as in
the real same-subject T1w scans). Both go through :class:`deepseg_imsct.pipeline.Predictor` with
the task's default post-processing; prints the whole-tumor volume (cm³) of each. A model that
learnt lesions from contrast against the cord calls neither; the real healthy pairs
(``bench/real_healthy_pairs.py``) are the check on real scans. Exits 0 whatever the volumes.
"""
from __future__ import annotations

import argparse
import logging


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=8, help="number of healthy cases")
    p.add_argument("--first", type=int, default=100200, help="first seed (validation split, past the campaign's validation set)")
    p.add_argument("--segmenter-version", default=None)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    from imsct_train.phantoms import generate_case, tissues

    from deepseg_imsct.pipeline import Predictor

    predictor = Predictor(versions={"imsct_segmenter": args.segmenter_version} if args.segmenter_version else None)
    print(f"segmenter {predictor.segmenter.spec.version}")
    print("| seed | spin-echo T1w, whole tumor cm³ | bright-cord T1w, whole tumor cm³ |")
    print("|---|---|---|")
    styles = {"spin-echo": 0.0, "bright-cord": 1.0}
    default = tissues.P_BRIGHT_CORD_T1
    clean = dict.fromkeys(styles, 0)
    try:
        for seed in range(args.first, args.first + args.n):
            vols = {}
            for style, share in styles.items():
                tissues.P_BRIGHT_CORD_T1 = share  # the style's draw is the table's last: nothing else changes
                case = generate_case(seed, tumor_type="none")
                vols[style] = predictor(case.t2w, case.t1w).stats["Classes"]["whole-tumor"]["volume_cm3"]
                clean[style] += vols[style] < 0.1
            print(f"| {seed} | {vols['spin-echo']:.3f} | {vols['bright-cord']:.3f} |", flush=True)
    finally:
        tissues.P_BRIGHT_CORD_T1 = default
    print(f"\nunder 0.1 cm³: spin-echo {clean['spin-echo']} of {args.n}, bright-cord {clean['bright-cord']} of {args.n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
