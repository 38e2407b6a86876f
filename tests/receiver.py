"""The tests' webhook receiver: the product's (streamvad/sinks/receiver.py), recording every request and answering
from a script, so tests can stage outages, Retry-After answers and restarts on the same port."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from streamvad.sinks import receiver
from streamvad.sinks.receiver import Received

__all__ = ["Received", "WebhookReceiver"]


class WebhookReceiver(receiver.WebhookReceiver):
    """While it is down (stopped, or given a port and not started yet) its port stays held by a socket that is bound
    but does not listen: a delivery is refused as by a stopped server, and no server another test starts meanwhile
    (a ZeroMQ socket, a broker, on another test process) is handed the port, which would take the delivery instead
    (a reset, or a hang until the sink's timeout)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._held: socket.socket | None = None
        if self.port:
            self._hold()
        self.requests: list[Received] = []
        self.status = 200  # answer for every authentic request unless `script` has entries
        # answers consumed in order before falling back to `status`: a status, or (status, extra headers)
        self.script: list[int | tuple[int, dict[str, str]]] = []
        self._lock = threading.Lock()

    def _hold(self) -> None:
        held = socket.socket()
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # its closed connections may be in TIME_WAIT
        try:
            held.bind((self.host, self.port))
        except OSError:  # connections of the server just stopped still hold it, which keeps it from others as well
            held.close()
            return
        self._held = held

    def _release(self) -> None:
        if self._held is not None:
            self._held.close()
            self._held = None

    def start(self) -> WebhookReceiver:
        self._release()
        super().start()
        return self

    def stop(self) -> None:
        super().stop()
        self._release()
        self._hold()

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._release()

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
