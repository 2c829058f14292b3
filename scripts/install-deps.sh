#!/usr/bin/env bash
# Install what the tests need: database servers and exporters (apt), dbintel[test] (pip) and
# buf (npm, into the gitignored .ci/work/npm). Idempotent; a re-run with everything present
# changes nothing and takes a few seconds. One summary line per step; details go to
# .ci/work/install-deps.log and are printed only when a step fails.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
work_dir="$repo_root/.ci/work"
mkdir -p "$work_dir"
log="$work_dir/install-deps.log"
: >"$log"

python="${PYTHON:-python}"

fail() {
    echo "install-deps: $1 failed; last lines of $log:" >&2
    tail -n 40 "$log" >&2
    exit 1
}

# --- apt: servers, exporters and Prometheus (the deploy tests scrape a cluster with it) --------
apt_packages=(
    redis-server mariadb-server postgresql postgresql-contrib
    prometheus prometheus-postgres-exporter prometheus-redis-exporter prometheus-mysqld-exporter
)
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

# --- pip: the package and its test extras --------------------------------------------------------
# Skip pip when dbintel is installed editable from this checkout and every requirement in
# pyproject.toml (dependencies + the test extra) is satisfied; pip itself takes ~10 s to say so.
pip_is_current() {
    "$python" - "$repo_root" <<'PY'
import sys, tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

root = Path(sys.argv[1])
project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
wanted = project["dependencies"] + project["optional-dependencies"]["test"]
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
    echo "pip: dbintel[test] already installed (editable, requirements satisfied)"
else
    "$python" -m pip install --quiet --disable-pip-version-check --no-input -e '.[test]' >>"$log" 2>&1 ||
        fail "pip install -e '.[test]'"
    pip_is_current >>"$log" 2>&1 || fail "pip install left requirements unsatisfied"
    echo "pip: installed dbintel[test] (editable)"
fi

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
