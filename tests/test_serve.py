"""`streamvad serve` end to end: a real loopback RTSP server, the real CLI in a subprocess, a real webhook
receiver, and /healthz + /metrics over real HTTP. Faults: camera server killed and restarted, receiver
down and back, a reader process killed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
import zmq

from streamvad.bench.throughput import PLACE, free_tcp_endpoint
from streamvad.config import TransportConfig
from streamvad.console.server import ConsoleServer
from streamvad.datasets.synthetic import AnomalySpec, make_scene
from streamvad.live.health import Buckets, ServeState
from streamvad.transport import FramePuller, encode_status
from tests import procs
from tests.receiver import WebhookReceiver
from tests.rtsp_server import RTSPTestServer, free_port, gstreamer_missing
from tests.test_worker import tiny_model

__all__ = ["tiny_model"]

SECRET = "s3cret-for-tests"
ANOMALY_AT = 8.0  # seconds into the RTSP clip


# --------------------------------------------------------------------------- health endpoint (no processes)


def _get(url: str) -> httpx.Response:
    return httpx.get(url, timeout=5.0)


def test_healthz_and_metrics_reflect_child_reports() -> None:
    state = ServeState(stale_after_s=60)
    server = ConsoleServer(state, port=0).start()
    try:
        assert _get(f"{server.url}/healthz").status_code == 503  # nothing reported yet
        for role, name, process in (("worker", "worker-0", "worker-0"), ("reader", "cam1", "reader-cam1"),
                                    ("events", "events", "events")):
            state.expect(role, name, process)
            state.set_process(process, alive=True, pid=1, restarts=0)
        latency = Buckets((0.1, 1.0))
        latency.observe(0.05)
        latency.observe(0.5)
        state.update({"camera": "worker-0", "role": "worker", "state": "ready", "frames_in": {"cam1": 7},
                      "frames_out": {"cam1": 7}, "anomalous": {"cam1": 2}, "latency_s": latency.as_dict(),
                      "batch_size": Buckets((1, 4)).as_dict(), "unacked": 3, "unacked_bytes": 90_000, "lost": 1})
        state.update({"camera": "cam1", "role": "reader", "state": "running", "online": False, "frames_in": 30,
                      "frames_dropped": 3, "reconnects": 1, "sent": 9, "last_error": "EOF"})
        resp = _get(f"{server.url}/healthz")
        assert resp.status_code == 503 and resp.json()["cameras"]["cam1"]["last_error"] == "EOF"
        state.update({"camera": "cam1", "role": "reader", "state": "running", "online": True, "frames_in": 40,
                      "frames_dropped": 3, "reconnects": 1, "sent": 12})
        state.update({"camera": "events", "role": "events", "events": {"cam1": {"opened": 1}}, "sink_errors": 3,
                      "late": {"cam1": 4}, "restarts": {"cam1": 1}, "suppressed": {},
                      "webhooks": {"http://h/hook": {"delivered": 1, "retries": 2, "failures": 2, "dead": 0,
                                                     "pending": 1}}})
        resp = _get(f"{server.url}/healthz")
        assert resp.status_code == 200 and resp.json()["workers"] == {"worker-0": "ready"}
        metrics = _get(f"{server.url}/metrics").text
        for line in ('streamvad_worker_frames_out_total{camera="cam1",worker="worker-0"} 7.0',
                     'streamvad_frames_dropped_total{camera="cam1"} 3.0',
                     'streamvad_reader_reconnects_total{camera="cam1"} 1.0',
                     'streamvad_camera_online{camera="cam1"} 1.0',
                     'streamvad_frame_to_verdict_seconds_bucket{le="0.1",worker="worker-0"} 1.0',
                     'streamvad_frame_to_verdict_seconds_count{worker="worker-0"} 2.0',
                     'streamvad_webhook_retries_total{url="http://h/hook"} 2.0',
                     'streamvad_webhook_pending{url="http://h/hook"} 1.0',
                     'streamvad_events_total{camera="cam1",kind="opened"} 1.0',
                     'streamvad_verdicts_late_total{camera="cam1"} 4.0',
                     'streamvad_stream_restarts_total{camera="cam1"} 1.0',
                     'streamvad_sink_errors_total{process="events"} 3.0',
                     'streamvad_worker_link_unacked_bytes{worker="worker-0"} 90000.0',
                     'streamvad_worker_link_lost_total{worker="worker-0"} 1.0'):
            assert line in metrics, line
        for name in ("streamvad_batch_size_bucket", "streamvad_embed_seconds", "streamvad_score_seconds",
                     "streamvad_webhook_delivered_total", "streamvad_webhook_failures_total",
                     "streamvad_worker_queue_depth"):
            assert name in metrics, name
        state.set_process("worker-0", alive=False, pid=1, restarts=0)  # worker died: unhealthy
        assert _get(f"{server.url}/healthz").status_code == 503
    finally:
        server.close()


def test_healthz_is_503_with_the_reason_in_each_unhealthy_state() -> None:
    """Each state over real HTTP: a worker loading, stalled or dead, the events process down, crash-looping, not
    reporting, with a failing sink or short of disk, a status from an unknown process; one of two workers dead is
    degraded."""
    state = ServeState(stale_after_s=60)
    server = ConsoleServer(state, port=0).start()

    def healthz() -> tuple[int, dict[str, Any]]:
        resp = _get(f"{server.url}/healthz")
        return resp.status_code, resp.json()

    def worker(name: str, status: str) -> None:
        state.update({"camera": name, "role": "worker", "state": status, "cameras": {}})

    def events(**fields: Any) -> None:
        state.update({"camera": "events", "role": "events", "state": "running", **fields})

    try:
        for role, name, process in (("worker", "worker-0", "worker-0"), ("worker", "worker-1", "worker-1"),
                                    ("reader", "cam1", "reader-cam1"), ("events", "events", "events")):
            state.expect(role, name, process)
            state.set_process(process, alive=True, pid=1, restarts=0)
        state.update({"camera": "cam1", "role": "reader", "state": "running", "online": True})
        events()
        worker("worker-0", "loading")
        worker("worker-1", "loading")
        code, body = healthz()
        assert code == 503 and body["reasons"] == ["worker-0 loading", "worker-1 loading"]
        worker("worker-0", "ready")
        worker("worker-1", "ready")
        assert healthz()[0] == 200 and healthz()[1]["status"] == "ok"
        state.set_process("worker-1", alive=False, pid=1, restarts=1)  # one shard of two dead: degraded
        code, body = healthz()
        assert (code, body["status"], body["workers"]) == (200, "degraded", {"worker-0": "ready", "worker-1": "dead"})
        state.set_process("worker-0", alive=False, pid=1, restarts=1)
        assert healthz()[0] == 503
        for name in ("worker-0", "worker-1"):
            state.set_process(name, alive=True, pid=2, restarts=1)
        worker("worker-0", "loading")  # restarted, still loading its models
        assert healthz()[1]["reasons"] == ["worker-0 loading"] and healthz()[0] == 200  # worker-1 carries on
        worker("worker-0", "ready")
        state.update({"camera": "worker-1", "role": "worker", "state": "ready", "pending": 4, "idle_s": 61.0})
        assert healthz()[1]["workers"] == {"worker-0": "ready", "worker-1": "stalled"}  # a hung forward pass
        worker("worker-1", "ready")

        full = "OSError: [Errno 28] No space left on device"
        events(failing_sinks={"JsonlSink": full})
        code, body = healthz()
        assert code == 503 and body["reasons"] == [f"sink JsonlSink failing: {full}"]
        events(short_of_space=True)
        code, body = healthz()
        assert code == 503 and body["reasons"] == ["media disk below events.min_free_mb with no closed event left to "
                                                   "delete"]
        events()
        state.set_process("events", alive=False, pid=1, restarts=1, failures=1)
        assert healthz()[1]["reasons"] == ["events process down (restarting)"]
        state.set_process("events", alive=True, pid=3, restarts=3, failures=3)
        code, body = healthz()
        assert code == 503 and body["reasons"] == ["events process crash-looping (3 crashes in a row, 3 restarts)"]
        state.set_process("events", alive=True, pid=3, restarts=3, failures=0)
        assert healthz()[0] == 200

        state.update({"camera": "worker-7", "role": "worker", "state": "ready", "cameras": {"cam9": "scoring"}})
        code, body = healthz()
        assert code == 503 and body["reasons"] == ["status from unknown process worker-7 (role worker)"]
        assert "worker-7" not in body["workers"] and "cam9" not in body["cameras"]  # refused, not listed
        assert "streamvad_status_unknown_total 1.0" in _get(f"{server.url}/metrics").text
    finally:
        server.close()

    stale = ServeState(stale_after_s=0.01)
    stale.expect("events", "events", "events")
    stale.set_process("events", alive=True, pid=1, restarts=0)
    stale.update({"camera": "events", "role": "events", "state": "running"})
    time.sleep(0.05)
    assert stale.events_problems() == ["events process not reporting"]


# --------------------------------------------------------------------------- serve as a subprocess


class PlayClock:
    """A loopback TCP proxy in front of the RTSP server that notes when each PLAY request goes through.

    The server starts pacing its clip when PLAY arrives, so a frame at stream time t is published no
    earlier than PLAY + t: measuring latency from there can only overstate it.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.plays: list[float] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client and data.startswith(b"PLAY "):
                    self.plays.append(time.time())
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                s.close()

    def close(self) -> None:
        self._listener.close()


def serve_config(tmp_path: Path, model: Path, cameras: list[dict[str, Any]], webhook_port: int,
                 http_port: int, **sections: dict[str, Any]) -> Path:
    doc = {
        "model_dir": str(model),
        "backbone": {"device": "cpu"},
        # a walker covers a few patches, so the top patches decide, not a majority; on the test model normal
        # frames score below ~2.1 and frames with a walker on the lawn above ~4.5
        "scoring": {"method": "knnn", "rule": "topk", "frame_threshold": 3.0},
        "cameras": cameras,
        "transport": {"frames": free_tcp_endpoint(), "verdicts": free_tcp_endpoint(),
                      "status": free_tcp_endpoint(), "policy": "drop", "insecure": True},  # CURVE: test_roles
        "events": {"open_n": 2, "open_m": 4, "close_quiet_s": 1.0, "cooldown_s": 30.0},
        "worker": {"max_age_s": None},  # pinned: a busy machine must not shed the frames the test waits for
        "sinks": {"webhooks": [{"url": f"http://127.0.0.1:{webhook_port}/hook", "secret": "${WEBHOOK_SECRET}",
                                "backoff_s": 0.2, "backoff_max_s": 1.0}],
                  "jsonl": str(tmp_path / "events.jsonl"), "snapshots": str(tmp_path / "snapshots"),
                  "spool": str(tmp_path / "spool")},
        "serve": {"http_port": http_port, "restart_backoff_s": 0.5, "stale_after_s": 3.0},
    }
    for name, fields in sections.items():  # a test's changes to one section's fields
        doc[name] = {**doc.get(name, {}), **fields}
    path = tmp_path / "live.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


class Serve:
    """`python -m streamvad serve` in a subprocess, with its /healthz and /metrics."""

    def __init__(self, config: Path, http_port: int, log: Path) -> None:
        self.base = f"http://127.0.0.1:{http_port}"
        self.log = log
        env = {**os.environ, "WEBHOOK_SECRET": SECRET}
        self.proc = subprocess.Popen([sys.executable, "-m", "streamvad", "serve", "--config", str(config)],
                                     stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)

    def health(self) -> tuple[int, dict[str, Any]]:
        try:
            r = _get(f"{self.base}/healthz")
        except httpx.HTTPError:
            return 0, {}
        return r.status_code, r.json()

    def metric(self, prefix: str) -> float:
        lines = [ln for ln in _get(f"{self.base}/metrics").text.splitlines() if ln.startswith(prefix)]
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)

    def wait(self, what: str, cond: Callable[[dict[str, Any]], bool], timeout_s: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"serve exited early:\n{self.log.read_text()[-3000:]}"
            _code, body = self.health()
            if body and cond(body):
                return body
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


@pytest.fixture
def serve_factory(tmp_path: Path, tiny_model: Path) -> Iterator[Callable[..., Serve]]:
    started: list[Serve] = []

    def start(cameras: list[dict[str, Any]], webhook_port: int, **sections: dict[str, Any]) -> Serve:
        http_port = free_port()
        config = serve_config(tmp_path, tiny_model, cameras, webhook_port, http_port, **sections)
        started.append(Serve(config, http_port, tmp_path / "serve.log"))
        return started[-1]

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait(10)


def _camera(body: dict[str, Any], cam: str) -> dict[str, Any]:
    return body.get("cameras", {}).get(cam) or {}  # {} too while serve does not answer


@pytest.fixture(scope="module")
def anomaly_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Normal for ANOMALY_AT seconds, then a person walks across the lawn."""
    return make_scene(tmp_path_factory.mktemp("clips"), seconds=30, fps=10, size=(120, 160), seed=11,
                      place_seed=PLACE, anomalies=[AnomalySpec("lawn_walker", ANOMALY_AT, 30.0, seed=2)],
                      name="anomaly").path


@pytest.fixture(scope="module")
def looped_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An 8 s clip with a walker on the lawn in seconds 2-6, looped by the second camera."""
    return make_scene(tmp_path_factory.mktemp("clips"), seconds=8, fps=10, size=(120, 160), seed=12,
                      place_seed=PLACE, anomalies=[AnomalySpec("lawn_walker", 2.0, 6.0, seed=3)], name="looped").path


def _skip_without_rtsp() -> None:
    reason = gstreamer_missing()
    if reason:
        pytest.skip(reason)


def test_a_second_serve_on_the_default_sockets_exits_with_one_line(tiny_model: Path, tmp_path: Path) -> None:
    """Two `serve`s with the default ipc:// endpoints on one host: the second is told, where ZeroMQ would have let
    it take the first one's status reports (and, next, its control requests and frames)."""
    config = serve_config(tmp_path, tiny_model, [{"id": "gate", "url": "gate.mp4"}], free_port(), free_port())
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    doc["transport"] = {"insecure": True}  # every endpoint at its default, in this test's runtime directory
    config.write_text(yaml.safe_dump(doc), encoding="utf-8")
    first = FramePuller(TransportConfig().status)  # the first serve's status socket, as serve binds it
    try:
        second = subprocess.run([sys.executable, "-m", "streamvad", "serve", "--config", str(config)],
                                capture_output=True, text=True, timeout=120,
                                env={**os.environ, "WEBHOOK_SECRET": SECRET})
    finally:
        first.close()
    assert second.returncode == 2 and "Traceback" not in second.stderr, second.stderr[-3000:]
    assert f"cannot bind {TransportConfig().status}: another process listens there" in second.stderr.strip()
    assert second.stderr.strip().count("\n") == 0


@pytest.mark.slow
def test_children_stop_when_serve_is_killed_9(serve_factory: Callable[..., Serve], looped_clip: Path) -> None:
    """serve killed without a word (kill -9, the OOM killer): its reader, worker and events processes stop within
    seconds instead of reading the camera on, holding its session and their sockets, forever. Before that, only
    the worker has torch loaded: serve itself (supervisor, console, /healthz), the reader and the events process
    never embed a frame, and torch would cost each of them seconds of start and hundreds of MB."""
    with WebhookReceiver(secret=SECRET) as receiver:
        serve = serve_factory([{"id": "gate", "url": str(looped_clip), "loop": True, "realtime": True}],
                              receiver.port)
        serve.wait("camera online", lambda b: _camera(b, "gate").get("online", False), 120)
        children = procs.children(serve.proc.pid)
        assert len(children) >= 3, children  # reader, worker, events (and multiprocessing's resource tracker)
        assert sum(procs.maps(pid, "libtorch") for pid in children) == 1, children
        assert not procs.maps(serve.proc.pid, "libtorch")
        serve.proc.kill()
        serve.proc.wait(10)
        deadline = time.monotonic() + 60  # 1 s to notice, then the usual shutdown; a hang guard
        while time.monotonic() < deadline and any(map(procs.alive, children)):
            time.sleep(0.2)
    assert not [name for pid, name in children.items() if procs.alive(pid)], serve.log.read_text()[-3000:]
    assert "is gone; stopping" in serve.log.read_text()


@pytest.mark.parametrize(("module", "spared"), [
    ("streamvad.live.serve", ("torch", "sklearn", "scipy", "chromadb")),  # the supervisor, console and /healthz
    ("streamvad.normality.model", ("chromadb",)),  # what a worker serves from: it never reads the Chroma record
])
def test_serving_code_imports_no_library_it_does_not_use(module: str, spared: tuple[str, ...]) -> None:
    """Each library costs every process that imports it seconds of CPU at start and tens to hundreds of MB (torch
    and Chroma's client were in serve's supervisor until they moved to where they are used)."""
    code = f"import sys, {module}; print(','.join(m for m in {spared!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "", f"{module} imports {done.stdout.strip()}"


@pytest.mark.slow
def test_rtsp_anomaly_reaches_signed_webhook_within_5s(serve_factory: Callable[..., Serve], anomaly_clip: Path,
                                                        tmp_path: Path) -> None:
    _skip_without_rtsp()
    rtsp = RTSPTestServer(anomaly_clip)
    rtsp.start()
    clock = PlayClock(rtsp.port)
    try:
        with WebhookReceiver(secret=SECRET) as receiver:
            serve = serve_factory([{"id": "gate", "url": f"rtsp://127.0.0.1:{clock.port}/cam"}], receiver.port)
            serve.wait("camera online", lambda b: _camera(b, "gate").get("online", False), 120)
            hooks = receiver.wait_for(1, timeout=ANOMALY_AT + 15)
            arrived = time.time()  # wait_for polls every 20 ms
            assert hooks, f"no webhook:\n{serve.log.read_text()[-3000:]}"
            first = hooks[0]
            assert first.signature_ok and first.headers.get("Idempotency-Key")
            body = first.json
            assert body["camera"] == "gate" and body["kind"] == "opened"
            assert body["start_pts"] >= ANOMALY_AT - 0.5  # the anomaly, not a false alarm before it
            assert len(clock.plays) == 1  # one uninterrupted playback: its clock is the stream's
            latency = arrived - (clock.plays[0] + ANOMALY_AT)
            print(f"anomaly published -> webhook received: {latency:.2f} s")
            assert latency < 5.0
            assert serve.stop() == 0
        lines = [json.loads(ln) for ln in (tmp_path / "events.jsonl").read_text().splitlines()]
        assert lines[0]["kind"] == "opened" and lines[-1]["kind"] == "closed"  # shutdown closed the event
        assert any((tmp_path / "snapshots").rglob("*.jpg"))
    finally:
        clock.close()
        rtsp.stop()


@pytest.mark.slow
def test_faults_rtsp_restart_receiver_outage_and_reader_crash(serve_factory: Callable[..., Serve],
                                                             anomaly_clip: Path, looped_clip: Path) -> None:
    """Camera server dies and returns: its reader reconnects while the other camera is scored throughout;
    events raised while the receiver is down are delivered once it is back; a killed reader is restarted
    without touching the worker."""
    _skip_without_rtsp()
    rtsp = RTSPTestServer(anomaly_clip)
    rtsp.start()
    receiver = WebhookReceiver(secret=SECRET, port=free_port())  # not started: the receiver is down
    serve = serve_factory([{"id": "gate", "url": rtsp.url},
                           {"id": "yard", "url": str(looped_clip), "loop": True, "realtime": True}], receiver.port)
    try:
        serve.wait("both cameras online", lambda b: all(_camera(b, c).get("online") for c in ("gate", "yard")), 120)
        rtsp.stop()
        serve.wait("gate offline", lambda b: not _camera(b, "gate").get("online", True), 30)
        yard_before = serve.metric('streamvad_worker_frames_out_total{camera="yard"')
        time.sleep(2.0)
        assert serve.metric('streamvad_worker_frames_out_total{camera="yard"') > yard_before  # still scored
        rtsp.start()
        body = serve.wait("gate reconnected", lambda b: _camera(b, "gate").get("online")
                          and _camera(b, "gate").get("reconnects", 0) >= 1, 60)
        assert body["processes"]["reader-gate"]["restarts"] == 0  # the reader reconnected by itself

        serve.wait("a delivery failed", lambda _b: serve.metric("streamvad_webhook_failures_total") > 0, 30)
        receiver.start()
        hooks = receiver.wait_for(1, timeout=20)  # the yard's event waited in the spool
        assert hooks and hooks[0].signature_ok and hooks[0].json["camera"] == "yard"

        worker_pid = body["processes"]["worker-0"]["pid"]
        os.kill(body["processes"]["reader-yard"]["pid"], signal.SIGKILL)
        body = serve.wait("yard reader restarted", lambda b: b["processes"]["reader-yard"]["restarts"] == 1
                          and b["processes"]["reader-yard"]["alive"], 30)
        assert body["processes"]["worker-0"]["pid"] == worker_pid and body["processes"]["worker-0"]["restarts"] == 0
        assert serve.stop() == 0
    finally:
        receiver.stop()
        rtsp.stop()


@pytest.mark.slow
def test_kill_9_of_the_events_process_mid_incident_gives_one_event_delivered_once(
        serve_factory: Callable[..., Serve], anomaly_clip: Path, tmp_path: Path) -> None:
    """The events process is killed (SIGKILL) while the walker is on the lawn; the supervisor restarts it. The
    worker resends what was not committed, the restarted process resumes the open event: one event, opened
    once and closed once, whose deliveries reach the receiver once per key (repeats are marked as such)."""
    with WebhookReceiver(secret=SECRET) as receiver:
        serve = serve_factory([{"id": "gate", "url": str(anomaly_clip), "realtime": True}], receiver.port)
        body = serve.wait("camera online", lambda b: _camera(b, "gate").get("online", False), 120)
        assert receiver.wait_for(1, timeout=ANOMALY_AT + 20), f"no webhook:\n{serve.log.read_text()[-3000:]}"
        os.kill(serve.health()[1]["processes"]["events"]["pid"], signal.SIGKILL)
        serve.wait("events restarted", lambda b: b["processes"]["events"]["restarts"] == 1
                   and b["processes"]["events"]["alive"], 30)
        assert serve.proc.wait(90) == 0  # the clip ends: readers, workers (all acknowledged), events stop
    hooks = [r for r in receiver.accepted() if not r.duplicate]
    assert len({r.headers["Idempotency-Key"] for r in hooks}) == len(hooks)
    assert {r.json["id"] for r in hooks} == {hooks[0].json["id"]}, [r.json for r in hooks]
    kinds = [r.json["kind"] for r in hooks]
    assert kinds.count("opened") == 1 and kinds.count("closed") == 1 and kinds[-1] == "closed", kinds
    lines = [json.loads(ln) for ln in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert {ln["id"] for ln in lines} == {hooks[0].json["id"]}
    assert body["processes"]["worker-0"]["restarts"] == 0
    assert "resumed 1 open event(s)" in serve.log.read_text()


@pytest.mark.slow
def test_serve_healthz_503_on_an_events_crash_loop_and_on_a_status_from_an_unknown_process(
        serve_factory: Callable[..., Serve], looped_clip: Path, tmp_path: Path) -> None:
    """Real processes. The webhook spool is a path under a regular file (unwritable even as root, unlike a
    chmod): the events process fails at start, again and again, and /healthz says so. A forged worker report on
    the (insecure) status channel is refused, counted, and makes /healthz unavailable while it lasts."""
    (tmp_path / "not-a-dir").write_text("x")
    with WebhookReceiver(secret=SECRET) as receiver:
        serve = serve_factory([{"id": "yard", "url": str(looped_clip), "loop": True, "realtime": True}],
                              receiver.port, sinks={"spool": str(tmp_path / "not-a-dir" / "spool")})
        body = serve.wait("events crash-looping, worker ready", lambda b: b.get("workers") == {"worker-0": "ready"}
                          and any("crash-looping" in r for r in b.get("reasons", [])), 90)
        assert serve.health()[0] == 503 and body["status"] == "unavailable"
        assert "not-a-dir/spool" in serve.log.read_text()  # the cause, named in the log

    status = yaml.safe_load((tmp_path / "live.yaml").read_text())["transport"]["status"]
    forger = zmq.Context.instance().socket(zmq.PUSH)
    forger.connect(status)
    try:
        for _ in range(20):
            forger.send_multipart(encode_status("worker-9", "ready", role="worker", cameras={"ghost": "scoring"}))
            time.sleep(0.1)
        body = serve.wait("the forged report refused", lambda b: "status from unknown process worker-9 (role worker)"
                          in b.get("reasons", []), 20)
        assert "worker-9" not in body["workers"] and "ghost" not in body["cameras"]
        assert serve.metric("streamvad_status_unknown_total") >= 1
    finally:
        forger.close(0)
        serve.stop()


@pytest.mark.slow
def test_a_learning_camera_enrolled_from_its_stream_is_armed_without_a_restart(
        serve_factory: Callable[..., Serve], looped_clip: Path, tmp_path: Path) -> None:
    """`serve` runs gate (an empty model store: learning) and yard (the test model). `streamvad enroll --serve`
    asks serve to enrol gate: its enrolment child records gate's first 8 s (normal), fits on the backbone yard's
    worker runs, and makes v0001 current, /healthz showing each phase. The worker swaps it in, gate alerts on
    the walker that comes later in its loop, and yard is scored throughout."""
    gate_clip = make_scene(tmp_path / "clips", seconds=20, fps=10, size=(120, 160), seed=7, place_seed=PLACE + 3,
                           anomalies=[AnomalySpec("lawn_walker", 13.0, 20.0, seed=4)], name="gate").path
    store = tmp_path / "models" / "gate"
    store.mkdir(parents=True)
    with WebhookReceiver(secret=SECRET) as receiver:
        serve = serve_factory(
            [{"id": "gate", "url": str(gate_clip), "loop": True, "realtime": True, "model": str(store)},
             {"id": "yard", "url": str(looped_clip), "loop": True, "realtime": True}], receiver.port,
            transport={"policy": "block"}, worker={"model_poll_s": 0.5},
            normality={"k_min": 2, "k_max": 4, "k_candidates": 2, "silhouette_sample": 100, "hdbscan": "none",
                       "chroma": False})
        body = serve.wait("both online", lambda b: all(_camera(b, c).get("online") for c in ("gate", "yard")), 120)
        assert _camera(body, "gate")["model"] == "learning"
        yard_before = serve.metric('streamvad_worker_frames_out_total{camera="yard"')

        def ask(camera: str, duration: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "streamvad", "enroll", "--serve", "--config",
                                   str(tmp_path / "live.yaml"), "--camera", camera, "--duration", duration],
                                  capture_output=True, text=True, timeout=60,
                                  env={**os.environ, "WEBHOOK_SECRET": SECRET})

        phases: list[tuple[Any, Any]] = []
        final: dict[str, Any] = {}

        def watch() -> None:
            """/healthz from before the request on: the CLI calls below take seconds each on a busy machine,
            which a watch started after them could spend all 8 s of the recording on."""
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                enrolment = _camera(serve.health()[1], "gate").get("enrolment") or {}
                if enrolment.get("phase") is not None:
                    phases.append((enrolment["phase"], enrolment.get("recorded_s")))
                if enrolment.get("phase") in ("done", "failed"):
                    final.update(enrolment)
                    return
                time.sleep(0.2)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        done = ask("gate", "8s")
        assert done.returncode == 0 and "gate: enrolling 8 s of its stream" in done.stdout, done.stderr[-3000:]
        again = ask("gate", "8s")  # one at a time per camera
        assert again.returncode == 2 and "an enrolment is already running" in again.stderr, again.stderr[-3000:]
        unknown = ask("yard2", "8s")
        assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1, unknown.stderr
        watcher.join(310)
        assert final.get("phase") == "done" and final["version"] == "v0001", (phases, serve.log.read_text()[-3000:])
        seen = [p for p, _ in phases]
        assert "recording" in seen and "fitting" in seen and seen.index("recording") < seen.index("fitting")
        recorded = [t for p, t in phases if p == "recording"]
        assert recorded == sorted(recorded) and 0 < recorded[-1] <= 8.0  # progress on stream time, in order
        body = serve.wait("gate armed", lambda b: _camera(b, "gate").get("model") == "scoring", 60)
        assert _camera(body, "gate")["model_version"] == "v0001" and "model_version" not in _camera(body, "yard")
        assert serve.metric('streamvad_worker_frames_out_total{camera="yard"') > yard_before  # scored throughout
        missing = 'streamvad_worker_missing_frames_total{camera="yard"'  # yard's frame indices had no gap
        assert missing in _get(f"{serve.base}/metrics").text and serve.metric(missing) == 0
        hooks = receiver.wait_for(1, timeout=60)
        gate_hooks = [h for h in receiver.accepted() if h.json["camera"] == "gate"]
        deadline = time.monotonic() + 60
        while not gate_hooks and time.monotonic() < deadline:
            time.sleep(0.2)
            gate_hooks = [h for h in receiver.accepted() if h.json["camera"] == "gate"]
        assert gate_hooks, f"gate never alerted ({[h.json['camera'] for h in hooks]}):\n{serve.log.read_text()[-3000:]}"
        assert gate_hooks[0].json["kind"] == "opened"
        # the supervisor sees the enrolment's exit on its next round, which a busy machine may delay
        body = serve.wait("the enrolment process gone", lambda b: b["processes"]["enrol-gate"]["alive"] is False, 30)
        assert body["processes"]["worker-0"]["restarts"] == 0 and body["processes"]["worker-0"]["alive"]
        assert body["processes"]["enrol-gate"]["restarts"] == 0
        assert "now scored by model" in serve.log.read_text() and "(version v0001)" in serve.log.read_text()
        assert serve.stop() == 0
