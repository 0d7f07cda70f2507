#!/usr/bin/env bash
# Create (or reuse) .venv beside the repository and install daskgmmis with the given extras.
# Usage: scripts/venv.sh [extras]   e.g. scripts/venv.sh test,plot
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
extras="${1:-plot}"
py="${PYTHON:-python3}"
if [ ! -x "$here/.venv/bin/python" ]; then
    "$py" -m venv "$here/.venv"
fi
"$here/.venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null
"$here/.venv/bin/python" -m pip install --quiet -e "$here[$extras]"
