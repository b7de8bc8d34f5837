#!/usr/bin/env bash
# Builds the real Kubernetes v1.20.2 binaries offline from Debian's own `kubernetes` source
# package (bookworm-security), whose orig tarball ships vendor/. Called by `cargo xtask setup`;
# idempotent: exits at once when OUT_DIR already holds every binary asked for.
#
# Usage: build-kube.sh OUT_DIR WORK_DIR [WHAT...]
#   WHAT defaults to the fixture and real-cluster set: kube-apiserver kube-proxy kubelet
#   kube-controller-manager kube-scheduler kubectl petrel-kubedns (the cluster's DNS). `cargo xtask conformance` asks for
#   test/e2e/e2e.test test/images/agnhost cmd/petrel-kubedns (agnhost linked statically, as in its
#   image; petrel-kubedns is tests/realnode/kubedns/main.go, copied into the tree to build against
#   its vendored client-go and miekg/dns).
#
# The unpacked tree and Go's build cache stay in WORK_DIR/kubernetes-1.20.2 and WORK_DIR/gocache,
# so a later WHAT (e2e.test, agnhost) builds incrementally instead of from scratch.
#
# Pitfalls handled here:
# - the vendored modern-go/reflect2 1.0.1 crashes under Go >= 1.18 ("fatal error: fault" in
#   mapiterinit); Debian's reflect2 1.0.2 is API-compatible and is swapped in.
# - the source package is fetched with a private deb-src list so /etc/apt is never touched.
# - kubelet 1.20 sets host-wide sysctls (vm.overcommit_memory, kernel.panic, kernel.panic_on_oops)
#   at start; on a shared test machine that must not happen, and protectKernelDefaults=true makes
#   it refuse to start instead. A three-line test patch: with KUBELET_KERNEL_TUNABLES=warn in its
#   environment kubelet only warns (unset, it behaves as upstream).
set -euo pipefail
OUT=$1
WORK=$2
shift 2
WHAT=${*:-cmd/kube-apiserver cmd/kube-proxy cmd/kubelet cmd/kube-controller-manager cmd/kube-scheduler cmd/kubectl cmd/petrel-kubedns}
ORIG=kubernetes_1.20.5+really1.20.2.orig.tar.gz
ORIG_SHA256=b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc
PATCH_MARK=KUBELET_KERNEL_TUNABLES
KUBEDNS_SRC=$(cd "$(dirname "$0")/../.." && pwd)/tests/realnode/kubedns/main.go
mkdir -p "$OUT" "$WORK"
# One build at a time per cache (two setups started together wait for each other).
exec 9>"$WORK/.build.lock"
flock 9

# Whether OUT holds a v1.20.2 build of $1 (kubelet: the patched one).
built() {
  local b=$OUT/$1
  [ -x "$b" ] || return 1
  case $1 in
    kubectl) "$b" version --client --short 2>/dev/null | grep -q 'v1.20.2' ;;
    kubelet) "$b" --version 2>/dev/null | grep -q 'v1.20.2' && grep -qa "$PATCH_MARK" "$b" ;;
    petrel-kubedns) cmp -s "$KUBEDNS_SRC" "$OUT/.petrel-kubedns.go" ;;
    *.test | agnhost) true ;;
    *) "$b" --version 2>/dev/null | grep -q 'v1.20.2' ;;
  esac
}
todo=""
for t in $WHAT; do built "${t##*/}" || todo="$todo $t"; done
[ -z "$todo" ] && exit 0

T=$WORK/kubernetes-1.20.2
if [ ! -f "$T/.petrel-unpacked" ]; then
  A=$WORK/apt
  mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/parts"
  found=0
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -e "$f" ] || continue
    if grep -q '^Types: deb$' "$f"; then
      sed 's/^Types: deb$/Types: deb-src/' "$f" > "$A/parts/$(basename "$f")"
      found=1
    fi
  done
  if [ "$found" = 0 ] && [ -f /etc/apt/sources.list ]; then
    sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > "$A/parts/bookworm.list"
  fi
  O=(-o APT::Sandbox::User=root -o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$A/parts"
     -o "Dir::State::Lists=$A/lists" -o "Dir::Cache=$A/cache")
  cd "$WORK"
  if [ ! -f "$ORIG" ]; then
    echo "  fetching Debian source package kubernetes" >&2
    apt-get "${O[@]}" update -qq
    apt-get "${O[@]}" source --download-only kubernetes >/dev/null
  fi
  echo "$ORIG_SHA256  $ORIG" | sha256sum -c --quiet
  rm -rf "$T"
  tar xzf "$ORIG"
  V=$T/vendor/github.com/modern-go/reflect2
  R=/usr/share/gocode/src/github.com/modern-go/reflect2
  rm -f "$V"/*.go "$V"/*.s
  cp "$R"/*.go "$R"/*.s "$V"/
  touch "$T/.petrel-unpacked"
fi
cd "$T"

p=pkg/kubelet/cm/container_manager_linux.go
if ! grep -q "$PATCH_MARK" "$p"; then
  old=$'\tb := KernelTunableModify\n\tif cm.GetNodeConfig().ProtectKernelDefaults {'
  new=$'\tb := KernelTunableModify\n\tif os.Getenv("KUBELET_KERNEL_TUNABLES") == "warn" { // petrel test patch: leave host-wide sysctls alone\n\t\tb = KernelTunableWarn\n\t}\n\tif cm.GetNodeConfig().ProtectKernelDefaults {'
  src=$(cat "$p")
  [[ $src == *"$old"* ]] || { echo "build-kube.sh: kubelet patch does not apply to $p" >&2; exit 1; }
  printf '%s\n' "${src/"$old"/"$new"}" > "$p"
fi

if [[ " $todo " == *" cmd/petrel-kubedns "* ]]; then
  mkdir -p cmd/petrel-kubedns
  cp "$KUBEDNS_SRC" cmd/petrel-kubedns/main.go
fi
# agnhost runs in an image without a libc of its own.
export KUBE_STATIC_OVERRIDES=agnhost
echo "  make WHAT=\"${todo# }\" (about 10 minutes on 2 cores from nothing)" >&2
export GOCACHE="$WORK/gocache" GOPROXY=off GOFLAGS=
unset GOPATH
make WHAT="${todo# }" >"$WORK/make.log" 2>&1 || { tail -40 "$WORK/make.log" >&2; exit 1; }
for t in $todo; do install -m 0755 "_output/bin/${t##*/}" "$OUT/${t##*/}"; done
if [[ " $todo " == *" cmd/petrel-kubedns "* ]]; then cp "$KUBEDNS_SRC" "$OUT/.petrel-kubedns.go"; fi
for t in $WHAT; do built "${t##*/}" || { echo "build-kube.sh: ${t##*/} missing after the build" >&2; exit 1; }; done
