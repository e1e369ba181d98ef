"""The run report opened in a real headless Chromium: its script draws the flow's graph
and the timeline from the run's data (DOM read back with --dump-dom once the script has
run), and a screenshot is kept as an artefact (its path is printed; set
SHOAL_ARTEFACTS=dir to keep it there)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections import Counter
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
from chromium_setup import chromium_path  # noqa: F401 - the `chromium` fixture
from report_runs import LEAKED, RUN_ID, failed_run, large_run

from shoal.config import Config
from shoal.observe.report import write_report
from shoal.stores import open_store

pytestmark = pytest.mark.timeout(1500)  # the first run may install Chromium

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps", "--mute-audio",
         "--hide-scrollbars")


def chrome(chromium: str, work: Path, url: str, *args: str) -> str:
    """Run Chromium on ``url`` with a fresh profile; its stdout. Its process group (the
    browser and its helpers) is killed if it runs past 90 s."""
    profile = work / f"profile-{len(list(work.glob('profile-*')))}"
    proc = subprocess.Popen([chromium, *FLAGS, f"--user-data-dir={profile}", *args, url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-2000:]
    return out


@dataclass(frozen=True)
class Element:
    tag: str
    attrs: dict[str, str]

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())


class _Collect(HTMLParser):
    """Every element's tag and attributes, in document order, and the text of <pre>s."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: list[Element] = []
        self.pre: list[str] = []
        self._in_pre = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.append(Element(tag, {k: v or "" for k, v in attrs}))
        if tag == "pre":
            self._in_pre = True
            self.pre.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "pre":
            self._in_pre = False

    def handle_data(self, data: str) -> None:
        if self._in_pre:
            self.pre[-1] += data


def dom(chromium: str, work: Path, page: Path) -> _Collect:
    parser = _Collect()
    parser.feed(chrome(chromium, work, page.as_uri(), "--dump-dom"))
    parser.close()
    return parser


def having(elements: list[Element], cls: str) -> list[Element]:
    return [e for e in elements if cls in e.classes]


def one(elements: list[Element], **attrs: str) -> Element:
    (found,) = [e for e in elements if all(e.attrs.get(k) == v for k, v in attrs.items())]
    return found


def body(elements: list[Element]) -> Element:
    (found,) = [e for e in elements if e.tag == "body"]
    return found


def screenshot(chromium: str, work: Path, page: Path, name: str) -> Path:
    """A PNG of the page, in $SHOAL_ARTEFACTS when set (CI keeps that directory), else
    in the test's temporary directory; its path is printed."""
    keep = os.environ.get("SHOAL_ARTEFACTS")
    shot = (Path(keep) if keep else work) / name
    shot.parent.mkdir(parents=True, exist_ok=True)
    chrome(chromium, work, page.as_uri(), f"--screenshot={shot}", "--window-size=1400,1600")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert shot.stat().st_size > 10_000  # a page, not a blank
    print(f"\nscreenshot of the run report: {shot}")
    return shot


async def test_chromium_draws_the_graph_and_timeline_of_a_failed_run(
    chromium: str, tmp_path: Path
) -> None:
    run = await failed_run(tmp_path)
    page = await write_report(run.store_url, RUN_ID, tmp_path / "report.html")
    found = dom(chromium, tmp_path, page)
    elements = found.elements

    assert body(elements).attrs["data-rendered"] == "1"  # the script ran to its end
    assert "hidden" in one(elements, id="render-error").attrs

    nodes = having(elements, "dag-node")
    assert {n.attrs["data-step"]: n.attrs["data-status"] for n in nodes} == {
        "researcher": "succeeded", "analyzer": "succeeded", "critic": "succeeded",
        "publish": "failed", "announcer": "not_run"}
    assert [n.attrs["id"] for n in nodes] == [f"dag-node-{i}" for i in range(5)]
    assert {n.attrs["data-step"] for n in nodes if n.attrs["data-resume"] == "redo"} == {
        "publish", "announcer"}
    edges = {(e.attrs["data-from"], e.attrs["data-to"]) for e in having(elements, "dag-edge")}
    assert edges == {("researcher", "analyzer"), ("researcher", "critic"),
                     ("analyzer", "publish"), ("critic", "publish"), ("publish", "announcer")}
    assert one(elements, id="dag").attrs["data-nodes"] == "5"

    bars = having(elements, "step-bar")  # every step that started; announcer never did
    assert {b.attrs["data-step"]: b.attrs["data-status"] for b in bars} == {
        "researcher": "succeeded", "analyzer": "succeeded", "critic": "succeeded",
        "publish": "failed"}
    calls = having(elements, "call")
    assert sorted(c.attrs["data-step"] for c in calls) == ["analyzer", "critic", "researcher"]
    segments = Counter(s.attrs["data-kind"] for s in having(elements, "seg"))
    assert segments["provider"] == 3
    assert segments["retry"] == 1  # the researcher's 503 and backoff
    assert segments["queue"] >= 1  # analyzer or critic waited for the one channel slot
    timeline = one(elements, id="timeline")
    assert (timeline.attrs["data-bars"], timeline.attrs["data-calls"]) == ("4", "3")

    # journaled text stayed text: the error's <b> and <script> are characters in its
    # <pre>, not elements; the key in it is masked
    (error,) = found.pre
    assert error.startswith(
        "RuntimeError: the publisher refused <b>it</b> & said </script><script>alert(1)")
    assert LEAKED not in error
    assert Counter(e.tag for e in elements)["script"] == 2
    assert Counter(e.tag for e in elements)["pre"] == 1
    screenshot(chromium, tmp_path, page, "report.png")


async def test_chromium_draws_a_500_step_run(chromium: str, tmp_path: Path) -> None:
    async with open_store("memory://") as store:
        await large_run(store, steps=500)
        page = await write_report(store, "big", tmp_path / "big.html",
                                  prices=Config.from_dict({}))
    elements = dom(chromium, tmp_path, page).elements
    assert body(elements).attrs["data-rendered"] == "1"
    nodes = having(elements, "dag-node")
    assert len(nodes) == 500
    assert Counter(n.attrs["data-status"] for n in nodes) == {"succeeded": 499, "failed": 1}
    assert len(having(elements, "dag-edge")) == sum(
        1 for i in range(10, 500) for j in (0, 1)
        if (i - 10 - j) >= 0 and (i - 10 - j) // 10 == i // 10 - 1)
    assert len(having(elements, "step-bar")) == 500
    assert len(having(elements, "call")) == 1000
    assert Counter(s.attrs["data-kind"] for s in having(elements, "seg")) == {
        "provider": 1000, "queue": 1000, "retry": 144}  # 2 attempts: every 7th step's turns
    screenshot(chromium, tmp_path, page, "big.png")
