#!/usr/bin/env bash
# GUI test prerequisites (idempotent): Xvfb and Debian's wxPython, then how the test venv must be made.
#
# PyPI has no Linux wheel of wxPython (building it takes about an hour), so the GUI tests use
# Debian's python3-wxgtk4.0, which only Debian's /usr/bin/python3 can import: the test venv must
# be created from it with --system-site-packages. Without these, tests/test_gui_fsleyes.py skips
# with its reason and everything else still runs.
set -euo pipefail

PACKAGES=(xvfb xauth python3-wxgtk4.0 python3-venv)

missing=()
for package in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$package")
    fi
done

if ((${#missing[@]})); then
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    echo "gui-setup: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
else
    echo "gui-setup: ${PACKAGES[*]} already installed" >&2
fi

/usr/bin/python3 -c 'import wx, sys; print(f"gui-setup: wxPython {wx.version()} for Python {sys.version.split()[0]} (/usr/bin/python3)")' >&2
command -v Xvfb >/dev/null

cat >&2 <<'EOF'
gui-setup: create the test environment from Debian's Python so that wx is visible, e.g.:
    /usr/bin/python3 -m venv --system-site-packages .venv-ci
    . .venv-ci/bin/activate
    python -m pip install --quiet --upgrade pip
    pip install ".[test,train,fsleyes]" ./training && python -m pytest -q -p no:cacheprovider
(tests/test_gui_fsleyes.py starts its own Xvfb; no DISPLAY is needed.)
EOF
