#!/usr/bin/env bash
# Lane 2 of the real-kernel conformance runs (see /work/shared/realkernel/README.md): run the
# linux variants of conformance tests on a stock Debian 7.3 kernel (trixie-backports) in a QEMU
# TCG guest with q35 + intel-iommu + QEMU's edu device.
#
# The guest boots a busybox initramfs whose /init loads the needed modules, binds the edu
# (1234:11e8) to vfio-pci through driver_override, mounts this machine's / read-only over 9p,
# chroots into it and runs
#     python -B -m pytest -p no:cacheprovider TESTS... -k linux
# from the project's venv, with every write (pytest's basetemp, TMPDIR, HOME, hypothesis) on a
# tmpfs. Results come back on the serial console; this script echoes the pytest part, waits
# for the end marker and exits with pytest's status.
#
# Usage: tools/realkernel/lane2.sh [PYTEST ARGS / TEST PATHS...]
#   default: the four legacy-VFIO / udmabuf / dma_heap / memfd conformance files.
#   Arguments are passed to pytest verbatim (after "-k linux"; a later -k overrides it).
#   Paths are relative to the repo; the host's /tmp is visible read-only at /tmp/host in the
#   guest (its own /tmp is a tmpfs), so an ad-hoc probe /tmp/p.py runs as /tmp/host/p.py.
#
# Setup (first run; idempotent): apt-get installs qemu-system-x86 and busybox-static if
# missing; the kernel (linux-binary-<abi>) and modules (linux-modules-<abi>) of the version
# that linux-image-amd64 has in trixie-backports are fetched with a private apt config (the
# machine's apt sources are not touched; the mirror URI is read from them at run time),
# never installed, only unpacked with dpkg -x into ~/.cache/passthru/lane2/<abi>/.
#
# Environment:
#   LANE2_BOOT_TIMEOUT  seconds until the guest's /init must report it is up (default 180)
#   LANE2_RUN_TIMEOUT   seconds for the whole run after boot (default 1200)
#   LANE2_MEM           guest memory (default 2G), LANE2_SMP guest CPUs (default 2)
#   LANE2_CACHE         cache dir (default ~/.cache/passthru/lane2)
#   LANE2_LOG           where the full serial log goes (default: a temp file, kept on failure)
#   PASSTHRU_DEBIAN_MIRROR  overrides the mirror URI; LANE2_SUITE the suite (trixie-backports)
# Exit status: pytest's (0 passed, 1 failures, 5 nothing collected, ...); 90 setup failed,
# 91 guest did not boot in time, 92 guest failed before/while running pytest, 93 run timeout.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
suite=${LANE2_SUITE:-trixie-backports}
cache=${LANE2_CACHE:-$HOME/.cache/passthru/lane2}
boot_timeout=${LANE2_BOOT_TIMEOUT:-180}
run_timeout=${LANE2_RUN_TIMEOUT:-1200}
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
modules_wanted=(vfio vfio_iommu_type1 vfio_pci 9pnet_virtio 9p udmabuf virtio_pci
    system_heap dma_heap)
if (($# == 0)); then
    set -- tests/conformance/test_udmabuf.py tests/conformance/test_dma_heap.py \
        tests/conformance/test_memfd.py tests/conformance/test_vfio_legacy.py
fi

log() { printf '%s\n' "lane2: $*" >&2; }
die() { log "$*"; exit "${rc:-90}"; }
t0=$SECONDS

# ---- 1. host tools --------------------------------------------------------------------------
missing=()
command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
# busybox-static's /bin/busybox is static (ldd fails on it); busybox's is not.
if [[ ! -x /bin/busybox ]] || ldd /bin/busybox >/dev/null 2>&1; then missing+=(busybox-static); fi
command -v xz >/dev/null || missing+=(xz-utils)
command -v dpkg-deb >/dev/null || missing+=(dpkg)
[[ -f $keyring ]] || missing+=(debian-archive-keyring)
if ((${#missing[@]})); then
    log "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq "${missing[@]}" >&2 || die "apt-get install ${missing[*]} failed"
fi
busybox=/bin/busybox
ldd "$busybox" >/dev/null 2>&1 && die "$busybox is not static (install busybox-static)"

# ---- 2. kernel + modules from trixie-backports (private apt config) -------------------------
# shellcheck source=../lib/debian-mirror.sh
source "$here/../lib/debian-mirror.sh"

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
    mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/deb"
    printf 'deb [signed-by=%s] %s %s main\ndeb [signed-by=%s] %s %s main\n' \
        "$keyring" "$mirror" "$suite" "$keyring" "$mirror" "${suite%%-*}" >"$work/sources.list"
    apt_opts=(
        -o "Dir::Etc::SourceList=$work/sources.list" -o "Dir::Etc::SourceParts=/dev/null"
        -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
        -o "Debug::NoLocking=1" -o "Acquire::Languages=none"
    )
    [[ $(id -u) == 0 ]] && apt_opts+=(-o "APT::Sandbox::User=root")
    log "apt-get update ($mirror $suite, private config in $work)"
    apt-get "${apt_opts[@]}" -q update >&2 || die "private apt-get update failed"
    # linux-image-amd64 in the suite depends on linux-image-<abi>; its ABI names the packages.
    abi=$(apt-cache "${apt_opts[@]}" show "linux-image-amd64/$suite" 2>/dev/null |
        sed -n 's/^Depends:.*linux-image-\([0-9][^ ,]*-amd64\).*/\1/p' | head -n1)
    [[ -n $abi ]] || die "no linux-image-amd64 in $mirror $suite"
    [[ $abi == 7.3.* ]] || log "warning: $suite has kernel $abi, not 7.3.x"
    log "apt-get download linux-binary-$abi linux-modules-$abi"
    (cd "$work/deb" && apt-get "${apt_opts[@]}" -q download \
        "linux-binary-$abi/$suite" "linux-modules-$abi/$suite" >&2) ||
        die "apt-get download of linux-binary-$abi / linux-modules-$abi failed"
    rm -rf "${cache:?}/$abi"
    mkdir -p "$cache/$abi"
    for deb in "$work"/deb/*.deb; do
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

# ---- 4. initramfs ---------------------------------------------------------------------------
run=$(mktemp -d)
guest_log=${LANE2_LOG:-$run/serial.log}
qpid=""
cleanup() {
    if [[ -n $qpid ]] && kill -0 "$qpid" 2>/dev/null; then kill "$qpid" 2>/dev/null || true; fi
    rm -rf "$run/root" "$run/initramfs.cpio" 2>/dev/null || true
    [[ $guest_log == "$run/serial.log" && ${keep_log:-0} == 0 ]] && rm -rf "$run"
    return 0
}
trap cleanup EXIT
root=$run/root
mkdir -p "$root"/{bin,dev,proc,sys,mnt,lib/modules,tmp}
cp "$busybox" "$root/bin/busybox"
cp "$moddir"/*.ko "$moddir/load-order" "$root/lib/modules/" 2>/dev/null || true
# The test command, one argument per line (no shell quoting through the kernel cmdline).
printf '%s\n' "$@" >"$root/pytest-args"
printf '%s\n' "$repo" >"$root/repo"
cat >"$root/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "LANE2-BOOTED $(uname -r)"
fail() { echo "LANE2-FAIL $*"; echo "LANE2-END rc=92"; poweroff -f; sleep 10; }
while read -r m; do
    insmod "/lib/modules/$m.ko" || echo "lane2: insmod $m failed"
done </lib/modules/load-order
# edu: 1234:11e8 -> vfio-pci via driver_override
edu=""
for d in /sys/bus/pci/devices/*; do
    if [ "$(cat "$d/vendor")" = 0x1234 ] && [ "$(cat "$d/device")" = 0x11e8 ]; then
        edu=${d##*/}
    fi
done
if [ -n "$edu" ]; then
    echo vfio-pci >"/sys/bus/pci/devices/$edu/driver_override"
    [ -e "/sys/bus/pci/devices/$edu/driver" ] && echo "$edu" >"/sys/bus/pci/devices/$edu/driver/unbind"
    echo "$edu" >/sys/bus/pci/drivers_probe
    echo "lane2: edu $edu driver=$(basename "$(readlink "/sys/bus/pci/devices/$edu/driver")")" \
        "iommu_group=$(basename "$(readlink "/sys/bus/pci/devices/$edu/iommu_group")")"
else
    echo "lane2: no edu device found"
fi
echo "lane2: nodes: $(ls /dev/vfio /dev/dma_heap /dev/udmabuf /dev/iommu 2>&1 | tr '\n' ' ')"
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose hostroot /mnt ||
    fail "mount of the host's / over 9p failed"
mount -t proc proc /mnt/proc
mount -t sysfs sysfs /mnt/sys
mount -t devtmpfs devtmpfs /mnt/dev
# The host's /tmp stays reachable (read-only) at /tmp/host, for ad-hoc probe files.
mkdir -p /hosttmp && mount --bind /mnt/tmp /hosttmp
mount -t tmpfs -o size=512m tmpfs /mnt/tmp || fail "no tmpfs on /mnt/tmp"
mkdir -p /mnt/tmp/host && mount --move /hosttmp /mnt/tmp/host
mkdir -p /mnt/dev/shm && mount -t tmpfs tmpfs /mnt/dev/shm
repo=$(cat /repo)
set --
while IFS= read -r a; do set -- "$@" "$a"; done </pytest-args
echo "LANE2-PYTEST-BEGIN"
chroot /mnt /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/tmp TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 HYPOTHESIS_STORAGE_DIRECTORY=/tmp/hypothesis LANG=C.UTF-8 \
    /bin/sh -c 'cd "$0" && exec .venv/bin/python -B -m pytest -p no:cacheprovider \
        --basetemp=/tmp/pytest --color=no -rA -v -k linux "$@"' \
    "$repo" "$@"
rc=$?
echo "LANE2-PYTEST-END"
echo "LANE2-END rc=$rc"
poweroff -f
INIT
chmod +x "$root/init"
(cd "$root" && find . | "$busybox" cpio -o -H newc 2>/dev/null) >"$run/initramfs.cpio"
log "setup done in $((SECONDS - t0)) s; booting the guest (TCG)"

# ---- 5. boot --------------------------------------------------------------------------------
: >"$guest_log"
t1=$SECONDS
qemu-system-x86_64 \
    -accel tcg,thread=multi -cpu max -m "${LANE2_MEM:-2G}" -smp "${LANE2_SMP:-2}" \
    -machine q35,kernel-irqchip=split -device intel-iommu,intremap=on -device edu \
    -kernel "$kernel" -initrd "$run/initramfs.cpio" \
    -append "console=ttyS0 intel_iommu=on iommu=nopt panic=-1 loglevel=4 rdinit=/init" \
    -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
    -display none -monitor none -serial "file:$guest_log" -no-reboot \
    </dev/null >"$run/qemu.out" 2>&1 &
qpid=$!

shown=0
show_new() {  # echo the guest's own lines (/init's and pytest's, not the kernel's) as they arrive
    local n
    n=$(wc -l <"$guest_log")
    if ((n > shown)); then
        sed -n "$((shown + 1)),${n}p" "$guest_log" | tr -d '\r' |
            awk -v inside="$(grep -aq '^LANE2-PYTEST-BEGIN' <(head -n "$shown" "$guest_log") &&
                echo 1 || echo 0)" '
                /^LANE2-PYTEST-BEGIN/ { inside = 1 }
                inside || /^lane2: / || /^LANE2-/ { print }
                /^LANE2-PYTEST-END/ { inside = 0 }'
        shown=$n
    fi
}
booted=0
while :; do
    if ((!booted)) && grep -aq '^LANE2-BOOTED' "$guest_log"; then
        booted=1
        log "guest up after $((SECONDS - t1)) s"
        t2=$SECONDS
    fi
    show_new
    if grep -aq '^LANE2-END rc=' "$guest_log"; then break; fi
    if ! kill -0 "$qpid" 2>/dev/null; then
        keep_log=1
        log "qemu exited without the end marker; $(cat "$run/qemu.out")"
        log "serial log (last 40 lines) in $guest_log:"
        tail -n 40 "$guest_log" >&2
        rc=92 die "guest failed"
    fi
    if ((!booted && SECONDS - t1 > boot_timeout)); then
        keep_log=1
        log "GUEST DID NOT BOOT within ${boot_timeout} s; serial log (last 40 lines) in $guest_log:"
        tail -n 40 "$guest_log" >&2
        rc=91 die "boot timeout"
    fi
    if ((booted && SECONDS - t2 > run_timeout)); then
        keep_log=1
        log "run timeout (${run_timeout} s); serial log in $guest_log"
        tail -n 40 "$guest_log" >&2
        rc=93 die "run timeout"
    fi
    sleep 0.5
done
show_new
wait "$qpid" 2>/dev/null || true
qpid=""
rc=$(tr -d '\r' <"$guest_log" | sed -n 's/^LANE2-END rc=\([0-9]*\).*/\1/p' | tail -n1)
grep -aq '^LANE2-FAIL' "$guest_log" && keep_log=1 && log "guest: $(grep -a '^LANE2-FAIL' "$guest_log")"
log "boot + run $((SECONDS - t1)) s (pytest $((SECONDS - t2)) s); total $((SECONDS - t0)) s; rc=$rc"
exit "${rc:-92}"
