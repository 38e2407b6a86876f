"""Events on MQTT, in the Frigate / Home Assistant style, so a home-automation or SCADA system subscribes to
StreamVAD as it would to Frigate.

Topics under `sinks.mqtt.topic_prefix` (`streamvad`):

- `streamvad/events`: every update as JSON, `{"type": "new" | "update" | "end", "event": {...}}` (the record
  webhooks and JSONL carry, without the inline snapshot);
- `streamvad/<camera>/anomaly` (or `/covered`, `/frozen`, `/moved` for camera faults): `ON` while an event of
  that type is open, `OFF` after it, retained, so a subscriber that joins later sees each camera's state;
- `streamvad/available`: `online` (retained) once connected, `offline` on a clean shutdown, and the broker's
  last will `offline` when the process dies without one (kill -9, a lost network).

Publishing never blocks the events process: paho's network thread sends, reconnects with backoff when the
broker goes away, and keeps QoS 1 messages queued in memory meanwhile (`max_queued`; past it a message is
dropped, counted and logged, because an events process must not grow without bound while a broker is down).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from streamvad.config import MqttConfig
from streamvad.live.events import EventUpdate
from streamvad.sinks.base import update_record

log = logging.getLogger(__name__)

_TYPES = {"opened": "new", "updated": "update", "closed": "end"}


class MqttSink:
    """Publishes event updates to the broker in `cfg`; `stats()` counts what was published and dropped."""

    def __init__(self, cfg: MqttConfig) -> None:
        self.cfg = cfg
        self.published = self.dropped = 0
        self._connected = threading.Event()
        self._available = f"{cfg.topic_prefix}/available"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=cfg.client_id or f"streamvad-{os.getpid()}")
        if cfg.username is not None:
            self.client.username_pw_set(cfg.username, cfg.password)
        self.client.will_set(self._available, "offline", qos=1, retain=True)
        self.client.max_queued_messages_set(cfg.max_queued)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.connect_async(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        self.client.loop_start()

    @property
    def where(self) -> str:
        return f"mqtt://{self.cfg.host}:{self.cfg.port}"

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log.error("mqtt %s: connection refused: %s", self.where, reason)
            return
        log.info("mqtt %s: connected", self.where)
        client.publish(self._available, "online", qos=1, retain=True)
        self._connected.set()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self._connected.clear()
        if reason.is_failure:
            log.warning("mqtt %s: disconnected (%s); reconnecting, %d messages queued meanwhile at most",
                        self.where, reason, self.cfg.max_queued)

    def _publish(self, topic: str, payload: str, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=self.cfg.qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self.dropped += 1
            log.error("mqtt %s: %d messages already queued for the broker; dropped one on %s",
                      self.where, self.cfg.max_queued, topic)
        else:
            self.published += 1

    def handle(self, update: EventUpdate) -> None:
        record = update_record(update)
        self._publish(f"{self.cfg.topic_prefix}/events",
                      json.dumps({"type": _TYPES[update.kind], "event": record}, sort_keys=True))
        if update.kind != "updated":
            state = "ON" if update.kind == "opened" else "OFF"
            self._publish(f"{self.cfg.topic_prefix}/{update.event.camera}/{update.event.type}", state, retain=True)

    def stats(self) -> dict[str, int]:
        return {"published": self.published, "dropped": self.dropped, "connected": int(self._connected.is_set())}

    def close(self, timeout: float = 5.0) -> None:
        """Say `offline` (a clean exit is not the last will's case), let the queue drain for up to `timeout`
        seconds, then disconnect."""
        if self._connected.is_set():
            try:
                self.client.publish(self._available, "offline", qos=1, retain=True).wait_for_publish(timeout)
            except (RuntimeError, ValueError) as err:  # the queue is full, or the connection just went
                log.warning("mqtt %s: could not say offline on close (%s); the broker's last will says it", self.where,
                            err)
        self.client.disconnect()
        self.client.loop_stop()
