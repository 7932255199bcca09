"""SimHost (the model) against LinuxHost (the real kernel): the same uAPI calls, timed.

    python benchmarks/bench_host.py [--repeat N] [--json FILE] [--host sim|linux|both]
                                    [--case kvm|memfd|scale|all]

Three cases, each run identically on ``SimHost(profile="linux-6.18")`` and ``LinuxHost()``:

kvm    create VM, KVM_CREATE_GUEST_MEMFD (16 MiB), 8 KVM_SET_USER_MEMORY_REGION2 adds (2 MiB
       guest_memfd slots), 8 deletes, 8 KVM_CHECK_EXTENSION on the VM fd, close guest_memfd,
       close VM: 28 syscalls. /dev/kvm is opened once per host *outside* the timing (a VMM opens
       it once); everything else is inside.
memfd  memfd_create(MFD_ALLOW_SEALING), ftruncate, pwrite, pread, mmap MAP_SHARED, munmap,
       F_ADD_SEALS SHRINK|GROW|WRITE, F_GET_SEALS, close: 9 syscalls.
scale  a guest_memfd and a memslot of 1 MiB, 1 GiB, 64 GiB and 1 TiB, a fallocate of the whole
       range and a punch hole of it, each phase timed on its own. Every (host, size) runs in a
       child process with a time limit (--scale-timeout), so a slow kernel (or a model that
       regressed to per-page work) cannot hang the benchmark. The real kernel's fallocate
       allocates real memory, so it only runs where the size is at most 1/8 of MemAvailable;
       the model gets a machine with 2 TiB of RAM so that every size can be allocated.

Timing: time.perf_counter around ``--inner`` back-to-back sequences, after ``--warmup``
untimed sequences; the figure is the median over ``--repeat`` such samples. A per-call
breakdown times each call on its own (one perf_counter pair per call, ~0.1 us of overhead on
both hosts).

Profile the model with ``python -m cProfile -s cumtime benchmarks/bench_host.py --host sim
--case memfd``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from passthru.uapi import kvm as K
from passthru.uapi import linux as L

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
PAGE = L.PAGE_SIZE
PROFILE = "linux-6.18"  # the kernel this project's machines run
KVM_NODE = "/dev/kvm"

NSLOTS = 8
SLOT_SIZE = 2 * MiB
GMEM_SIZE = NSLOTS * SLOT_SIZE
CAPS = (
    K.KVM_CAP_USER_MEMORY,
    K.KVM_CAP_USER_MEMORY2,
    K.KVM_CAP_MEMORY_FAULT_INFO,
    K.KVM_CAP_NR_MEMSLOTS,
    K.KVM_CAP_MAX_VCPUS,
    K.KVM_CAP_READONLY_MEM,
    K.KVM_CAP_GUEST_MEMFD,
    K.KVM_CAP_GUEST_MEMFD_FLAGS,
)
SEALS = L.F_SEAL_SHRINK | L.F_SEAL_GROW | L.F_SEAL_WRITE
RW = L.PROT_READ | L.PROT_WRITE
KEEP = L.FALLOC_FL_KEEP_SIZE
PUNCH = L.FALLOC_FL_PUNCH_HOLE | L.FALLOC_FL_KEEP_SIZE
SCALE_SIZES = (1 * MiB, 1 * GiB, 64 * GiB, 1 * TiB)

# A call is made through ``call(label, fn, *args)`` so one sequence serves both the plain
# timing (``direct``: no per-call clock) and the per-call breakdown (``Recorder``).
Call = Callable[..., Any]


def direct(_label: str, fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


class Recorder:
    """Times every call and accumulates seconds and counts per label."""

    def __init__(self) -> None:
        self.secs: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)

    def __call__(self, label: str, fn: Callable[..., Any], *args: Any) -> Any:
        t0 = time.perf_counter()
        r = fn(*args)
        self.secs[label] += time.perf_counter() - t0
        self.count[label] += 1
        return r


# ----- the sequences ---------------------------------------------------------------------------


def gmem_arg(size: int) -> K.kvm_create_guest_memfd:
    return K.kvm_create_guest_memfd(size=size, flags=0)


def region_arg(slot: int, gpa: int, size: int, gmem: int, offset: int) -> Any:
    return K.kvm_userspace_memory_region2(
        slot=slot,
        flags=K.KVM_MEM_GUEST_MEMFD if size else 0,
        guest_phys_addr=gpa,
        memory_size=size,
        userspace_addr=0,
        guest_memfd_offset=offset,
        guest_memfd=gmem & 0xFFFFFFFF,
    )


def kvm_sequence(host: Any, kvm_fd: int, call: Call = direct) -> int:
    """The KVM sequence; returns the number of syscalls it made (28)."""
    ioctl = host.ioctl
    vm = call("KVM_CREATE_VM", ioctl, kvm_fd, K.KVM_CREATE_VM, 0)
    gmem = call("KVM_CREATE_GUEST_MEMFD", ioctl, vm, K.KVM_CREATE_GUEST_MEMFD,
                gmem_arg(GMEM_SIZE))
    for i in range(NSLOTS):
        arg = region_arg(i, i * SLOT_SIZE, SLOT_SIZE, gmem, i * SLOT_SIZE)
        call("SET_USER_MEMORY_REGION2 add", ioctl, vm, K.KVM_SET_USER_MEMORY_REGION2, arg)
    for i in range(NSLOTS):
        arg = region_arg(i, 0, 0, 0, 0)
        call("SET_USER_MEMORY_REGION2 delete", ioctl, vm, K.KVM_SET_USER_MEMORY_REGION2, arg)
    for cap in CAPS:
        call("KVM_CHECK_EXTENSION", ioctl, vm, K.KVM_CHECK_EXTENSION, cap)
    call("close guest_memfd", host.close, gmem)
    call("close VM", host.close, vm)
    return 2 + 3 * NSLOTS + 2


def memfd_sequence(host: Any, call: Call = direct) -> int:
    """The memfd seal sequence; returns the number of syscalls it made (9)."""
    fd = call("memfd_create", host.memfd_create, "bench", L.MFD_ALLOW_SEALING)
    call("ftruncate", host.ftruncate, fd, 4 * PAGE)
    call("pwrite", host.pwrite, fd, b"passthru" * 8, PAGE)
    data = call("pread", host.pread, fd, 64, PAGE)
    addr = call("mmap", host.mmap, 0, 4 * PAGE, RW, L.MAP_SHARED, fd, 0)
    call("munmap", host.munmap, addr, 4 * PAGE)
    call("F_ADD_SEALS", host.fcntl, fd, L.F_ADD_SEALS, SEALS)
    seals = call("F_GET_SEALS", host.fcntl, fd, L.F_GET_SEALS)
    call("close", host.close, fd)
    if data != b"passthru" * 8 or seals != SEALS:  # the calls did what they should
        raise AssertionError(f"memfd sequence: read {data!r}, seals {seals:#x}")
    return 9


# ----- hosts -------------------------------------------------------------------------------------


def kvm_unavailable() -> str | None:
    """Why LinuxHost cannot run the KVM cases here, or None."""
    if not os.path.exists(KVM_NODE):
        return f"{KVM_NODE} absent"
    if not os.access(KVM_NODE, os.R_OK | os.W_OK):
        return f"{KVM_NODE} not accessible (read/write)"
    return None


def bench_machine() -> Any:
    """The default machine with 2 TiB of RAM above 4 GiB, so a 1 TiB fallocate fits."""
    from passthru.hw.machine import Machine

    return Machine(name="bench-2TiB", ram=((0, 3 * GiB), (4 * GiB, 4 * GiB + 2 * TiB)))


@contextmanager
def open_host(kind: str, big: bool = False) -> Iterator[Any]:
    if kind == "sim":
        from passthru import SimHost

        yield SimHost(profile=PROFILE, machine=bench_machine() if big else None)
        return
    from passthru.host.linux import LinuxHost

    with LinuxHost() as h:
        yield h


def open_kvm(host: Any) -> int:
    return int(host.open(KVM_NODE, L.O_RDWR | L.O_CLOEXEC))


# ----- timing ----------------------------------------------------------------------------------


@dataclass
class SeqResult:
    case: str
    host: str
    calls: int  # per sequence
    us_per_call: float  # median over samples
    samples_us_per_call: list[float]
    breakdown_us: dict[str, float] = field(default_factory=dict)  # label -> median us per call
    breakdown_count: dict[str, int] = field(default_factory=dict)  # label -> calls per sequence

    @property
    def calls_per_s(self) -> float:
        return 1e6 / self.us_per_call


def time_sequence(
    case: str, host_kind: str, seq: Callable[[Call], int], repeat: int, inner: int, warmup: int
) -> SeqResult:
    for _ in range(warmup):
        seq(direct)
    samples = []
    calls = 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(inner):
            calls = seq(direct)
        samples.append((time.perf_counter() - t0) / (inner * calls) * 1e6)
    per_label: dict[str, list[float]] = defaultdict(list)
    count: dict[str, int] = {}
    for _ in range(repeat):
        rec = Recorder()
        for _ in range(inner):
            seq(rec)
        for label, secs in rec.secs.items():
            per_label[label].append(secs / rec.count[label] * 1e6)
            count[label] = rec.count[label] // inner
    return SeqResult(
        case=case,
        host=host_kind,
        calls=calls,
        us_per_call=statistics.median(samples),
        samples_us_per_call=samples,
        breakdown_us={k: statistics.median(v) for k, v in per_label.items()},
        breakdown_count=count,
    )


def run_kvm(host_kind: str, repeat: int, inner: int, warmup: int) -> SeqResult:
    with open_host(host_kind) as h:
        kfd = open_kvm(h)  # outside the timing
        res = time_sequence(
            "kvm", host_kind, lambda c: kvm_sequence(h, kfd, c), repeat, inner, warmup
        )
        h.close(kfd)
        return res


def run_memfd(host_kind: str, repeat: int, inner: int, warmup: int) -> SeqResult:
    with open_host(host_kind) as h:
        return time_sequence(
            "memfd", host_kind, lambda c: memfd_sequence(h, c), repeat, inner, warmup
        )


# ----- scale -----------------------------------------------------------------------------------

PHASES = (
    "KVM_CREATE_GUEST_MEMFD",
    "SET_USER_MEMORY_REGION2 add",
    "fallocate whole range",
    "fallocate PUNCH_HOLE whole range",
    "SET_USER_MEMORY_REGION2 delete",
    "close guest_memfd",
)


def scale_once(host: Any, kfd: int, size: int, fallocate: bool) -> dict[str, float]:
    """One guest_memfd + memslot of ``size``; seconds per phase (create/close VM untimed)."""
    vm = host.ioctl(kfd, K.KVM_CREATE_VM, 0)
    out: dict[str, float] = {}
    clock = time.perf_counter

    t = clock()
    gmem = host.ioctl(vm, K.KVM_CREATE_GUEST_MEMFD, gmem_arg(size))
    out[PHASES[0]] = clock() - t
    t = clock()
    host.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION2, region_arg(0, 0, size, gmem, 0))
    out[PHASES[1]] = clock() - t
    if fallocate:
        t = clock()
        host.fallocate(gmem, KEEP, 0, size)
        out[PHASES[2]] = clock() - t
        t = clock()
        host.fallocate(gmem, PUNCH, 0, size)
        out[PHASES[3]] = clock() - t
    t = clock()
    host.ioctl(vm, K.KVM_SET_USER_MEMORY_REGION2, region_arg(0, 0, 0, 0, 0))
    out[PHASES[4]] = clock() - t
    t = clock()
    host.close(gmem)
    out[PHASES[5]] = clock() - t
    host.close(vm)
    return out


def scale_child(host_kind: str, size: int, fallocate: bool, repeat: int, budget: float) -> None:
    """Runs in the child process: prints {"phases": {name: median us}, "runs": n} as JSON."""
    with open_host(host_kind, big=True) as h:
        kfd = open_kvm(h)
        for _ in range(3):  # warm-up at 1 MiB: imports, ctypes, first-use allocations
            scale_once(h, kfd, 1 * MiB, True)
        runs: list[dict[str, float]] = []
        t0 = time.perf_counter()
        while len(runs) < repeat and (not runs or time.perf_counter() - t0 < budget):
            runs.append(scale_once(h, kfd, size, fallocate))
        phases = {p: statistics.median(r[p] for r in runs) * 1e6 for p in runs[0]}
        samples = {p: [r[p] * 1e6 for r in runs] for p in runs[0]}
        print(json.dumps({"phases": phases, "samples": samples, "runs": len(runs)}))


def mem_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * KiB
    except OSError:
        pass
    return 0


@dataclass
class ScaleResult:
    host: str
    size: int
    phases_us: dict[str, float]  # phase -> median us (missing: not run)
    runs: int
    wall_s: float
    note: str = ""
    samples_us: dict[str, list[float]] = field(default_factory=dict)  # phase -> every run


def run_scale(host_kind: str, size: int, repeat: int, timeout: float) -> ScaleResult:
    fallocate = True
    note = ""
    if host_kind == "linux":
        avail = mem_available()
        if size > avail // 8:
            fallocate = False
            note = (f"fallocate skipped: would allocate {fmt_size(size)} of real RAM "
                    f"({avail / GiB:.1f} GiB available, cap 1/8)")
    cmd = [sys.executable, os.path.abspath(__file__), "--scale-child", str(size),
           "--host", host_kind, "--repeat", str(repeat)]
    if not fallocate:
        cmd.append("--no-fallocate")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return ScaleResult(host_kind, size, {}, 0, time.perf_counter() - t0,
                           f"timeout: killed after {timeout:.0f} s")
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or ["?"])[-1]
        return ScaleResult(host_kind, size, {}, 0, wall, f"failed (rc {p.returncode}): {last}")
    try:
        data = json.loads(p.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return ScaleResult(host_kind, size, {}, 0, wall, f"no result: {p.stdout[-200:]!r}")
    return ScaleResult(host_kind, size, data["phases"], data["runs"], wall, note,
                       data["samples"])


# ----- reporting -------------------------------------------------------------------------------


def fmt_size(n: int) -> str:
    for unit, name in ((TiB, "TiB"), (GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n} B"


def fmt_us(us: float | None) -> str:
    if us is None:
        return "-"
    if us >= 1e6:
        return f"{us / 1e6:,.2f} s"
    if us >= 1e3:
        return f"{us / 1e3:,.1f} ms"
    return f"{us:,.2f} us"


def fmt_ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}"


def machine_info() -> dict[str, Any]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo") as f:
            mem = int(f.readline().split()[1]) * KiB
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(mem / GiB, 1),
        "python": platform.python_version(),
        "sim_profile": PROFILE,
    }


def print_report(
    info: dict[str, Any],
    seqs: dict[tuple[str, str], SeqResult],
    scale: list[ScaleResult],
    skipped: dict[str, str],
) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console(width=None if sys.stdout.isatty() else 110)
    con.print(f"[bold]passthru host benchmark[/] {info['date']}: kernel {info['kernel']}, "
              f"{info['cpus']} CPUs ({info['cpu']}), {info['mem_gib']} GiB, "
              f"Python {info['python']}; SimHost profile {info['sim_profile']}")
    for case, reason in skipped.items():
        con.print(f"[yellow]LinuxHost {case}: skipped ({reason})[/]")

    t = Table(title="Sequences (median us per syscall; /dev/kvm opened outside the timing)")
    for col in ("sequence", "calls", "sim us/call", "linux us/call", "sim/linux",
                "sim calls/s", "linux calls/s"):
        t.add_column(col, justify="left" if col == "sequence" else "right")
    for case in ("kvm", "memfd"):
        s, lx = seqs.get((case, "sim")), seqs.get((case, "linux"))
        if s is None and lx is None:
            continue
        ref = s or lx
        assert ref is not None
        t.add_row(
            case, str(ref.calls),
            f"{s.us_per_call:.2f}" if s else "-", f"{lx.us_per_call:.2f}" if lx else "-",
            fmt_ratio(s.us_per_call if s else None, lx.us_per_call if lx else None),
            f"{s.calls_per_s:,.0f}" if s else "-", f"{lx.calls_per_s:,.0f}" if lx else "-",
        )
    both = [seqs.get((c, h)) for c in ("kvm", "memfd") for h in ("sim", "linux")]
    if all(both):
        ks, kl, ms, ml = (r for r in both if r is not None)
        s_us = ks.us_per_call * ks.calls + ms.us_per_call * ms.calls
        l_us = kl.us_per_call * kl.calls + ml.us_per_call * ml.calls
        n = ks.calls + ms.calls
        t.add_section()
        t.add_row("kvm + memfd", str(n), f"{s_us / n:.2f}", f"{l_us / n:.2f}",
                  fmt_ratio(s_us, l_us), f"{n / s_us * 1e6:,.0f}", f"{n / l_us * 1e6:,.0f}")
    con.print(t)

    b = Table(title="Per call (median us, each call timed on its own)")
    for col in ("sequence", "call", "per seq", "sim us", "linux us", "sim/linux"):
        b.add_column(col, justify="left" if col in ("sequence", "call") else "right")
    for case in ("kvm", "memfd"):
        s, lx = seqs.get((case, "sim")), seqs.get((case, "linux"))
        ref = s or lx
        if ref is None:
            continue
        for label, n in ref.breakdown_count.items():
            su = s.breakdown_us.get(label) if s else None
            lu = lx.breakdown_us.get(label) if lx else None
            b.add_row(case, label, str(n), fmt_us(su), fmt_us(lu), fmt_ratio(su, lu))
        b.add_section()
    con.print(b)

    if scale:
        sc = Table(title="Scale: one guest_memfd + one memslot of SIZE (median per phase)")
        for col in ("size", "phase", "sim", "linux", "sim/linux"):
            sc.add_column(col, justify="left" if col in ("size", "phase") else "right")
        by = {(r.host, r.size): r for r in scale}
        sizes = sorted({r.size for r in scale})
        for size in sizes:
            s, lx = by.get(("sim", size)), by.get(("linux", size))
            for phase in PHASES:
                su = s.phases_us.get(phase) if s else None
                lu = lx.phases_us.get(phase) if lx else None
                sc.add_row(fmt_size(size), phase, fmt_us(su), fmt_us(lu), fmt_ratio(su, lu))
            sc.add_section()
        con.print(sc)
        for r in scale:
            runs = f"{r.runs} run(s)" if r.runs else "no result"
            add = r.samples_us.get(PHASES[1], [])
            if len(add) > 1:
                runs += f" (memslot add min {fmt_us(min(add))}, max {fmt_us(max(add))})"
            con.print(f"  {r.host} {fmt_size(r.size)}: {runs}, {r.wall_s:.1f} s wall"
                      + (f"; [yellow]{r.note}[/]" if r.note else ""))
        sim_tot = {r.size: sum(r.phases_us.values()) for r in scale
                   if r.host == "sim" and r.phases_us}
        if len(sim_tot) >= 2:
            lo, hi = min(sim_tot), max(sim_tot)
            con.print(f"SimHost, all phases: {fmt_us(sim_tot[lo])} at {fmt_size(lo)}, "
                      f"{fmt_us(sim_tot[hi])} at {fmt_size(hi)} "
                      f"(x{sim_tot[hi] / sim_tot[lo]:.2f} for x{hi // lo:,} the size)")


# ----- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=15, help="timed samples (median is reported)")
    ap.add_argument("--inner", type=int, default=0,
                    help="sequences per sample (default: 50 kvm, 200 memfd)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed sequences first")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--host", choices=("sim", "linux", "both"), default="both")
    ap.add_argument("--case", choices=("kvm", "memfd", "scale", "all"), default="all")
    ap.add_argument("--scale-timeout", type=float, default=30.0,
                    help="seconds one (host, size) scale child may take before it is killed")
    ap.add_argument("--scale-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--no-fallocate", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.scale_child is not None:
        scale_child(args.host, args.scale_child, not args.no_fallocate, args.repeat, 2.0)
        return 0

    hosts = ["sim", "linux"] if args.host == "both" else [args.host]
    cases = ["kvm", "memfd", "scale"] if args.case == "all" else [args.case]
    no_kvm = kvm_unavailable()
    skipped: dict[str, str] = {}
    seqs: dict[tuple[str, str], SeqResult] = {}
    scale: list[ScaleResult] = []
    for case in cases:
        for h in hosts:
            if h == "linux" and case in ("kvm", "scale") and no_kvm:
                skipped[case] = no_kvm
                continue
            if case == "kvm":
                seqs[case, h] = run_kvm(h, args.repeat, args.inner or 50, args.warmup)
            elif case == "memfd":
                seqs[case, h] = run_memfd(h, args.repeat, args.inner or 200, args.warmup)
            else:
                for size in SCALE_SIZES:
                    scale.append(run_scale(h, size, args.repeat, args.scale_timeout))

    info = machine_info()
    print_report(info, seqs, scale, skipped)
    if args.json:
        out = {
            "machine": info,
            "skipped": skipped,
            "sequences": [asdict(r) | {"calls_per_s": r.calls_per_s} for r in seqs.values()],
            "scale": [asdict(r) for r in scale],
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
