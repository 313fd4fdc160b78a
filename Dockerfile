# One image with every kadalu binary: bricks, the mount client, the operator and the
# kubectl plugin (and the CSI driver once csi/ has a binary).
FROM rust:1-bookworm AS builder
RUN apt-get update && apt-get install -y --no-install-recommends protobuf-compiler pkg-config libfuse3-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --workspace --bins \
    && mkdir -p /out \
    && find target/release -maxdepth 1 -type f -executable \( -name 'kadalu-*' -o -name 'kubectl-kadalu' \) -exec cp {} /out/ \;

FROM debian:bookworm-slim
# fuse3: FUSE mounts of the mounter; xfsprogs and util-linux: blkid, mkfs.xfs and mount of
# device bricks.
RUN apt-get update && apt-get install -y --no-install-recommends fuse3 xfsprogs util-linux ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=builder /out/ /usr/local/bin/
ENTRYPOINT []
