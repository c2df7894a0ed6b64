# Shared by build.sh (and mirrored in image_test.py): podman as this kind of machine runs it. Debian's crun refuses
# a VM's hybrid cgroups, and a root without CAP_SYS_RESOURCE cannot raise resource limits (podman's defaults, and
# even 65536 processes, were refused here): runc, and 10,000 open files and processes.
podman_() {
  sub=$1; shift
  podman --runtime runc "$sub" --ulimit nofile=10000:10000 --ulimit nproc=10000:10000 "$@"
}
