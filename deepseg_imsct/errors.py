"""The one exception type a user can meet."""
from __future__ import annotations


class DeepsegError(Exception):
    """A problem the user can fix: the message names the file (or URL) and the fix.

    The command prints ``str(error)`` on one line and exits with status 2.
    """
