"""How well stage 1's contrast-order check works: every T2w + T1w pair run in its order and swapped.

Usage (from the repository root)::

    python bench/contrast_order.py --bids runs/eval-g22-test-1.1.1/phantoms   # + testing_data + real pairs

Pairs: the ``*_T2w`` / ``*_T1w`` files of each subject of ``--bids`` (e.g. the test phantoms that
``bench/evaluate_phantoms.py`` writes), ``testing_data/``, and the real same-subject pairs of
``bench/real_healthy_pairs.py``. Each pair goes through :func:`deepseg_imsct.localize.localize`
(the localizer and the check exactly as the pipeline runs them) twice: as given, where a refusal
is a false alarm, and swapped, where an acceptance is a missed swap. Prints one row per pair and
the two counts. A measurement: exits 0 whatever the counts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluate_real import shared_data  # noqa: E402
from real_healthy_pairs import pairs as real_pairs  # noqa: E402


def bids_pairs(root: Path) -> list[tuple[Path, Path]]:
    """(T2w, T1w) per subject of a BIDS folder by the package's discovery (:func:`deepseg_imsct.bids.discover`),
    the T1w named plainly ``*_T1w`` as the phantoms and ``testing_data`` are."""
    from deepseg_imsct.bids import Patterns, discover

    return [(s.t2, s.t1) for s in discover(root, Patterns(t1=r"_T1w\.nii(\.gz)?$")).subjects]


def verdict(first: Path, second: Path, model) -> str:
    """'accepted' or 'refused' for ``first`` given as the T2w and ``second`` as the T1w."""
    from deepseg_imsct.errors import DeepsegError
    from deepseg_imsct.io import load_volume
    from deepseg_imsct.localize import localize, localizer_block, on_block

    t2, t1 = load_volume(first, "T2w"), load_volume(second, "T1w")
    block = localizer_block(t2.grid, model.spec)
    try:
        localize(t2, t1, on_block(t2, block), block, model)
    except DeepsegError:
        return "refused"
    return "accepted"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bids", type=Path, action="append", default=[], help="a BIDS folder of T2w/T1w pairs (repeatable)")
    p.add_argument("--data", type=Path, default=None, help="folder of real scans (default: the shared data's real/)")
    args = p.parse_args(argv)

    from deepseg_imsct.pipeline import Predictor

    model = Predictor().localizer
    todo = [pair for root in args.bids for pair in bids_pairs(root)]
    todo += bids_pairs(Path("testing_data"))
    real = args.data or shared_data() / "real"
    if real.is_dir():
        todo += real_pairs(real)
    print(f"localizer {model.spec.version}")
    print("| T2w | as given | swapped |\n|---|---|---|")
    false_alarms = missed = 0
    for t2, t1 in todo:
        given, swapped = verdict(t2, t1, model), verdict(t1, t2, model)
        false_alarms += given == "refused"
        missed += swapped == "accepted"
        print(f"| {t2} | {given} | {swapped} |", flush=True)
    n = len(todo)
    print(f"\n{n} pairs: refused as given {false_alarms} ({false_alarms / max(n, 1):.0%}); "
          f"swaps caught {n - missed} ({(n - missed) / max(n, 1):.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
