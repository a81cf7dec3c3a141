#!/usr/bin/env bash
# Installs and builds what Mooring's tests and demo need, idempotently. Heavy caches live outside
# the repository, under $MOORING_CACHE (default ~/.cache/mooring): the cargo target dir and the
# control-plane binaries built from their Go modules.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
step() { printf '\n==> %s\n' "$*" >&2; }

step "checking toolchains"
command -v cargo >/dev/null || { echo "setup: cargo is required (install Rust with rustup)" >&2; exit 1; }
command -v go >/dev/null || { echo "setup: Go >= 1.24 is required to build the test control plane" >&2; exit 1; }
if command -v rustup >/dev/null; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt >&2
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy >&2
fi

# Debian packages: command -> package. RabbitMQ and the mosquitto clients are the real broker and
# clients the devcluster tests run; HAProxy is the sticky load balancer (and its tests run a
# mosquitto broker behind it); iproute2/util-linux give ip, unshare and nsenter.
need_apt=()
for pair in openssl:openssl curl:curl ip:iproute2 unshare:util-linux nsenter:util-linux \
            mosquitto_pub:mosquitto-clients /usr/lib/rabbitmq/bin/rabbitmq-server:rabbitmq-server \
            /usr/sbin/haproxy:haproxy /usr/sbin/mosquitto:mosquitto /usr/bin/chromium:chromium \
            node:nodejs npm:npm; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "$cmd" ] || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  step "installing ${need_apt[*]} from Debian"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $(printf '%s\n' "${need_apt[@]}" | sort -u) >&2
  # Debian starts the packaged services where it can (mosquitto would hold 1883); the tests and
  # devcluster run their own.
  if command -v systemctl >/dev/null 2>&1; then
    systemctl disable --now rabbitmq-server mosquitto haproxy >/dev/null 2>&1 || true
  fi
fi

# The dashboard's browser half: the wasm target, wasm-bindgen (its version must equal the
# wasm-bindgen crate's, pinned in dashboard/Cargo.toml), npm's binaryen for wasm-opt (Debian's
# breaks the wasm), and playwright-core for the browser tests (it drives Debian's chromium; it never
# downloads a browser). All kept under $MOORING_CACHE.
cache=${MOORING_CACHE:-$HOME/.cache/mooring}
if command -v rustup >/dev/null; then
  rustup target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$' \
    || { step "adding the wasm32-unknown-unknown target"; rustup target add wasm32-unknown-unknown >&2; }
fi
wbg_version=$(sed -n 's/^wasm-bindgen = { version = "=\([0-9.]*\)".*/\1/p' "$here/dashboard/Cargo.toml")
if [ "$("$cache/tools/bin/wasm-bindgen" --version 2>/dev/null)" != "wasm-bindgen $wbg_version" ]; then
  step "building wasm-bindgen-cli $wbg_version into $cache/tools (about 3 minutes)"
  # Not --locked: a dependency version its lock file names is no longer in the registry.
  CARGO_TARGET_DIR="$cache/target-tools" cargo install --root "$cache/tools" --force \
    wasm-bindgen-cli --version "$wbg_version" >&2
fi
if [ ! -x "$cache/npm-tools/node_modules/.bin/wasm-opt" ]; then
  step "installing binaryen (wasm-opt) from npm into $cache/npm-tools"
  mkdir -p "$cache/npm-tools"
  (cd "$cache/npm-tools" && npm install --no-audit --no-fund --cache "$cache/npm" binaryen@132.0.0 >&2)
fi
browser="$here/tests/browser"
if [ ! -d "$browser/node_modules/playwright-core" ] \
   || [ "$browser/package-lock.json" -nt "$browser/node_modules/.package-lock.json" ]; then
  step "installing the browser tests' npm packages (playwright-core)"
  (cd "$browser" && npm ci --no-audit --no-fund --cache "$cache/npm" >&2)
fi

step "control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, helm)"
"$here/scripts/build-control-plane.sh" | tail -n 1
