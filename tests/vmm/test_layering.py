"""passthru.vmm sits above the Host protocol: importing it loads none of the model."""

from __future__ import annotations

import subprocess
import sys


def test_vmm_imports_no_model_module():
    code = (
        "import sys, passthru.vmm\n"
        "bad = sorted(m for m in sys.modules if m.startswith(("
        "'passthru.kernel', 'passthru.sim', 'passthru.host.sim', 'passthru.hw')))\n"
        "print(bad)\n"
        "raise SystemExit(1 if bad else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
