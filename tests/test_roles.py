"""`serve --role`: the docker compose topology (configs/compose.yaml) as separate processes on loopback, the
compose file's structure, and the one-line errors of a misused role."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml
import zmq

from streamvad.bench.throughput import PLACE, free_tcp_endpoint
from streamvad.config import CameraConfig, StreamVADConfig, TransportConfig, load_config
from streamvad.datasets.synthetic import AnomalySpec, make_scene
from streamvad.errors import ConfigError
from streamvad.live.fleet import owned, owner
from streamvad.live.serve import Role, serve
from streamvad.security import ALLOWED, generate_keys
from streamvad.transport import encode_frame, encode_verdict
from streamvad.types import Frame, FrameKey, Verdict
from tests.receiver import WebhookReceiver
from tests.test_worker import tiny_model

__all__ = ["tiny_model"]

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker" / "compose.yaml"
CONFIG = ROOT / "configs" / "compose.yaml"
SECRET = "roles-secret"


def free_port() -> int:
    return int(free_tcp_endpoint().rsplit(":", 1)[1])


class RoleProcess:
    """`python -m streamvad serve --config configs/compose.yaml --role ...` with its own /healthz."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamvad", "--log-level", "INFO", "serve", "--config", str(CONFIG),
             "--http-port", str(self.port), *args], stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)

    def get(self, path: str) -> httpx.Response | None:
        assert self.proc.poll() is None, f"{self.log.name} exited early:\n{self.log.read_text()[-3000:]}"
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=2)
        except httpx.HTTPError:
            return None

    def health(self) -> tuple[int, dict[str, Any]]:
        r = self.get("/healthz")
        return (0, {}) if r is None else (r.status_code, r.json())

    def metric(self, prefix: str) -> float:
        r = self.get("/metrics")
        lines = [] if r is None else [ln for ln in r.text.splitlines() if ln.startswith(prefix)]
        return sum(float(ln.rsplit(" ", 1)[1]) for ln in lines)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)


def wait_for(what: str, cond: Callable[[], bool], timeout_s: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            tails = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in logs)
            raise AssertionError(f"timed out waiting for {what}\n{tails}")
        time.sleep(0.3)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver(secret=SECRET, port=free_port())
    hook.start()
    yield hook
    hook.stop()


@pytest.fixture
def compose_env(tmp_path: Path, tiny_model: Path, receiver: WebhookReceiver) -> dict[str, str]:
    """configs/compose.yaml's variables for loopback: looped clips with a walker stand in for the two cameras,
    and worker i listens on 127.0.i.1 (all of 127/8 is loopback), as if each were its own host."""
    clips = [make_scene(tmp_path, seconds=8, fps=10, size=(120, 160), seed=12, place_seed=PLACE,
                        anomalies=[AnomalySpec("lawn_walker", 2.0, 6.0, seed=3 + i)], name=f"cam{i + 1}").path
             for i in range(2)]
    return {**os.environ, "STREAMVAD_DEVICE": "cpu", "SCORING_METHOD": "knnn", "FRAME_THRESHOLD": "3.0",
            **{f"CAM{i + 1}_{k}": v for i, clip in enumerate(clips)
               for k, v in (("URL", str(clip)), ("LOOP", "true"), ("MODEL", str(tiny_model)))},
            "WORKER_HOST_PREFIX": "127.0.", "WORKER_HOST_SUFFIX": ".1", "FRAMES_PORT": str(free_port()),
            "EVENTS_HOST": "127.0.0.1", "VERDICTS_PORT": str(free_port()), "STREAMVAD_OUT": str(tmp_path / "out"),
            "WEBHOOK_URL": receiver.url, "WEBHOOK_SECRET": SECRET, "HTTP_HOST": "127.0.0.1",
            "MAX_AGE_S": "null",  # a busy machine must not shed the frames the test waits for
            "STREAMVAD_KEYS": str(generate_keys(tmp_path / "keys")[ALLOWED].parent)}  # every tcp:// hop on CURVE


def _attacker(endpoint: str, server_key: str | None = None, kind: int = zmq.PUB) -> zmq.Socket:
    """A socket of someone who reaches the port: plain, or with a CURVE key pair of its own (not allowed)."""
    sock = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if server_key is not None:
        public, secret = zmq.curve_keypair()
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_serverkey = re.search(r'public-key = "(.+)"', server_key).group(1).encode()  # type: ignore[union-attr]
    sock.connect(endpoint)
    return sock


def _frame(camera: str) -> Frame:
    return Frame(camera, 0, 0.0, time.time(), np.zeros((120, 160, 3), dtype=np.uint8))


def _forged_verdict(camera: str) -> list[bytes]:
    return encode_verdict(Verdict(FrameKey(camera, 0, 0.0), 1.0, 99.0, True, 1.0, np.ones(6, np.float32), (2, 3), 6,
                                  1.0, "forged"))


# the compose layout: each camera's reader -> the camera's own worker; both workers -> events
ROLES = {"events": ["--role", "events"], "worker-0": ["--role", "worker", "--worker-index", "0"],
         "worker-1": ["--role", "worker", "--worker-index", "1"], "reader": ["--role", "reader"]}


@pytest.mark.slow
def test_compose_topology_as_processes_scores_each_camera_on_its_worker_and_alerts(
        compose_env: dict[str, str], receiver: WebhookReceiver, tmp_path: Path) -> None:
    """Each role its own `serve --role` process over tcp, from configs/compose.yaml: each camera's frames reach
    its own worker only, the walkers raise events (JSONL lines and a signed webhook), every role reports its
    own health, and all of them exit 0 on SIGTERM."""
    procs: dict[str, RoleProcess] = {}
    try:
        for name, args in ROLES.items():
            procs[name] = RoleProcess(args, compose_env, tmp_path / f"{name}.log")
        logs = [p.log for p in procs.values()]
        for index, (mine, other) in enumerate((("cam1", "cam2"), ("cam2", "cam1"))):  # cameras[].worker in the file
            worker = procs[f"worker-{index}"]
            wait_for(f"worker-{index} scoring {mine}", lambda w=worker, c=mine: w.metric(
                f'streamvad_worker_frames_out_total{{camera="{c}"') > 0, 180, logs)
            assert worker.metric(f'streamvad_worker_frames_in_total{{camera="{other}"') == 0
            assert worker.metric("streamvad_worker_models{") == 1
        jsonl = tmp_path / "out" / "events.jsonl"
        wait_for("events of both cameras in the JSONL sink", lambda: jsonl.is_file() and {
            json.loads(ln)["camera"] for ln in jsonl.read_text().splitlines() if '"kind":"opened"' in ln} == {
            "cam1", "cam2"}, 90, logs)
        hooks = receiver.wait_for(1, timeout=30)
        assert hooks and hooks[0].signature_ok and hooks[0].json["camera"] in ("cam1", "cam2")
        for name, proc in procs.items():
            wait_for(f"{name} healthy", lambda p=proc: p.health()[0] == 200, 15, logs)
            assert proc.health()[1]["role"] == name.split("-")[0]
        cameras = procs["reader"].health()[1]["cameras"]
        assert cameras["cam1"]["online"] and cameras["cam2"]["online"]
        assert procs["worker-1"].health()[1]["cameras"]["cam2"]["model"] == "scoring"
        # /metrics shows the events process's last status report (sent every second), which may predate
        # an event whose webhook arrived within that second
        wait_for("the opened events in /metrics", lambda: procs["events"].metric(
            'streamvad_events_total{camera="cam1",kind="opened"}') >= 1, 10, logs)
        # an attacker on the network: forged anomalous verdicts for a made-up camera, over plain tcp and with a
        # CURVE key of its own, to the events process; and an injected frame to a worker. All are refused.
        forged = _forged_verdict("ghost")
        events_at = f"tcp://127.0.0.1:{compose_env['VERDICTS_PORT']}"
        server_key = (Path(compose_env["STREAMVAD_KEYS"]) / "server.key").read_text()
        plain, stranger, injector = _attacker(events_at), _attacker(events_at, server_key), _attacker(
            f"tcp://127.0.1.1:{compose_env['FRAMES_PORT']}", server_key, zmq.PUSH)  # worker-1's host

        def attacked() -> bool:
            for sock, parts in ((plain, forged), (stranger, forged), (injector, encode_frame(_frame("ghost")))):
                with contextlib.suppress(zmq.Again):  # a refused PUSH has no peer and would block
                    sock.send_multipart(parts, flags=zmq.NOBLOCK)
            return (procs["events"].metric("streamvad_auth_denied_total") >= 1
                    and procs["worker-1"].metric("streamvad_auth_denied_total") >= 1)

        try:
            wait_for("the strangers refused and counted", attacked, 20, logs)
        finally:
            for sock in (plain, stranger, injector):
                sock.close(0)
        assert procs["worker-1"].metric('streamvad_worker_frames_in_total{camera="ghost"') == 0
        time.sleep(1.0)  # anything that got through would be an event and a webhook by now
        assert not any(h.json["camera"] == "ghost" for h in receiver.accepted())
        assert "ghost" not in jsonl.read_text()
    finally:
        codes = {name: proc.terminate() for name, proc in procs.items()}
    assert codes == dict.fromkeys(ROLES, 0), codes
    assert not any("Traceback" in p.log.read_text() for p in procs.values())


def test_compose_file_services_commands_and_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker/compose.yaml: the services, their images/builds, and every `serve --role` command's config."""
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = doc["services"]
    assert set(services) >= {"rtsp", "synth", "camera", "chroma", "fit", "worker-0", "worker-1", "reader-cam1",
                             "reader-cam2", "events", "receiver"}
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        build = svc.get("build")
        if build is not None:
            assert (COMPOSE.parent / build["context"] / build["dockerfile"]).is_file(), name

    roles = {}
    monkeypatch.setenv("WEBHOOK_SECRET", "from-env")
    for name, svc in services.items():
        command = svc.get("command") or []
        if "serve" not in command:
            continue
        config = command[command.index("--config") + 1]
        assert config.startswith("/app/configs/")
        cfg = load_config(ROOT / "configs" / Path(config).name)
        roles[name] = command[command.index("--role") + 1]
        assert cfg.transport.frames == "tcp://worker-{worker}:5555" and cfg.serve.workers == 2
        assert cfg.transport.verdicts.startswith("tcp://events:")
        assert cfg.sinks.webhooks[0].secret == "from-env" and cfg.normality.chroma_url == "http://chroma:8000"
        assert "healthcheck" in svc and "9108/healthz" in " ".join(svc["healthcheck"]["test"])
        if roles[name] == "worker":  # the service name is the host name its cameras' readers send to
            index = int(command[command.index("--worker-index") + 1])
            assert name == f"worker-{index}" and services[f"worker-{index}"]["depends_on"]["fit"]["condition"] == (
                "service_completed_successfully")
            assert [c.id for c in owned(cfg, index)] == [f"cam{index + 1}"]
            assert {str(c.model) for c in owned(cfg, index)} == {f"/data/models/cam{index + 1}"}
        if roles[name] == "reader":  # a reader starts after the worker its camera belongs to
            camera = command[command.index("--camera") + 1]
            owner_ = next(owner(c, cfg.serve.workers) for c in cfg.cameras if c.id == camera)
            assert f"worker-{owner_}" in svc["depends_on"]
    assert roles == {"worker-0": "worker", "worker-1": "worker", "reader-cam1": "reader", "reader-cam2": "reader",
                     "events": "events"}
    assert services["fit"]["depends_on"]["chroma"]["condition"] == "service_healthy"
    volumes = {v.split(":")[0] for svc in services.values() for v in svc.get("volumes", [])}
    assert volumes <= set(doc["volumes"]) | {"../configs"}
    assert re.search(r"\$\{WEBHOOK_SECRET", " ".join(services["receiver"]["command"]))


def test_role_misuse_fails_with_one_line(tiny_model: Path) -> None:
    cfg = StreamVADConfig(model_dir=tiny_model, cameras=[CameraConfig(id="cam1", url="clip.mp4")],
                          transport=TransportConfig(frames="tcp://127.0.0.1:5999", insecure=True))
    with pytest.raises(ConfigError, match=r"^--camera: no camera 'cam9' in cameras \(configured: cam1\)$"):
        serve(cfg, Role("reader", camera="cam9"))
    with pytest.raises(ConfigError, match=r"^--worker-index: 2 is not below serve.workers \(1\)$"):
        serve(cfg, Role("worker", worker_index=2))
    # (cameras without a model are `learning`, see test_fleet; a worker with neither cameras nor model is not)
    with pytest.raises(ConfigError, match=r"^model_dir: serve needs a fitted model directory"):
        serve(cfg.model_copy(update={"model_dir": None, "cameras": []}), Role("worker"))
