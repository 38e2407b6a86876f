"""CURVE on tcp:// sockets: keys from `streamvad keys generate`, authenticated delivery, strangers refused and
counted, and a site that talks plain tcp:// only when it says so (real ZeroMQ sockets on loopback)."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from streamvad import security
from streamvad.cli import main
from streamvad.config import CurveConfig, TransportConfig
from streamvad.errors import ConfigError
from streamvad.transport import FramePuller, FramePusher, encode_frame
from tests.test_hostile_input import frame

TCP = "tcp://127.0.0.1:*"


@pytest.fixture
def keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Path]:
    """A site's keys from the CLI, and this process configured with them (undone afterwards)."""
    assert main(["keys", "generate", str(tmp_path / "keys")]) == 0
    assert "transport.curve.keys" in capsys.readouterr().out
    security.configure(TransportConfig(curve=CurveConfig(keys=tmp_path / "keys")))
    yield tmp_path / "keys"
    security.configure(None)


def _stranger(endpoint: str, server_public: bytes | None) -> zmq.Socket:
    sock = zmq.Context.instance().socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    if server_public is not None:  # a key pair of its own, not in allowed/
        sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()
        sock.curve_serverkey = server_public
    sock.connect(endpoint)
    return sock


def test_keys_are_generated_private_and_allow_the_site_client(keys: Path) -> None:
    assert {p.name for p in keys.iterdir()} == {"server.key", "server.key_secret", "client.key", "client.key_secret",
                                                "allowed"}
    for secret in ("server.key_secret", "client.key_secret"):
        assert (keys / secret).stat().st_mode & 0o777 == 0o600
    assert (keys / "allowed" / "client.key").read_text() == (keys / "client.key").read_text()


def test_only_the_site_key_gets_frames_through(keys: Path, caplog: pytest.LogCaptureFixture) -> None:
    puller = FramePuller(TCP)
    pusher = FramePusher(puller.endpoint)
    server_public = re.search(r'public-key = "(.+)"', (keys / "server.key").read_text()).group(1).encode()  # type: ignore[union-attr]
    plain, stranger = _stranger(puller.endpoint, None), _stranger(puller.endpoint, server_public)
    try:
        with caplog.at_level(logging.WARNING, logger="streamvad.security"):
            for i in range(3):
                plain.send_multipart(encode_frame(frame(camera="forged", index=i), "raw"))
                stranger.send_multipart(encode_frame(frame(camera="forged", index=i), "raw"))
            pusher.send(frame(camera="gate", index=7))
            got = puller.recv(5000)
            assert got is not None and got.frame is not None and got.frame.camera == "gate"
            deadline = time.monotonic() + 5
            while security.denied() < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert puller.recv(300) is None  # nothing from either stranger ever arrives
        assert security.denied() >= 1 and "refused a ZeroMQ connection with an unknown CURVE key" in caplog.text
    finally:
        for sock in (plain, stranger):
            sock.close(0)
        pusher.close(0)
        puller.close()


def test_plain_tcp_needs_an_explicit_insecure_and_bad_keys_are_one_line(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    site = TransportConfig(frames="tcp://0.0.0.0:5555", verdicts="tcp://events:5557")
    with pytest.raises(ConfigError, match=r"transport: tcp://0\.0\.0\.0:5555 is tcp:// without authentication"):
        security.check(site)
    with caplog.at_level(logging.WARNING, logger="streamvad.security"):
        security.check(site.model_copy(update={"insecure": True}))
    assert "NOT authenticated" in caplog.text
    security.check(TransportConfig())  # ipc:// in the private directory: nothing to authenticate
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"empty/server\.key_secret: not a readable CURVE key .*keys generate"):
        security.configure(TransportConfig(curve=CurveConfig(keys=tmp_path / "empty")))
