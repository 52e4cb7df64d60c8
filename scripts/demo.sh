#!/usr/bin/env bash
# The README's demo command: installs what is missing, builds vmbackupctl, runs `vmbackupctl demo`
# (a demo VM with an ext4 disk and a mixed data disk, full + incremental backup to a local target,
# restores, sha256 + e2fsck checks). Extra arguments go to `vmbackupctl demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset default >/dev/null
cmake --build --preset default --target vmbackupctl
exec ./build/tools/vmbackupctl demo "$@"
