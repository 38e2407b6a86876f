"""The HTTP app (console/api.py) on uvicorn, in a daemon thread of the serve process.

The socket is bound here, before the thread starts, so a port in use is an error at start-up and port 0 is
known at once (tests and `serve.http_port: 0` read it from `url`).
"""

from __future__ import annotations

import logging
import socket
import threading

import uvicorn

from streamvad.console.api import Site, build_app
from streamvad.console.auth import Auth
from streamvad.errors import ConfigError
from streamvad.live.health import ServeState

log = logging.getLogger(__name__)


class ConsoleServer:
    """/healthz and /metrics for every role; with a `site`, the API and the console as well."""

    def __init__(self, state: ServeState, host: str = "127.0.0.1", port: int = 0, site: Site | None = None,
                 auth: Auth | None = None) -> None:
        self.auth = auth or (Auth(site.cfg.serve.auth) if site is not None else None)
        self.app = build_app(state, site, self.auth)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((host, port))
        except OSError as err:
            self._sock.close()
            raise ConfigError(f"serve.http_port: cannot listen on {host}:{port} ({err.strerror})") from None
        self._sock.listen(128)
        self.host, self.port = host, int(self._sock.getsockname()[1])
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]},
                                        name="streamvad-http", daemon=True)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> ConsoleServer:
        self._thread.start()
        if self.auth is None:
            log.info("health and metrics on %s/healthz and %s/metrics", self.url, self.url)
        elif self.auth.generated:
            log.warning("console: %s/#token=%s (a token made for this run: set serve.auth.token or users to keep "
                        "one); health and metrics on /healthz and /metrics", self.url, self.auth.token)
        else:
            log.info("console on %s/ (API %s/api/docs); health and metrics on /healthz and /metrics", self.url,
                     self.url)
        return self

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(10.0)
        self._sock.close()
