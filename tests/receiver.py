"""The tests' webhook receiver: the product's (streamvad/sinks/receiver.py), recording every request and answering
from a script, so tests can stage outages, Retry-After answers and restarts on the same port."""

from __future__ import annotations

import threading
import time
from typing import Any

from streamvad.sinks import receiver
from streamvad.sinks.receiver import Received
from tests.ports import HeldPort

__all__ = ["Received", "WebhookReceiver"]


class WebhookReceiver(receiver.WebhookReceiver):
    """While it is down (stopped, or given a port and not started yet) its port stays held (`HeldPort`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held = HeldPort(self.port, self.host) if self.port else None
        self.requests: list[Received] = []
        self.status = 200  # answer for every authentic request unless `script` has entries
        # answers consumed in order before falling back to `status`: a status, or (status, extra headers)
        self.script: list[int | tuple[int, dict[str, str]]] = []
        self._lock = threading.Lock()

    def start(self) -> WebhookReceiver:
        if self._held is not None:
            self._held.release()
        super().start()
        return self

    def stop(self) -> None:
        super().stop()
        if self._held is not None:
            self._held.hold()
        elif self.port:  # started on a port the kernel chose
            self._held = HeldPort(self.port, self.host)

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        if self._held is not None:
            self._held.release()

    def answer(self) -> tuple[int, dict[str, str]]:
        with self._lock:
            answer = self.script.pop(0) if self.script else self.status
        return answer if isinstance(answer, tuple) else (answer, {})

    def record(self, received: Received) -> None:
        with self._lock:
            self.requests.append(received)
        super().record(received)

    def accepted(self) -> list[Received]:
        """Requests answered 2xx, in arrival order."""
        with self._lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def wait_for(self, n: int, timeout: float = 10.0) -> list[Received]:
        """Block until `n` requests were accepted (or timeout), then return the accepted ones."""
        deadline = time.monotonic() + timeout
        while len(self.accepted()) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.accepted()
