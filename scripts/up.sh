#!/usr/bin/env bash
# THE try-it-out command: installs what dbintel needs on this machine (scripts/install-deps.sh), then
# runs `dbintel up` — a coordinator (scaling.mode: memory, no Redis) and two agents polling
# throwaway local PostgreSQL and Redis servers. Ctrl-C stops everything. Arguments go to `dbintel up`,
# e.g. `bash scripts/up.sh --config examples/config.yaml --agents 3`.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
if ! command -v python >/dev/null && [[ -d "$pyenv_root/shims" ]]; then
    export PATH="$pyenv_root/shims:$pyenv_root/bin:$PATH"
fi
bash scripts/install-deps.sh up
exec python -m dbintel.cli up "$@"
