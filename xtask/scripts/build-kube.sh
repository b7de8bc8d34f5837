#!/usr/bin/env bash
# Builds the real kube-apiserver and kube-proxy v1.20.2 offline from Debian's own `kubernetes`
# source package (bookworm-security), whose orig tarball ships vendor/. Called by
# `cargo xtask setup`; idempotent: exits at once when OUT_DIR already holds both binaries.
#
# Usage: build-kube.sh OUT_DIR WORK_DIR
#
# Two pitfalls handled here:
# - the vendored modern-go/reflect2 1.0.1 crashes under Go >= 1.18 ("fatal error: fault" in
#   mapiterinit); Debian's reflect2 1.0.2 is API-compatible and is swapped in.
# - the source package is fetched with a private deb-src list so /etc/apt is never touched.
set -euo pipefail
OUT=$1
WORK=$2
ORIG=kubernetes_1.20.5+really1.20.2.orig.tar.gz
ORIG_SHA256=b83c0780efb182d928dc63d46488a847f161f04e40a94b96bf5247dd671ecdfc
WHAT="cmd/kube-apiserver cmd/kube-proxy"
mkdir -p "$OUT" "$WORK"

built=1
for t in $WHAT; do "$OUT/${t##*/}" --version 2>/dev/null | grep -q 'v1.20.2' || built=0; done
[ "$built" = 1 ] && exit 0

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
rm -rf kubernetes-1.20.2
tar xzf "$ORIG"
cd kubernetes-1.20.2

V=vendor/github.com/modern-go/reflect2
R=/usr/share/gocode/src/github.com/modern-go/reflect2
rm -f "$V"/*.go "$V"/*.s
cp "$R"/*.go "$R"/*.s "$V"/

echo "  make WHAT=\"$WHAT\" (about 6 minutes on 2 cores)" >&2
export GOCACHE="$WORK/gocache" GOPROXY=off GOFLAGS=
unset GOPATH
make WHAT="$WHAT" >"$WORK/make.log" 2>&1 || { tail -40 "$WORK/make.log" >&2; exit 1; }
for t in $WHAT; do install -m 0755 "_output/bin/${t##*/}" "$OUT/${t##*/}"; done
cd "$WORK"
rm -rf "$WORK/kubernetes-1.20.2" "$WORK/gocache"
