"""The ``imsct`` FSLeyes layout (entry point ``fsleyes_layouts``): the default ortho layout.

Loading a layout that a package provides makes FSLeyes show that package's plugins, hence
``fsleyes --scene imsct`` shows the Tools-menu entry (as ``--showAllPlugins`` does).
"""
from __future__ import annotations

from fsleyes.layouts import BUILT_IN_LAYOUTS

from .logic import LAYOUT_NAME

LAYOUT = (LAYOUT_NAME, BUILT_IN_LAYOUTS["default"])
