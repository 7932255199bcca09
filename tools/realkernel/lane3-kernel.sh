#!/usr/bin/env bash
# Lane 3's kernel (see tools/realkernel/README.md): a small x86-64 kernel built from Debian's
# linux-source-7.3 (trixie-backports) with everything the conformance tests need built in —
# IOMMUFD with IOMMUFD_TEST (the mock-domain test ioctls), the VFIO cdev, VFIO_PCI with its
# dma-buf export (PCI_P2PDMA), PCI_TSM, udmabuf, the system dma_heap, 9p over virtio.
#
#   make tinyconfig; merge_config.sh kernel-fragment.config; make olddefconfig; make bzImage
#
# The bzImage is cached outside the repo, in ~/.cache/passthru/lane3/<fragment hash>-<source
# package version>/; a cached kernel is reused, a
# missing one is built (about 10 minutes on 2 cores). Prints the bzImage's path on stdout;
# progress goes to stderr. Never installs the source package (dpkg-deb streams the tarball).
#
# Environment: LANE3_CACHE (default ~/.cache/passthru/lane3), PASSTHRU_DEBIAN_MIRROR,
# LANE3_SUITE (default trixie-backports), LANE3_JOBS (default nproc + 1).
# Exit status 90 when a package or the build fails (the message names it).
set -euo pipefail
# The whole script is one function, read before it runs: editing the file during a run
# (bash reads scripts as it goes) cannot change what the run does.
main() {

here=$(cd "$(dirname "$0")" && pwd)
suite=${LANE3_SUITE:-trixie-backports}
cache=${LANE3_CACHE:-$HOME/.cache/passthru/lane3}
fragment=$here/kernel-fragment.config
src_pkg=linux-source-7.3
# What the lanes' tests need; olddefconfig dropping any of these is an error, not a warning.
required=(IOMMUFD IOMMUFD_TEST VFIO VFIO_DEVICE_CDEV VFIO_CONTAINER VFIO_PCI PCI_P2PDMA FAILSLAB
    VFIO_PCI_DMABUF UDMABUF DMABUF_HEAPS_SYSTEM NET_9P_VIRTIO 9P_FS VIRTIO_PCI INTEL_IOMMU
    PCI_TSM MEMFD_CREATE TMPFS DEVTMPFS SERIAL_8250_CONSOLE)

log() { printf '%s\n' "lane3-kernel: $*" >&2; }
die() { log "$*"; exit 90; }

# shellcheck source=../lib/debian-mirror.sh
source "$here/../lib/debian-mirror.sh"
# shellcheck source=../lib/apt-private.sh
source "$here/../lib/apt-private.sh"
# shellcheck source=lib.sh
source "$here/lib.sh"

need_packages build-essential:gcc flex:flex bison:bison bc:bc libelf-dev:/usr/include/gelf.h \
    libssl-dev:/usr/include/openssl/ssl.h xz-utils:xz dpkg:dpkg-deb \
    debian-archive-keyring:"$apt_private_keyring" || die "build tools missing"

fraghash=$(sha256sum "$fragment" | cut -c1-16)
mirror=${PASSTHRU_DEBIAN_MIRROR:-$(debian_mirror_uri)}
[[ -n $mirror ]] || die "no Debian mirror in the machine's apt sources (set PASSTHRU_DEBIAN_MIRROR)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "apt-get update ($mirror $suite, private config in $work)"
if ! apt_private_init "$work" "$suite" "$mirror"; then
    # Offline: a kernel built earlier from the same fragment still serves.
    for done in "$cache/$fraghash"-*/.complete; do
        [[ -f $done ]] || continue
        log "private apt-get update failed; using the cached $(dirname "$done")/bzImage"
        printf '%s\n' "$(dirname "$done")/bzImage"
        exit 0
    done
    die "private apt-get update failed (and no kernel is cached for this fragment)"
fi
version=$(apt-cache "${apt_opts[@]}" show "$src_pkg/$suite" 2>/dev/null |
    sed -n 's/^Version: //p' | head -n1)
[[ -n $version ]] || die "package $src_pkg is not in $mirror $suite"
out=$cache/$fraghash-${version//[^A-Za-z0-9.+-]/_}
if [[ -f $out/bzImage && -f $out/.complete ]]; then
    log "cached: $out/bzImage ($src_pkg $version)"
    printf '%s\n' "$out/bzImage"
    exit 0
fi

t0=$SECONDS
log "apt-get download $src_pkg=$version"
mkdir -p "$work/deb"
deb=$(apt_private_download "$src_pkg=$version" "$work/deb") || die "download of $src_pkg failed"
build=$work/build
mkdir -p "$build"
log "unpacking /usr/src/$src_pkg.tar.xz"
dpkg-deb --fsys-tarfile "$deb" | tar -xOf - "./usr/src/$src_pkg.tar.xz" |
    tar -xJf - -C "$build" || die "unpacking $src_pkg failed"
rm -f "$deb"
src=$build/$src_pkg
[[ -f $src/Makefile ]] || die "$src_pkg has no kernel tree"
jobs=${LANE3_JOBS:-$(($(nproc) + 1))}
(
    cd "$src"
    make -s tinyconfig >&2
    scripts/kconfig/merge_config.sh -m .config "$fragment" >&2
    make -s olddefconfig >&2
) || die "configuring the kernel failed"
dropped=()
for opt in "${required[@]}"; do
    grep -q "^CONFIG_$opt=y" "$src/.config" || dropped+=("$opt")
done
((${#dropped[@]} == 0)) || die "olddefconfig dropped required options: ${dropped[*]}"
log "configured in $((SECONDS - t0)) s; make -j$jobs bzImage"
(cd "$src" && make -s -j"$jobs" bzImage >&2) || die "the kernel build failed"
rm -rf "$out"
mkdir -p "$out"
cp "$src/arch/x86/boot/bzImage" "$src/.config" "$out/"
printf '%s %s from %s %s, sha256 %s; fragment sha256 %s\n' "$src_pkg" "$version" "$mirror" \
    "$suite" "$(sha256sum "$out/bzImage" | cut -d' ' -f1)" \
    "$(sha256sum "$fragment" | cut -d' ' -f1)" >"$out/.source"
touch "$out/.complete"
log "built in $((SECONDS - t0)) s: $out/bzImage"
printf '%s\n' "$out/bzImage"
}
main "$@"
