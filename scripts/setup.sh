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

need_apt=()
for pkg in openssl curl; do
  command -v "$pkg" >/dev/null || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
  step "installing ${need_apt[*]} from Debian"
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2
fi

step "control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, helm)"
"$here/scripts/build-control-plane.sh" | tail -n 1
