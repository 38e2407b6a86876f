"""deploy/kubernetes: every manifest valid against the Kubernetes schemas, and what a schema cannot check: the
worker shard is the pod ordinal, the replicas are serve.workers, and each camera's reader routes to the pod
that owns the camera."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from streamvad.config import StreamVADConfig, load_config
from streamvad.live.fleet import bind_endpoint, camera_endpoint, owned, owner, worker_endpoints

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
K8S_VERSION = "1.32.0"  # pod-index label on StatefulSet pods is GA from 1.32


def resources() -> list[dict[str, Any]]:
    docs = [d for path in sorted(DEPLOY.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text("utf-8")) if d]
    assert docs
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    return next(d for d in resources() if d["kind"] == kind and d["metadata"]["name"] == name)


def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StreamVADConfig:
    for var in ("WEBHOOK_SECRET", "RTSP_USER", "RTSP_PASS"):
        monkeypatch.setenv(var, "x")
    path = tmp_path / "site.yaml"
    path.write_text(find("ConfigMap", "streamvad-config")["data"]["site.yaml"], encoding="utf-8")
    return load_config(path)


@pytest.mark.parametrize("doc", resources(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_manifest_is_valid_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def test_worker_shard_is_the_pod_ordinal_and_readers_reach_the_owning_pod(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = site(tmp_path, monkeypatch)
    workers = find("StatefulSet", "streamvad-worker")
    service = find("Service", workers["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"  # headless: one DNS name per pod
    assert service["spec"]["selector"] == workers["spec"]["template"]["metadata"]["labels"]
    assert workers["spec"]["replicas"] == cfg.serve.workers
    container = _container(workers)
    args = container["args"]
    assert args[args.index("--role") + 1] == "worker" and args[args.index("--worker-index") + 1] == "$(POD_INDEX)"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "frames")
    # pod i of StatefulSet S under headless service H is reachable as S-i.H: that is worker i's endpoint
    pods = [f"tcp://{workers['metadata']['name']}-{i}.{service['metadata']['name']}:{port}"
            for i in range(cfg.serve.workers)]
    assert worker_endpoints(cfg.transport.frames, cfg.serve.workers) == pods
    assert {bind_endpoint(cfg.transport.frames, ep) for ep in pods} == {f"tcp://*:{port}"}  # names are not bindable
    readers = {d["spec"]["template"]["metadata"]["labels"]["streamvad/camera"]: d for d in resources()
               if d["kind"] == "Deployment" and d["metadata"]["labels"].get("app.kubernetes.io/component") == "reader"}
    assert sorted(readers) == sorted(c.id for c in cfg.cameras)  # one reader per configured camera
    for camera in cfg.cameras:
        reader_args = _container(readers[camera.id])["args"]
        assert reader_args[reader_args.index("--camera") + 1] == camera.id
        assert camera_endpoint(cfg, camera) == pods[owner(camera, cfg.serve.workers)]
    assert all(owned(cfg, i) for i in range(cfg.serve.workers))  # no idle shard in the example


def test_every_pod_answers_its_own_health_endpoint_and_mounts_the_config() -> None:
    for doc in resources():
        if doc["kind"] not in ("Deployment", "StatefulSet") or doc["metadata"]["name"] == "streamvad-chroma":
            continue
        container = _container(doc)
        probe = container["readinessProbe"]["httpGet"]
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == probe["port"])
        assert (probe["path"], port) == ("/healthz", 9108), doc["metadata"]["name"]
        assert container["args"][:3] == ["serve", "--config", "/etc/streamvad/site.yaml"]
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in doc["spec"]["template"]["spec"]["volumes"]}
        assert volumes[mounts["/etc/streamvad"]]["configMap"]["name"] == "streamvad-config"
    models = next(v for v in find("StatefulSet", "streamvad-worker")["spec"]["template"]["spec"]["volumes"]
                  if v["name"] == "models")
    assert models["persistentVolumeClaim"] == {"claimName": "streamvad-models", "readOnly": True}
