"""The HTTP app `serve` hosts on `serve.http_port`: /healthz and /metrics (open), the API under /api (behind
auth.py), and the console's static pages at /.

The API reads what the other processes write: the events database (SQLite in WAL mode, so reading never
blocks the events process; reviews are the console's only writes there), the pictures under
`events.media`, each camera's model store, and the supervisor's view of its children (ServeState). It
changes a camera's model only through its store (mark as normal, undo, rollback): the camera's worker
notices the new current version and swaps it in, as after an enrolment.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field

from streamvad import feedback
from streamvad.config import CameraConfig, StreamVADConfig
from streamvad.console.auth import COOKIE, Auth
from streamvad.console.exemplar import Exemplars
from streamvad.errors import StreamVADError
from streamvad.live.events_db import REVIEW_STATES, EventQuery, EventsDB, Review
from streamvad.live.health import ServeState, StatusCollector
from streamvad.live.media import MediaLayout
from streamvad.messages import EnrolRequest
from streamvad.model_store import ModelStore, Version

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
Enrol = Callable[[EnrolRequest], tuple[bool, str]]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoginIn(_In):
    user: str | None = Field(None, max_length=128)
    password: str | None = Field(None, max_length=1024)
    token: str | None = Field(None, max_length=1024)


class ReviewIn(_In):
    state: Literal["unreviewed", "reviewed"]


class EnrolIn(_In):
    duration_s: float = Field(gt=0.0, le=7 * 86400.0)


class ActivateIn(_In):
    version: str = Field(pattern=r"^v\d{4,}$")


class EventOut(BaseModel):
    id: str
    type: str
    camera: str
    state: str
    start_pts: float
    end_pts: float | None
    start_wall_time: float
    end_wall_time: float | None
    peak_score: float
    frame_count: int
    model_version: str | None
    review: Review
    reviewed_at: float | None
    snapshot_url: str | None
    heatmap_url: str | None
    clip_url: str | None


class EventPage(BaseModel):
    events: list[EventOut]
    total: int
    limit: int
    offset: int


class Exemplar(BaseModel):
    """The training frame whose patch was nearest the event's peak patch: what normal looks like there."""

    url: str
    source: str
    patch: int
    distance: float
    version: str | None


class EventDetail(EventOut):
    exemplar: Exemplar | None
    can_mark_normal: bool
    marked_version: str | None  # the version that marked it normal, while it is current (undo rolls it back)


class VersionOut(BaseModel):
    name: str
    current: bool
    created_at: float | None
    source: str | None
    event: str | None
    carried_from: str | None  # the version whose mark this one made again, on top of an enrolment that landed after it


class CameraOut(BaseModel):
    id: str
    online: bool
    state: str  # scoring | learning | unknown
    fps: float | None
    model_version: str | None
    enrolment: dict[str, Any] | None
    drift: float | None
    latest_url: str


class CameraDetail(CameraOut):
    versions: list[VersionOut]
    thresholds: dict[str, float]  # every rule the model calibrated
    scorer: str | None  # what decides its alerts ("distance/topk+motion:sum"), and its parts' thresholds
    scorer_thresholds: dict[str, float]
    store: bool


class ActionOut(BaseModel):
    ok: bool
    message: str
    version: str | None = None


_BEARER = HTTPBearer(auto_error=False)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_BEARER)]


def _reader(request: Request, creds: Credentials) -> str:
    """Reads: the bearer header, or the console's session cookie (pictures in <img> tags)."""
    auth: Auth = request.app.state.auth
    who = auth.who(creds.credentials if creds else None) or auth.who(request.cookies.get(COOKIE))
    if who is None:
        raise HTTPException(401, "log in, or send Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})
    return who


def _writer(request: Request, creds: Credentials) -> str:
    """Changes: the bearer header only, which another site cannot make a browser send."""
    who = request.app.state.auth.who(creds.credentials if creds else None)
    if who is None:
        raise HTTPException(401, "changes need Authorization: Bearer <token or session>",
                            headers={"WWW-Authenticate": "Bearer"})
    return who


Reader = Annotated[str, Depends(_reader)]
Writer = Annotated[str, Depends(_writer)]


@dataclass
class Site:
    """What the API serves: the config, the supervisor's view of its children, and a way to start enrolments
    (serve's control handler, run on its main thread)."""

    cfg: StreamVADConfig
    state: ServeState
    enrol: Enrol | None = None


def build_app(state: ServeState, site: Site | None = None, auth: Auth | None = None) -> FastAPI:
    """/healthz and /metrics always; with `site`, the API and the console too (a role without the events
    process serves health alone)."""
    app = FastAPI(title="StreamVAD", openapi_url="/api/openapi.json", docs_url="/api/docs", redoc_url=None)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(state))

    @app.get("/healthz", tags=["health"])
    def healthz() -> JSONResponse:
        ok, body = state.health()
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["health"])
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    if site is not None:
        app.state.auth = auth = auth or Auth(site.cfg.serve.auth)
        app.include_router(_api(site, auth), prefix="/api")
        app.mount("/static", StaticFiles(directory=STATIC), name="static")

        @app.get("/", include_in_schema=False)
        def console() -> HTMLResponse:
            return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))
    return app


def _api(site: Site, auth: Auth) -> APIRouter:
    cfg = site.cfg
    media = MediaLayout(cfg.events.media)
    exemplars = Exemplars()
    local = threading.local()  # one SQLite connection per server thread
    cameras = {c.id: c for c in cfg.cameras}

    def db() -> EventsDB:
        if getattr(local, "db", None) is None:
            local.db = EventsDB(cfg.events.database)
        return local.db

    router = APIRouter()

    def camera_of(camera_id: str) -> CameraConfig:
        if camera_id not in cameras:
            raise HTTPException(404, f"no camera {camera_id!r}")
        return cameras[camera_id]

    def store_of(camera: CameraConfig) -> ModelStore:
        store = _maybe_store(cfg, camera)
        if store is None:
            raise HTTPException(409, f"camera {camera.id}'s model is not a model store (cameras.{camera.id}.model); "
                                     "enrol it to give it versions")
        return store

    def nearest_of(row: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
        """(the event's nearest normal exemplar, if its model keeps exemplars; whether it has evidence). When the
        version that scored it has been pruned, the camera's current version shows what normal looks like there
        (the exemplar names its version)."""
        camera, evidence = cameras.get(row["camera"]), db().evidence(row["id"])
        if camera is None or evidence is None:
            return None, evidence is not None
        model = _version_dir(cfg, camera, row["model_version"])
        if model is None and (store := _maybe_store(cfg, camera)) is not None:
            model = current.path if (current := store.current()) is not None else None
        return exemplars.nearest(model, evidence), True

    def row_of(event_id: str) -> dict[str, Any]:
        row = db().event(event_id)
        if row is None:
            raise HTTPException(404, f"no event {event_id!r}")
        return row

    def event_out(row: dict[str, Any]) -> dict[str, Any]:
        base = f"/api/events/{row['id']}"
        urls = {f"{k}_url": (f"{base}/{k}.{ext}" if row[k] else None)
                for k, ext in (("snapshot", "jpg"), ("heatmap", "jpg"), ("clip", "mp4"))}
        return {k: v for k, v in row.items() if k in EventOut.model_fields} | urls

    @router.post("/login", tags=["auth"])
    def login(body: LoginIn, response: Response) -> dict[str, str]:
        found = auth.login(body.user, body.password, body.token)
        if found is None:
            time.sleep(0.5)  # slows guessing; scrypt already costs ~50 ms a try
            raise HTTPException(401, "wrong user, password or token")
        session, who = found
        response.set_cookie(COOKIE, session, httponly=True, samesite="strict", max_age=int(auth.session_s))
        return {"session": session, "user": who}

    @router.post("/logout", tags=["auth"])
    def logout(creds: Credentials, response: Response) -> dict[str, bool]:
        if creds is not None:
            auth.logout(creds.credentials)
        response.delete_cookie(COOKIE)
        return {"ok": True}

    @router.get("/cameras", tags=["cameras"])
    def list_cameras(_: Reader) -> list[CameraOut]:
        live = site.state.cameras()
        return [CameraOut(**_camera_status(c.id, live.get(c.id, {}))) for c in cfg.cameras]

    @router.get("/cameras/{camera_id}", tags=["cameras"])
    def camera_detail(camera_id: str, _: Reader) -> CameraDetail:
        camera = camera_of(camera_id)
        store = _maybe_store(cfg, camera)
        current = store.current() if store is not None else None
        versions = [VersionOut(name=v.name, current=current is not None and v.name == current.name,
                               created_at=v.created_at, source=v.record.get("source"), event=v.record.get("event"),
                               carried_from=v.record.get("carried_from"))
                    for v in (store.versions() if store is not None else [])]
        model = current.path if current is not None else _version_dir(cfg, camera, None)
        thresholds, scorer, parts = ({}, None, {}) if model is None else exemplars.scoring(model, cfg.served_scoring)
        return CameraDetail(**_camera_status(camera_id, site.state.cameras().get(camera_id, {})), versions=versions,
                            thresholds=thresholds, scorer=scorer, scorer_thresholds=parts, store=store is not None)

    @router.get("/cameras/{camera_id}/latest.jpg", tags=["cameras"])
    def latest(camera_id: str, _: Reader) -> Response:
        """Read whole, not streamed from the path: the worker replaces the tile several times a second, and a
        FileResponse sizes the file, then opens the path again to send it, so a replace in between sent a short
        or a long body (uvicorn: "Response content shorter than Content-Length")."""
        camera_of(camera_id)
        try:
            picture = media.latest(camera_id).read_bytes()
        except FileNotFoundError:
            raise HTTPException(404, "no frame from this camera yet") from None
        return Response(picture, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @router.post("/cameras/{camera_id}/enroll", tags=["cameras"])
    def enroll(camera_id: str, body: EnrolIn, _: Writer) -> ActionOut:
        camera_of(camera_id)
        if site.enrol is None:
            raise HTTPException(409, "this serve runs no workers; enrol through the worker role's serve")
        ok, message = site.enrol(EnrolRequest(type="enrol", camera=camera_id, duration_s=body.duration_s))
        if not ok:
            raise HTTPException(409, message)
        return ActionOut(ok=True, message=message)

    @router.post("/cameras/{camera_id}/rollback", tags=["cameras"])
    def rollback(camera_id: str, _: Writer) -> ActionOut:
        version = _store_action(lambda: _as_writer(store_of(camera_of(camera_id)), ModelStore.rollback))
        return ActionOut(ok=True, message=f"{camera_id} now on {version.name}", version=version.name)

    @router.post("/cameras/{camera_id}/activate", tags=["cameras"])
    def activate(camera_id: str, body: ActivateIn, _: Writer) -> ActionOut:
        version = _store_action(lambda: _as_writer(store_of(camera_of(camera_id)), ModelStore.activate, body.version))
        return ActionOut(ok=True, message=f"{camera_id} now on {version.name}", version=version.name)

    @router.get("/events", tags=["events"])
    def list_events(_: Reader, camera: str | None = None, type: str | None = None,
                    review: Annotated[Literal[REVIEW_STATES] | None, Query()] = None,  # type: ignore[valid-type]
                    since: float | None = None, until: float | None = None,
                    limit: Annotated[int, Query(ge=1, le=500)] = 50,
                    offset: Annotated[int, Query(ge=0)] = 0) -> EventPage:
        rows, total = db().query(EventQuery(camera, type, review, since, until, limit, offset))
        return EventPage(events=[EventOut(**event_out(r)) for r in rows], total=total, limit=limit, offset=offset)

    @router.get("/events/{event_id}", tags=["events"])
    def event_detail(event_id: str, _: Reader) -> EventDetail:
        row = row_of(event_id)
        camera = cameras.get(row["camera"])
        nearest, has_evidence = nearest_of(row)
        marked = None
        if camera is not None and (store := _maybe_store(cfg, camera)) is not None:
            current = store.current()
            marked = current.name if current is not None and current.record.get("event") == event_id else None
        exemplar = None if nearest is None else Exemplar(url=f"/api/events/{event_id}/exemplar.jpg", **nearest)
        return EventDetail(**event_out(row), exemplar=exemplar, marked_version=marked,
                           can_mark_normal=has_evidence and row["type"] == "anomaly")

    @router.get("/events/{event_id}/{picture}.jpg", tags=["events"])
    def picture(event_id: str, picture: Literal["snapshot", "heatmap", "exemplar"], _: Reader) -> FileResponse:
        row = row_of(event_id)
        if picture != "exemplar":
            return _file(Path(row[picture]) if row[picture] else None, "image/jpeg", f"no {picture} for this event")
        nearest, _ = nearest_of(row)
        return _file(None if nearest is None else nearest["path"], "image/jpeg", "no exemplar for this event")

    @router.get("/events/{event_id}/clip.mp4", tags=["events"])
    def clip(event_id: str, _: Reader) -> FileResponse:
        row = row_of(event_id)
        return _file(Path(row["clip"]) if row["clip"] else None, "video/mp4",
                     "no clip for this event (still recording, or clips are off)")

    @router.post("/events/{event_id}/review", tags=["events"])
    def review(event_id: str, body: ReviewIn, who: Writer) -> ActionOut:
        row_of(event_id)
        db().set_review(event_id, body.state)
        log.info("console: %s marked event %s %s", who, event_id, body.state)
        return ActionOut(ok=True, message=f"event {event_id} {body.state}")

    @router.post("/events/{event_id}/normal", tags=["events"])
    def mark_normal(event_id: str, who: Writer) -> ActionOut:
        row = row_of(event_id)
        evidence = db().evidence(event_id)
        if evidence is None or row["type"] != "anomaly":
            raise HTTPException(409, "this event has no evidence to add (a camera fault, or an event from before "
                                     "evidence was kept)")
        if row["review"] == "normal":  # a second click, or a second operator: the sight is in the model already
            raise HTTPException(409, f"event {event_id} is marked normal already; undo that first")
        store = store_of(camera_of(row["camera"]))
        version = _store_action(lambda: feedback.mark_normal(store.root, evidence, event_id, cfg.store))
        db().set_review(event_id, "normal")
        log.info("console: %s marked event %s normal: %s is %s", who, event_id, row["camera"], version.name)
        return ActionOut(ok=True, message=f"{row['camera']} now on {version.name}, which knows this sight",
                         version=version.name)

    @router.post("/events/{event_id}/undo", tags=["events"])
    def undo(event_id: str, who: Writer) -> ActionOut:
        row = row_of(event_id)
        store = store_of(camera_of(row["camera"]))
        version = _store_action(lambda: feedback.undo(store.root, event_id))
        db().set_review(event_id, "unreviewed")
        log.info("console: %s undid marking event %s normal: %s is back on %s", who, event_id, row["camera"],
                 version.name)
        return ActionOut(ok=True, message=f"{row['camera']} back on {version.name}", version=version.name)

    return router


def _camera_status(camera_id: str, live: dict[str, Any]) -> dict[str, Any]:
    return {"id": camera_id, "online": bool(live.get("online")), "state": live.get("model", "unknown"),
            "fps": live.get("fps_in"), "model_version": live.get("model_version"), "enrolment": live.get("enrolment"),
            "drift": live.get("drift"), "latest_url": f"/api/cameras/{camera_id}/latest.jpg"}


def _model_root(cfg: StreamVADConfig, camera: CameraConfig) -> Path | None:
    """The camera's model directory or store, as configured (cameras[].model, else model_dir)."""
    root = camera.model or cfg.model_dir
    return None if root is None else Path(root)


def _maybe_store(cfg: StreamVADConfig, camera: CameraConfig) -> ModelStore | None:
    root = _model_root(cfg, camera)
    if root is None or not root.is_dir():
        return None
    store = ModelStore(root)
    return store if store.is_store() else None


def _version_dir(cfg: StreamVADConfig, camera: CameraConfig, version: str | None) -> Path | None:
    """The model directory that scored an event: its version in the camera's store, else the camera's model (a
    plain model directory); None for a store without that version."""
    root = _model_root(cfg, camera)
    if root is None:
        return None
    if version is not None and (root / version).is_dir():
        return root / version
    return root if ModelStore(root).is_plain_model() else None


def _as_writer(store: ModelStore, action: Callable[..., Version], *args: str) -> Version:
    """`action(store, *args)` as the store's one writer (`ModelStore.writing`)."""
    with store.writing():
        return action(store, *args)


def _store_action(action: Callable[[], Any]) -> Any:
    try:
        return action()
    except StreamVADError as err:
        raise HTTPException(409, str(err)) from None


def _file(path: Path | None, media_type: str, missing: str) -> FileResponse:
    if path is None or not path.is_file():
        raise HTTPException(404, missing)
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-store"})


