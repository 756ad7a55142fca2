#!/usr/bin/env bash
# The project's checks, as CI runs them (.ci/run): formatting, clippy, and every test, including
# the end-to-end tests that drive the Python OpenTelemetry SDK (from .venv, created here from
# tests/python/requirements.txt), headless Chromium, Prometheus and RabbitMQ (Debian packages,
# nginx, installed here when missing), Garage (cargo install, kept in ~/.cargo/bin), schemathesis (in the
# same .venv) and a small tmpfs for the full-disk test (mounted by the test itself: run as root, as
# CI does). Runnable from any directory.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# Debian packages, only when missing (apt-get update at most once).
apt_updated=0
apt_install() {
    if [ "$apt_updated" = 0 ]; then
        apt-get update
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}
if ! command -v python3 >/dev/null 2>&1; then
    apt_install python3 python3-venv
fi
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
    apt_install python3-venv
fi
# Real peers of the end-to-end tests: headless Chromium + ChromeDriver (web UI), Prometheus and
# promtool (scrape, remote write, PromQL differential, SLO rules, the compose stack's rules and config),
# Alertmanager (SLO alert notifications, the compose stack's), RabbitMQ (the demo's broker), nginx
# (the load balancer in front of the ingesters in tests/e2e/cluster.rs). The tests start them on
# loopback themselves and stop them after.
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
[ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] || missing+=(prometheus)
[ -x /usr/sbin/rabbitmq-server ] || missing+=(rabbitmq-server)
[ -x /usr/bin/prometheus-alertmanager ] || missing+=(prometheus-alertmanager)
[ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install the Rust toolchain (rustup) first" >&2
    exit 1
fi

# Garage, the S3-compatible object store of the object-storage tests (cluster/tests/garage.rs and
# the cluster end-to-end test start a 3-node cluster on loopback): built from crates.io and kept in
# ~/.cargo/bin between runs. The first build takes about 13 minutes on 2 cores.
garage_version=2.5.0
if ! "$HOME/.cargo/bin/garage" --version 2>/dev/null | grep -q "cargo:$garage_version"; then
    cargo install garage --locked --version "$garage_version"
fi

# The Python environment of tests/e2e/e2e_python_sdk.rs, rebuilt when the requirements change.
venv="$root/.venv"
requirements="$root/tests/python/requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "creating $venv from tests/python/requirements.txt"
    python3 -m venv --clear "$venv"
    "$venv/bin/python" -m pip install --disable-pip-version-check --quiet -r "$requirements"
    echo "$want" >"$stamp"
fi
export OBSBOX_TEST_PYTHON="$venv/bin/python"

cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast
