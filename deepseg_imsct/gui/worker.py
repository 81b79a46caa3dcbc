"""The process the GUI starts: ``imsct_deepseg`` itself, stopped cleanly by SIGTERM (or SIGINT).

Cancel sends SIGTERM, which is never inherited as ignored (a process started from a background
shell job inherits SIGINT as ignored, and Python then installs no KeyboardInterrupt handler).
Here SIGTERM (and SIGINT) raise KeyboardInterrupt, so :func:`deepseg_imsct.cli.main` stops with
"no output was written or changed". A SIGTERM arriving before :func:`main` runs (imports only,
nothing written yet) terminates the process, which is just as clean.
"""
from __future__ import annotations

import signal
import sys
from types import FrameType


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from ..cli import main as command

    return command(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
