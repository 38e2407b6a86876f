"""Ports of test servers that go down and come back on the same port (a camera server, a webhook receiver)."""

from __future__ import annotations

import socket


class HeldPort:
    """A port kept while its server is down: bound but not listening, so a connection to it is refused as by a
    stopped server, and the kernel hands it to no other socket that asks for any free port (a ZeroMQ socket, a
    broker or a server of a test on another process), which would take the connection instead: a reset, or a
    hang until the client's timeout. A port given as 0 is one the kernel chose (`port` says which)."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self._sock: socket.socket | None = None
        self.hold()

    def hold(self) -> None:
        """Bind it (again). Not where the server's own connections still hold it: they keep it from others too."""
        if self._sock is not None:
            return
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # its closed connections may be in TIME_WAIT
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            if not self.port:
                raise
            return
        self.port = int(sock.getsockname()[1])
        self._sock = sock

    def release(self) -> None:
        """Free it for its own server, just before that binds it."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
