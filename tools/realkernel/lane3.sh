#!/usr/bin/env bash
# Lane 3 of the real-kernel conformance runs (see tools/realkernel/README.md): run the linux
# variants of conformance tests on a small custom 7.3 kernel (lane3-kernel.sh: IOMMUFD with
# IOMMUFD_TEST, the VFIO cdev, VFIO_PCI's dma-buf, PCI_TSM, udmabuf, dma_heap, all built in)
# in a QEMU TCG guest with q35 + intel-iommu + QEMU's edu device (guest.sh).
#
# Usage: tools/realkernel/lane3.sh [PYTEST ARGS / TEST PATHS...]
#   default: the conformance files listed in tools/realkernel/lane3.tests.
#   Arguments are passed to pytest verbatim (after "-k linux"; a later -k overrides it).
# The first run builds the kernel (about 10 minutes on 2 cores) and caches it under
# ~/.cache/passthru/lane3/<hash of the fragment and the source version>/.
#
# Environment: LANE3_* (lane3-kernel.sh), LANE_BOOT_TIMEOUT, LANE_RUN_TIMEOUT, LANE_MEM,
# LANE_SMP, LANE_LOG, LANE_JUNIT (guest.sh).
# Exit status: as lane2.sh's.
set -euo pipefail
# The whole script is one function, read before it runs: editing the file during a run
# (bash reads scripts as it goes) cannot change what the run does.
main() {

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
if (($# == 0)); then
    mapfile -t tests <"$here/lane3.tests"
    set -- "${tests[@]}"
fi
log() { printf '%s\n' "lane3: $*" >&2; }
t0=$SECONDS

# shellcheck source=lib.sh
source "$here/lib.sh"
need_lane_tools || { log "host tools missing"; exit 90; }
kernel=$("$here/lane3-kernel.sh") || { log "no lane 3 kernel (see lane3-kernel's message)"; exit 90; }
log "kernel $kernel; setup done in $((SECONDS - t0)) s; booting the guest (TCG)"
# shellcheck source=guest.sh
source "$here/guest.sh"
rc=0
run_guest lane3 "$kernel" "" "$@" || rc=$?
log "total $((SECONDS - t0)) s; rc=$rc"
exit "$rc"
}
main "$@"
