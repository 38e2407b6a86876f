"""The console in a real browser (Debian's headless Chromium driven by Selenium) against a real `serve` on loopback:
log in, watch both cameras' tiles refresh, open the event a striped box on the lawn raised, see its pictures, mark
it normal (the box no longer alerts, a dotted one at the same place still does), and undo that (the striped box
alerts again).

The cameras are looping image folders read in real time; "replaying" an anomaly rewrites the gate camera's frames
in place, so the reader picks it up on its next frames. With STREAMVAD_SCREENSHOTS=<folder> the test saves a
screenshot of each console page there (the README's pictures).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
from PIL import Image

from streamvad.config import BackboneConfig, NormalityConfig, StreamVADConfig
from streamvad.console.auth import hash_password
from streamvad.datasets.synthetic import make_scene
from streamvad.model_store import ModelStore
from streamvad.offline.pipeline import clips_from_paths, fit
from tests.rtsp_server import free_port
from tests.test_serve import Serve

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason="needs Debian's chromium and chromium-driver (tools/setup.sh --system installs them)")]

TOKEN = "browser-test-token-0123456789"
SIZE = (240, 320)
# the multi-scale variant: a box's texture tells apart from another's where the last layer alone hardly does
BACKBONE = BackboneConfig(name="efficientnet-lite0-ms", image_size=(192, 256), device="cpu", batch_size=16)
AT = (140, 30)  # top-left corner (row, column) of the objects, on the lawn of a 240x320 frame


def _pattern(side: int, kind: str) -> np.ndarray:
    rows, cols = np.indices((side, side))
    if kind == "stripes":
        return np.where((((rows + cols) // 6) % 2 == 0)[..., None], [255, 220, 0], [20, 20, 120]).astype(np.uint8)
    return np.where((((rows % 12) - 6) ** 2 + ((cols % 12) - 6) ** 2 < 12)[..., None], [0, 255, 255],
                    [120, 0, 0]).astype(np.uint8)


# a striped box, and a larger dotted one over the same place: neither looks like anything in the scene
STRIPES, DOTS = _pattern(64, "stripes"), _pattern(96, "dots")


def _with(thing: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def draw(image: np.ndarray) -> np.ndarray:
        out = image.copy()
        out[AT[0]:AT[0] + len(thing), AT[1]:AT[1] + len(thing)] = thing
        return out
    return draw


class Camera:
    """A looping image folder whose frames can be swapped under the running reader."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.normal = [np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))]

    def show(self, draw: Callable[[np.ndarray], np.ndarray] | None) -> None:
        for i, image in enumerate(self.normal):
            path = self.folder / f"{i:06d}.png"
            tmp = self.folder / f".{i:06d}.tmp.png"
            Image.fromarray(image if draw is None else draw(image)).save(tmp)
            os.replace(tmp, path)  # the reader never reads half a file


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Serve, Camera, Path]]:
    root = tmp_path_factory.mktemp("browser")
    gate = make_scene(root / "live", seconds=8, fps=10, size=SIZE, seed=21, place_seed=3, fmt="frames", name="gate")
    yard = make_scene(root / "live", seconds=8, fps=10, size=SIZE, seed=22, place_seed=3, fmt="frames", name="yard")
    more = make_scene(root / "fit", seconds=16, fps=10, size=SIZE, seed=23, place_seed=3, name="more")
    cfg = StreamVADConfig(backbone=BACKBONE, normality=NormalityConfig(
        k_min=2, k_max=4, k_candidates=2, silhouette_sample=100, hdbscan="none", chroma=False, holdout_fraction=0.5))
    fit(cfg, clips_from_paths([gate.path, more.path]), root / "model", sample_fps=4.0, progress=False)
    store = root / "gate-models"
    shutil.copytree(root / "model", store / "v0001")
    ModelStore(store).activate("v0001")
    port = free_port()
    config = {
        "backbone": {"device": "cpu"},
        # appearance alone: the boxes appear and vanish from one frame to the next, a jump no object makes, which
        # motion flags as events of their own; and a box at rest adds no motion to the default sum, whose threshold
        # normal frames' motion lifts above appearance's own (README, "What fusion gives up"). This test is about
        # the look an operator marks normal
        "scoring": {"motion": "appearance"},
        "cameras": [{"id": "gate", "url": str(gate.path), "loop": True, "model": str(store)},
                    {"id": "yard", "url": str(yard.path), "loop": True, "model": str(root / "model")}],
        "worker": {"max_age_s": None, "model_poll_s": 0.5},
        "events": {"open_n": 2, "open_m": 4, "close_quiet_s": 1.0, "cooldown_s": 0.0, "preview_s": 0.5,
                   "database": str(root / "events.db"), "media": str(root / "media")},
        "sinks": {"jsonl": str(root / "events.jsonl"), "spool": str(root / "spool")},
        "serve": {"http_port": port, "auth": {"token": TOKEN, "users": {"ops": hash_password("open sesame")}}},
    }
    path = root / "serve.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    serve = Serve(path, port, root / "serve.log")
    try:
        serve.wait("both cameras scored", lambda b: all(b.get("cameras", {}).get(c, {}).get("model") == "scoring"
                                                        for c in ("gate", "yard")), 180)
        yield serve, Camera(gate.path), store
    finally:
        serve.stop()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Chromium keeps its singleton socket in a directory under TMPDIR that it leaves behind on quit; the
    test's own TMPDIR keeps /tmp clean."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    env = {**os.environ, "TMPDIR": str(tmp_path_factory.mktemp("chromium-tmp"))}
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), env=env), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _api(serve: Serve, path: str, **params: Any) -> Any:
    resp = httpx.get(f"{serve.base}/api{path}", params=params, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    resp.raise_for_status()
    return resp.json()


def _wait(what: str, cond: Callable[[], Any], timeout_s: float, serve: Serve) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert serve.proc.poll() is None, f"serve exited:\n{serve.log.read_text()[-3000:]}"
        if found := cond():
            return found
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}:\n{serve.log.read_text()[-3000:]}")


def _gate_events_since(serve: Serve, since: float) -> list[dict[str, Any]]:
    return [e for e in _api(serve, "/events", camera="gate", type="anomaly", limit=100)["events"]
            if e["start_wall_time"] >= since]


def _replay(serve: Serve, camera: Camera, draw: Callable[[np.ndarray], np.ndarray], seconds: float = 6.0) -> float:
    """Show `draw` on the gate camera for `seconds`, then normal footage again; when it began (wall time).

    It waits first for the gate's last event to close: on a busy machine the worker runs behind the reader and sheds
    frames, and an object shown while the last one's event is still open would only extend that event."""
    _wait("the gate's open events to close",
          lambda: all(e["state"] == "closed" for e in _gate_events_since(serve, 0.0)), 120, serve)
    began = time.time()
    camera.show(draw)
    time.sleep(seconds)
    camera.show(None)
    time.sleep(2.0)  # the event closes after a second of normal footage
    return began


def _loaded(driver: Any, selector: str) -> bool:
    return bool(driver.execute_script(
        "const i = document.querySelector(arguments[0]); return !!i && i.complete && i.naturalWidth > 0;", selector))


def _shoot(driver: Any, name: str) -> None:
    folder = os.environ.get("STREAMVAD_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, max(1000, height + 140))  # the whole page (140: the window's own frame)
        driver.save_screenshot(str(Path(folder) / f"console-{name}.png"))
        driver.set_window_size(1400, 1000)


def test_log_in_review_an_event_mark_it_normal_and_undo(site: tuple[Serve, Camera, Path], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    serve, gate, store = site
    browser.get(f"{serve.base}/")
    _wait("the login form", lambda: browser.find_elements(By.NAME, "user"), 10, serve)
    _shoot(browser, "login")
    browser.find_element(By.NAME, "user").send_keys("ops")
    browser.find_element(By.NAME, "password").send_keys("open sesame")
    browser.find_element(By.ID, "login-submit").click()
    _wait("two camera tiles", lambda: len(browser.find_elements(By.CSS_SELECTOR, ".tile img")) == 2, 20, serve)
    first = [i.get_attribute("src") for i in browser.find_elements(By.CSS_SELECTOR, ".tile img")]
    _wait("both tiles showing a picture", lambda: all(_loaded(browser, f'.tile[data-camera="{c}"] img')
                                                      for c in ("gate", "yard")), 30, serve)
    _wait("both tiles refreshed", lambda: all(
        a != b for a, b in zip(first, [i.get_attribute("src") for i in browser.find_elements(By.CSS_SELECTOR,
                                                                                             ".tile img")],
                               strict=True)), 10, serve)

    began = _replay(serve, gate, _with(STRIPES))
    [event] = _wait("the striped box's event", lambda: _gate_events_since(serve, began - 1), 60, serve)
    _shoot(browser, "cameras")
    browser.get(f"{serve.base}/#/events")
    _wait("the event in the review list", lambda: browser.find_elements(By.CSS_SELECTOR,
                                                                       f'#event-list li[data-id="{event["id"]}"]'),
          20, serve)
    _shoot(browser, "events")
    closed = _wait("the event's clip", lambda: (e := _api(serve, f"/events/{event['id']}"))["clip_url"] and e, 60,
                   serve)
    browser.get(f"{serve.base}/#/events/{event['id']}")
    _wait("snapshot, heatmap and exemplar pictures", lambda: all(_loaded(browser, s) for s in
                                                                 ("#snapshot", "#heatmap", "#exemplar")), 20, serve)
    clip = browser.find_element(By.ID, "clip")
    _wait("the clip", clip.is_displayed, 10, serve)
    # until it plays, the clip shows the event's peak frame, not a black box
    assert clip.get_attribute("poster").endswith(closed["snapshot_url"])
    assert clip.get_attribute("src").endswith(closed["clip_url"])
    _shoot(browser, "event")

    browser.find_element(By.ID, "normal").click()
    assert not browser.find_element(By.ID, "normal").is_enabled()  # one click, one version
    # a process of its own builds the version (feedback.mark_normal): seconds, more on a busy box
    _wait("v0002 current", lambda: (c := ModelStore(store).current()) is not None and c.name == "v0002", 60, serve)
    serve.wait("the worker on v0002", lambda b: b["cameras"]["gate"].get("model_version") == "v0002", 30)
    marked = _replay(serve, gate, _with(STRIPES))
    time.sleep(1.0)
    assert _gate_events_since(serve, marked - 1) == []  # the striped box is normal now
    other = _replay(serve, gate, _with(DOTS))
    assert len(_wait("the other object's event", lambda: _gate_events_since(serve, other - 1), 60, serve)) == 1

    browser.get(f"{serve.base}/#/events/{event['id']}")
    _wait("the undo button", lambda: browser.find_element(By.ID, "undo").is_enabled(), 20, serve)
    browser.find_element(By.ID, "undo").click()
    _wait("v0001 current again", lambda: ModelStore(store).current().name == "v0001", 20, serve)  # type: ignore[union-attr]
    serve.wait("the worker back on v0001", lambda b: b["cameras"]["gate"].get("model_version") == "v0001", 30)
    again = _replay(serve, gate, _with(STRIPES))
    assert len(_wait("the striped box's event again", lambda: _gate_events_since(serve, again - 1), 60, serve)) == 1

    browser.get(f"{serve.base}/#/cameras/gate")
    _wait("the camera's versions", lambda: len(browser.find_elements(By.CSS_SELECTOR, "#versions tbody tr")) == 2,
          20, serve)
    # the site's scoring (appearance alone, above), not the model's own fused default, as the worker serves it
    assert browser.find_element(By.ID, "scorer").text == "distance/topk: a frame above its threshold is anomalous."
    decides = [row.text.split()[0] for row in browser.find_elements(By.CSS_SELECTOR, "#scorer-thresholds tr")]
    assert decides == ["distance/topk"]  # the other rules' thresholds, motion's among them, fold away
    _shoot(browser, "camera")
