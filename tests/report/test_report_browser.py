"""The report in a real browser: headless Chromium (Debian's chromium package) loads a
counterexample's page from file://, its DOM holds the diagram, the page's script filters and
steps through the trace, and screenshots show the diagram, the violation band below the
decisive preemption's mark, the set-up folded away until the script opens it, and each trace
line's source location (grey, right-aligned) and value-carrying lines (blue) shown."""

from __future__ import annotations

import html
import json
import os
import re
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


@pytest.fixture(scope="module")
def gmem_page(tmp_path_factory: pytest.TempPathFactory, gmem: Verdict) -> Path:
    out = tmp_path_factory.mktemp("report")
    write_report(out, [gmem], date="2026-01-02T03:04:05+00:00")
    return out / f"gmem_punch_hole_vs_vcpu_buggy-{gmem.profile}.html"


def dom(exe: str, tmp: Path, url: str) -> str:
    r = run(exe, tmp, "--dump-dom", url)
    assert r.returncode == 0 and "</html>" in r.stdout, r.stderr[-2000:]
    return r.stdout


def test_dom_holds_the_page_furniture(tmp_path: Path, gmem_page: Path, gmem: Verdict) -> None:
    exe = chromium()
    page = dom(exe, tmp_path, gmem_page.as_uri())
    meta = re.search(r'<p class="meta">(.*?)</p>', page)
    assert meta is not None and "2026-01-02T03:04:05+00:00" in meta.group(1)
    assert f"budget <b>{gmem.budget}</b>" in meta.group(1)
    assert '<nav class="jump">' in page and 'id="violation-1"' in page
    assert 'id="trace-violation"' in page and 'id="preemption"' in page
    assert '<g class="preemption"' in page
    # Folded and closed: the browser left them so (no "open" attribute).
    assert re.search(r'<details class="setup"><summary>', page)
    assert re.search(r'<details class="churn"><summary>', page)
    assert "<details open" not in page and 'open=""' not in page
    assert '<select id="task"><option value="">all</option>' in page
    assert '<span id="pos"></span>' in page  # the script ran, stepped nowhere


def test_script_filters_and_steps(tmp_path: Path, gmem_page: Path, gmem: Verdict) -> None:
    exe = chromium()
    res = gmem.counterexample
    assert res is not None
    page = dom(exe, tmp_path, gmem_page.as_uri() + "#task=punch&event=2")
    rows = re.findall(r'<span class="line([ a-z]*)"(?: id="[a-z-]+")? data-step="(\d+)" '
                      r'data-task="([^"]+)">', page)
    assert len(rows) == len(res.log.events)
    for cls, _, task in rows:
        assert (" off" in cls) == (task != "punch"), (cls, task)
    cur = [(step, task) for cls, step, task in rows if " cur" in cls]
    punch = [e for e in res.log.events if e.task == "punch"]
    assert cur == [(str(punch[1].step), "punch")]  # the second of punch's events
    at = next(i for i, e in enumerate(res.log.events) if e is punch[1])
    assert f'<span id="pos">event {at + 1} of {len(rows)}, step {punch[1].step}</span>' in page
    # Folds holding only other tasks' rows are hidden; the one holding the current row opens.
    assert re.search(r'<details class="setup off">', page)


def test_screenshot_marks_and_folds(tmp_path: Path, gmem_page: Path) -> None:
    exe = chromium()

    def shot(name: str, url: str) -> list[bytes]:
        f = tmp_path / f"{name}.png"
        r = run(exe, tmp_path, "--hide-scrollbars", f"--screenshot={f}", "--window-size=1000,4400",
                url)
        assert f.exists(), r.stderr[-2000:]
        width, height, rows = png_pixels(f.read_bytes())
        assert (width, height) == (1000, 4400)
        return rows

    rows = shot("closed", gmem_page.as_uri())

    def band(px: bytes) -> bool:
        return px[0] > 230 and 160 < px[1] < 220 and abs(px[1] - px[2]) < 12

    def purple(px: bytes) -> bool:
        return 100 < px[0] < 150 and px[1] < 80 and px[2] > 170

    wide = [y for y, row in enumerate(rows) if longest_run(row, 1000, band) > 500]
    assert wide, "no violation band"
    # The decisive preemption is marked purple at the left twice, one step's rows tall each:
    # in the diagram's gutter, above the violation band, and in the trace, below the diagram.
    marked = [y for y, row in enumerate(rows) if longest_run(row[:120 * 3], 120, purple) >= 4]
    groups: list[list[int]] = []
    for y in marked:
        if groups and y - groups[-1][-1] <= 2:
            groups[-1].append(y)
        else:
            groups.append([y])
    assert len(groups) == 2, [(g[0], g[-1]) for g in groups]
    assert 200 < groups[0][0] < min(wide) < groups[1][0]
    assert all(10 < len(g) < 40 for g in groups), [len(g) for g in groups]
    # The page ends (its last ink) higher with the set-up folded than with it opened by the
    # script ("#event=1" steps to the first row, inside the fold): at least 10 rows taller.
    opened = shot("opened", gmem_page.as_uri() + "#event=1")

    def last_ink(rs: list[bytes]) -> int:
        return max(y for y, row in enumerate(rs) if min(row) < 200)

    # (The window is taller than the opened page: its last ink is the page's, not the edge's.)
    assert last_ink(opened) < len(opened) - 50
    assert last_ink(opened) - last_ink(rows) > 10 * 14


# Appended to a copy of the page: measures the vCPU's pfn fetch (a value line outside the
# folds), its source location and a plain line, and writes the measurements into the DOM
# for --dump-dom.
PROBE = """<script>(function(){
function box(e){var r=e.getBoundingClientRect();return [r.left,r.top,r.right,r.bottom]}
var v=[].filter.call(document.querySelectorAll('#trace > .line.value'),
function(l){return l.querySelector('.where')&&
l.firstChild.textContent.indexOf('kvm.faultin-pfn')>=0})[0],
p=[].filter.call(document.querySelectorAll('#trace > .line'),
function(l){return !l.classList.contains('value')&&!l.classList.contains('vstep')&&
!l.classList.contains('viol')&&!l.classList.contains('preempt')})[0],
w=v.querySelector('.where'),t=document.createRange();t.selectNodeContents(v.firstChild);
var out={line:box(v),text:box(t),where:box(w),trace:box(document.getElementById('trace')),
color:getComputedStyle(v).color,plain:getComputedStyle(p).color,
wcolor:getComputedStyle(w).color,wtext:w.textContent,ltext:v.firstChild.textContent,
display:getComputedStyle(w).display,visibility:getComputedStyle(w).visibility};
document.body.setAttribute('data-probe',JSON.stringify(out));})();</script>"""


def test_values_and_locations_are_visible(tmp_path: Path, gmem_page: Path) -> None:
    exe = chromium()
    probed = tmp_path / "probed.html"
    probed.write_text(gmem_page.read_text().replace("</body>", PROBE + "</body>"))
    # (The same window and scrollbars as the screenshot below: the same layout.)
    r = run(exe, tmp_path, "--hide-scrollbars", "--window-size=1000,4400", "--dump-dom",
            probed.as_uri())
    m = re.search(r'<body data-probe="([^"]*)"', r.stdout)
    assert m is not None, r.stderr[-2000:]
    got = json.loads(html.unescape(m.group(1)))
    # The value line is the vCPU's pfn fetch, its location the model's fault path.
    assert "kvm.faultin-pfn" in got["ltext"] and "mmu_seq=0" in got["ltext"], got
    assert got["wtext"].startswith("kernel/kvm/mmu.py:"), got
    # The location is shown: rendered, on the line's own row, right of its text and against
    # the trace's right edge, in grey; the value line's text is coloured unlike a plain one.
    assert got["display"] != "none" and got["visibility"] == "visible", got
    (_, lt, _, lb), (tl, _, tr, _), (wl, wt, wr, wb) = got["line"], got["text"], got["where"]
    assert wr - wl > 50 and wb - wt > 5, got
    assert lt - 1 <= wt and wb <= lb + 1 and lb - lt < 25, got  # one row, not wrapped
    assert wl > tr + 10, got
    assert got["trace"][2] - wr < 40, got
    assert got["wcolor"] == "rgb(138, 138, 138)", got
    assert got["color"] != got["plain"] and got["color"] == "rgb(11, 79, 156)", got
    # And in the pixels: the value line's row holds blue text at the left and grey text where
    # its location is.
    shot = tmp_path / "values.png"
    run(exe, tmp_path, "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1000,4400",
        probed.as_uri())
    width, _, rows = png_pixels(shot.read_bytes())
    band = rows[int(lt) + 1:int(lb) - 1]

    def blue(px: bytes) -> bool:
        return px[2] > 110 and px[2] - px[0] > 60 and px[0] < 120

    def grey(px: bytes) -> bool:
        return 110 < px[0] < 215 and max(px) - min(px) < 10

    def count(pred: Callable[[bytes], bool], x0: int, x1: int) -> int:
        return sum(1 for row in band for x in range(max(x0, 0), min(x1, width))
                   if pred(row[x * 3:x * 3 + 3]))

    assert count(blue, int(tl), int(tr)) > 30
    assert count(blue, int(wl), int(wr)) == 0
    assert count(grey, int(wl), int(wr)) > 30


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
