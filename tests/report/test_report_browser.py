"""The report in a real browser: headless Chromium (Debian's chromium package) loads a
counterexample's page from file://, its DOM holds the diagram, and a screenshot shows it."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from passthru.check.runner import Verdict
from passthru.report import write_report

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    exe = "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None
    exe = exe or shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium not installed (Debian package chromium)")
    return exe


def png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit, non-interlaced RGB(A) PNG into rows of RGB bytes (pure Python)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, []
    width = height = bpp = 0
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and interlace == 0 and colour in (2, 6), (depth, colour)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    prev = bytearray(stride)
    rows: list[bytes] = []
    for y in range(height):
        at = y * (stride + 1)
        f, line = raw[at], bytearray(raw[at + 1:at + 1 + stride])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif f == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev, strict=True))
        elif f == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + (left + prev[i]) // 2) & 255
        elif f == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line) if bpp == 3 else bytes(
            v for i, v in enumerate(line) if i % 4 != 3))
        prev = line
    return width, height, rows


def run(exe: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([exe, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
                          capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory, abba: Verdict) -> Path:
    out = tmp_path_factory.mktemp("report")
    write_report(out, [abba])
    return out / f"abba-{abba.profile}.html"


def test_dom_holds_the_diagram(tmp_path: Path, page: Path) -> None:
    exe = chromium()
    r = run(exe, tmp_path, "--dump-dom", page.as_uri())
    dom = r.stdout
    assert r.returncode == 0 and '<svg class="passthru-seq"' in dom, r.stderr[-2000:]
    for lane in ("main", "t1", "t2"):
        assert f'data-lane="{lane}"' in dom
    assert 'class="lock-bar" data-lock="lock_a"' in dom
    assert 'class="violation"' in dom and "lock-order" in dom


def test_screenshot_shows_the_diagram(tmp_path: Path, page: Path) -> None:
    exe = chromium()
    shot = tmp_path / "shot.png"
    r = run(exe, tmp_path, f"--screenshot={shot}", "--window-size=1400,1000", page.as_uri())
    assert shot.exists(), r.stderr[-2000:]
    width, height, rows = png_pixels(shot.read_bytes())
    assert (width, height) == (1400, 1000)
    # The diagram sits below the page's header: ink, a wide red band (the violation) and
    # tall blue-ish bars (lock holds) must be there.
    body = rows[250:]
    inked = sum(1 for row in body for i in range(0, len(row), 6) if min(row[i:i + 3]) < 235)
    total = len(body) * width // 2
    assert inked > total // 50, f"only {inked} of {total} sampled pixels drawn"

    def band(px: bytes) -> bool:
        return px[0] > 230 and 160 < px[1] < 220 and abs(px[1] - px[2]) < 12

    def bar(px: bytes) -> bool:
        return px[2] > 120 and px[2] - px[0] > 50

    widest = max(longest_run(row, width, band) for row in body)
    assert widest > 500, f"no violation band (widest red run {widest}px)"
    columns = [b"".join(row[x * 3:x * 3 + 3] for row in body) for x in range(0, width, 2)]
    tallest = max(longest_run(col, len(body), bar) for col in columns)
    assert tallest > 50, f"no lock bar (tallest blue run {tallest}px)"


def longest_run(line: bytes, n: int, pred: Callable[[bytes], bool]) -> int:
    best = cur = 0
    for i in range(n):
        if pred(line[i * 3:i * 3 + 3]):
            cur += 1
            best = max(best, cur)
        else:
            cur = 0
    return best
