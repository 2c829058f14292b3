#!/usr/bin/env bash
# THE test command: installs what the tests need (scripts/install-deps.sh), then runs pytest
# from the repo root with any arguments passed through, e.g.
#   bash scripts/test.sh                       # everything
#   bash scripts/test.sh tests/unit -q -x      # a subset
# Exit code is pytest's; "no tests collected" (5) is reported as the failure it is.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

# pyenv's shims may be missing from PATH in a bare CI shell.
pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
if ! command -v python >/dev/null && [[ -d "$pyenv_root/shims" ]]; then
    export PATH="$pyenv_root/shims:$pyenv_root/bin:$PATH"
fi
# buf (installed by install-deps.sh) for the protocol tests.
export PATH="$repo_root/.ci/work/npm/node_modules/.bin:$PATH"

bash scripts/install-deps.sh test

status=0
python -m pytest "$@" || status=$?
if ((status == 5)); then
    echo "test.sh: pytest collected no tests; treating that as a failure" >&2
fi
exit "$status"
