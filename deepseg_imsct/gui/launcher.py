"""``imsct_fsleyes``: FSLeyes with the tumor segmentation tool visible in its Tools menu.

FSLeyes hides third-party Tools unless ``--showAllPlugins`` is given or a layout of the plugin's
package is loaded: without a scene of the user's, the launcher loads the ``imsct`` layout, else it
adds ``--showAllPlugins``. Without ``$FSLDIR`` it adds ``-S`` (no FSL-installation warning).
Any other argument is FSLeyes' own (e.g. ``imsct_fsleyes sub_T2w.nii.gz sub_T1w.nii.gz``).
"""
from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping, Sequence

from .logic import LAYOUT_NAME

log = logging.getLogger(__name__)
SCENE_OPTIONS = ("-s", "--scene")
SCENES = ("ortho", "lightbox", "3d")  # -sortho: argparse's glued form (other -s... are other options)
INFO_OPTIONS = {"-h", "--help", "-fh", "--fullhelp", "-V", "--version"}


def has_scene(argv: Sequence[str]) -> bool:
    """True if ``argv`` sets FSLeyes' scene (``-s X``, ``-sX``, ``--scene X``, ``--scene=X``)."""
    glued = {f"-s{scene}" for scene in SCENES}
    return any(a in SCENE_OPTIONS or a.startswith("--scene=") or a in glued for a in argv)


def fsleyes_args(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """FSLeyes' arguments: the user's, plus what makes the plugin visible."""
    argv = list(argv)
    if argv and argv[0] in INFO_OPTIONS:
        return argv
    extra = ["--showAllPlugins"] if has_scene(argv) else ["--scene", LAYOUT_NAME]
    if not env.get("FSLDIR") and "-S" not in argv and "--skipfslcheck" not in argv:
        extra.append("-S")
    return extra + argv


def main(argv: Sequence[str] | None = None) -> int:
    try:
        from fsleyes.main import main as fsleyes_main
    except ImportError as exc:
        logging.basicConfig(format="%(message)s")
        log.error("imsct_fsleyes: error: FSLeyes is not installed (%s): pip install 'deepseg-imsct[fsleyes]' "
                  "(wxPython: on Debian/Ubuntu apt-get install python3-wxgtk4.0, in a venv made with "
                  "--system-site-packages)", exc)
        return 2
    args = fsleyes_args(sys.argv[1:] if argv is None else argv, os.environ)
    log.debug("fsleyes %s", " ".join(args))
    return fsleyes_main(args)


if __name__ == "__main__":
    sys.exit(main())
