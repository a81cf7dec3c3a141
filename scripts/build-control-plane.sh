#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and helm from their
# published Go modules into a cache OUTSIDE the repository, once per machine and version.
# Prints the directory holding the binaries on its last line.
set -euo pipefail

K8S_VERSION=${MOORING_K8S_VERSION:-v1.34.4}
HELM_VERSION=${MOORING_HELM_VERSION:-v3.19.5}
CACHE=${MOORING_CACHE:-$HOME/.cache/mooring}
OUT="$CACHE/k8s-bins/$K8S_VERSION"
BINS=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl helm)

have_all() { local b; for b in "${BINS[@]}"; do [ -x "$OUT/$b" ] || return 1; done; }
if have_all; then echo "$OUT"; exit 0; fi

command -v go >/dev/null || { echo "build-control-plane: Go is required (only to build the test control plane)" >&2; exit 1; }
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-trimpath

STAGING=v0.${K8S_VERSION#v1.}
MINOR=$(echo "$K8S_VERSION" | cut -d. -f2)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"
echo "build-control-plane: preparing wrapper module for k8s $K8S_VERSION (one-time, 15-30 min cold)" >&2
go mod init mooring.dev/k8s-test-bins >/dev/null 2>&1
go mod edit -go=1.24.0

KMOD=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
[ -f "$KMOD" ] || { echo "build-control-plane: could not read go.mod of k8s.io/kubernetes@$K8S_VERSION" >&2; exit 1; }
for m in $(sed -n 's#^[[:space:]]*\(k8s\.io/[^ ]*\) => \./staging/.*#\1#p' "$KMOD"); do
  go mod edit -replace="$m=$m@$STAGING"
done
GD=$(sed -n 's/^godebug[[:space:]]\+//p' "$KMOD" | head -1)
[ -n "$GD" ] && go mod edit -godebug="$GD"
ETCD=$(awk '$1=="go.etcd.io/etcd/server/v3"{print $2; exit}' "$KMOD")
go mod edit -require="k8s.io/kubernetes@$K8S_VERSION" -require="go.etcd.io/etcd/server/v3@$ETCD" \
  -tool=k8s.io/kubernetes/cmd/kube-apiserver -tool=k8s.io/kubernetes/cmd/kube-controller-manager \
  -tool=k8s.io/kubernetes/cmd/kube-scheduler -tool=k8s.io/kubernetes/cmd/kubectl \
  -tool=go.etcd.io/etcd/server/v3
go mod tidy >&2

LDF="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  LDF="$LDF -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$MINOR -X $p.gitTreeState=clean"
done
mkdir -p "$OUT.tmp"
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  echo "build-control-plane: building $cmd" >&2
  go build -ldflags "$LDF" -o "$OUT.tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd" >&2
done
echo "build-control-plane: building etcd $ETCD" >&2
go build -ldflags "-s -w" -o "$OUT.tmp/etcd" go.etcd.io/etcd/server/v3 >&2
cd /
echo "build-control-plane: building helm $HELM_VERSION" >&2
GOBIN="$OUT.tmp" go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
  -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$MINOR" \
  "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
rm -rf "$OUT"; mv "$OUT.tmp" "$OUT"
have_all || { echo "build-control-plane: a binary is missing in $OUT" >&2; exit 1; }
echo "$OUT"
