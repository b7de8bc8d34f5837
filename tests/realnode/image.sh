#!/usr/bin/env bash
# Builds the real-cluster images without a registry or a container engine, as docker-archive
# tarballs (`docker save` format; `ctr images import` reads them):
#   petrel.test/petrel:dev     petrel's image: exactly the files deploy/image-contents lists (the
#                              Dockerfile checks its image has the same), with their libraries
#   petrel.test/pod:dev        the test workload: petrel-pod (tests/testbed) + busybox (sh, wget, nc)
#   k8s.gcr.io/pause:3.2       the sandbox image containerd and kubelet 1.20 expect (a static C
#                              pause: the name is the one they ask for, so nothing is pulled)
#   k8s.gcr.io/e2e-test-images/agnhost:2.21   only with AGNHOST=<static agnhost binary>: the
#                              upstream e2e tests' workload under the name e2e.test v1.20.2 asks
#                              for, with what its tests run in it: Debian's netcat-openbsd (nc -v
#                              -t -u -z, which busybox's nc lacks), GNU wget (busybox-static's
#                              crashes here), curl, ip, ss, dash as /bin/sh and bash
# Called by `cargo xtask image`. Layers are reproducible (sorted, numeric owners, fixed times):
# the same files give the same image ID.
#
# Usage: [AGNHOST=FILE [AGNHOST_PORTER_DIR=DIR]] image.sh OUT_DIR RELEASE_DIR REPO_ROOT
set -euo pipefail
OUT=$1
REL=$2
ROOT=$3
mkdir -p "$OUT"
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT

# mkimage REF ROOTFS OUT.tar ENTRYPOINT_JSON [CMD_JSON]
mkimage() {
  local ref=$1 rootfs=$2 out=$3 ep=$4 cmd=${5:-null} d layer cfg
  d=$(mktemp -d -p "$W")
  tar --numeric-owner --owner=0 --group=0 --sort=name --mtime=2020-01-01 -C "$rootfs" \
    -cf "$d/layer.tar" .
  layer=$(sha256sum "$d/layer.tar" | cut -d' ' -f1)
  mkdir "$d/$layer"
  mv "$d/layer.tar" "$d/$layer/layer.tar"
  cat >"$d/config.json" <<JSON
{"architecture":"amd64","os":"linux","created":"2020-01-01T00:00:00Z",
 "config":{"Entrypoint":$ep,"Cmd":$cmd,"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"WorkingDir":"/"},
 "rootfs":{"type":"layers","diff_ids":["sha256:$layer"]},
 "history":[{"created":"2020-01-01T00:00:00Z","created_by":"petrel tests/realnode/image.sh"}]}
JSON
  cfg=$(sha256sum "$d/config.json" | cut -d' ' -f1)
  mv "$d/config.json" "$d/$cfg.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]\n' "$cfg" "$ref" "$layer" \
    >"$d/manifest.json"
  tar --sort=name --mtime=2020-01-01 -C "$d" -cf "$out.tmp" manifest.json "$cfg.json" "$layer"
  mv "$out.tmp" "$out"
  echo "  $ref: $out (image id sha256:${cfg:0:12}, $(du -h "$out" | cut -f1))" >&2
}

# A Debian-style (merged /usr) root folder.
newroot() {
  local r=$1
  mkdir -p "$r"/{usr/bin,usr/sbin,usr/lib,usr/lib64,usr/local/bin,etc,tmp,proc,sys,dev,run,var}
  chmod 1777 "$r/tmp"
  ln -s usr/bin "$r/bin"
  ln -s usr/sbin "$r/sbin"
  ln -s usr/lib "$r/lib"
  ln -s usr/lib64 "$r/lib64"
  echo 'root:x:0:0:root:/root:/bin/sh' >"$r/etc/passwd"
  echo 'root:x:0:' >"$r/etc/group"
}

# Where PATH lands in a merged-/usr root (/bin/x -> /usr/bin/x).
inroot() { echo "$(readlink -f "$(dirname "$1")")/$(basename "$1")"; }

# copy ROOTFS PATH-IN-IMAGE SOURCE: SOURCE's contents at PATH-IN-IMAGE, and every shared library
# it needs (ldd) at the path the loader looks for.
copy() {
  local r=$1 dst=$2 src=$3 lib
  install -D -m 0755 "$src" "$r$(inroot "$dst")"
  ldd "$src" 2>/dev/null | awk '/=> \// {print $3} /^\t\/[^ ]*ld-linux/ {print $1}' | while read -r lib; do
    [ -e "$r$(inroot "$lib")" ] || install -D -m 0755 "$(readlink -f "$lib")" "$r$(inroot "$lib")"
  done
}

# --- petrel ---
P=$W/petrel
newroot "$P"
while read -r path kind _; do
  case $path in '' | '#'*) continue ;; esac
  case $kind in
    petrel) copy "$P" "$path" "$REL/$(basename "$path")" ;;
    tool) copy "$P" "$path" "$(readlink -f "$path")" ;;
    *) echo "image.sh: unknown kind '$kind' for $path in deploy/image-contents" >&2; exit 1 ;;
  esac
done <"$ROOT/deploy/image-contents"
install -D -m 0644 "$ROOT/deploy/image-contents" "$P/usr/local/share/petrel/image-contents"
mkimage petrel.test/petrel:dev "$P" "$OUT/petrel.tar" '["/usr/local/bin/petrel-agent"]'

# --- the test workload ---
Q=$W/pod
newroot "$Q"
copy "$Q" /usr/local/bin/petrel-pod "$REL/petrel-pod"
install -D -m 0755 /bin/busybox "$Q/usr/bin/busybox"
for a in sh wget nc cat ls sleep ip ps touch seq; do ln -s busybox "$Q/usr/bin/$a"; done
mkimage petrel.test/pod:dev "$Q" "$OUT/pod.tar" '["/usr/local/bin/petrel-pod"]'

# --- pause ---
R=$W/pause
mkdir -p "$R"
cat >"$W/pause.c" <<'C'
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
static void die(int s) { (void)s; _exit(0); }
int main(void) {
  signal(SIGINT, die); signal(SIGTERM, die); signal(SIGCHLD, reap);
  for (;;) pause();
}
C
gcc -static -O2 -s -o "$R/pause" "$W/pause.c"
mkimage k8s.gcr.io/pause:3.2 "$R" "$OUT/pause.tar" '["/pause"]'

# --- agnhost (for `cargo xtask conformance`) ---
if [ -n "${AGNHOST:-}" ]; then
  A=$W/agnhost
  newroot "$A"
  install -D -m 0755 "$AGNHOST" "$A/agnhost"
  ln -s agnhost "$A/agnhost-2"
  mkdir -p "$A/uploads" "$A/root" "$A/etc/ssl/certs"
  # porter's TLS pair (test/images/agnhost/porter in the tree), at the path it opens.
  if [ -n "${AGNHOST_PORTER_DIR:-}" ]; then cp "$AGNHOST_PORTER_DIR"/localhost.{crt,key} "$A/"; fi
  install -D -m 0755 /bin/busybox "$A/usr/bin/busybox"
  # The packages' files, not the host's (the host need not have them installed).
  D=$W/debs
  mkdir -p "$D"
  (cd "$D" && apt-get download -qq -o APT::Sandbox::User=root netcat-openbsd wget >/dev/null)
  for deb in "$D"/*.deb; do dpkg -x "$deb" "$D/x"; done
  copy "$A" /usr/bin/nc "$D/x/bin/nc.openbsd"
  copy "$A" /usr/bin/wget "$D/x/usr/bin/wget"
  for b in curl ip ss bash; do copy "$A" "/usr/bin/$b" "$(readlink -f "$(command -v $b)")"; done
  copy "$A" /usr/bin/sh /bin/dash
  # Everything else the tests' shell snippets call (cat, sleep, seq, hostname, ...).
  for a in $(busybox --list); do
    [ -e "$A/usr/bin/$a" ] || [ -L "$A/usr/bin/$a" ] || ln -s busybox "$A/usr/bin/$a"
  done
  cp /etc/ssl/certs/ca-certificates.crt "$A/etc/ssl/certs/" 2>/dev/null || true
  echo 'nobody:x:65534:65534:nobody:/:/bin/false' >>"$A/etc/passwd"
  mkimage k8s.gcr.io/e2e-test-images/agnhost:2.21 "$A" "$OUT/agnhost.tar" '["/agnhost"]' '["pause"]'
fi
