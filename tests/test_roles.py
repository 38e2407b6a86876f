"""`serve --role`: the docker compose topology (configs/compose.yaml) as separate processes on loopback, the
compose file's structure, and the one-line errors of a misused role."""

from __future__ import annotations

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
import pytest
import yaml

from streamvad.bench.throughput import PLACE, free_tcp_endpoint
from streamvad.config import CameraConfig, StreamVADConfig, TransportConfig, load_config
from streamvad.datasets.synthetic import AnomalySpec, make_scene
from streamvad.errors import ConfigError
from streamvad.serve import Role, serve
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
    """configs/compose.yaml's variables for loopback: a looped clip with a walker stands in for the camera."""
    clip = make_scene(tmp_path, seconds=8, fps=10, size=(120, 160), seed=12, place_seed=PLACE,
                      anomalies=[AnomalySpec("lawn_walker", 2.0, 6.0, seed=3)], name="cam1").path
    return {**os.environ, "STREAMVAD_MODEL": str(tiny_model), "STREAMVAD_DEVICE": "cpu", "CAM1_URL": str(clip),
           "CAM1_LOOP": "true", "SCORING_METHOD": "knnn", "FRAME_THRESHOLD": "3.0", "FORWARDER_HOST": "127.0.0.1",
           "EVENTS_HOST": "127.0.0.1", "FRAMES_PORT": str(free_port()), "FRAMES_BACKEND": free_tcp_endpoint(),
           "VERDICTS_PORT": str(free_port()), "STREAMVAD_OUT": str(tmp_path / "out"), "WEBHOOK_URL": receiver.url,
           "WEBHOOK_SECRET": SECRET, "HTTP_HOST": "127.0.0.1"}


TOPOLOGIES = {
    # the compose layout: readers -> forwarder <- any number of workers
    "forwarder": {"events": ["--role", "events"], "forwarder": ["--role", "forwarder"],
                  "worker-a": ["--role", "worker"], "worker-b": ["--role", "worker"],
                  "reader": ["--role", "reader", "--camera", "cam1"]},
    # no forwarder (frames_backend null): the worker binds transport.frames, the reader connects to it
    "direct": {"events": ["--role", "events"], "worker": ["--role", "worker", "--worker-index", "0"],
               "reader": ["--role", "reader"]},
}


@pytest.mark.slow
@pytest.mark.parametrize("topology", list(TOPOLOGIES))
def test_compose_topology_as_processes_scores_on_every_worker_and_alerts(
        topology: str, compose_env: dict[str, str], receiver: WebhookReceiver, tmp_path: Path) -> None:
    """Each role its own `serve --role` process over tcp, from configs/compose.yaml: frames reach every worker,
    the walker raises an event (JSONL line and a signed webhook), every role reports its own health, and all
    of them exit 0 on SIGTERM."""
    roles = TOPOLOGIES[topology]
    if topology == "direct":
        compose_env["FRAMES_BACKEND"] = "null"
    procs: dict[str, RoleProcess] = {}
    try:
        for name, args in roles.items():
            procs[name] = RoleProcess(args, compose_env, tmp_path / f"{name}.log")
        logs = [p.log for p in procs.values()]
        workers = [p for name, p in procs.items() if name.startswith("worker")]
        wait_for("both workers scoring", lambda: all(
            w.metric('streamvad_worker_frames_out_total{camera="cam1"') > 0 for w in workers), 180, logs)
        jsonl = tmp_path / "out" / "events.jsonl"
        wait_for("an event in the JSONL sink", lambda: jsonl.is_file() and '"kind":"opened"' in jsonl.read_text(),
                 60, logs)
        opened = [json.loads(ln) for ln in jsonl.read_text().splitlines() if '"kind":"opened"' in ln]
        assert opened[0]["camera"] == "cam1"
        hooks = receiver.wait_for(1, timeout=30)
        assert hooks and hooks[0].signature_ok and hooks[0].json["camera"] == "cam1"
        for name, proc in procs.items():
            code, body = proc.health()
            assert code == 200, (name, body)
            assert body["role"] == name.split("-")[0]
        if topology == "forwarder":
            assert procs["forwarder"].health()[1]["forwarded"] > 0
        assert procs["reader"].health()[1]["cameras"]["cam1"]["online"]
        # /metrics shows the events process's last status report (sent every second), which may predate
        # an event whose webhook arrived within that second
        wait_for("the opened event in /metrics", lambda: procs["events"].metric(
            'streamvad_events_total{camera="cam1",kind="opened"}') >= 1, 10, logs)
    finally:
        codes = {name: proc.terminate() for name, proc in procs.items()}
    assert codes == dict.fromkeys(roles, 0), codes
    assert not any("Traceback" in p.log.read_text() for p in procs.values())


def test_compose_file_services_commands_and_configs(monkeypatch: pytest.MonkeyPatch) -> None:
    """docker/compose.yaml: the services, their images/builds, and every `serve --role` command's config."""
    doc = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    services = doc["services"]
    assert set(services) >= {"rtsp", "synth", "camera", "chroma", "fit", "forwarder", "worker", "reader-cam1",
                             "events", "receiver", "worker-gpu"}
    for name, svc in services.items():
        assert "image" in svc or "build" in svc, name
        build = svc.get("build")
        if build is not None:
            assert (COMPOSE.parent / build["context"] / build["dockerfile"]).is_file(), name
    gpu = services["worker-gpu"]
    assert gpu["build"]["dockerfile"].endswith("Dockerfile.cuda")
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]

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
        assert cfg.transport.frames_backend == "tcp://forwarder:5556" and cfg.transport.frames.startswith("tcp://forwarder:")
        assert cfg.transport.verdicts.startswith("tcp://events:")
        assert cfg.sinks.webhooks[0].secret == "from-env" and cfg.normality.chroma_url == "http://chroma:8000"
        assert "healthcheck" in svc and "9108/healthz" in " ".join(svc["healthcheck"]["test"])
    assert roles == {"forwarder": "forwarder", "worker": "worker", "worker-gpu": "worker", "reader-cam1": "reader",
                     "events": "events"}
    assert services["fit"]["depends_on"]["chroma"]["condition"] == "service_healthy"
    assert services["worker"]["depends_on"]["fit"]["condition"] == "service_completed_successfully"
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]  # --scale worker=N
    volumes = {v.split(":")[0] for svc in services.values() for v in svc.get("volumes", [])}
    assert volumes <= set(doc["volumes"]) | {"../configs"}
    assert re.search(r"\$\{WEBHOOK_SECRET", " ".join(services["receiver"]["command"]))


def test_role_misuse_fails_with_one_line(tiny_model: Path) -> None:
    cfg = StreamVADConfig(model_dir=tiny_model, cameras=[CameraConfig(id="cam1", url="clip.mp4")],
                          transport=TransportConfig(frames="tcp://127.0.0.1:5999"))
    with pytest.raises(ConfigError, match=r"^--camera: no camera 'cam9' in cameras \(configured: cam1\)$"):
        serve(cfg, Role("reader", camera="cam9"))
    with pytest.raises(ConfigError, match=r"^--worker-index: 2 is not below serve.workers \(1\)$"):
        serve(cfg, Role("worker", worker_index=2))
    with pytest.raises(ConfigError, match=r"^transport\.frames_backend: the forwarder role needs"):
        serve(cfg, Role("forwarder"))
    with pytest.raises(ConfigError, match=r"^model_dir: serve needs a fitted model directory"):
        serve(cfg.model_copy(update={"model_dir": None}), Role("worker"))
