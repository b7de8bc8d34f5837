#!/usr/bin/env bash
# A real Kubernetes v1.20.2 cluster on this machine, for `cargo xtask cluster` and the real-cluster
# tests (tests/e2e/tests/realnode.rs). No kube-proxy and no CNI: petrel is installed on it with
# `kubectl apply -k tests/realnode/overlay`.
#
#   cluster.sh up [NODES]     control plane + NODES nodes (default 2); waits until every node
#                             registered (they stay NotReady until a CNI writes its conflist)
#   cluster.sh import TAR...  imports docker-archive images into every node's containerd
#   cluster.sh tag SRC DST    names image SRC also DST on every node
#   cluster.sh restart-kubelet I   stops node I's kubelet and starts it again
#   cluster.sh baseline       the conformance baseline instead of petrel: Debian's bridge +
#                             host-local CNI plugins and kube-proxy (iptables) on every node
#   cluster.sh e2e DIR FOCUS SKIP   the upstream e2e.test ($KUBE_BIN/e2e.test) against the
#                             cluster, from node 1; JUnit report and log in DIR
#   cluster.sh down           removes everything `up` made; safe to re-run
#   cluster.sh kubectl ARGS   kubectl against the cluster
#   cluster.sh status         nodes and pods
#
# Environment: KUBE_BIN (the v1.20.2 binaries, `cargo xtask setup` builds them), CLUSTER (name,
# default "petrel": namespaces, cgroups and node names start with it), CLUSTER_DIR (work folder,
# default /tmp/$CLUSTER-cluster).
#
# Layout (everything named after the cluster, so two clusters can run at once):
# - network: namespace $CLUSTER-hub with bridge br0 10.200.0.254/24 (the "outside": NodePorts
#   are reached from here); node i is namespace $CLUSTER-node$i with eth0 10.200.0.$i/24 on it.
#   Processes are started with `nsenter --net` (not `ip netns exec`, which remounts /sys).
# - control plane (etcd, kube-apiserver, kube-controller-manager allocating each node a /24 of
#   10.244.0.0/16, kube-scheduler) in node 1's namespace, as a kubeadm control-plane node;
#   the API server at https://10.200.0.1:6443.
# - each node: its own mount namespace (shared propagation inside, nothing back to the host)
#   holding what a node's disk would: overlays on /etc, /opt, /var/lib, /var/log and /run whose
#   upper layers live under $CLUSTER_DIR (so /etc/cni/net.d, /opt/cni/bin, /var/lib/petrel,
#   /run/petrel, /var/lib/kubelet, /var/log/pods are the node's own and the host's are never
#   written), and no bpffs on /sys/fs/bpf (petrel's init container mounts the node's own). In it,
#   containerd (own root, state and socket; its own UTS namespace with the node's hostname) and
#   kubelet, both in cgroup $CLUSTER-node$i: kubelet's --cgroup-root in every v1 hierarchy and the
#   same folder in the cgroup2 hierarchy, where petrel attaches socket-LB (the node's processes
#   and pods only, never the machine's root cgroup).
# - /opt/cni/bin starts with Debian's reference plugins (loopback, portmap, ...) as the
#   kubernetes-cni package puts them on a kubeadm node; /etc/cni/net.d starts empty.
# - cluster DNS: petrel-kubedns (tests/realnode/kubedns, built by `cargo xtask setup`) in node 1's
#   namespace on 10.200.0.1:53, behind Service kube-system/kube-dns 10.96.0.10 (no selector, its
#   Endpoints written here); every kubelet has --cluster-dns 10.96.0.10, so pods resolve
#   <service>.<namespace>.svc.cluster.local once a service proxy (petrel) serves that Service.
set -euo pipefail
CLUSTER=${CLUSTER:-petrel}
W=${CLUSTER_DIR:-/tmp/$CLUSTER-cluster}
KUBE_BIN=${KUBE_BIN:-$HOME/.cache/petrel/kube/bin}
HUB=$CLUSTER-hub
CP_IP=10.200.0.1
TOKEN_FILE=$W/cp/token
DNS_IP=10.96.0.10
CG2=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)

log() { echo "cluster: $*" >&2; }
die() { echo "cluster: $*" >&2; exit 1; }
node() { echo "$CLUSTER-node$1"; }
nodes() { for d in "$W"/node*/; do [ -d "$d" ] && basename "$d" | sed 's/^node//'; done; }
in_net() { local ns=$1; shift; nsenter --net="/run/netns/$ns" "$@"; }
in_node() { local i=$1; shift; nsenter --net="/run/netns/$(node "$i")" --mount="$W/ns/node$i" "$@"; }
kc() { in_net "$(node 1)" "$KUBE_BIN/kubectl" --kubeconfig "$W/cp/kubeconfig" "$@"; }

# spawn CGROUP2_DIR LOG PIDFILE CMD...: CMD in the background in that cgroup2 folder, with no
# file descriptor of ours but its log: a daemon must not keep a lock its caller holds (e.g. the
# `flock` a test runner takes around `cluster.sh up`) for as long as the cluster runs.
spawn() {
  local cg=$1 out=$2 pidf=$3; shift 3
  mkdir -p "$cg"
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
    done
    # shellcheck disable=SC2016
    exec setsid sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$cg" "$@" >"$out" 2>&1 </dev/null
  ) &
  echo $! >"$pidf"
}

wait_for() { # TRIES DESCRIPTION CMD...
  local n=$1 what=$2; shift 2
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "timed out waiting for $what"
}

up_network() {
  ip netns add "$HUB"
  ip -n "$HUB" link set lo up
  ip -n "$HUB" link add br0 type bridge
  ip -n "$HUB" addr add 10.200.0.254/24 dev br0
  ip -n "$HUB" link set br0 up
}

up_controlplane() {
  local R=$W/cp ns; ns=$(node 1)
  mkdir -p "$R"
  (
    cd "$R"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=petrel-test-ca -keyout ca.key -out ca.crt 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout apiserver.key -out apiserver.csr 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,IP:%s,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' "$CP_IP" >ext.cnf
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile ext.cnf -out apiserver.crt 2>/dev/null
    # The client certificate the API server shows kubelets (exec, logs, port-forward).
    openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=kube-apiserver-kubelet-client" -keyout kubelet-client.key -out kubelet-client.csr 2>/dev/null
    printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >client.cnf
    openssl x509 -req -in kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 30 -extfile client.cnf -out kubelet-client.crt 2>/dev/null
    openssl genrsa -out sa.key 2048 2>/dev/null
    head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >token
    echo "$(cat token),admin,admin,system:masters" >tokens.csv
  )
  cat >"$R/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: $CLUSTER
  cluster: {server: "https://$CP_IP:6443", certificate-authority: $R/ca.crt}
users:
- name: admin
  user: {token: $(cat "$TOKEN_FILE")}
contexts:
- name: $CLUSTER
  context: {cluster: $CLUSTER, user: admin, namespace: default}
current-context: $CLUSTER
KC
  local CG=$CG2/$CLUSTER-controlplane
  spawn "$CG" "$R/etcd.log" "$R/etcd.pid" nsenter --net="/run/netns/$ns" etcd --name "$CLUSTER" \
    --data-dir "$R/etcd-data" --listen-client-urls http://127.0.0.1:2379 \
    --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
    --initial-advertise-peer-urls http://127.0.0.1:2380 --initial-cluster "$CLUSTER=http://127.0.0.1:2380" \
    --unsafe-no-fsync --quota-backend-bytes=1073741824
  spawn "$CG" "$R/apiserver.log" "$R/apiserver.pid" nsenter --net="/run/netns/$ns" "$KUBE_BIN/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:2379 --bind-address=0.0.0.0 --advertise-address="$CP_IP" \
    --secure-port=6443 --tls-cert-file="$R/apiserver.crt" --tls-private-key-file="$R/apiserver.key" \
    --client-ca-file="$R/ca.crt" --kubelet-client-certificate="$R/kubelet-client.crt" \
    --kubelet-client-key="$R/kubelet-client.key" --kubelet-preferred-address-types=InternalIP,Hostname \
    --service-cluster-ip-range=10.96.0.0/12 --service-node-port-range=30000-32767 \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$R/sa.key" --service-account-signing-key-file="$R/sa.key" \
    --token-auth-file="$R/tokens.csv" --authorization-mode=Node,RBAC --allow-privileged=true \
    --profiling=false
  local tok; tok=$(cat "$TOKEN_FILE")
  wait_for 600 "the API server (log: $R/apiserver.log)" \
    in_net "$ns" curl -fsS --cacert "$R/ca.crt" -H "Authorization: Bearer $tok" "https://$CP_IP:6443/readyz"
  spawn "$CG" "$R/controller-manager.log" "$R/controller-manager.pid" nsenter --net="/run/netns/$ns" \
    "$KUBE_BIN/kube-controller-manager" --kubeconfig="$R/kubeconfig" \
    --authentication-kubeconfig="$R/kubeconfig" --authorization-kubeconfig="$R/kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --port=0 --use-service-account-credentials=false \
    --service-account-private-key-file="$R/sa.key" --root-ca-file="$R/ca.crt" \
    --allocate-node-cidrs=true --cluster-cidr=10.244.0.0/16 --node-cidr-mask-size=24 \
    --service-cluster-ip-range=10.96.0.0/12 --node-monitor-grace-period=40s --pod-eviction-timeout=5m
  spawn "$CG" "$R/scheduler.log" "$R/scheduler.pid" nsenter --net="/run/netns/$ns" \
    "$KUBE_BIN/kube-scheduler" --kubeconfig="$R/kubeconfig" \
    --authentication-kubeconfig="$R/kubeconfig" --authorization-kubeconfig="$R/kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --port=0
  wait_for 300 "the default ServiceAccount" kc get serviceaccount default
  up_dns
}

# The cluster DNS (see the header): the server, and the Service pods find it by.
up_dns() {
  local R=$W/cp ns; ns=$(node 1)
  spawn "$CG2/$CLUSTER-controlplane" "$R/kubedns.log" "$R/kubedns.pid" nsenter --net="/run/netns/$ns" \
    "$KUBE_BIN/petrel-kubedns" --kubeconfig="$R/kubeconfig" --listen="$CP_IP:53" --domain=cluster.local
  kc apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
spec:
  clusterIP: $DNS_IP
  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: kube-dns, namespace: kube-system, labels: {k8s-app: kube-dns}}
subsets:
- addresses: [{ip: $CP_IP}]
  ports: [{name: dns, port: 53, protocol: UDP}, {name: dns-tcp, port: 53, protocol: TCP}]
YAML
}

# The node's network namespace, wired to the hub.
up_node_network() {
  local i=$1 ns; ns=$(node "$i")
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip -n "$HUB" link add "veth$i" type veth peer name eth0 netns "$ns"
  ip -n "$HUB" link set "veth$i" master br0 up
  ip -n "$ns" addr add "10.200.0.$i/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add default via 10.200.0.254 dev eth0
}

# The node's disk (mount namespace) and cgroups.
up_node_fs() {
  local i=$1 n; n=$(node "$i")
  local D=$W/node$i
  mkdir -p "$D/upper" "$D/work" "$W/ns"
  : >"$W/ns/node$i"
  unshare --mount="$W/ns/node$i" --propagation shared true
  # shellcheck disable=SC2016
  nsenter --mount="$W/ns/node$i" sh -euc '
    D=$0
    for d in etc opt var/lib var/log run; do
      u=$(echo "$d" | tr / -)
      mkdir -p "$D/upper/$u" "$D/work/$u"
      mount -t overlay "node-$u" -o "lowerdir=/$d,upperdir=$D/upper/$u,workdir=$D/work/$u" "/$d"
    done
    mkdir -p /etc/cni/net.d /opt/cni/bin /var/lib/kubelet /var/log/pods /var/log/containers
    for p in loopback portmap bandwidth tuning host-local; do cp "/usr/lib/cni/$p" /opt/cni/bin/; done
    # A fresh node: no bpffs (the host one is not the node'"'"'s); petrel mounts its own.
    umount /sys/fs/bpf 2>/dev/null || true
  ' "$D"
  # kubelet needs its --cgroup-root in every hierarchy (v1 controllers and cgroup2).
  for h in /sys/fs/cgroup/*/; do
    h=${h%/}
    [ -d "$h" ] && [ "$(stat -fc %T "$h")" != tmpfs ] || continue
    mkdir -p "$h/$n"
    if [ -f "$h/cpuset.cpus" ]; then
      cat "$h/cpuset.cpus" >"$h/$n/cpuset.cpus"
      cat "$h/cpuset.mems" >"$h/$n/cpuset.mems"
    fi
  done
}

up_containerd() {
  local i=$1 n; n=$(node "$i")
  local C=$W/node$i/containerd
  mkdir -p "$C/root" "$C/state"
  cat >"$C/config.toml" <<TOML
version = 2
root = "$C/root"
state = "$C/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$C/containerd.sock"
[ttrpc]
  address = "$C/containerd.sock.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "k8s.gcr.io/pause:3.2"
  disable_apparmor = true
  # Without CAP_SYS_RESOURCE (this machine) runc cannot give the sandbox oom_score_adj -998:
  # "can't get final child's PID from pipe: EOF". Clamp to containerd's own score.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
    max_conf_num = 1
TOML
  # Its own UTS namespace: hostNetwork pods see the node's hostname, not the machine's.
  spawn "$CG2/$n/runtime" "$C/containerd.log" "$C/containerd.pid" \
    nsenter --net="/run/netns/$n" --mount="$W/ns/node$i" \
    unshare --uts sh -c "hostname $n && exec containerd --config $C/config.toml"
  wait_for 150 "containerd of $n (log: $C/containerd.log)" ctr --address "$C/containerd.sock" version
}

import_images() {
  local i t
  for i in $(nodes); do
    for t in "$@"; do
      ctr --address "$W/node$i/containerd/containerd.sock" -n k8s.io images import "$t" >/dev/null
    done
  done
}

up_kubelet() {
  local i=$1 n; n=$(node "$i")
  local K=$W/node$i/kubelet
  mkdir -p "$K"
  cat >"$K/config.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
cgroupRoot: /$n
cgroupsPerQOS: true
enforceNodeAllocatable: []
failSwapOn: false
address: 0.0.0.0
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
clusterDomain: cluster.local
clusterDNS: [$DNS_IP]
authentication: {anonymous: {enabled: true}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
serializeImagePulls: false
protectKernelDefaults: false
makeIPTablesUtilChains: false
YAML
  local sock=$W/node$i/containerd/containerd.sock
  # KUBELET_KERNEL_TUNABLES=warn: the test patch of xtask/scripts/build-kube.sh, so kubelet leaves
  # the machine's vm.* and kernel.* sysctls alone.
  spawn "$CG2/$n/runtime" "$K/kubelet.log" "$K/kubelet.pid" \
    env KUBELET_KERNEL_TUNABLES=warn nsenter --net="/run/netns/$n" --mount="$W/ns/node$i" \
    "$KUBE_BIN/kubelet" --config="$K/config.yaml" --kubeconfig="$W/cp/kubeconfig" \
    --container-runtime=remote --container-runtime-endpoint="unix://$sock" --containerd="$sock" \
    --runtime-request-timeout=5m --pod-infra-container-image=k8s.gcr.io/pause:3.2 \
    --hostname-override="$n" --node-ip="10.200.0.$i" --v=2
}

cmd_up() {
  local count=${1:-2} i
  [ -n "$CG2" ] || die "no cgroup2 hierarchy mounted"
  for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl petrel-kubedns; do
    [ -x "$KUBE_BIN/$b" ] || die "$KUBE_BIN/$b missing: run \`cargo xtask setup\`"
  done
  command -v containerd >/dev/null || die "containerd missing: run \`cargo xtask setup\`"
  [ ! -e "$W" ] || die "$W exists: \`cluster.sh down\` first (CLUSTER=$CLUSTER)"
  ip netns list | grep -qw "$HUB" && die "namespace $HUB exists: \`cluster.sh down\` first"
  mkdir -p "$W/ns"
  # Mount namespaces are kept by bind mounts under $W/ns, which must not propagate.
  mount --bind "$W/ns" "$W/ns"
  mount --make-private "$W/ns"
  up_network
  for i in $(seq 1 "$count"); do
    mkdir -p "$W/node$i"
    up_node_network "$i"
  done
  up_controlplane
  for i in $(seq 1 "$count"); do
    up_node_fs "$i"
    up_containerd "$i"
    up_kubelet "$i"
  done
  for i in $(seq 1 "$count"); do
    wait_for 600 "node $(node "$i") to register (log: $W/node$i/kubelet/kubelet.log)" kc get node "$(node "$i")"
  done
  log "up: $count nodes; kubectl: KUBECONFIG=$W/cp/kubeconfig, from namespace $(node 1) (or \`cargo xtask cluster kubectl ...\`)"
}

# stop_cgroup DIR: kills every process in the cgroup2 folder DIR and below, waits until it is
# empty, then removes it and the same folder in every v1 hierarchy (deepest first).
stop_cgroup() {
  local rel=$1 h
  if [ -d "$CG2/$rel" ]; then
    echo 1 >"$CG2/$rel/cgroup.kill"
    for _ in $(seq 1 100); do
      grep -q '^populated 0' "$CG2/$rel/cgroup.events" && break
      sleep 0.1
    done
  fi
  for h in /sys/fs/cgroup/*/; do
    h=${h%/}
    [ -d "$h/$rel" ] || continue
    find "$h/$rel" -depth -type d -exec rmdir {} + 2>/dev/null || true
    [ ! -d "$h/$rel" ] || echo "cluster: cannot remove cgroup $h/$rel" >&2
  done
}

cmd_down() {
  local i n
  for i in $(nodes); do
    n=$(node "$i")
    stop_cgroup "$n"
    if [ -e "$W/ns/node$i" ]; then umount "$W/ns/node$i" 2>/dev/null || true; fi
    ip netns list | grep -qw "$n" && ip netns del "$n"
  done
  stop_cgroup "$CLUSTER-controlplane"
  ip netns list | grep -qw "$HUB" && ip netns del "$HUB"
  if [ -d "$W" ]; then
    # Anything still mounted under the work folder (only the ns bind if all went well).
    awk -v d="$W/" 'index($2, d) == 1 || $2 == substr(d, 1, length(d) - 1) {print $2}' /proc/mounts |
      sort -r | while read -r m; do umount -l "$m"; done
    rm -rf "$W"
  fi
  local left
  left=$(ip netns list | awk '{print $1}' | grep -c "^$CLUSTER-\(hub\|node[0-9]*\)$" || true)
  [ "$left" = 0 ] || die "left behind: $left network namespaces"
  log "down: nothing of cluster $CLUSTER left"
}

# restart_kubelet I: stops node I's kubelet (the process `up` started, by its PID) and starts
# it again; pods and containers keep running meanwhile, as on a real node.
restart_kubelet() {
  local i=$1 pidf pid
  pidf=$W/node$i/kubelet/kubelet.pid
  pid=$(cat "$pidf")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && die "kubelet $pid did not stop"
  up_kubelet "$i"
}

# tag SRC DST: gives image SRC the name DST too, on every node (a "new image" with the same files).
tag_images() {
  local i
  for i in $(nodes); do
    ctr --address "$W/node$i/containerd/containerd.sock" -n k8s.io images tag --force "$1" "$2" >/dev/null
  done
}

# The baseline petrel is compared with (`cargo xtask conformance`): on every node Debian's bridge
# + host-local plugins (a /24 bridge per node from its Node's podCIDR, portmap for hostPorts),
# routes to the other nodes' pod CIDRs over the underlay, and kube-proxy v1.20.2 in iptables mode.
cmd_baseline() {
  local i j n cidr
  for i in $(nodes); do
    n=$(node "$i")
    cidr=$(kc get node "$n" -o 'jsonpath={.spec.podCIDR}')
    [ -n "$cidr" ] || die "node $n has no podCIDR"
    for p in bridge host-local loopback portmap; do in_node "$i" cp "/usr/lib/cni/$p" /opt/cni/bin/; done
    in_node "$i" sh -c 'cat >/etc/cni/net.d/10-bridge.conflist' <<JSON
{
  "cniVersion": "0.4.0",
  "name": "baseline",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$cidr"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
  ]
}
JSON
    for j in $(nodes); do
      [ "$j" = "$i" ] && continue
      cidr=$(kc get node "$(node "$j")" -o 'jsonpath={.spec.podCIDR}')
      ip -n "$n" route replace "$cidr" via "10.200.0.$j" dev eth0
    done
    in_node "$i" sh -c 'echo 1 >/proc/sys/net/ipv4/ip_forward'
    spawn "$CG2/$n/runtime" "$W/node$i/kube-proxy.log" "$W/node$i/kube-proxy.pid" \
      nsenter --net="/run/netns/$n" --mount="$W/ns/node$i" "$KUBE_BIN/kube-proxy" \
      --kubeconfig="$W/cp/kubeconfig" --hostname-override="$n" --bind-address="10.200.0.$i" \
      --cluster-cidr=10.244.0.0/16 --proxy-mode=iptables --conntrack-max-per-core=0 \
      --conntrack-tcp-timeout-established=0 --conntrack-tcp-timeout-close-wait=0 \
      --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=0.0.0.0:10256 --v=2
  done
  kc wait --for=condition=Ready node --all --timeout=180s >/dev/null
  log "baseline: bridge + host-local and kube-proxy on $(nodes | wc -l) nodes"
}

# e2e DIR FOCUS SKIP: e2e.test from node 1's network namespace and cgroup (it reaches the API
# server, the nodes, NodePorts and ClusterIPs as a process on that node would: petrel's
# socket-LB covers the node's cgroup, kube-proxy's OUTPUT rules the node's network namespace). The Networking tests first fetch http://google.com from the runner:
# with no internet here, a web server in the hub namespace stands in, and only the e2e process
# sees a private /etc/hosts naming it (unshare -m and a bind mount; the machine's is untouched).
cmd_e2e() {
  local dir=$1 focus=$2 skip=$3 web=$W/cp/web
  [ -x "$KUBE_BIN/e2e.test" ] || die "$KUBE_BIN/e2e.test missing (cargo xtask conformance builds it)"
  mkdir -p "$dir" "$web/www"
  echo ok >"$web/www/index.html"
  if ! { [ -f "$web/httpd.pid" ] && kill -0 "$(cat "$web/httpd.pid")" 2>/dev/null; }; then
    spawn "$CG2/$CLUSTER-controlplane" "$web/httpd.log" "$web/httpd.pid" \
      nsenter --net="/run/netns/$HUB" busybox httpd -f -p 10.200.0.254:80 -h "$web/www"
  fi
  { cat /etc/hosts; echo "10.200.0.254 google.com www.google.com"; } >"$web/hosts"
  local cg=$CG2/$(node 1)/e2e
  mkdir -p "$cg"
  # shellcheck disable=SC2016
  PATH=$KUBE_BIN:$PATH unshare -m sh -c 'echo $$ >"$1/cgroup.procs" && mount --bind "$0" /etc/hosts && shift && exec "$@"' "$web/hosts" "$cg" \
    nsenter --net="/run/netns/$(node 1)" "$KUBE_BIN/e2e.test" \
    --kubeconfig="$W/cp/kubeconfig" --provider=local --minStartupPods=0 \
    --ginkgo.focus="$focus" --ginkgo.skip="$skip" --ginkgo.noColor --ginkgo.succinct=false \
    --dump-logs-on-failure=false --report-dir="$dir" >"$dir/e2e.log" 2>&1 </dev/null || true
  [ -f "$dir/junit_01.xml" ] || die "e2e.test wrote no report (log: $dir/e2e.log)"
  grep -E '^(Ran|SUCCESS|FAIL)' "$dir/e2e.log" >&2 || true
}

case ${1:-} in
  up) shift; cmd_up "$@" ;;
  down) cmd_down ;;
  import) shift; import_images "$@" ;;
  tag) shift; tag_images "$@" ;;
  restart-kubelet) shift; restart_kubelet "$@" ;;
  baseline) cmd_baseline ;;
  e2e) shift; cmd_e2e "$@" ;;
  kubectl) shift; exec nsenter --net="/run/netns/$(node 1)" "$KUBE_BIN/kubectl" --kubeconfig "$W/cp/kubeconfig" "$@" ;;
  status) kc get nodes -o wide; kc get pods -A -o wide ;;
  *) die "usage: cluster.sh up [NODES] | import TAR... | tag SRC DST | restart-kubelet I | baseline | e2e DIR FOCUS SKIP | down | kubectl ARGS | status" ;;
esac
