#!/usr/bin/env bash
# Install daskgmmis into .venv and run the main job on an embedded LocalCluster.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$here/scripts/venv.sh" plot
exec "$here/.venv/bin/python" "$here/examples/quickstart.py" "$@"
