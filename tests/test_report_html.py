"""``repofs report --html``: the page renders in a real browser and its numbers are
``stats --json``'s.

Chromium (Debian's ``chromium``, installed by .ci/setup) opens the file headless, runs the
page's script and dumps the resulting DOM; the test reads the figures back from it. The page
must need no network: it names no external resource at all.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fixtures_repo import CLI, cli_env

MiB = 1 << 20
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


class Page(HTMLParser):
    """What the test reads from the rendered DOM."""

    def __init__(self) -> None:
        super().__init__()
        self.by_id: dict[str, dict] = {}
        self.rows: dict[tuple[str, str], list[dict]] = {}
        self.svgs: list[str] = []
        self.text_of: dict[str, str] = {}
        self.resources: list[str] = []
        self._vm: str | None = None
        self._row: tuple[str, str] | None = None
        self._open_id: str | None = None
        self.all_text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        a = dict(attrs)
        for key in ("src", "href"):
            if key in a:
                self.resources.append(a[key])
        if "id" in a:
            self.by_id[a["id"]] = a
            self._open_id = a["id"]
        if tag == "section" and "data-vm" in a:
            self._vm = a["data-vm"]
        if tag == "tr" and "data-generation" in a and self._vm is not None:
            self._row = (self._vm, a["data-generation"])
            self.rows[self._row] = []
        if tag == "td" and self._row is not None:
            self.rows[self._row].append(a)
        if tag == "svg":
            self.svgs.append(a.get("class", ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._row = None
        if tag == "section":
            self._vm = None

    def handle_data(self, data: str) -> None:
        self.all_text.append(data)
        if self._open_id is not None:
            self.text_of[self._open_id] = self.text_of.get(self._open_id, "") + data


def render(html: Path, profile: Path) -> str:
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--no-first-run", f"--user-data-dir={profile}", "--dump-dom", html.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("report")
    repo = tmp / "repo"
    cli = CLI(repo, cli_env(tmp, repo))
    cli.run("init", "--chunk-size", "64K")
    image = tmp / "disk.img"
    data = bytearray(os.urandom(MiB) + bytes(MiB) + b"compressible " * 80_000)
    gens = {}
    for vm, times in (("web01", ("2025-01-01T00:00:00Z", "2025-01-08T00:00:00Z", "2025-01-15T00:00:00Z")),
                      ("db<01>", ("2025-01-02T00:00:00Z", "2025-01-09T00:00:00Z"))):
        for i, when in enumerate(times):
            data[i * 4096:(i + 1) * 4096] = os.urandom(4096)      # a little change each time
            image.write_bytes(bytes(data))
            doc = json.loads(cli.run("backup", f"file:{image}", "--vm", vm, "--time", when, "--json").stdout)
            gens.setdefault(vm, []).append(doc["generation"])
    cli.run("protect", f"vm:web01@{gens['web01'][0]}")
    cli.run("check", "--read-data")
    failed = cli.run("restore", "vm:web01@1999", "--to-dir", str(tmp / "nowhere"), check=False)
    assert failed.returncode == 8
    html = tmp / "report.html"
    cli.run("report", "--html", str(html))
    stats = json.loads(cli.run("stats", "--json").stdout)
    return cli, tmp, html, stats, gens


def test_the_page_needs_no_network(world) -> None:
    _cli, _tmp, html, _stats, _gens = world
    page = Page()
    page.feed(html.read_text())
    assert page.resources == []
    text = html.read_text()
    assert "<link" not in text and "@import" not in text and "url(" not in text
    assert html.stat().st_mode & 0o777 == 0o600


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (.ci/setup installs it)")
def test_the_rendered_page_shows_the_numbers_of_stats_json(world) -> None:
    _cli, tmp, html, stats, gens = world
    page = Page()
    page.feed(render(html, tmp / "chromium-profile"))
    totals = page.by_id["js-totals"]            # written by the page's script: it ran
    assert int(totals["data-logical-bytes"]) == stats["total"]["logical_bytes"]
    assert int(totals["data-stored-bytes"]) == stats["total"]["stored_bytes"]
    assert "Checked in the browser: 5 generations" in page.text_of["js-totals"]
    assert page.text_of["generation-count"].strip() == "5"
    assert page.text_of["chunk-count"].strip() == str(stats["total"]["chunks"])
    for v in stats["vms"]:
        for g in v["generations"]:
            cells = page.rows[(v["vm"], g["generation"])]
            sizes = [int(c["data-bytes"]) for c in cells if "data-bytes" in c]
            # logical, stored (referenced), unique, new stored
            assert sizes[:3] == [g["data_bytes"], g["stored_bytes"], g["unique_bytes"]], (v["vm"], g)
    # a timeline per VM, the growth and the ratios
    assert sorted(page.svgs) == sorted(["plot growth", "plot ratios", "plot timeline", "plot timeline"])
    text = "".join(page.all_text)
    assert "db<01>" in text                      # a VM name is text, not markup
    assert "VM 'web01' has no generation '1999'" in text       # the last error, from the log


def test_protected_and_verified_generations_are_marked(world) -> None:
    _cli, _tmp, html, _stats, gens = world
    text = html.read_text()
    row = text[text.index(f'data-generation="{gens["web01"][0]}"'):]
    row = row[:row.index("</tr>")]
    assert "protected" in row and 'class="ok"' in row      # check --read-data verified every chunk
