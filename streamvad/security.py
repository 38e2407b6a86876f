"""ZeroMQ CURVE on every tcp:// socket: who may push frames, publish verdicts or report status.

Without it, any process that reaches a worker's or the events process's port can inject frames for a
made-up camera or publish made-up verdicts, and StreamVAD would send correctly signed webhooks for
alerts that never happened. With `transport.curve.keys` set (a directory from `streamvad keys generate`),
every socket a process binds on tcp:// is a CURVE server that admits only the client public keys in
`<keys>/allowed/` (checked by ZAP, pyzmq's authenticator thread), and every socket it connects
authenticates with the site's client key against the server key. A refused client is logged and counted
(`denied`, exported in /metrics). ipc:// sockets are not encrypted: they are files in the user's private
directory (transport.private_socket_dir). Plain tcp:// needs an explicit `transport.insecure: true`.

The policy is per process (`configure`, called by every entry point before its first socket), since a
ZAP handler serves the whole ZeroMQ context.
"""

from __future__ import annotations

import logging
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator

from streamvad.config import TransportConfig
from streamvad.errors import ConfigError

log = logging.getLogger(__name__)

SERVER, CLIENT, ALLOWED = "server", "client", "allowed"


def generate_keys(folder: Path) -> dict[str, Path]:
    """A site's key pairs: server (for sockets that bind) and client (for sockets that connect), secrets
    readable by the owner only, and the client's public key in `allowed/`."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in (SERVER, CLIENT):
        public, secret = zmq.auth.create_certificates(folder, name)
        Path(secret).chmod(0o600)
        out[name] = Path(public)
    allowed = folder / ALLOWED
    allowed.mkdir(exist_ok=True)
    shutil.copy(out[CLIENT], allowed / f"{CLIENT}.key")
    out[ALLOWED] = allowed
    return out


def _load(path: Path, secret: bool) -> tuple[bytes, bytes | None]:
    try:
        public, private = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as err:
        raise ConfigError(f"transport.curve.keys: {path}: not a readable CURVE key ({err}); run "
                          "`streamvad keys generate DIR`") from None
    if secret and private is None:
        raise ConfigError(f"transport.curve.keys: {path} holds no secret key")
    return public, private


@dataclass
class _AllowList:
    """ZAP's credentials callback: the allowed client keys, and how many clients were refused."""

    keys: set[bytes]
    denied: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def callback(self, domain: str, key: bytes) -> bool:
        if key in self.keys:
            return True
        with self.lock:
            self.denied += 1
        log.warning("refused a ZeroMQ connection with an unknown CURVE key %s... (%d so far)", key[:8].decode(),
                    self.denied)
        return False


class Curve:
    """One process's CURVE keys and, once it binds a tcp:// socket, its ZAP authenticator."""

    def __init__(self, keys: Path) -> None:
        self.server_public, self.server_secret = _load(keys / f"{SERVER}.key_secret", secret=True)
        self.client_public, self.client_secret = _load(keys / f"{CLIENT}.key_secret", secret=True)
        allowed = keys / ALLOWED
        if not allowed.is_dir():
            raise ConfigError(f"transport.curve.keys: {allowed} is missing (the client public keys to accept)")
        self.allow = _AllowList(set(zmq.auth.load_certificates(allowed)))
        self._auth: ThreadAuthenticator | None = None
        self._lock = threading.Lock()

    def _authenticator(self) -> None:
        with self._lock:
            if self._auth is None:
                self._auth = ThreadAuthenticator(zmq.Context.instance())
                self._auth.start()
                self._auth.configure_curve_callback(domain="*", credentials_provider=self.allow)

    def apply(self, sock: zmq.Socket, bind: bool) -> None:
        if bind:
            self._authenticator()
            sock.curve_secretkey, sock.curve_publickey = self.server_secret, self.server_public
            sock.curve_server = True
        else:
            sock.curve_secretkey, sock.curve_publickey = self.client_secret, self.client_public
            sock.curve_serverkey = self.server_public

    def stop(self) -> None:
        with self._lock:
            if self._auth is not None:
                self._auth.stop()
                self._auth = None


_active: Curve | None = None


def configure(transport: TransportConfig | None) -> None:
    """This process's policy for tcp:// sockets, from `transport` (None: none, as in tests and tools)."""
    global _active
    if _active is not None:
        _active.stop()
    _active = Curve(Path(transport.curve.keys)) if transport is not None and transport.curve is not None else None


def check(transport: TransportConfig) -> None:
    """A site that talks tcp:// must authenticate it, or say out loud that it does not."""
    plain = [e for e in (transport.frames, transport.verdicts, transport.status) if "tcp://" in e]
    if not plain or transport.curve is not None:
        return
    if not transport.insecure:
        raise ConfigError(f"transport: {plain[0]} is tcp:// without authentication; set transport.curve.keys "
                          "(`streamvad keys generate DIR`), or transport.insecure: true on a trusted network")
    log.warning("transport.insecure: tcp:// sockets are NOT authenticated; anyone who reaches them can inject "
                "frames and forge verdicts")


def secure(sock: zmq.Socket, endpoints: list[str], bind: bool) -> None:
    """Apply the process's CURVE keys to a socket about to bind or connect tcp:// `endpoints`."""
    if _active is not None and any(e.startswith("tcp://") for e in endpoints):
        _active.apply(sock, bind)


def denied() -> int:
    """Clients this process refused for an unknown key."""
    return 0 if _active is None else _active.allow.denied
