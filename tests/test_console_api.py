"""The console's API over real HTTP (uvicorn on loopback) on a real events database, model store and fitted model:
who may do what, paging and filters, the nearest normal exemplar, mark as normal and its undo."""

from __future__ import annotations

import fcntl
import io
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from streamvad import feedback
from streamvad.config import StoreConfig, StreamVADConfig
from streamvad.console.api import Site
from streamvad.console.auth import hash_password, verify_password
from streamvad.console.server import ConsoleServer
from streamvad.datasets.synthetic import make_scene
from streamvad.enrolment import land
from streamvad.errors import StreamVADError
from streamvad.live.events_db import EventQuery, EventsDB
from streamvad.live.health import ServeState
from streamvad.live.media import MediaLayout, _write_atomic
from streamvad.model_store import ModelStore, Version
from streamvad.normality.model import NormalityModel
from streamvad.offline.exemplars import exemplar_path
from streamvad.offline.pipeline import clips_from_paths, iter_frames
from streamvad.scoring.engine import Engine, embed_frames, load_engine
from streamvad.scoring.evidence import evidence_of
from streamvad.types import EmbeddingBatch, Event, Evidence, FrameKey, Verdict
from tests.test_worker import tiny_model

__all__ = ["tiny_model"]

TOKEN = "console-test-token-0123456789"


@dataclass
class Console:
    url: str
    store: Path
    db: EventsDB
    engine: Engine
    batch: EmbeddingBatch
    verdict: Verdict
    evidence: Evidence


def _event(i: int, camera: str, kind: str = "anomaly", **fields: object) -> Event:
    start = 1_000_000.0 + 60.0 * i
    return Event(id=f"e{i:03d}", camera=camera, start_pts=float(i), end_pts=float(i) + 2.0, start_wall_time=start,
                 peak_score=0.5 + i / 100, peak_key=FrameKey(camera, i, float(i)), frame_count=3, state="closed",
                 type=kind, end_wall_time=start + 2.0, **fields)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def console(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    root = tmp_path_factory.mktemp("console")
    store = root / "gate"
    shutil.copytree(tiny_model, store / "v0001")
    ModelStore(store).activate("v0001")
    cfg = StreamVADConfig.model_validate({
        "cameras": [{"id": "gate", "url": "gate.mp4", "model": str(store)},
                    {"id": "yard", "url": "yard.mp4", "model": str(tiny_model)}],
        "events": {"database": str(root / "events.db"), "media": str(root / "media")},
        "serve": {"auth": {"token": TOKEN, "users": {"ops": hash_password("correct horse")}}}})
    # a frame of the scene with a magenta crate on the lawn, scored by the gate's model as a worker would
    clip = make_scene(root / "clips", seconds=2, fps=10, size=(120, 160), seed=5, place_seed=0, name="lawn").path
    frame = next(iter_frames(clips_from_paths([clip]), 4.0))
    frame.image[40:90, 60:110] = (255, 0, 255)
    engine = load_engine(store / "v0001")
    batch = embed_frames(engine.backbone, [frame], engine.request)
    verdict = engine.scorer.score(batch)[0]
    assert verdict.anomalous  # the model sees the crate
    evidence = evidence_of(batch, 0, verdict, None)
    db = EventsDB(cfg.events.database)
    snapshot = root / "media" / "peak.jpg"
    snapshot.parent.mkdir(parents=True)
    Image.fromarray(frame.image).save(snapshot)
    db.commit([_event(i, "gate" if i % 3 else "yard", "covered" if i % 5 == 0 else "anomaly") for i in range(1, 31)],
              {}, {})
    db.commit([_event(0, "gate", snapshot=str(snapshot), heatmap=str(snapshot), model_version="v0001")], {}, {},
              {"e000": evidence})
    state = ServeState()
    server = ConsoleServer(state, port=0, site=Site(cfg, state)).start()
    try:
        yield Console(server.url, store, db, engine, batch, verdict, evidence)
    finally:
        server.close()
        db.close()


def _auth(credential: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {credential}"}


def test_passwords_are_stored_as_scrypt_hashes() -> None:
    done = subprocess.run([sys.executable, "-m", "streamvad", "hash-password"], input="correct horse\n",
                          capture_output=True, text=True, timeout=60, check=True)
    hashed = done.stdout.strip()
    assert StreamVADConfig.model_validate({"serve": {"auth": {"users": {"ops": hashed}}}})  # what the config takes
    assert hashed.startswith("scrypt$") and "correct" not in hashed
    assert verify_password("correct horse", hashed) and not verify_password("wrong", hashed)
    assert hash_password("correct horse") != hashed  # salted
    short = subprocess.run([sys.executable, "-m", "streamvad", "hash-password"], input="short\n", capture_output=True,
                           text=True, timeout=60)
    assert short.returncode == 2 and short.stderr.startswith("streamvad: error: hash-password: a console password")
    with pytest.raises(ValueError, match="never a plain password"):
        StreamVADConfig.model_validate({"serve": {"auth": {"users": {"ops": "hunter2hunter2"}}}})


def test_every_change_needs_a_bearer_and_every_read_a_login(console: Console) -> None:
    app_routes = httpx.get(f"{console.url}/api/openapi.json").json()["paths"]
    posts = [p for p, ops in app_routes.items() if "post" in ops and p not in ("/api/login", "/api/logout")]
    assert len(posts) == 6
    login = httpx.post(f"{console.url}/api/login", json={"user": "ops", "password": "correct horse"})
    assert login.status_code == 200 and login.json()["user"] == "ops"
    cookie = {"streamvad_session": login.json()["session"]}
    for path in posts:
        url = console.url + path.replace("{camera_id}", "gate").replace("{event_id}", "e001")
        assert httpx.post(url, json={}).status_code == 401, path
        # the session cookie alone is not enough to change anything: another site could make a browser send it
        assert httpx.post(url, json={}, cookies=cookie).status_code == 401, path
    gets = [p for p, ops in app_routes.items() if "get" in ops and p.startswith("/api/") and "openapi" not in p
            and "docs" not in p]
    for path in gets:
        url = console.url + path.replace("{camera_id}", "gate").replace("{event_id}", "e001").replace(
            "{picture}", "snapshot")
        assert httpx.get(url).status_code == 401, path
    assert httpx.get(f"{console.url}/api/events", cookies=cookie).status_code == 200  # <img> tags use the cookie
    assert httpx.get(f"{console.url}/healthz").status_code in (200, 503)  # health stays open
    assert httpx.get(f"{console.url}/").status_code == 200  # the login page
    assert httpx.post(f"{console.url}/api/login", json={"user": "ops", "password": "nope"}).status_code == 401
    assert httpx.get(f"{console.url}/api/events", headers=_auth("not-the-token-at-all")).status_code == 401


def test_events_page_newest_first_and_filter(console: Console) -> None:
    def page(**params: object) -> dict:
        resp = httpx.get(f"{console.url}/api/events", params=params, headers=_auth())
        assert resp.status_code == 200, resp.text
        return resp.json()

    first, second = page(limit=10), page(limit=10, offset=10)
    assert first["total"] == 31 and [e["id"] for e in first["events"]] == [f"e{i:03d}" for i in range(30, 20, -1)]
    assert [e["id"] for e in second["events"]] == [f"e{i:03d}" for i in range(20, 10, -1)]
    yard = page(camera="yard", limit=100)
    assert yard["total"] == 10 and {e["camera"] for e in yard["events"]} == {"yard"}
    covered = page(type="covered", limit=100)
    assert {e["id"] for e in covered["events"]} == {f"e{i:03d}" for i in (5, 10, 15, 20, 25, 30)}
    window = page(since=1_000_000.0 + 60 * 5, until=1_000_000.0 + 60 * 8, limit=100)
    assert [e["id"] for e in window["events"]] == ["e007", "e006", "e005"]
    reviewed = httpx.post(f"{console.url}/api/events/e007/review", json={"state": "reviewed"}, headers=_auth())
    assert reviewed.status_code == 200
    assert [e["id"] for e in page(review="reviewed")["events"]] == ["e007"]
    assert httpx.get(f"{console.url}/api/events", params={"limit": 0}, headers=_auth()).status_code == 422
    assert httpx.post(f"{console.url}/api/events/e007/review", json={"state": "normal"},
                      headers=_auth()).status_code == 422  # only "mark as normal" makes an event normal
    assert httpx.get(f"{console.url}/api/events/nope", headers=_auth()).status_code == 404


def test_the_exemplar_is_the_training_frame_of_the_peak_patchs_nearest_vector(console: Console) -> None:
    detail = httpx.get(f"{console.url}/api/events/e000", headers=_auth()).json()
    model = NormalityModel.load(console.store / "v0001" / "normality")
    patch = int(console.evidence.patches[0])
    memory = model.train[patch + 1].astype(np.float32)
    row = int(np.argmin(((memory - console.batch.patches[0, patch]) ** 2).sum(1)))
    frame = int(model.frame_of()[patch + 1, row])
    assert detail["exemplar"]["patch"] == patch and detail["exemplar"]["source"] == model.sources[frame]
    assert detail["exemplar"]["version"] == "v0001" and detail["can_mark_normal"]
    picture = httpx.get(console.url + detail["exemplar"]["url"], headers=_auth())
    assert picture.status_code == 200 and picture.content == exemplar_path(console.store / "v0001", frame).read_bytes()
    assert httpx.get(console.url + detail["snapshot_url"], headers=_auth()).headers["content-type"] == "image/jpeg"
    # the model keeps a picture of each training frame its memory has a row of, and no other
    kept = {int(p.stem) for p in (console.store / "v0001" / "exemplars").glob("*.jpg")}
    assert kept == set(np.unique(model.frame_of()).tolist())


def test_an_event_of_a_pruned_version_shows_the_current_versions_exemplar(console: Console) -> None:
    """The store keeps its newest versions only: an event scored by one since pruned (v0000 here) is shown what
    normal looks like at its peak patch in the camera's current version, which the exemplar names."""
    console.db.commit([_event(31, "gate", model_version="v0000")], {}, {}, {"e031": console.evidence})
    pruned = httpx.get(f"{console.url}/api/events/e031", headers=_auth()).json()
    kept = httpx.get(f"{console.url}/api/events/e000", headers=_auth()).json()
    current = ModelStore(console.store).current()
    assert current is not None and pruned["model_version"] == "v0000"
    assert pruned["exemplar"]["version"] == current.name
    assert (pruned["exemplar"]["source"], pruned["exemplar"]["patch"]) == (kept["exemplar"]["source"],
                                                                          kept["exemplar"]["patch"])
    picture = httpx.get(console.url + pruned["exemplar"]["url"], headers=_auth())
    assert picture.status_code == 200 and picture.headers["content-type"] == "image/jpeg"


def test_mark_as_normal_adds_the_sight_to_a_new_version_and_undo_rolls_it_back(console: Console) -> None:
    # a hang guard, not httpx's 5 s: a process that starts with torch builds the version, slower on a busy box
    marked = httpx.post(f"{console.url}/api/events/e000/normal", headers=_auth(), timeout=300)
    assert marked.status_code == 200, marked.text
    assert marked.json()["version"] == "v0002"
    store = ModelStore(console.store)
    current = store.current()
    assert current is not None and current.name == "v0002"
    assert current.record["event"] == "e000" and current.record["previous"] == "v0001"
    engine = load_engine(current.path)  # the rewritten files' hashes are recorded: it loads
    again = engine.scorer.score(console.batch)[0]
    assert console.verdict.anomalous and not again.anomalous
    # the marked patches found themselves in the memory; the frame is left with its ordinary rest
    assert again.patch_confidences[console.evidence.patches].max() < 0.1
    assert console.verdict.patch_confidences[console.evidence.patches].min() > 0.5
    detail = httpx.get(f"{console.url}/api/events/e000", headers=_auth()).json()
    assert detail["review"] == "normal" and detail["marked_version"] == "v0002"
    twice = httpx.post(f"{console.url}/api/events/e000/normal", headers=_auth())
    assert twice.status_code == 409 and "already" in twice.json()["detail"]
    assert store.current().name == "v0002"  # type: ignore[union-attr]
    undone = httpx.post(f"{console.url}/api/events/e000/undo", headers=_auth())
    assert undone.status_code == 200 and undone.json()["version"] == "v0001"
    assert store.current().name == "v0001"  # type: ignore[union-attr]
    assert httpx.get(f"{console.url}/api/events/e000", headers=_auth()).json()["review"] == "unreviewed"
    again_undo = httpx.post(f"{console.url}/api/events/e000/undo", headers=_auth())
    assert again_undo.status_code == 409 and "not the one that marked" in again_undo.json()["detail"]
    fault = httpx.post(f"{console.url}/api/events/e005/normal", headers=_auth())
    assert fault.status_code == 409  # a covered lens is no sight to learn


def _store_of_v0001(console: Console, tmp_path: Path) -> Path:
    """A store of its own for a test that marks: the console's v0001 copied, and current."""
    store = tmp_path / "gate"
    shutil.copytree(console.store / "v0001", store / "v0001")
    ModelStore(store).activate("v0001")
    return store


_WITHOUT_TORCH = """
import json, sys
from pathlib import Path
import numpy as np
from streamvad import feedback
from streamvad.console.exemplar import Exemplars
from streamvad.types import Evidence

store, saved = Path(sys.argv[1]), np.load(sys.argv[2])
evidence = Evidence(saved["patches"], saved["vectors"])
exemplar = Exemplars().nearest(store / "v0001", evidence)
version = feedback.mark_normal(store, evidence, "e000")
loaded = [m for m in ("torch", "sklearn", "scipy", "hdbscan", "chromadb") if m in sys.modules]
print(json.dumps({"source": exemplar["source"], "version": version.name, "loaded": loaded}))
"""


def test_the_console_finds_exemplars_and_marks_normal_without_the_models_libraries(console: Console,
                                                                                   tmp_path: Path) -> None:
    """serve's supervisor, where the console runs, stays small for good: the exemplar is read from the memory's
    files, and a process of its own builds the version an operator's "normal" makes, on torch."""
    store = _store_of_v0001(console, tmp_path)
    saved = tmp_path / "evidence.npz"
    np.savez(saved, patches=console.evidence.patches, vectors=console.evidence.vectors)
    done = subprocess.run([sys.executable, "-c", _WITHOUT_TORCH, str(store), str(saved)], capture_output=True,
                          text=True, timeout=300, check=True)
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["loaded"] == [] and found["version"] == "v0002"
    detail = httpx.get(f"{console.url}/api/events/e000", headers=_auth()).json()
    assert found["source"] == detail["exemplar"]["source"]  # what the console's own process shows
    engine = load_engine(store / "v0002")
    assert not engine.scorer.score(console.batch)[0].anomalous


def test_a_store_that_cannot_be_written_refuses_a_mark_with_one_line(console: Console, tmp_path: Path) -> None:
    store = _store_of_v0001(console, tmp_path)
    (store / ".normal-e000").write_text("in the way")  # where the version is built: a file, not a folder
    with pytest.raises(StreamVADError, match=r"\.normal-e000: cannot write the marked version \(.+\); .*gate stays "
                                             "on v0001") as refused:
        feedback.mark_normal(store, console.evidence, "e000")
    assert "\n" not in str(refused.value)
    assert ModelStore(store).current().name == "v0001"  # type: ignore[union-attr]
    assert [v.name for v in ModelStore(store).versions()] == ["v0001"]


def test_a_mark_that_hangs_is_stopped_and_frees_the_store(console: Console, tmp_path: Path) -> None:
    """A mark whose process never answers (here it waits forever to open a memory file that is a pipe nobody
    writes, as on a stuck disk) is stopped after `store.mark_timeout_s`, and no later writer is kept waiting."""
    store = _store_of_v0001(console, tmp_path)
    memory = store / "v0001" / "normality" / "train.npy"
    os.mkfifo(tmp_path / "stuck")
    memory.unlink()
    memory.symlink_to(tmp_path / "stuck")
    # never reached by a process that cannot finish, whatever the load: a short limit decides nothing here
    with pytest.raises(StreamVADError, match=r"e000 normal took longer than 2 s \(store\.mark_timeout_s\) and was "
                                             r"stopped; .*gate stays on v0001") as stopped:
        feedback.mark_normal(store, console.evidence, "e000", StoreConfig(mark_timeout_s=2))
    assert "\n" not in str(stopped.value)
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("mark-")]
    assert not (store / ".normal-e000").exists()
    assert [v.name for v in ModelStore(store).versions()] == ["v0001"]
    with (store / ".lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free: raises BlockingIOError while a writer holds it


def _waiting_in(thread: threading.Thread, function: str) -> bool:
    """Whether `thread` is now inside `function` (a frame of that name on its stack)."""
    frame = sys._current_frames().get(thread.ident or 0)
    while frame is not None and frame.f_code.co_name != function:
        frame = frame.f_back
    return frame is not None


def test_a_mark_waits_for_the_store_writer_before_it_and_builds_on_its_version(console: Console,
                                                                               tmp_path: Path) -> None:
    """An enrolment makes a new version current while an operator marks an event normal: the mark waits for the
    store's writer and adds to the enrolment's version, instead of adding to the one before and dropping it."""
    store = _store_of_v0001(console, tmp_path)
    models = ModelStore(store)
    marked: list[Version] = []
    mark = threading.Thread(target=lambda: marked.append(feedback.mark_normal(store, console.evidence, "e000")))
    with models.writing():
        mark.start()
        deadline = time.monotonic() + 120  # a hang guard: the thread reaches the lock whatever the load
        while mark.is_alive() and not _waiting_in(mark, "writing") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _waiting_in(mark, "writing")
        shutil.copytree(store / "v0001", store / ".enrolled")  # what an enrolment adds, as the writer
        models.activate(models.add(store / ".enrolled", {"source": "enrolment"}).name)
    mark.join(300)
    assert [v.name for v in marked] == ["v0003"] and marked[0].record["previous"] == "v0002"
    assert models.current().name == "v0003"  # type: ignore[union-attr]


def test_a_mark_made_while_an_enrolment_fits_is_made_again_on_the_enrolled_version(console: Console,
                                                                                  tmp_path: Path) -> None:
    """An operator marks an event normal while an enrolment, begun on v0001, fits. When the enrolment lands, the
    mark is made again on top of it: the sight stays normal, and undo goes back to the enrolled version."""
    store = _store_of_v0001(console, tmp_path)
    models = ModelStore(store)
    assert feedback.mark_normal(store, console.evidence, "e000").name == "v0002"
    fitted = tmp_path / "fitted"  # what the enrolment's fit wrote: here v0001's model, which never saw the sight
    shutil.copytree(store / "v0001", fitted, ignore=shutil.ignore_patterns("version.json"))
    enrolled, [again] = land(models, fitted, {"source": "enrolment"}, "v0001", StoreConfig())
    assert enrolled.name == "v0003" and enrolled.record["previous"] == "v0002"
    assert again.name == "v0004" == models.current().name  # type: ignore[union-attr]
    assert (again.record["event"], again.record["previous"], again.record["carried_from"]) == ("e000", "v0003", "v0002")
    assert load_engine(enrolled.path).scorer.score(console.batch)[0].anomalous
    assert not load_engine(again.path).scorer.score(console.batch)[0].anomalous
    assert feedback.undo(store, "e000").name == "v0003"
    # a mark undone while the next enrolment fits stays undone when it lands
    assert feedback.mark_normal(store, console.evidence, "e001").name == "v0005"
    assert feedback.undo(store, "e001").name == "v0003"
    shutil.copytree(store / "v0001", fitted, ignore=shutil.ignore_patterns("version.json"))
    assert land(models, fitted, {"source": "enrolment"}, "v0003", StoreConfig())[0].name == "v0006"
    assert models.current().name == "v0006"  # type: ignore[union-attr]


def test_cameras_list_detail_and_versions(console: Console) -> None:
    cameras = httpx.get(f"{console.url}/api/cameras", headers=_auth()).json()
    assert [c["id"] for c in cameras] == ["gate", "yard"]
    gate = httpx.get(f"{console.url}/api/cameras/gate", headers=_auth()).json()
    assert gate["store"] and [v["name"] for v in gate["versions"]][:1] == ["v0001"]
    assert "distance/topk" in gate["thresholds"]
    # what decides its alerts, out of every rule the model calibrated
    assert gate["scorer"] == "distance/topk+motion:sum", gate["scorer"]
    parts = gate["scorer_thresholds"]  # each part's 1 on the fusion scale, and the sum's own threshold
    assert list(parts) == ["distance/topk, crowd-corrected", "motion", "sum"]
    assert parts["motion"] == gate["thresholds"]["motion"]
    yard = httpx.get(f"{console.url}/api/cameras/yard", headers=_auth()).json()
    assert not yard["store"] and yard["versions"] == []
    assert httpx.post(f"{console.url}/api/cameras/yard/rollback", headers=_auth()).status_code == 409
    assert httpx.get(f"{console.url}/api/cameras/nope", headers=_auth()).status_code == 404
    assert httpx.get(f"{console.url}/api/cameras/gate/latest.jpg", headers=_auth()).status_code == 404  # no frame yet
    enrol = httpx.post(f"{console.url}/api/cameras/gate/enroll", json={"duration_s": 60}, headers=_auth())
    assert enrol.status_code == 409 and "runs no workers" in enrol.json()["detail"]  # this serve has none
    spec = httpx.get(f"{console.url}/api/openapi.json").json()
    assert {"/api/events/{event_id}/normal", "/api/cameras/{camera_id}/enroll"} <= set(spec["paths"])


def test_a_tile_replaced_while_it_is_served_arrives_whole(console: Console) -> None:
    # the worker replaces a camera's tile (a rename over it) several times a second; each response must be one whole
    # picture, never one picture's length with another's bytes
    pictures = []
    for side, noise in ((320, True), (16, False)):
        image = np.random.default_rng(side).integers(0, 256, (side, side, 3)) if noise else np.zeros((side, side, 3))
        buf = io.BytesIO()
        Image.fromarray(image.astype(np.uint8)).save(buf, "JPEG")
        pictures.append(buf.getvalue())
    tile = MediaLayout(console.store.parent / "media").latest("gate")  # events.media, as the fixture set it
    done = threading.Event()

    def replace_tiles() -> None:
        i = 0
        while not done.is_set():
            _write_atomic(tile, pictures[i % 2])  # as the worker writes its tiles
            i += 1

    _write_atomic(tile, pictures[0])
    writer = threading.Thread(target=replace_tiles, daemon=True)
    writer.start()
    try:
        with httpx.Client(headers=_auth()) as client:
            bodies = [client.get(f"{console.url}/api/cameras/gate/latest.jpg") for _ in range(150)]
    finally:
        done.set()
        writer.join()
        tile.unlink()
    assert all(r.status_code == 200 and r.content in pictures for r in bodies)


def test_old_events_and_their_pictures_are_pruned(tmp_path: Path) -> None:
    db = EventsDB(tmp_path / "events.db")
    picture, sink_snapshot = tmp_path / "old.jpg", tmp_path / "old_opened.jpg"
    old = _event(1, "gate", snapshot=str(picture))
    old.snapshot_paths.append(str(sink_snapshot))
    recent = _event(2, "gate")
    recent.start_wall_time = time.time()
    still_open = _event(3, "gate")
    still_open.state = "open"
    db.commit([old, recent, still_open], {}, {})
    files = db.prune(time.time() - 86400)
    assert files == [str(picture), str(sink_snapshot)]
    assert sorted(r["id"] for r in db.query(EventQuery(limit=10))[0]) == ["e002", "e003"]  # open ones stay
    db.close()


def test_a_disk_short_of_space_loses_its_oldest_closed_events_first(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Under `events.min_free_mb` free on the media disk the oldest closed events and their pictures go first,
    whatever their age; an open event never. A floor that no deletion reaches is logged once and kept for
    /healthz (`short_of_space`), with every closed event gone."""
    from streamvad.live.events_process import EventsProcess

    media = tmp_path / "media"
    media.mkdir()
    events = [_event(i, "gate", snapshot=str(media / f"{i}.jpg")) for i in (3, 1, 2)]
    for event in events:
        Path(event.snapshot or "").write_bytes(b"jpeg")
    still_open = _event(4, "gate")
    still_open.state = "open"

    def process(min_free_mb: float) -> EventsProcess:
        return EventsProcess(StreamVADConfig.model_validate({"events": {
            "database": str(tmp_path / "events.db"), "media": str(media), "min_free_mb": min_free_mb,
            "retention_days": None}}))  # the events started in 1970

    roomy = process(1.0)  # a megabyte is free wherever this runs: nothing goes
    roomy.db.commit([*events, still_open], {}, {})
    roomy.tick()
    assert len(roomy.db.query(EventQuery(limit=10))[0]) == 4 and not roomy.short_of_space
    assert roomy.db.prune_oldest(1) == (1, [str(media / "1.jpg")])  # by start time, not by id or insertion
    roomy.sinks.close()
    roomy.db.close()

    full = process(1e12)
    with caplog.at_level("ERROR", logger="streamvad.live.serve"):
        full.tick()  # checks at once, then once a minute
        full.make_room()
    assert [r["id"] for r in full.db.query(EventQuery(limit=10))[0]] == ["e004"]
    assert sorted(p.name for p in media.glob("*.jpg")) == ["1.jpg"]  # prune_oldest leaves files to its caller
    assert full.short_of_space and full.stats()["short_of_space"]
    assert len([r for r in caplog.records if "min_free_mb" in r.getMessage()]) == 1
    full.sinks.close()
    full.db.close()
