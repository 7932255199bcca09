# Sourced by tools/realkernel/lane2.sh and lane3.sh (not run on its own): boot a lane's kernel
# in a QEMU TCG guest (q35 + intel-iommu + QEMU's edu device) and run pytest in it.
#
# run_guest LANE KERNEL MODDIR [PYTEST ARGS...]
#   KERNEL: the kernel image; MODDIR: a directory of decompressed modules and their
#   load-order (empty for a kernel with everything built in).
# The guest's busybox /init loads the modules, binds the edu (1234:11e8) to vfio-pci through
# driver_override, mounts this machine's / read-only over 9p, chroots into it and runs
#     python -B -m pytest -p no:cacheprovider -k linux ARGS... --junitxml=/dev/shm/junit.xml
# from the project's venv, with every write (pytest's basetemp, TMPDIR, HOME, hypothesis) on a
# tmpfs at /dev/shm; the host's /tmp is visible as it is (read-only), checkouts there too. pytest's output streams back over the serial console and is echoed here; the JUnit
# XML comes back base64-encoded after it and is written to $LANE_JUNIT when that is set.
# Returns pytest's status; 91 when the guest does not boot in time, 92 when it fails
# before or while running pytest, 93 on the run timeout.
#
# Environment: LANE_BOOT_TIMEOUT (default 180 s until /init reports), LANE_RUN_TIMEOUT
# (default 1500 s after that), LANE_MEM (2G), LANE_SMP (2), LANE_LOG (the full serial log;
# default a temp file, kept on failure), LANE_JUNIT.
busybox=/bin/busybox

run_guest() {
    local lane=$1 kernel=$2 moddir=$3
    shift 3
    local boot_timeout=${LANE_BOOT_TIMEOUT:-180} run_timeout=${LANE_RUN_TIMEOUT:-1500}
    ldd "$busybox" >/dev/null 2>&1 && { glog "$busybox is not static (install busybox-static)"; return 90; }
    run=$(mktemp -d)
    guest_log=${LANE_LOG:-$run/serial.log}
    qpid="" keep_log=0
    trap guest_cleanup EXIT
    local root=$run/root
    mkdir -p "$root"/{bin,dev,proc,sys,mnt,lib/modules,tmp}
    cp "$busybox" "$root/bin/busybox"
    if [[ -n $moddir ]]; then cp "$moddir"/*.ko "$moddir/load-order" "$root/lib/modules/"; fi
    # The test command, one argument per line (no shell quoting through the kernel cmdline).
    printf '%s\n' "$@" >"$root/pytest-args"
    printf '%s\n' "$repo" >"$root/repo"
    printf '%s\n' "$lane" >"$root/lane"
    guest_init >"$root/init"
    chmod +x "$root/init"
    (cd "$root" && find . | "$busybox" cpio -o -H newc 2>/dev/null) >"$run/initramfs.cpio"

    : >"$guest_log"
    local t1=$SECONDS t2=0 booted=0
    qemu-system-x86_64 \
        -accel tcg,thread=multi -cpu max -m "${LANE_MEM:-2G}" -smp "${LANE_SMP:-2}" \
        -machine q35,kernel-irqchip=split -device intel-iommu,intremap=on -device edu \
        -kernel "$kernel" -initrd "$run/initramfs.cpio" \
        -append "console=ttyS0 intel_iommu=on iommu=nopt panic=-1 loglevel=4 rdinit=/init" \
        -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
        -display none -monitor none -serial "file:$guest_log" -no-reboot \
        </dev/null >"$run/qemu.out" 2>&1 &
    qpid=$!
    shown=0 inside=0
    while :; do
        if ((!booted)) && grep -aq '^LANE-BOOTED' "$guest_log"; then
            booted=1 t2=$SECONDS
            glog "guest up after $((t2 - t1)) s"
        fi
        guest_show_new
        grep -aq '^LANE-END rc=' "$guest_log" && break
        if ! kill -0 "$qpid" 2>/dev/null; then
            guest_fail "qemu exited without the end marker: $(cat "$run/qemu.out")"
            return 92
        fi
        if ((!booted && SECONDS - t1 > boot_timeout)); then
            guest_fail "GUEST DID NOT BOOT within $boot_timeout s"
            return 91
        fi
        if ((booted && SECONDS - t2 > run_timeout)); then
            guest_fail "run timeout ($run_timeout s)"
            return 93
        fi
        sleep 0.5
    done
    guest_show_new
    wait "$qpid" 2>/dev/null || true
    qpid=""
    local rc
    rc=$(tr -d '\r' <"$guest_log" | sed -n 's/^LANE-END rc=\([0-9]*\).*/\1/p' | tail -n1)
    if grep -aq '^LANE-FAIL' "$guest_log"; then
        keep_log=1
        glog "guest: $(grep -a '^LANE-FAIL' "$guest_log")"
    fi
    if [[ -n ${LANE_JUNIT:-} ]]; then
        tr -d '\r' <"$guest_log" | sed -n '/^LANE-JUNIT-BEGIN/,/^LANE-JUNIT-END/p' |
            sed '1d;$d' | base64 -d >"$LANE_JUNIT" 2>/dev/null ||
            glog "no JUnit XML came back from the guest"
    fi
    glog "boot + run $((SECONDS - t1)) s (pytest $((SECONDS - t2)) s); rc=$rc"
    return "${rc:-92}"
}

glog() { printf '%s\n' "$lane: $*" >&2; }

guest_cleanup() {
    if [[ -n $qpid ]] && kill -0 "$qpid" 2>/dev/null; then kill "$qpid" 2>/dev/null || true; fi
    rm -rf "$run/root" "$run/initramfs.cpio" 2>/dev/null || true
    if [[ $guest_log == "$run/serial.log" && $keep_log == 0 ]]; then rm -rf "$run"; fi
    return 0
}

guest_fail() {  # keep the serial log and show its tail
    keep_log=1
    glog "$1; serial log (last 40 lines) in $guest_log:"
    tail -n 40 "$guest_log" | tr -d '\r' >&2
}

guest_show_new() {  # echo the guest's own lines (/init's and pytest's, not the kernel's)
    local n
    n=$(wc -l <"$guest_log")
    ((n > shown)) || return 0
    # The base64 JUnit lines after LANE-JUNIT-BEGIN match none of these patterns.
    sed -n "$((shown + 1)),${n}p" "$guest_log" | tr -d '\r' | awk -v inside="$inside" '
        /^LANE-JUNIT-/ { next }
        /^LANE-PYTEST-BEGIN/ { inside = 1 }
        inside || /^lane: / || /^LANE-/ { print }
        /^LANE-PYTEST-END/ { inside = 0 }
        END { print inside > "/dev/stderr" }' 2>"$run/inside"
    inside=$(tail -n1 "$run/inside")
    shown=$n
}

guest_init() {
    cat <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "LANE-BOOTED $(cat /lane) $(uname -r)"
fail() { echo "LANE-FAIL $*"; echo "LANE-END rc=92"; poweroff -f; sleep 10; }
if [ -f /lib/modules/load-order ]; then
    while read -r m; do
        insmod "/lib/modules/$m.ko" || echo "lane: insmod $m failed"
    done </lib/modules/load-order
fi
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
    echo "lane: edu $edu driver=$(basename "$(readlink "/sys/bus/pci/devices/$edu/driver")")" \
        "iommu_group=$(basename "$(readlink "/sys/bus/pci/devices/$edu/iommu_group")")"
else
    echo "lane: no edu device found"
fi
echo "lane: nodes: $(ls /dev/vfio /dev/vfio/devices /dev/dma_heap /dev/udmabuf /dev/iommu 2>&1 | tr '\n' ' ')"
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=524288,cache=loose hostroot /mnt ||
    fail "mount of the host's / over 9p failed"
mount -t proc proc /mnt/proc
mount -t sysfs sysfs /mnt/sys
mount -t devtmpfs devtmpfs /mnt/dev
[ -d /sys/kernel/debug ] && mount -t debugfs debugfs /mnt/sys/kernel/debug 2>/dev/null
# Every write goes to a tmpfs on /dev/shm; the host's /tmp stays visible (read-only) as it
# is, since the checkout itself may live there (a CI clone in /tmp).
mkdir -p /mnt/dev/shm && mount -t tmpfs -o size=768m tmpfs /mnt/dev/shm ||
    fail "no tmpfs on /dev/shm"
repo=$(cat /repo)
set --
while IFS= read -r a; do set -- "$@" "$a"; done </pytest-args
echo "LANE-PYTEST-BEGIN"
chroot /mnt /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/dev/shm TMPDIR=/dev/shm \
    PYTHONDONTWRITEBYTECODE=1 HYPOTHESIS_STORAGE_DIRECTORY=/dev/shm/hypothesis LANG=C.UTF-8 \
    PASSTHRU_LANE="$(cat /lane)" \
    /bin/sh -c 'cd "$0" && exec .venv/bin/python -B -m pytest -p no:cacheprovider \
        --basetemp=/dev/shm/pytest --color=no -rA -v --junitxml=/dev/shm/junit.xml \
        -k linux "$@"' \
    "$repo" "$@"
rc=$?
echo "LANE-PYTEST-END"
if [ -f /mnt/dev/shm/junit.xml ]; then
    echo "LANE-JUNIT-BEGIN"
    base64 /mnt/dev/shm/junit.xml
    echo "LANE-JUNIT-END"
fi
echo "LANE-END rc=$rc"
poweroff -f
INIT
}
