"""What a new library user meets first (issue 9): a SimHost's memory stays bounded, help()
documents every public method, and the vmm wrappers explain wrong input and odd exits."""

from __future__ import annotations

import inspect
import pydoc
from pathlib import Path

import pytest

import passthru
import passthru.vmm as vmm
from passthru.check.runner import run_once
from passthru.host.linux import LinuxHost
from passthru.host.protocol import Host
from passthru.host.sim import DEFAULT_LOG_LIMIT, SimHost
from passthru.sim.log import EventLog, RingEventLog
from passthru.sim.scheduler import Scheduler
from passthru.uapi import kvm as K
from passthru.uapi import linux as L

ANON = L.MAP_PRIVATE | L.MAP_ANONYMOUS


def churn(h: SimHost, n: int) -> None:
    for _ in range(n):
        a = h.mmap(0, 4096, L.PROT_READ, ANON, -1, 0)
        h.munmap(a, 4096)


# ----- the event log ----------------------------------------------------------------------
def test_a_plain_simhost_keeps_only_the_last_events():
    h = passthru.SimHost()
    churn(h, 3000)  # ~18k events
    log = h.sched.log
    assert len(log) == DEFAULT_LOG_LIMIT and log.dropped > 0
    assert len(log.events) == DEFAULT_LOG_LIMIT
    churn(h, 3000)
    assert len(h.sched.log) == DEFAULT_LOG_LIMIT  # still bounded
    assert h.sched.log.text().startswith(f"... {h.sched.log.dropped} earlier events not kept")


def test_asking_for_the_log_keeps_all_of_it():
    bounded, full = SimHost(log=50), SimHost(log=True)
    churn(bounded, 500)
    churn(full, 500)
    assert type(full.sched.log) is EventLog
    assert len(bounded.sched.log) == 50
    assert len(full.sched.log) == bounded.sched.log.added > 50  # every event of the run
    assert full.sched.log.events[-50:] == bounded.sched.log.events  # the same last ones
    assert bounded.sched.log.text().endswith(
        "".join(e.text() + "\n" for e in full.sched.log.events[-50:]))


def test_log_false_keeps_none_and_bad_limits_are_refused():
    h = SimHost(log=False)
    churn(h, 100)
    assert len(h.sched.log) == 0
    with pytest.raises(ValueError, match="positive int"):
        SimHost(log=0)
    with pytest.raises(TypeError, match="Scheduler"):
        SimHost(sched=Scheduler(), log=True)


def test_a_scheduler_you_pass_keeps_its_log():
    h = SimHost(sched=Scheduler())
    churn(h, 3000)
    assert type(h.sched.log) is EventLog and len(h.sched.log) > DEFAULT_LOG_LIMIT


def test_the_checker_still_keeps_every_event():
    from passthru.scenarios.kvm import gmem_punch_hole_vs_vcpu as sc

    res = run_once(sc.__passthru_scenario__, "linux-7.1", None, None)
    assert type(res.log) is EventLog and not isinstance(res.log, RingEventLog)
    assert res.log.events[0].step == 0 and res.log.events[0].task == "main"  # from set-up on


# ----- help() -----------------------------------------------------------------------------
def public_methods(cls: type) -> list[tuple[str, object]]:
    out = []
    for name in dir(cls):
        if name.startswith("_"):
            continue
        raw = inspect.getattr_static(cls, name)
        if isinstance(raw, property):
            out.append((name, raw))
        elif inspect.isfunction(raw) or isinstance(raw, (staticmethod, classmethod)):
            out.append((name, getattr(cls, name)))
    return out


VMM_CLASSES = [getattr(vmm, n) for n in vmm.__all__ if inspect.isclass(getattr(vmm, n))]


@pytest.mark.parametrize("cls", [Host, SimHost, LinuxHost, *VMM_CLASSES],
                         ids=lambda c: c.__name__)
def test_every_public_method_has_a_docstring(cls):
    assert inspect.getdoc(cls), f"{cls.__name__} has no class docstring"
    methods = public_methods(cls)
    assert methods
    missing = [n for n, m in methods if not inspect.getdoc(m)]
    assert not missing, f"{cls.__name__}: no docstring on {missing}"


def test_help_of_simhost_shows_docstrings_not_source_comments():
    text = pydoc.render_doc(passthru.SimHost, renderer=pydoc.plaintext)
    assert "One process on a simulated Linux kernel" in text
    assert "# ---" not in text and "open(2)" in text and "ioctl(2)" in text


# ----- the vmm wrappers: wrong input and odd exits ----------------------------------------
@pytest.fixture
def vm():
    h = SimHost()
    with vmm.Kvm(h) as kvm:
        yield kvm.create_vm()


@pytest.mark.parametrize("regions, err, says", [
    ([0x10000], TypeError, r"region 0 must be a \(gpa, size\) pair of ints.*got 0x10000"),
    (0x10000, TypeError, r"regions must be a list of \(gpa, size\) pairs"),
    ([(0, 0x1000, 3)], TypeError, r"region 0 must be a \(gpa, size\) pair"),
    ([(0, "4k")], TypeError, r"region 0 must be a \(gpa, size\) pair"),
    ([(0, 0x1000), (0x1000, 0)], ValueError, r"region 1 .*size > 0"),
    ([(-1, 0x1000)], ValueError, r"gpa must be >= 0"),
])
def test_guest_memory_says_what_regions_it_expects(vm, regions, err, says):
    with pytest.raises(err, match=says):
        vm.guest_memory(regions)
    assert not vm._children  # nothing half-built is left behind


def test_guest_memory_accepts_pairs(vm):
    mem = vm.guest_memory([(0, 0x10000)])
    mem.write(0x100, b"hi")
    assert mem.read(0x100, 2) == b"hi"


def test_internal_error_exit_names_its_suberror(vm):
    ex = vm.create_vcpu(0).run()  # no memory anywhere: the reset-vector fetch fails
    assert ex.reason == "INTERNAL_ERROR" and ex.suberror is not None
    if ex.suberror in vmm.INTERNAL_ERRORS:
        assert ex.suberror_name == vmm.INTERNAL_ERRORS[ex.suberror]
        assert f"KVM_INTERNAL_ERROR_{ex.suberror_name}" in str(ex)
    else:  # the kernel left suberror unset: say so rather than print a bare number
        assert ex.suberror_name == "unknown"
        assert "not a KVM_INTERNAL_ERROR_*" in repr(ex)
        assert "did not set kvm_run.internal.suberror" in str(ex)
        assert "reset vector" in ex.explain()


def test_simhost_reports_an_emulation_failure_as_the_kernel_does():
    """handle_emulation_failure sets run->internal.suberror = KVM_INTERNAL_ERROR_EMULATION."""
    h = passthru.SimHost()
    ex = vmm.Kvm(h).create_vm().create_vcpu(0).run()
    assert ex.reason == "INTERNAL_ERROR" and ex.suberror == K.KVM_INTERNAL_ERROR_EMULATION
    assert "KVM_INTERNAL_ERROR_EMULATION" in str(ex)


def test_every_internal_error_suberror_is_named_and_explained():
    assert vmm.INTERNAL_ERRORS == {1: "EMULATION", 2: "SIMUL_EX", 3: "DELIVERY_EV",
                                   4: "UNEXPECTED_EXIT_REASON"}
    for code, name in vmm.INTERNAL_ERRORS.items():
        ex = vmm.VcpuExit("INTERNAL_ERROR", K.KVM_EXIT_INTERNAL_ERROR, suberror=code)
        assert repr(ex) == f"VcpuExit('INTERNAL_ERROR', suberror={code} ({name}))"
        assert str(ex).endswith(ex.explain()) and f"KVM_INTERNAL_ERROR_{name}:" in str(ex)
    mmio = vmm.VcpuExit("MMIO", K.KVM_EXIT_MMIO, phys_addr=0x1000, len=4, is_write=False)
    assert str(mmio) == repr(mmio) and mmio.suberror_name is None


# ----- the README and the header search path ----------------------------------------------
ROOT = Path(__file__).resolve().parents[2]


def test_header_search_path_names_no_developers_temporary_directory():
    for f in [*(ROOT / "tests" / "uapi").glob("*.py"), ROOT / "tools" / "fetch-headers.sh"]:
        text = f.read_text(encoding="utf-8")
        for bad in ("/tmp/", "/home/", "/root/"):
            assert bad not in text, f"{f.relative_to(ROOT)} names {bad}"


def test_readme_says_the_header_fetch_needs_apt_and_what_skips_without_it():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    script = (ROOT / "tools" / "fetch-headers.sh").read_text(encoding="utf-8")
    for tool in ("apt-get", "dpkg-deb", "debian-archive-keyring"):
        assert tool in script and tool in readme
    assert "tests/uapi/test_headers.py" in readme and "skip" in readme
    assert "PASSTHRU_UAPI_HEADERS" in readme
