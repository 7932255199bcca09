"""VFIO per-call costs on SimHost: the sequence a VMM runs against a vfio-pci device, call by
call, and a guest's MMIO access to a BAR through the stage-2; with a cProfile summary of
where the time goes.

    python benchmarks/bench_vfio.py [--calls 2000] [--top 15] [--no-profile]

Every case goes through passthru.vmm (the wrappers a VMM would use: VfioDevice, Region,
Iommufd, Kvm), so a figure is what one call costs from Python, wrapper included. Wall time by
time.perf_counter around the timed call only (setup and teardown of each iteration are
outside it). SimHost profile linux-7.1 (vfio-pci exports dma-bufs since 6.19), with the
GPU-like device (1234:1111, which has FLR) bound to vfio-pci next to QEMU's edu: the edu has
no reset method (VFIO_DEVICE_RESET is EINVAL on it), so RESET is measured on the GPU.

Cases:
bind            VFIO_DEVICE_BIND_IOMMUFD of a freshly opened cdev (the open and the close,
                which unbinds, are outside the timing)
attach          VFIO_DEVICE_ATTACH_IOMMUFD_PT, alternating between two IOASes (a replace)
region info     VFIO_DEVICE_GET_REGION_INFO of BAR0
config read     pread of 4 bytes of config space (vendor/device ID)
config write    pwrite of INTERRUPT_LINE (a virtual byte)
BAR read        pread of the edu's ID register through the region (memory_lock, mmio_read)
BAR write       pwrite of the edu's liveness register through the region
BAR mmap load   a 4-byte CPU load through an mmap of BAR0 (the PTE is present)
reset (GPU)     VFIO_DEVICE_RESET on the GPU: zap, revoke, FLR, un-revoke
dma-buf export  VFIO_DEVICE_FEATURE_DMA_BUF of one page of BAR0, then close of the fd
revoke cycle    MSE clear + MSE set with one live dma-buf: zap + revoke, un-revoke
guest access    a vCPU's 4-byte load from the edu's BAR through a legacy memslot (the mmap of
                the BAR as userspace_addr), SPTE present: the model's vCPU access entry
guest KVM_RUN   KVM_SET_REGS (rip back to the reset vector) + KVM_RUN of ``mov ax, [0]; hlt``
                with the BAR at gpa 0: one exit to the VMM per run (the emulator has no
                32-bit operand size, so the 16-bit load reads all ones from the edu)
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from collections.abc import Callable
from typing import Any

import passthru.kernel.vfio.pci.vfio_pci as vfio_pci
from passthru import SimHost
from passthru.vmm import Iommufd, Kvm, VfioDevice, assign_device

PAGE = 4096
EDU, GPU = "/dev/vfio/devices/vfio0", "/dev/vfio/devices/vfio1"
GPU_ID = (0x1234, 0x1111)
BIOS_GPA, BIOS_SIZE, RESET_VECTOR = 0xFFFF0000, 0x10000, 0xFFFFFFF0
READ_BAR_HLT = bytes.fromhex("A1 00 00 F4")  # mov ax, [0x0000] ; hlt


def make_host() -> SimHost:
    """linux-7.1 with the GPU bound to vfio-pci too (vfio-pci.ids=1234:11e8,1234:1111)."""
    if GPU_ID not in vfio_pci.VFIO_PCI_IDS:
        vfio_pci.VFIO_PCI_IDS = (*vfio_pci.VFIO_PCI_IDS, GPU_ID)
    return SimHost(profile="linux-7.1", log=False)


def timed(n: int, call: Callable[[int], Any], setup: Callable[[int], Any] | None = None,
          teardown: Callable[[int], Any] | None = None) -> float:
    """Seconds spent in ``call(i)`` over ``n`` iterations (setup/teardown not counted)."""
    total = 0.0
    for i in range(n):
        if setup is not None:
            setup(i)
        t0 = time.perf_counter()
        call(i)
        total += time.perf_counter() - t0
        if teardown is not None:
            teardown(i)
    return total


def run_cases(n: int) -> list[tuple[str, int, float]]:
    """Every case, ``n`` calls each; (name, calls, seconds)."""
    h = make_host()
    out: list[tuple[str, int, float]] = []
    ifd = Iommufd(h)
    ioas = [ifd.alloc_ioas(), ifd.alloc_ioas()]

    holder: dict[str, VfioDevice] = {}
    out.append(("bind", n, timed(
        n, lambda i: holder["d"].bind(ifd),
        setup=lambda i: holder.__setitem__("d", VfioDevice(h, EDU)),
        teardown=lambda i: holder["d"].close())))

    dev = VfioDevice(h, EDU)
    dev.bind(ifd)
    out.append(("attach", n, timed(n, lambda i: dev.attach(ioas[i & 1]))))
    out.append(("region info", n, timed(n, lambda i: dev.region(0))))
    out.append(("config read", n, timed(n, lambda i: dev.config_read(0, 4))))
    out.append(("config write", n, timed(n, lambda i: dev.config_write(0x3C, 1, i & 0xFF))))
    bar = dev.region(0)
    out.append(("BAR read", n, timed(n, lambda i: bar.read_int(0, 4))))
    out.append(("BAR write", n, timed(n, lambda i: bar.write_int(4, 4, i))))
    m = bar.mmap(PAGE)
    m.read(0, 4)  # fault the PTE in
    out.append(("BAR mmap load", n, timed(n, lambda i: m.read(0, 4))))
    m.close()

    gpu = VfioDevice(h, GPU)
    gpu.bind(ifd)
    out.append(("reset (GPU)", n, timed(n, lambda i: gpu.reset())))
    gpu.close()

    out.append(("dma-buf export", n, timed(n, lambda i: dev.dma_buf(0, [(0, PAGE)]).close())))
    buf = dev.dma_buf(0, [(0, PAGE)])

    def revoke_cycle(i: int) -> None:
        dev.set_command(memory=False)
        dev.set_command(memory=True)

    out.append(("revoke cycle", n, timed(n, revoke_cycle)))
    buf.close()
    dev.detach()

    kvm = Kvm(h)
    vm = kvm.create_vm()
    mem = vm.guest_memory([(BIOS_GPA, BIOS_SIZE)])
    mem.write(RESET_VECTOR, READ_BAR_HLT)
    cpu = vm.create_vcpu(0)
    asg = assign_device(vm, dev, ioas[0], bars={0: 0}, route="legacy")
    vcpu = h.vcpu(cpu.fd)
    vcpu.access(0, 4)
    out.append(("guest access", n, timed(n, lambda i: vcpu.access(0, 4))))

    def guest_run(i: int) -> None:
        cpu.set_regs(rip=0xFFF0)
        ex = cpu.run()
        assert ex.reason == "HLT", ex

    out.append(("guest KVM_RUN", n, timed(n, guest_run)))
    asg.close()
    kvm.close()
    dev.close()
    ifd.close()
    h.exit()
    assert h.leaks() == [], h.leaks()
    return out


def table(rows: list[tuple[str, int, float]]) -> str:
    lines = [f"{'case':<16} {'calls':>7} {'µs/call':>9} {'calls/s':>10}"]
    for name, calls, secs in rows:
        us = secs / calls * 1e6
        lines.append(f"{name:<16} {calls:>7} {us:>9.1f} {calls / secs:>10,.0f}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=2000, help="calls per case")
    ap.add_argument("--top", type=int, default=15, help="functions in the profile summary")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile run")
    args = ap.parse_args()
    print(table(run_cases(args.calls)))
    if args.no_profile:
        return
    prof = cProfile.Profile()
    prof.enable()
    run_cases(max(args.calls // 4, 1))
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).strip_dirs().sort_stats("tottime").print_stats(args.top)
    print(f"\ncProfile, {max(args.calls // 4, 1)} calls per case, top {args.top} by own time:")
    print("\n".join(line for line in s.getvalue().splitlines() if line.strip())[:6000])


if __name__ == "__main__":
    main()
