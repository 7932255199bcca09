#!/usr/bin/env bash
# Lane 2 of the real-kernel conformance runs (see /work/shared/realkernel/README.md): run the
# linux variants of conformance tests on a stock Debian 7.3 kernel (trixie-backports) in a QEMU
# TCG guest with q35 + intel-iommu + QEMU's edu device.
#
# The guest (tools/realkernel/guest.sh) boots a busybox initramfs that loads the modules,
# binds the edu to vfio-pci, mounts this machine's / read-only over 9p and runs pytest with
# "-k linux" from the project's venv; results come back on the serial console.
#
# Usage: tools/realkernel/lane2.sh [PYTEST ARGS / TEST PATHS...]
#   default: the conformance files listed in tools/realkernel/lane2.tests.
#   Arguments are passed to pytest verbatim (after "-k linux"; a later -k overrides it).
#   Paths are relative to the repo; the host's / (and so /tmp) is visible read-only in the
#   guest, so an ad-hoc probe /tmp/p.py runs as /tmp/p.py.
#
# Setup (first run; idempotent): apt-get installs qemu-system-x86 and busybox-static if
# missing; the kernel (linux-binary-<abi>) and modules (linux-modules-<abi>) of the version
# that linux-image-amd64 has in trixie-backports are fetched with a private apt config (the
# machine's apt sources are not touched; the mirror URI is read from them at run time),
# never installed, only unpacked with dpkg -x into ~/.cache/passthru/lane2/<abi>/.
#
# Environment:
#   LANE2_CACHE         cache dir (default ~/.cache/passthru/lane2)
#   PASSTHRU_DEBIAN_MIRROR  overrides the mirror URI; LANE2_SUITE the suite (trixie-backports)
#   LANE_BOOT_TIMEOUT, LANE_RUN_TIMEOUT, LANE_MEM, LANE_SMP, LANE_LOG, LANE_JUNIT: guest.sh
# Exit status: pytest's (0 passed, 1 failures, 5 nothing collected, ...); 90 setup failed
# (the message names the package), 91 guest did not boot in time, 92 guest failed
# before/while running pytest, 93 run timeout.
set -euo pipefail
# The whole script is one function, read before it runs: editing the file during a run
# (bash reads scripts as it goes) cannot change what the run does.
main() {

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
suite=${LANE2_SUITE:-trixie-backports}
cache=${LANE2_CACHE:-$HOME/.cache/passthru/lane2}
modules_wanted=(vfio vfio_iommu_type1 vfio_pci 9pnet_virtio 9p udmabuf virtio_pci
    system_heap dma_heap)
if (($# == 0)); then
    mapfile -t tests <"$here/lane2.tests"
    set -- "${tests[@]}"
fi

log() { printf '%s\n' "lane2: $*" >&2; }
die() { log "$*"; exit "${rc:-90}"; }
t0=$SECONDS

# shellcheck source=lib.sh
source "$here/lib.sh"
# shellcheck source=../lib/debian-mirror.sh
source "$here/../lib/debian-mirror.sh"
# shellcheck source=../lib/apt-private.sh
source "$here/../lib/apt-private.sh"

# ---- 1. host tools --------------------------------------------------------------------------
need_lane_tools || die "host tools missing"

# ---- 2. kernel + modules from trixie-backports (private apt config) -------------------------
mkdir -p "$cache"
abi_file=$cache/current-abi
if [[ -f $abi_file && -f $cache/$(cat "$abi_file")/.complete ]]; then
    abi=$(cat "$abi_file")
else
    mirror=${PASSTHRU_DEBIAN_MIRROR:-$(debian_mirror_uri)}
    [[ -n $mirror ]] || die "no Debian mirror in the machine's apt sources (set PASSTHRU_DEBIAN_MIRROR)"
    mirror=${mirror%/}
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    log "apt-get update ($mirror $suite, private config in $work)"
    apt_private_init "$work" "$suite" "$mirror" || die "private apt-get update failed"
    # linux-image-amd64 in the suite depends on linux-image-<abi>; its ABI names the packages.
    abi=$(apt-cache "${apt_opts[@]}" show "linux-image-amd64/$suite" 2>/dev/null |
        sed -n 's/^Depends:.*linux-image-\([0-9][^ ,]*-amd64\).*/\1/p' | head -n1)
    [[ -n $abi ]] || die "no package linux-image-amd64 in $mirror $suite"
    [[ $abi == 7.3.* ]] || log "warning: $suite has kernel $abi, not 7.3.x"
    rm -rf "${cache:?}/$abi"
    mkdir -p "$cache/$abi"
    for pkg in "linux-binary-$abi" "linux-modules-$abi"; do
        log "apt-get download $pkg"
        mkdir -p "$work/deb-$pkg"
        deb=$(apt_private_download "$pkg/$suite" "$work/deb-$pkg") ||
            die "download of the package $pkg failed"
        dpkg -x "$deb" "$cache/$abi" || die "dpkg -x $deb failed"
        printf '%s sha256 %s from %s %s\n' "$(basename "$deb")" \
            "$(sha256sum "$deb" | cut -d' ' -f1)" "$mirror" "$suite" >>"$cache/$abi/.source"
    done
    [[ -f $cache/$abi/usr/lib/modules/$abi/vmlinuz ]] || die "no vmlinuz in linux-binary-$abi"
    touch "$cache/$abi/.complete"
    printf '%s\n' "$abi" >"$abi_file"
    rm -rf "$work"
    trap - EXIT
fi
kdir=$cache/$abi/usr/lib/modules/$abi
kernel=$kdir/vmlinuz
log "kernel $abi ($kernel)"

# ---- 3. modules: dependency closure from .modinfo, decompressed once ------------------------
moddir=$cache/$abi/initramfs-modules
if [[ ! -f $moddir/.complete ]]; then
    rm -rf "$moddir"
    mkdir -p "$moddir"
    declare -A file_of=() deps_of=()
    # An index of every module (name -> file) would read 5000 files; look up only what we need.
    find_mod() {
        local n=$1 f
        f=$(find "$kdir/kernel" \( -name "$n.ko*" -o -name "${n//_/-}.ko*" \) -print -quit)
        printf '%s\n' "$f"
    }
    order=()
    visit() {  # post-order DFS: dependencies first
        local n=${1//-/_} f info dep
        [[ -n ${file_of[$n]+x} ]] && return 0
        f=$(find_mod "$n")
        file_of[$n]=$f
        [[ -z $f ]] && return 0  # built in (or absent: checked in the guest)
        info=$(xz -dc "$f" | tr '\0' '\n' | grep -a '^depends=' | head -n1 || true)
        info=${info#depends=}
        for dep in ${info//,/ }; do visit "$dep"; done
        order+=("$n")
    }
    for m in "${modules_wanted[@]}"; do visit "$m"; done
    : >"$moddir/load-order"
    for n in "${order[@]}"; do
        xz -dc "${file_of[$n]}" >"$moddir/$n.ko"
        printf '%s\n' "$n" >>"$moddir/load-order"
    done
    for m in "${modules_wanted[@]}"; do
        [[ -z ${file_of[${m//-/_}]} ]] && printf '%s\n' "$m" >>"$moddir/not-modules"
    done
    touch "$moddir/.complete"
fi
log "modules: $(paste -sd' ' "$moddir/load-order") (not modules: $(paste -sd' ' \
    "$moddir/not-modules" 2>/dev/null || echo none))"

# ---- 4. boot and run ------------------------------------------------------------------------
log "setup done in $((SECONDS - t0)) s; booting the guest (TCG)"
# shellcheck source=guest.sh
source "$here/guest.sh"
rc=0
run_guest lane2 "$kernel" "$moddir" "$@" || rc=$?
log "total $((SECONDS - t0)) s; rc=$rc"
exit "$rc"
}
main "$@"
