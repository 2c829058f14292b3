#!/usr/bin/env bash
# Install what dbintel needs on this machine, for one purpose:
#   bash scripts/install-deps.sh up     what `dbintel up` needs: PostgreSQL and Redis (apt), dbintel (pip)
#   bash scripts/install-deps.sh test   (the default) everything the test suite needs: the servers,
#                                       exporters and Prometheus (apt), dbintel[test] (pip), buf and the
#                                       Prometheus Operator schemas (npm, into the gitignored .ci/work/npm)
# Idempotent; a re-run with everything present changes nothing and takes a few seconds. One summary
# line per step; details are appended to .ci/work/install-deps.log (one header per run, so the first,
# real install stays readable) and this run's part is printed only when a step fails.
set -euo pipefail

purpose="${1:-test}"
case "$purpose" in
up | test) ;;
*)
    echo "install-deps: unknown purpose '$purpose' (expected 'up' or 'test')" >&2
    exit 2
    ;;
esac

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
work_dir="$repo_root/.ci/work"
mkdir -p "$work_dir"
log="$work_dir/install-deps.log"
touch "$log"
run_start=$(($(stat -c %s "$log") + 1)) # tail -c +N: this run's lines only
printf '\n==== install-deps %s, %s ====\n' "$purpose" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$log"

python="${PYTHON:-python}"

fail() {
    echo "install-deps: $1 failed; last lines of this run in $log:" >&2
    tail -c +"$run_start" "$log" | tail -n 40 >&2
    exit 1
}

# --- apt: servers; for the tests also exporters and Prometheus (the deploy tests scrape with it) ---
# The replication tests need nothing more: pg_basebackup comes with postgresql (postgresql-client-15),
# and the MariaDB and Redis replicas are the same servers started with other options.
apt_packages=(redis-server postgresql)
if [[ "$purpose" == test ]]; then
    apt_packages+=(
        mariadb-server postgresql-contrib
        prometheus prometheus-postgres-exporter prometheus-redis-exporter prometheus-mysqld-exporter
    )
fi
missing=()
for package in "${apt_packages[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$package" 2>/dev/null || true)"
    [[ "$status" == "install ok installed" ]] || missing+=("$package")
done
if ((${#missing[@]} == 0)); then
    echo "apt: all ${#apt_packages[@]} packages present"
else
    sudo=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || { echo "apt: need root to install ${missing[*]}" >&2; exit 1; }
        sudo=(sudo)
    fi
    # Installing a package must not start its service: the tests run their own servers on free
    # ports. Debian images usually carry this policy already; add it only for this run if not.
    added_policy=""
    if [[ ! -e /usr/sbin/policy-rc.d ]]; then
        printf '#!/bin/sh\nexit 101\n' | "${sudo[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${sudo[@]}" chmod 755 /usr/sbin/policy-rc.d
        added_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt_status=0
    { "${sudo[@]}" apt-get update -qq &&
        "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >>"$log" 2>&1 || apt_status=$?
    [[ -z "$added_policy" ]] || "${sudo[@]}" rm -f /usr/sbin/policy-rc.d
    ((apt_status == 0)) || fail "apt-get install ${missing[*]}"
    echo "apt: installed ${missing[*]}"
fi

# --- pip: the package (and for the tests its test extra) ------------------------------------------
# Skip pip when dbintel is installed editable from this checkout and every requirement in
# pyproject.toml (dependencies, plus the test extra for the tests) is satisfied; pip itself takes
# ~10 s to say so.
if [[ "$purpose" == test ]]; then pip_target='.[test]'; else pip_target='.'; fi
pip_is_current() {
    "$python" - "$repo_root" "$purpose" <<'PY'
import sys, tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

root = Path(sys.argv[1])
project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
wanted = project["dependencies"] + (project["optional-dependencies"]["test"] if sys.argv[2] == "test" else [])
for line in wanted:
    requirement = Requirement(line)
    try:
        version = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        sys.exit(1)
    if not requirement.specifier.contains(version, prereleases=True):
        sys.exit(1)
import dbintel  # noqa: E402

sys.exit(0 if Path(dbintel.__file__).resolve().parent == root / "services" else 1)
PY
}
if pip_is_current >/dev/null 2>&1; then
    echo "pip: $pip_target already installed (editable, requirements satisfied)"
else
    "$python" -m pip install --quiet --disable-pip-version-check --no-input -e "$pip_target" >>"$log" 2>&1 ||
        fail "pip install -e '$pip_target'"
    pip_is_current >>"$log" 2>&1 || fail "pip install left requirements unsatisfied"
    echo "pip: installed $pip_target (editable)"
fi

[[ "$purpose" == test ]] || exit 0

# --- npm: buf ------------------------------------------------------------------------------------
npm_prefix="$work_dir/npm"
buf="$npm_prefix/node_modules/.bin/buf"
if [[ -x "$buf" ]] && buf_version="$("$buf" --version 2>/dev/null)"; then
    echo "npm: buf $buf_version already at ${buf#"$repo_root"/}"
else
    command -v npm >/dev/null || { echo "npm: not found; install Node.js/npm to get buf" >&2; exit 1; }
    # Bounded: a registry that does not answer must fail the run, not hang it.
    timeout 600 npm install --no-save --no-audit --no-fund --silent --fetch-timeout=60000 --fetch-retries=3 \
        --prefix "$npm_prefix" @bufbuild/buf >>"$log" 2>&1 ||
        fail "npm install @bufbuild/buf"
    buf_version="$("$buf" --version 2>>"$log")" || fail "buf --version"
    echo "npm: installed buf $buf_version at ${buf#"$repo_root"/}"
fi

# --- deploy tests: Prometheus Operator schemas (npm; kubernetes-validate comes with the test extra) --
prometheus_operator="$npm_prefix/node_modules/@kubernetes-models/prometheus-operator/package.json"
if [[ -f "$prometheus_operator" && -x "$buf" ]]; then
    echo "npm: @kubernetes-models/prometheus-operator already in ${npm_prefix#"$repo_root"/}"
else
    # Both in one command: a --no-save install prunes what an earlier one put in the same prefix.
    timeout 600 npm install --no-save --no-audit --no-fund --silent --fetch-timeout=60000 --fetch-retries=3 \
        --prefix "$npm_prefix" @bufbuild/buf @kubernetes-models/prometheus-operator >>"$log" 2>&1 ||
        fail "npm install @kubernetes-models/prometheus-operator"
    [[ -f "$prometheus_operator" && -x "$buf" ]] || fail "npm left @kubernetes-models/prometheus-operator or buf missing"
    echo "npm: installed @kubernetes-models/prometheus-operator"
fi
