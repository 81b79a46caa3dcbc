"""Optional FSLeyes plugin (``pip install "deepseg-imsct[fsleyes]"``).

:mod:`.logic` and :mod:`.runner` are plain Python (no wx, no fsleyes) and tested everywhere;
:mod:`.fsleyes_action`, :mod:`.dialog`, :mod:`.layout` and :mod:`.launcher` (its ``main``) import
wx/fsleyes and are only loaded by FSLeyes. Nothing here is imported by the core package.
"""
