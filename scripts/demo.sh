#!/usr/bin/env bash
# Install daskgmmis into .venv and run the main job, `daskgmmis demo`, on an embedded LocalCluster.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$here/scripts/venv.sh" plot,cli,dashboard
exec "$here/.venv/bin/daskgmmis" demo --out "$here/demo-out" "$@"
