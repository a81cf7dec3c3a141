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
            /usr/sbin/haproxy:haproxy /usr/sbin/mosquitto:mosquitto; do
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

step "control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, helm)"
"$here/scripts/build-control-plane.sh" | tail -n 1
