"""Chroma server mode: a real `chroma run` server on loopback holds the system of record of two models
side by side (prefixed collections), and `from_chroma` rebuilds the serving arrays from it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml

from streamvad.bench.throughput import free_tcp_endpoint
from streamvad.cli import main
from streamvad.config import NormalityConfig
from streamvad.errors import InputError
from streamvad.model_store import ModelStore
from streamvad.normality import chroma_store
from streamvad.normality.manifest import MANIFEST, read_manifest
from streamvad.normality.model import NormalityModel
from tests.test_enrolment import site_clip
from tests.test_normality import small_model
from tests.test_worker import TEST_BACKBONE, tiny_model

__all__ = ["site_clip", "tiny_model"]

# the chromadb package installs its `chroma` CLI next to the interpreter, which need not be on PATH
CHROMA = shutil.which("chroma", path=str(Path(sys.executable).parent)) or shutil.which("chroma")
Q = 40


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`chroma run` on a free loopback port, up once its heartbeat answers; torn down after the module."""
    if CHROMA is None:
        pytest.skip("the `chroma` CLI is not installed")
    port = int(free_tcp_endpoint().rsplit(":", 1)[1])
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("chroma-server") / "server.log"
    proc = subprocess.Popen([CHROMA, "run", "--path", str(log.parent / "db"), "--host", "127.0.0.1",
                             "--port", str(port)], stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.skip(f"`chroma run` exited with {proc.returncode}: {log.read_text()[-500:]}")
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"chroma server not up after 30 s:\n{log.read_text()[-2000:]}"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def server_config(url: str, prefix: str | None = None) -> NormalityConfig:
    return NormalityConfig(k_min=2, k_max=4, k_candidates=3, silhouette_sample=40, hdbscan="none", index="hnsw",
                           chroma_url=url, chroma_prefix=prefix)


def test_fit_writes_prefixed_collections_to_server_and_from_chroma_rebuilds(chroma_url: str,
                                                                            tmp_path: Path) -> None:
    lobby = small_model(server_config(chroma_url), q=Q)
    lobby.save(tmp_path / "lobby" / "normality")  # the pipeline's layout: <fit --out>/normality
    gate = small_model(server_config(chroma_url, prefix="gate-v2"), q=Q // 2)
    gate.save(tmp_path / "gate")

    assert not (tmp_path / "lobby" / "normality" / "chroma").exists()  # nothing embedded
    client = chroma_store.open_server(chroma_url)
    names = {c.name for c in client.list_collections()}
    tokens = ["global", "patch_000", "patch_001", "patch_002", "patch_003"]
    assert names >= {f"lobby-{t}" for t in tokens} | {f"gate-v2-{t}" for t in tokens}
    coll = client.get_collection("lobby-patch_002")
    assert coll.count() == Q and client.get_collection("gate-v2-patch_002").count() == Q // 2
    assert coll.metadata["streamvad_model"] == "lobby" and coll.metadata["streamvad_token"] == "patch_002"
    rec = coll.get(ids=["patch_002-7"], include=["embeddings", "metadatas"])
    np.testing.assert_allclose(rec["embeddings"][0], lobby.train[3, 7], rtol=1e-6)
    assert rec["metadatas"][0] == {"cluster": int(lobby.clusters[3, 7]),
                                   "loc_dens": pytest.approx(float(lobby.loc_dens[3, 7])), "source": "cam/7.jpg",
                                   "frame": 7}

    model_dir = tmp_path / "lobby" / "normality"
    for f in ("train.npy", "clusters.npy", "loc_dens.npy"):
        (model_dir / f).unlink()
    shutil.rmtree(model_dir / "hnsw")
    rebuilt = NormalityModel.from_chroma(model_dir)
    np.testing.assert_array_equal(rebuilt.train, lobby.train)
    np.testing.assert_array_equal(rebuilt.clusters, lobby.clusters)
    np.testing.assert_allclose(rebuilt.loc_dens, lobby.loc_dens)
    assert rebuilt.sources == lobby.sources and rebuilt.chroma_server == {"url": chroma_url, "prefix": "lobby"}
    rebuilt.save(model_dir, write_chroma=False)  # a worker then serves from the rebuilt files alone
    served = NormalityModel.load(model_dir)
    np.testing.assert_array_equal(served.train, lobby.train)
    assert served.indexes is not None and len(served.indexes) == len(tokens)
    assert NormalityModel.from_chroma(tmp_path / "gate").n_train == Q // 2  # the other model is untouched


def test_unreachable_server_and_wrong_count_fail_with_one_line(chroma_url: str, tmp_path: Path) -> None:
    model = small_model(server_config(chroma_url, prefix="short"), q=Q)
    model.save(tmp_path / "m")
    dead = free_tcp_endpoint().replace("tcp://", "http://")
    with pytest.raises(InputError, match=r"^normality\.chroma_url: cannot reach the Chroma server at http://"):
        NormalityModel.from_chroma(tmp_path / "m", url=dead)
    chroma_store.open_server(chroma_url).get_collection("short-patch_001").delete(ids=["patch_001-3"])
    with pytest.raises(InputError, match=r"collection short-patch_001 holds 39 vectors, the manifest says 40"):
        NormalityModel.from_chroma(tmp_path / "m")
    manifest = (tmp_path / "m" / MANIFEST).read_text()
    assert '"prefix": "short"' in manifest and chroma_url in manifest


@pytest.mark.slow
def test_mark_as_normal_records_the_new_version_on_the_server_beside_the_old(chroma_url: str, tiny_model: Path,
                                                                            tmp_path: Path) -> None:
    """A store recorded on a Chroma server: the version "mark as normal" makes gets its rows under a prefix of
    its own, written by the feedback's Chroma process; the previous version's collections stay as they were,
    so a rollback's record still matches its files."""
    from streamvad.feedback import mark_normal
    from streamvad.model_store import ModelStore
    from streamvad.scoring.engine import ModelInfo
    from streamvad.types import Evidence

    first = tmp_path / "gate" / "v0001"
    shutil.copytree(tiny_model, first)
    model = NormalityModel.load(first / "normality")
    model.config = model.config.model_copy(update={"chroma": True, "chroma_url": chroma_url,
                                                   "chroma_prefix": "site-gate"})
    model.save(first / "normality", progress=False)
    ModelInfo.load(first).save(first)
    ModelStore(tmp_path / "gate").activate("v0001")
    evidence = Evidence(patches=np.array([0, 3]), vectors=(model.train[[1, 4], 0] + 0.5).astype(np.float16))

    version = mark_normal(tmp_path / "gate", evidence, "e1234567890")
    marked = NormalityModel.load(version.path / "normality")
    assert marked.chroma_server == {"url": chroma_url, "prefix": "site-gate--e1234567"}
    assert NormalityModel.load(first / "normality").chroma_server["prefix"] == "site-gate"  # type: ignore[index]
    client = chroma_store.open_server(chroma_url)
    # the Chroma process of its own writes token by token: wait for the last token's rows, not for a time
    last = chroma_store.ChromaLocation(url=chroma_url, prefix="site-gate--e1234567").name(marked.n_tokens - 1)
    deadline = time.monotonic() + 120
    while True:
        names = {c.name for c in client.list_collections()}
        done = last in names and client.get_collection(last).count() == marked.n_train
        if done or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert done, "the marked version's rows did not reach the Chroma server"
    rebuilt = NormalityModel.from_chroma(version.path / "normality")
    np.testing.assert_array_equal(rebuilt.train, marked.train)
    assert client.get_collection("site-gate-patch_003").count() == model.n_train == marked.n_train - 2


@pytest.mark.slow
def test_each_enrolled_version_keeps_its_own_record_on_the_server(chroma_url: str, site_clip: Path,
                                                                  tmp_path: Path) -> None:
    """Three enrolments of one camera on a shared server, keeping 2 versions: each version's collections have a
    prefix of its own (the camera and when it was fitted), so an older version's record still rebuilds its own
    memory after a newer one is written, as a rollback needs; the version past the 2 kept is deleted with its
    collections."""
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump({
        "backbone": TEST_BACKBONE.model_dump(),
        "cameras": [{"id": "gate", "url": str(site_clip), "fps": 4.0, "realtime": False,  # the file's stream time
                     "model": str(tmp_path / "models" / "gate")}],                   # unpaced: no wait for it
        "normality": {"k_min": 2, "k_max": 4, "k_candidates": 2, "silhouette_sample": 100, "hdbscan": "none",
                      "chroma_url": chroma_url},
        "transport": {"frames": free_tcp_endpoint(), "verdicts": free_tcp_endpoint(), "insecure": True},
        "store": {"keep_versions": 2},
    }), encoding="utf-8")
    names = []
    for _ in range(3):
        assert main(["enroll", "--config", str(config), "--camera", "gate", "--duration", "6s", "--no-progress"]) == 0
        current = ModelStore(tmp_path / "models" / "gate").current()
        names.append(read_manifest(current.path / "normality")["chroma_server"]["prefix"])
    versions = ModelStore(tmp_path / "models" / "gate").versions()
    assert [v.name for v in versions] == ["v0002", "v0003"]
    assert len(set(names)) == 3 and all(p.startswith("gate-") for p in names), names
    on_server = {c.name.split("-global")[0] for c in chroma_store.open_server(chroma_url).list_collections()
                 if c.name.endswith("-global")}
    assert names[0] not in on_server and set(names[1:]) <= on_server
    for version in versions:
        served = NormalityModel.load(version.path / "normality")
        np.testing.assert_array_equal(NormalityModel.from_chroma(version.path / "normality").train, served.train)
