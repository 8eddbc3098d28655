#!/usr/bin/env bash
# The GPU checks (experiments/gpu_check.py): <= 5 minutes on one H100/H200; skips cleanly without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python experiments/gpu_check.py "$@"
