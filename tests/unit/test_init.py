"""Boot and ownership (kernel/init.py, kernel/core.py): core knows no subsystem, the initcall
table runs in a deterministic order and every registered subsystem is initialised, and the
checker's leak check is made of the subsystems' own hooks."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import passthru.kernel
from passthru import SimHost
from passthru.check.explore import ReplayChooser
from passthru.check.runner import run_once
from passthru.check.scenario import Sandbox, Scenario
from passthru.hw.physmem import Owner
from passthru.kernel import init
from passthru.kernel.core import Kernel
from passthru.kernel.mm.gup import pin_user_pages
from passthru.kernel.mm.page_alloc import pages_left
from passthru.uapi import linux as L

SRC = Path(passthru.kernel.__file__).resolve().parent
PAGE = 4096


def _all_kernel_modules() -> list[str]:
    """Every module under passthru.kernel (the packages need no ``__init__.py``)."""
    out = set()
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC).with_suffix("").parts
        out.add(".".join(("passthru", "kernel", *(parts[:-1] if parts[-1] == "__init__"
                                                    else parts))))
    return sorted(out - {"passthru.kernel"})


def _imports(tree: ast.Module) -> list[tuple[str, bool]]:
    """(module imported, under ``if TYPE_CHECKING``) for every import anywhere in ``tree``,
    relative imports resolved against passthru.kernel."""
    out: list[tuple[str, bool]] = []

    def visit(node: ast.AST, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            t = typing_only or (isinstance(child, ast.If)
                                and "TYPE_CHECKING" in ast.unparse(child.test))
            if isinstance(child, ast.ImportFrom):
                base = "passthru.kernel" if child.level == 1 else (
                    "passthru" if child.level == 2 else "")
                mod = ".".join(x for x in (base, child.module or "") if x)
                out.extend((f"{mod}.{a.name}" if not child.module else mod, t)
                           for a in child.names)
            elif isinstance(child, ast.Import):
                out.extend((a.name, t) for a in child.names)
            visit(child, t)

    visit(tree, False)
    return out


# ----- core imports no subsystem -------------------------------------------------------------


def test_core_imports_no_subsystem():
    tree = ast.parse((SRC / "core.py").read_text())
    subsystems = {f"passthru.kernel.{p}" for p in init.BUILTIN}
    for mod, typing_only in _imports(tree):
        inside = next((s for s in subsystems if mod == s or mod.startswith(s + ".")), None)
        if inside is None:
            continue
        # Only the VFS types an opener returns, for annotations; never executed.
        assert typing_only and mod in ("passthru.kernel.fs.file", "passthru.kernel.fs.process"), (
            f"kernel/core.py imports {mod}")
    runtime = {m for m, t in _imports(tree) if not t and m.startswith("passthru")}
    assert runtime <= {"passthru.errors", "passthru.hw.machine", "passthru.hw.physmem",
                       "passthru.sim.scheduler", "passthru.sim.track",
                       "passthru.kernel.init", "passthru.kernel.profile"}, runtime


def test_init_imports_no_kernel_module_at_import_time():
    tree = ast.parse((SRC / "init.py").read_text())
    top = [m for m, t in _imports(tree) if not t and m.startswith("passthru")]
    assert top == []


def test_kernel_modules_import_without_cycles():
    """The runtime import graph of passthru.kernel (module-level imports, not the
    TYPE_CHECKING ones) is acyclic."""
    mods = set(_all_kernel_modules()) | {"passthru.kernel"}
    graph: dict[str, set[str]] = {}
    for mod in mods:
        path = SRC.joinpath(*mod.split(".")[2:])
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        tree = ast.parse(path.read_text())
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        deps = set()
        for node in tree.body:  # module level only: function-local imports run later
            if isinstance(node, ast.ImportFrom) and node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                for a in node.names:
                    full = f"{target}.{a.name}"
                    deps.add(full if full in mods else target)
        graph[mod] = {d for d in deps if d in mods and d != mod}
    state: dict[str, int] = {}

    def dfs(v: str, path: list[str]) -> None:
        state[v] = 1
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [v, w]))
            if w not in state:
                dfs(w, path + [v])
        state[v] = 2

    for v in sorted(graph):
        if v not in state:
            dfs(v, [])


# ----- the initcall table --------------------------------------------------------------------


def test_every_registered_initcall_runs_on_simhost_in_table_order():
    for name in _all_kernel_modules():  # whatever the kernel tree holds, imported
        importlib.import_module(name)
    table = [r.qualname for r in init.registered("initcall")]
    assert table, "no initcall registered"
    h = SimHost()
    assert h.kernel.initcalls == tuple(table)
    # the drivers' device nodes exist because their initcalls ran
    for node in ("/dev/null", "/dev/kvm", "/dev/udmabuf", "/dev/dma_heap/system"):
        assert node in h.kernel.devices


def test_every_registration_comes_from_a_builtin_package():
    """A kernel module that registers is linked at boot (never depends on who imported
    what first)."""
    for name in _all_kernel_modules():
        importlib.import_module(name)
    for kind in init.KINDS:
        for r in init.registered(kind):
            if r.module.startswith("passthru.kernel."):
                assert init.link_position(r.module)[0] < len(init.BUILTIN), r


def test_initcall_order_is_level_then_link_order():
    regs = init.registered("initcall")
    keys = [(r.level, *init.link_position(r.module)) for r in regs]
    assert keys == sorted(keys)
    by_name = {r.qualname: r for r in regs}
    # fs_initcall(chr_dev_init) before any module_init, KVM (arch/) before drivers/dma-buf
    mem = by_name["char.mem.mem_init"]
    kvm = by_name["kvm.kvm_main.kvm_init"]
    assert mem.level == init.LEVELS.index("fs") < kvm.level == init.LEVELS.index("device")
    order = [r.qualname for r in regs]
    assert order.index("char.mem.mem_init") < order.index("kvm.kvm_main.kvm_init")
    assert all(order.index("kvm.kvm_main.kvm_init") < i
               for i, q in enumerate(order) if q.startswith("dma_buf."))


_BOOT = """
import importlib, sys
for m in sys.argv[1:]:
    importlib.import_module(m)
from passthru import SimHost
print(SimHost().kernel.initcalls)
"""


def test_initcall_order_does_not_depend_on_import_order():
    def boot(*first: str) -> str:
        return subprocess.run([sys.executable, "-c", _BOOT, *first], check=True,
                              capture_output=True, text=True).stdout

    a = boot("passthru.kernel.dma_buf.udmabuf", "passthru.kernel.kvm.kvm_main")
    b = boot("passthru.kernel.kvm.kvm_main", "passthru.kernel.char.mem")
    c = boot()
    assert a == b == c
    assert a.strip() == repr(SimHost().kernel.initcalls)


def test_registration_order_within_the_table_is_by_key_not_insertion(monkeypatch):
    monkeypatch.setattr(init, "_TABLE", {})

    def fn(kernel: Kernel) -> None:
        pass

    entries = [  # inserted in a scrambled order
        ("late", "passthru.kernel.char.x", 1),
        ("device", "passthru.kernel.dma_buf.b", 2),
        ("device", "passthru.kernel.dma_buf.a", 3),
        ("device", "some.loaded.module", 4),
        ("device", "passthru.kernel.kvm.z", 5),
        ("core", "passthru.kernel.dma_buf.a", 6),
    ]
    for level, module, seq in entries:
        init._TABLE[("initcall", module, f"f{seq}")] = init.Registration(
            "initcall", f"f{seq}", fn, module, init.LEVELS.index(level), seq)
    got = [(init.LEVELS[r.level], r.module) for r in init.registered("initcall")]
    assert got == [
        ("core", "passthru.kernel.dma_buf.a"),
        ("device", "passthru.kernel.kvm.z"),
        ("device", "passthru.kernel.dma_buf.a"),
        ("device", "passthru.kernel.dma_buf.b"),
        ("device", "some.loaded.module"),
        ("late", "passthru.kernel.char.x"),
    ]


def test_unknown_level_and_duplicate_hook_names_are_refused():
    with pytest.raises(ValueError, match="level"):
        init.initcall("module")
    with pytest.raises(ValueError, match="already registered"):
        init.invariant("dma-buf-mapping-backed")(lambda kernel: None)


# ----- statics and hooks ---------------------------------------------------------------------


def test_the_live_dma_buf_list_is_dma_bufs_static():
    from passthru.kernel.dma_buf.core import db_list
    from passthru.uapi import dma_heap as H

    h = SimHost()
    assert not hasattr(h.kernel, "dmabufs")  # not a field of Kernel any more
    assert db_list(SimHost().kernel) is not db_list(h.kernel)  # one per kernel
    heap = h.open("/dev/dma_heap/system", L.O_RDWR)
    arg = H.dma_heap_allocation_data(len=PAGE, fd_flags=L.O_RDWR | L.O_CLOEXEC)
    h.ioctl(heap, H.DMA_HEAP_IOCTL_ALLOC, arg)
    assert [b.name for b in db_list(h.kernel)] == ["dmabuf1"]
    h.close(arg.fd)
    assert list(db_list(h.kernel)) == []
    h.exit()
    assert h.leaks() == []


def test_a_subsystems_invariant_is_reachable_by_name():
    from passthru.kapi import dma_buf_mappings_backed
    from passthru.kernel.dma_buf import invariants

    h = SimHost()
    (reg,) = [r for r in init.registered("invariant") if r.name == "dma-buf-mapping-backed"]
    assert reg.fn is invariants.dma_buf_mappings_backed
    assert h.kernel.invariant("dma-buf-mapping-backed")() is None
    assert dma_buf_mappings_backed(h) is None
    with pytest.raises(KeyError, match="no invariant"):
        h.kernel.invariant("no-such-invariant")


def test_the_leak_check_is_core_accounting_then_the_teardown_hooks():
    h = SimHost()
    fd = h.memfd_create("ram", 0)
    h.ftruncate(fd, 2 * PAGE)
    addr = h.mmap(0, 2 * PAGE, L.PROT_READ | L.PROT_WRITE, L.MAP_SHARED, fd, 0)
    pin = pin_user_pages(h.proc.mm, addr, PAGE, write=True)
    h.exit()  # the pin keeps one page alive as an orphan
    leaks = h.leaks()
    assert pages_left(h.kernel) == ["0x1000 bytes of RAM still allocated",
                                    "1 pinned extent(s) left"]
    assert leaks == ["1 pin object(s) alive", *pages_left(h.kernel)]
    assert "page_alloc" in [r.name for r in init.registered("teardown")]
    pin.unpin()
    assert h.leaks() == []


@pytest.fixture
def widget_driver():
    """A subsystem of the test's own: a static, an initcall that takes a widget at boot and
    a teardown hook that reports widgets still held."""
    held = init.kernel_static("test.widgets", lambda kernel: [])

    @init.initcall("device")
    def widget_init(kernel: Kernel) -> None:
        held(kernel).append("widget")

    @init.teardown("test-widgets")
    def widgets_left(kernel: Kernel) -> list[str]:
        n = len(held(kernel))
        return [f"{n} widget(s) held"] if n else []

    try:
        yield held
    finally:
        init.unregister("static", widget_init.__module__, "test.widgets")
        init.unregister("initcall", widget_init.__module__, "widget_init")
        init.unregister("teardown", widget_init.__module__, "test-widgets")


def test_the_checkers_leak_check_uses_the_teardown_hooks(widget_driver):
    held = widget_driver

    def leaky(s: Sandbox) -> None:
        s.spawn("t", lambda: None)

    def tidy(s: Sandbox) -> None:
        s.spawn("t", held(s.host.kernel).clear)

    res = run_once(Scenario("leaky", leaky), "linux-7.1", None, ReplayChooser([]))
    assert [(v.kind, v.message) for v in res.violations] == [
        ("leak", "after teardown: 1 widget(s) held")]
    assert "widget_init" in SimHost().kernel.initcalls[-1]  # outside the tree: after it
    res = run_once(Scenario("tidy", tidy), "linux-7.1", None, ReplayChooser([]))
    assert res.violations == []


def test_statics_are_made_before_the_initcalls_and_unregistered_ones_are_gone(widget_driver):
    assert SimHost().kernel.static("test.widgets") == ["widget"]


def test_unregistered_widgets_leave_no_trace():
    k = SimHost().kernel
    assert not any("widget" in c for c in k.initcalls)
    with pytest.raises(KeyError, match="no kernel static"):
        k.static("test.widgets")


# ----- physical truth: every access to contents is checked -----------------------------------


def test_kernel_zero_and_copy_of_freed_memory_are_physical_violations():
    h = SimHost()
    phys = h.kernel.phys
    ((a, a_end),) = phys.alloc(2 * PAGE, Owner("test"))
    phys.write(a, b"\x11" * PAGE, "kernel")
    phys.release(a + PAGE, a_end)  # the second page is freed
    phys.copy(a + PAGE, a, PAGE, "kernel")  # from freed memory: reads as zeros
    assert phys.read(a, PAGE, "kernel") == bytes(PAGE)
    phys.zero(a + PAGE, a_end, "kernel")  # a store to freed memory: dropped
    kinds = [(v.kind, v.message) for v in h.sched.violations]
    assert kinds == [("physical", f"kernel reads freed memory [{a + PAGE:#x}, {a_end:#x})"),
                     ("physical", f"kernel writes freed memory [{a + PAGE:#x}, {a_end:#x})")]
    phys.release(a, a + PAGE)


def test_only_physmem_touches_memory_contents_directly():
    """Every access to PhysMem.data goes through PhysMem's checked accessors: no file but
    hw/physmem.py names the contents."""
    root = SRC.parent
    offenders = set()
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if rel == "hw/physmem.py":
            continue
        text = path.read_text()
        if "phys.data" in text or any(f".data.{op}(" in text
                                      for op in ("read", "write", "zero", "copy")):
            offenders.add(rel)
    assert not offenders, offenders


def test_device_nodes_are_registered_at_boot_only():
    k = SimHost().kernel
    with pytest.raises(RuntimeError, match="after boot"):
        k.register_device("/dev/late", lambda proc, flags: None)
    assert "/dev/late" not in k.devices
