"""docs/tutorial.md runs as written: its code blocks make a scenario file whose verdicts are
the ones the page states, and it imports nothing but passthru.kapi and the standard library."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from passthru.cli import main

DOC = Path(__file__).resolve().parents[2] / "docs" / "tutorial.md"


def _source() -> str:
    return "\n\n".join(re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S))


def test_the_tutorial_imports_only_the_public_api() -> None:
    tree = ast.parse(_source())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.module == "passthru.kapi" or node.module in sys.stdlib_module_names, \
                node.module
            assert not any(a.name.startswith("_") for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                assert a.name.split(".")[0] in sys.stdlib_module_names, a.name
        elif isinstance(node, ast.Attribute):
            # no reaching into private names of what kapi returns
            assert not node.attr.startswith("_"), node.attr


@pytest.fixture()
def tutorial_file(tmp_path: Path) -> Path:
    f = tmp_path / "my_revoke.py"
    f.write_text(_source())
    return f


def test_the_tutorial_scenarios_give_the_verdicts_it_states(tutorial_file: Path) -> None:
    r = CliRunner().invoke(main, ["check", str(tutorial_file), "--report",
                                  str(tutorial_file.parent / "report")])
    assert r.exit_code == 0, r.output
    assert "all verdicts as expected" in r.output
    lines = {ln.split("│")[1].strip(): ln for ln in r.output.splitlines() if "│ nic_" in ln}
    assert "safe (all schedules with ≤ 2" in lines["nic_drains_in_invalidate"]
    assert "[revoke-contract]" in r.output
    assert r.output.count("[revoke-contract]") == 2  # the buggy importer and the patched kernel
    import json

    rep = json.loads((tutorial_file.parent / "report" / "report.json").read_text())
    by = {v["scenario"]: v for v in rep["verdicts"]}
    assert by["nic_returns_from_invalidate_too_early"]["counterexample"]["preemptions"] == 1


def test_the_patch_lasts_one_run_only(tutorial_file: Path) -> None:
    from passthru.check.discover import from_paths
    from passthru.check.runner import check
    from passthru.kernel.dma_buf import core

    original = core.dma_buf_invalidate_mappings
    scs = {sc.name: sc for sc in from_paths([str(tutorial_file)])}
    assert check(scs["nic_drains_under_patched_invalidate"], "linux-7.1").found
    assert core.dma_buf_invalidate_mappings is original
    assert not check(scs["nic_drains_in_invalidate"], "linux-7.1").found


def test_a_plain_store_to_the_stop_flag_is_a_data_race(tmp_path: Path) -> None:
    src = _source().replace("self.stop.set_once(True)  # BUG", "self.stop.set(True)  # BUG")
    src = src.replace("self.stop.get_once()", "self.stop.get()")
    f = tmp_path / "racy.py"
    f.write_text(src)
    r = CliRunner().invoke(main, ["check", str(f), "-k", "too_early"])
    assert "[data-race]" in r.output and "nic.stop" in r.output, r.output


def test_kapi_reaches_objects_from_fds() -> None:
    import errno

    from passthru import SimHost, kapi
    from passthru.uapi import kvm as K
    from passthru.uapi import linux as L

    host = SimHost()
    kfd = host.open("/dev/kvm", L.O_RDWR)
    vm = host.ioctl(kfd, K.KVM_CREATE_VM, 0)
    gmem = host.ioctl(vm, K.KVM_CREATE_GUEST_MEMFD, K.kvm_create_guest_memfd(size=1 << 20))
    assert kapi.vm_of(host, vm) is kapi.file_of(host, vm).kvm  # type: ignore[attr-defined]
    assert kapi.gmem_of(host, gmem) is kapi.file_of(host, gmem)
    for fn, fd in ((kapi.vm_of, kfd), (kapi.gmem_of, vm), (kapi.dmabuf_of, gmem)):
        try:
            fn(host, fd)
        except OSError as e:
            assert e.errno == errno.EINVAL and "not a" in str(e)
        else:
            raise AssertionError(f"{fn.__name__} accepted fd {fd}")
    try:
        kapi.file_of(host, 999)
    except OSError as e:
        assert e.errno == errno.EBADF
    else:
        raise AssertionError("file_of accepted a closed fd")


def test_kapi_exporter_ops_are_checked_like_dma_buf_export() -> None:
    import errno

    import pytest as _pytest

    from passthru import SimHost, kapi

    host = SimHost()
    ops = kapi.ExporterOps(map=lambda priv, a: kapi.mapping([]), release=lambda p, b: None,
                           pin=lambda p, a: None)  # pin without unpin
    with _pytest.raises(OSError) as ei:
        kapi.export(host, ops, object(), 4096)
    assert ei.value.errno == errno.EINVAL and "pin and unpin" in str(ei.value)
    with _pytest.raises(KeyError):
        kapi.patch(None, "no_such_function", lambda: None)  # type: ignore[arg-type]


def test_patching_a_kvm_function_within_one_scenario() -> None:
    """"Does my patch break anything?" for KVM: a retry check that never retries turns the
    safe punch-hole race into the stale SPTE the seeded bug shows — and only in that run."""
    from passthru import kapi
    from passthru.check.runner import check
    from passthru.kernel.kvm.mmu import KvmMmu
    from passthru.scenarios import kvm as kvm_scenarios

    original = KvmMmu.retry

    @kapi.scenario(profiles=["linux-7.1"], expect="violation", name="patched_no_retry")
    def patched(s: kapi.Sandbox) -> None:
        kapi.patch(s, "mmu_invalidate_retry_gfn", lambda self, seq: False)
        kvm_scenarios._punch_vs_vcpu(s)

    v = check(patched.__passthru_scenario__, "linux-7.1")  # type: ignore[attr-defined]
    assert v.found and v.violations[0].kind == "stale-spte", v.violations
    assert KvmMmu.retry is original
    safe = kvm_scenarios.gmem_punch_hole_vs_vcpu.__passthru_scenario__  # type: ignore[attr-defined]
    assert not check(safe, "linux-7.1").found


def test_builtin_scenarios_use_only_the_public_api() -> None:
    """The built-in scenarios are written on passthru.kapi (plus the uAPI and the Host)."""
    allowed = {"kapi", "uapi", "host.sim", "__future__"}
    root = Path(__file__).resolve().parents[2] / "src" / "passthru" / "scenarios"
    for f in sorted(root.glob("*.py")):
        if f.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                mod = (node.module or "")
                if node.level == 0:
                    assert mod in sys.stdlib_module_names or mod == "__future__" \
                        or mod.split(".")[0] in sys.stdlib_module_names, (f.name, mod)
                else:
                    assert any(mod == a or mod.startswith(a + ".") for a in allowed), \
                        (f.name, mod)
