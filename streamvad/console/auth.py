"""Who may use the console and the API: an API token, or users with scrypt-hashed passwords.

Requests carry `Authorization: Bearer <token or session>`. A console login exchanges a user and password
for a session (random, in memory, `serve.auth.session_hours` long); the console also keeps it in a
SameSite=Strict cookie, which only GET requests accept, so `<img>` and `<video>` tags can load pictures
while no other site can make a logged-in browser change anything (a mutation needs the header).
With neither a token nor a user configured, a random token is made at start and logged with the console's
address, as Jupyter does: the API is never open by accident.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time

from streamvad.config import AuthConfig

COOKIE = "streamvad_session"
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # OWASP's minimum for scrypt; ~50 ms a check


def hash_password(password: str, salt: bytes | None = None) -> str:
    """`scrypt$<salt>$<key>` (base64), what `serve.auth.users` holds; `streamvad hash-password` prints it."""
    salt = salt or secrets.token_bytes(16)
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, dklen=32, **_SCRYPT)
    return f"scrypt${base64.b64encode(salt).decode()}${base64.b64encode(key).decode()}"


def verify_password(password: str, hashed: str) -> bool:
    try:
        _kind, salt, key = hashed.split("$")
        expected = base64.b64decode(key)
        got = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), dklen=len(expected), **_SCRYPT)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


class Auth:
    """Checks credentials; holds the console's sessions."""

    def __init__(self, cfg: AuthConfig) -> None:
        self.users = dict(cfg.users)
        self.generated = cfg.token is None and not cfg.users
        self.token = secrets.token_urlsafe(24) if self.generated else cfg.token
        self.session_s = cfg.session_hours * 3600.0
        self._sessions: dict[str, tuple[str, float]] = {}  # session -> (user, expiry)
        self._lock = threading.Lock()

    def login(self, user: str | None, password: str | None, token: str | None) -> tuple[str, str] | None:
        """(session, who) for a valid user and password, or the API token; None otherwise."""
        if token is not None and self.token is not None and hmac.compare_digest(token, self.token):
            who = "token"
        elif user is not None and password is not None and user in self.users \
                and verify_password(password, self.users[user]):
            who = user
        else:
            return None
        session = secrets.token_urlsafe(32)
        with self._lock:
            self._sessions[session] = (who, time.time() + self.session_s)
        return session, who

    def logout(self, session: str) -> None:
        with self._lock:
            self._sessions.pop(session, None)

    def who(self, credential: str | None) -> str | None:
        """The user a bearer credential (the API token or a session) stands for, or None."""
        if not credential:
            return None
        if self.token is not None and hmac.compare_digest(credential, self.token):
            return "token"
        now = time.time()
        with self._lock:
            self._sessions = {s: v for s, v in self._sessions.items() if v[1] > now}
            found = self._sessions.get(credential)
        return None if found is None else found[0]
