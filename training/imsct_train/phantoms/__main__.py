"""``python -m imsct_train.phantoms ...`` = ``imsct_phantoms``; ``... montage ...`` = ``imsct_montage``."""
import sys

from .cli import main_montage, main_phantoms

if len(sys.argv) > 1 and sys.argv[1] == "montage":
    sys.exit(main_montage(sys.argv[2:]))
sys.exit(main_phantoms(sys.argv[1:]))
