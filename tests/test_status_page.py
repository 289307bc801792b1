"""The status page at `/`: the most recent scrape of each portal, no API calls of its own,
nothing secret, no script, no external asset; rendered by a real headless Chromium.

Set STATUS_PAGE_SCREENSHOT=docs/status-page.png to refresh the README's screenshot.
"""

from __future__ import annotations

import dataclasses
import html
import html.parser
import os
import re
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest

from docspace_simulator import Simulator
from exporter.config import Config, PortalConfig
from tests import deploy_helpers as dh
from tests.harness import Running, portal_config

# health class and a word of the row's cells, per simulator scenario
SCENARIOS = {
    "healthy": ("healthy", "completed"),
    "stale": ("failing", "stale"),
    "no_schedule": ("warning", "no schedule"),
    "backup_failed": ("failing", "backup failed"),
    "backup_running": ("warning", "running"),
    "down": ("failing", "down"),
    "auth_failure": ("failing", "unauthorized"),
}
HOSTILE = '<script>alert("x")</script>&'
COLOURS = {"healthy": (0xC8, 0xF0, 0xC8), "warning": (0xFF, 0xE8, 0xA8),
           "failing": (0xF8, 0xC0, 0xC0)}


class Rows(html.parser.HTMLParser):
    """The portal rows of the page: data-portal -> (class, text of the row)."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, tuple[str, str]] = {}
        self.tags: set[str] = set()
        self.attrs_seen: list[tuple[str, str]] = []
        self._current: str | None = None
        self._class = ""
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        a = {k: v or "" for k, v in attrs}
        self.attrs_seen += list(a.items())
        if tag == "tr" and "data-portal" in a:
            self._current, self._class, self._text = a["data-portal"], a.get("class", ""), []

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._current is not None:
            self.rows[self._current] = (self._class, " ".join(self._text))
            self._current = None

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._text.append(data.strip())


def parse(page: str) -> Rows:
    p = Rows()
    p.feed(page)
    return p


@pytest.fixture
def world(sim: Simulator, exporter: Callable[..., Running]) -> tuple[Simulator, Running,
                                                                      list[PortalConfig]]:
    portals = [portal_config(sim, sim.add_portal(s.replace("_", "-"), s)) for s in SCENARIOS]
    # a portal whose configured name is hostile HTML (the simulator's is not)
    odd = portal_config(sim, sim.add_portal("odd", "healthy"))
    portals.append(dataclasses.replace(odd, name=HOSTILE))
    return sim, exporter(Config(portals=tuple(portals))), portals


def test_before_any_scrape_no_api_call(world: tuple[Simulator, Running, list[PortalConfig]]
                                       ) -> None:
    sim, run, portals = world
    status, headers, page = run.get("/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    rows = parse(page).rows
    assert set(rows) == {p.name for p in portals}
    assert all(cls == "unknown" and "not scraped yet" in text for cls, text in rows.values())
    assert sim.request_count() == 0


def test_rows_show_the_last_scrape(world: tuple[Simulator, Running, list[PortalConfig]]
                                   ) -> None:
    sim, run, portals = world
    assert run.get("/metrics")[0] == 200
    calls = sim.request_count()
    _, _, page = run.get("/")
    assert sim.request_count() == calls, "the page made API calls"
    rows = parse(page).rows
    for scenario, (health, word) in SCENARIOS.items():
        cls, text = rows[scenario.replace("_", "-")]
        assert cls == health, (scenario, cls, text)
        assert word in text, (scenario, text)
    assert rows["healthy"][0] == "healthy" and "UTC" in rows["healthy"][1]
    # a /probe scrape refreshes that portal's row
    assert run.get("/probe?target=stale")[0] == 200
    assert sim.request_count() > calls


def test_nothing_secret_no_script_no_external_asset(
        world: tuple[Simulator, Running, list[PortalConfig]]) -> None:
    sim, run, portals = world
    run.get("/metrics")
    _, _, page = run.get("/")
    for p in portals:
        for secret in p.auth.secrets():
            assert secret not in page
    assert "<script" not in page.lower() and HOSTILE not in page
    assert html.escape(HOSTILE) in page
    parsed = parse(page)
    assert not parsed.tags & {"script", "link", "img", "iframe", "object", "embed"}
    assert "@import" not in page and "url(" not in page
    hrefs = [v for k, v in parsed.attrs_seen if k in ("href", "src")]
    assert hrefs and all(h.startswith("/") for h in hrefs), hrefs
    for link in ("/metrics", "/sd", "/probe?target=healthy"):
        assert link in hrefs
    # the task error texts of the API never reach the page
    assert "error" not in parsed.rows["backup-failed"][1].lower().replace("failed", "")


# --- real headless Chromium -----------------------------------------------------------------


def chromium(*args: str) -> str:
    exe = dh.binary("chromium")
    profile = Path(os.environ.get("TMPDIR", "/tmp"))
    return dh.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                   "--disable-dev-shm-usage", f"--user-data-dir={profile}/docspace-chromium",
                   *args], timeout=120).stdout


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Width, height and RGB(A) rows of an 8-bit PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    height = ctype = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and ctype in (2, 6)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    bpp = 4 if ctype == 6 else 3
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows: list[bytes] = []
    prev = bytearray(stride)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, rows


@pytest.mark.e2e
def test_chromium_renders_rows_and_colours(
        world: tuple[Simulator, Running, list[PortalConfig]], tmp_path: Path) -> None:
    sim, run, portals = world
    assert run.get("/metrics")[0] == 200
    dom = chromium("--dump-dom", run.url + "/")
    assert "<table" in dom, dom[:500]
    rows = parse(dom).rows
    assert set(rows) == {p.name for p in portals}  # the hostile name arrives as text
    for scenario, (health, _) in SCENARIOS.items():
        assert rows[scenario.replace("_", "-")][0] == health
    shot = tmp_path / "status.png"
    chromium(f"--screenshot={shot}", "--window-size=1280,720", "--hide-scrollbars",
             run.url + "/")
    assert shot.is_file() and shot.stat().st_size > 5000
    width, height, pixels = png_pixels(shot)
    assert (width, height) == (1280, 720)
    bpp = len(pixels[0]) // width
    seen = set()
    for line in pixels[::4]:
        for x in range(0, width * bpp, bpp * 4):
            seen.add(tuple(line[x:x + 3]))
    for health, rgb in COLOURS.items():
        assert rgb in seen, f"no {health} colour in the screenshot"
    target = os.environ.get("STATUS_PAGE_SCREENSHOT")
    if target:
        shutil.copyfile(shot, dh.REPO / target)


def test_time_of_scrape_shown(world: tuple[Simulator, Running, list[PortalConfig]]) -> None:
    _, run, _ = world
    run.get("/probe?target=healthy")
    _, _, page = run.get("/")
    rows = parse(page).rows
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", rows["healthy"][1])
    assert rows["stale"][0] == "unknown"  # only the probed portal was scraped


def test_due_time_and_tariff_columns() -> None:
    """The schedule due time and tariff (contract metrics of issue 10) colour the row."""
    from exporter.status import PortalResult, assess

    now = 1_800_000_000.0

    def result(due: float, tariff: str) -> PortalResult:
        return PortalResult("p", now, True, {}, {
            "docspace_backup_schedule_configured": [({}, 1.0)],
            "docspace_backup_schedule_last_backup_timestamp_seconds": [({}, now - 3600)],
            "docspace_backup_schedule_expected_interval_seconds": [({}, 86400.0)],
            "docspace_backup_schedule_next_due_timestamp_seconds": [({}, due)],
            "docspace_portal_tariff_state": [({"state": s}, float(s == tariff))
                                             for s in ("trial", "paid", "delay", "not_paid")],
        })

    ok = assess(result(now + 7200, "paid"), now)
    assert ok.health == "healthy" and "in 2h 0m" in ok.cells[2] and ok.cells[4] == "paid"
    late = assess(result(now - 2 * 3600, "paid"), now)
    assert late.health == "failing" and "overdue" in " ".join(late.problems)
    assert "2h 0m ago" in late.cells[2]
    just_due = assess(result(now - 600, "paid"), now)
    assert just_due.health == "healthy"  # within the hour the scheduler may still start
    blocked = assess(result(now + 7200, "not_paid"), now)
    assert blocked.health == "failing" and blocked.cells[4] == "not_paid"
