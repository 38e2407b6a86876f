"""The MQTT sink against a real mosquitto broker started by the tests: Frigate-style topics, retained camera
states, nothing lost while the broker is down, and the last will when serve is killed."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from streamvad.config import MqttConfig
from streamvad.sinks import MqttSink
from tests.receiver import WebhookReceiver
from tests.rtsp_server import free_port
from tests.test_serve import SECRET, Serve, anomaly_clip, looped_clip, serve_factory
from tests.test_sinks import make_update, wait_until
from tests.test_worker import tiny_model

__all__ = ["anomaly_clip", "looped_clip", "serve_factory", "tiny_model"]


class Broker:
    """mosquitto on a loopback port of its own (anonymous), restartable on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.conf = workdir / "mosquitto.conf"
        # persistence: a subscriber's session (its subscription, and what it has not received) outlives a restart
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {workdir}/\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen(["mosquitto", "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        assert wait_until(self._accepts, 10), "mosquitto did not start"
        return self

    def _accepts(self) -> bool:
        import socket

        try:
            socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


class Subscriber:
    """A paho client on `streamvad/#` that records (topic, payload, retained) in arrival order."""

    def __init__(self, port: int, session: str | None = None) -> None:
        """`session`: a client id whose session the broker keeps while this subscriber is away."""
        self.messages: list[tuple[str, str, bool]] = []
        self._lock = threading.Lock()
        self.client = (mqtt.Client(CallbackAPIVersion.VERSION2) if session is None else
                       mqtt.Client(CallbackAPIVersion.VERSION2, client_id=session, clean_session=False))
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = lambda c, *_: c.subscribe("streamvad/#", qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload.decode(), bool(msg.retain)))

    def on(self, topic: str) -> list[str]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def events(self) -> list[dict[str, object]]:
        return [json.loads(p) for p in self.on("streamvad/events")]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (tools/setup.sh --system installs it)")
    b = Broker(tmp_path)
    yield b
    b.stop()


def test_event_updates_and_camera_states_reach_the_broker_in_frigate_style(broker: Broker) -> None:
    broker.start()
    sub = Subscriber(broker.port)
    sink = MqttSink(MqttConfig(host="127.0.0.1", port=broker.port))
    try:
        assert wait_until(lambda: sub.on("streamvad/available") == ["online"])
        for kind in ("opened", "updated", "closed"):
            sink.handle(make_update(4, kind))  # type: ignore[arg-type]
        # each update's state follows its event, so wait for the last state as well as the last event
        assert wait_until(lambda: len(sub.events()) == 3 and len(sub.on("streamvad/cam1/anomaly")) == 2)
        assert [e["type"] for e in sub.events()] == ["new", "update", "end"]
        assert {e["event"]["id"] for e in sub.events()} == {"event-004"}  # type: ignore[index]
        assert sub.on("streamvad/cam1/anomaly") == ["ON", "OFF"]
        sink.close()
        assert wait_until(lambda: sub.on("streamvad/available") == ["online", "offline"])
    finally:
        sub.close()
    late = Subscriber(broker.port)  # joins afterwards: each camera's state and availability are retained
    try:
        assert wait_until(lambda: late.on("streamvad/cam1/anomaly") == ["OFF"]
                          and late.on("streamvad/available") == ["offline"])
        assert late.events() == []  # events themselves are not retained
    finally:
        late.close()
    assert sink.stats() == {"published": 5, "dropped": 0, "connected": 0}


def test_updates_made_while_the_broker_is_down_arrive_once_it_is_up(broker: Broker) -> None:
    broker.start()
    sub = Subscriber(broker.port, session="console")
    sink = MqttSink(MqttConfig(host="127.0.0.1", port=broker.port))
    try:
        assert wait_until(lambda: sub.on("streamvad/available") == ["online"])
        broker.stop()
        assert wait_until(lambda: sink.stats()["connected"] == 0)
        sink.handle(make_update(1, "opened"))  # the broker is down: queued in the sink
        sink.handle(make_update(1, "closed"))
        broker.start()
        # the sink publishes each update's event, then its state: the state "OFF" lands after the event "end"
        assert wait_until(lambda: [e["type"] for e in sub.events()] == ["new", "end"]
                          and sub.on("streamvad/cam1/anomaly") == ["ON", "OFF"], 60), sub.messages
        assert sink.stats()["connected"] == 1 and sink.stats()["dropped"] == 0
    finally:
        sink.close()
        sub.close()


@pytest.mark.slow
def test_serve_announces_events_and_the_broker_says_offline_when_serve_is_killed(
        broker: Broker, serve_factory: Callable[..., Serve], looped_clip: Path) -> None:
    broker.start()
    sub = Subscriber(broker.port)
    try:
        with WebhookReceiver(secret=SECRET) as receiver:
            serve = serve_factory([{"id": "yard", "url": str(looped_clip), "loop": True, "realtime": True}],
                                  receiver.port, sinks={"mqtt": {"host": "127.0.0.1", "port": broker.port}})
            assert wait_until(lambda: [e["type"] for e in sub.events()][:2] == ["new", "end"], 60), \
                f"{sub.messages}\n{serve.log.read_text()[-3000:]}"
            assert wait_until(lambda: serve.metric("streamvad_mqtt_connected") == 1
                              and serve.metric("streamvad_mqtt_published_total") >= 4, 30)
            body = serve.health()[1]
            assert sub.on("streamvad/yard/anomaly")[:2] == ["ON", "OFF"]
            pids = [p["pid"] for p in body["processes"].values() if p.get("pid")]
            serve.proc.send_signal(signal.SIGKILL)  # the supervisor first, so that nothing is restarted
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            serve.proc.wait(10)
        # no clean goodbye: the broker publishes the events process's last will once its connection drops
        assert wait_until(lambda: sub.on("streamvad/available")[-1:] == ["offline"], 30), sub.messages
        assert sub.on("streamvad/available").count("online") == 1
    finally:
        sub.close()
