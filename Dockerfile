# syntax=docker/dockerfile:1
# One image with petrel-agent, petrel-cni and netctl; deploy/daemonset.yaml runs it.
#   docker build -t petrel:0.1.0 .
#
# The builder follows `cargo xtask setup` (xtask/src/setup.rs): Debian's rustc-web (Rust 1.96,
# LLVM 22, from bookworm-security) with its prebuilt core for bpfel-unknown-none (no rust-src,
# no -Z build-std), and bpf-linker built against the very libLLVM that rustc links. There is no
# rustup in the image: aya-build (userspace/datapath/build.rs) then builds the eBPF crate with the
# current toolchain, which is Debian's.

FROM debian:bookworm AS build
ARG BPF_LINKER_VERSION=0.13.0
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      rustc-web cargo-web libstd-rust-web-dev-bpf ca-certificates gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
# LLVM_PREFIX is a folder holding one link, to the libLLVM /usr/bin/rustc is linked with.
RUN llvm="$(ldd /usr/bin/rustc | awk '/libLLVM/ {print $3}')" \
 && major="$(/usr/bin/rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')" \
 && mkdir -p /opt/llvm/lib && ln -s "$llvm" /opt/llvm/lib/libLLVM.so \
 && LLVM_PREFIX=/opt/llvm cargo install --locked --root /usr/local \
      "bpf-linker@${BPF_LINKER_VERSION}" --no-default-features --features "llvm-${major}"
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p petrel-agent -p petrel-netctl -p petrel-cni --bins \
 && mkdir -p /out \
 && install -m 0755 target/release/petrel-agent target/release/netctl target/release/petrel-cni /out/

FROM debian:bookworm-slim
# iproute2 (ip, tc, bridge) to look at what the agent programmed from inside the pod; sh and
# mount (the bpffs init container) are in the slim image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends iproute2 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/ /usr/local/bin/
# deploy/image-contents lists every file the image must hold; `cargo xtask image` (the test
# cluster's registry-less image, tests/realnode/image.sh) packs exactly that list, so the two
# images have the same files. Refuse to build an image lacking one.
COPY deploy/image-contents /usr/local/share/petrel/image-contents
RUN awk '!/^#/ && NF {print $1}' /usr/local/share/petrel/image-contents | while read -r f; do \
      test -x "$f" || { echo "the image lacks $f (deploy/image-contents)" >&2; exit 1; }; \
    done
ENTRYPOINT ["/usr/local/bin/petrel-agent"]
