"""The ZeroMQ wire format and the sockets that carry it (documented for operators in docs/WIRE.md).

Every message is two parts: a UTF-8 JSON header (`v`, `type` and the fields of that type) and a
binary payload (JPEG or raw pixels for frames, float16 patch confidences for verdicts, empty for
end-of-stream and status). Keeping the format in this one module means readers, workers and sinks can
never disagree about it, and a malformed message is a `WireError` with one readable line.

Backpressure is declared, as in Savant: a live camera uses policy "drop" (a frame that cannot be
queued is dropped and counted, so the worker always sees recent frames), a replay uses "block" (the
reader waits, so every frame is scored). End of stream is an explicit message, never a timeout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import io
import json
import logging
import os
import socket
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

import cv2
import numpy as np
import zmq
from PIL import Image
from pydantic import ValidationError

from streamvad import security
from streamvad.config import WIRE_MAX_SIDE, TransportConfig
from streamvad.errors import StreamVADError
from streamvad.messages import (
    WIRE_VERSION,
    AckHeader,
    ControlReply,
    EnrolRequest,
    LinkHeader,
    first_error,
    header_model,
)
from streamvad.sources.shrink import limit_size
from streamvad.types import Evidence, Frame, FrameKey, Verdict

log = logging.getLogger(__name__)

MESSAGE_TYPES = ("frame", "verdict", "eos", "status")
_DEFAULT_LINGER_MS = 1000  # long enough to flush an EOS on close, short enough not to hang an exit
# Bounds on what a receiver accepts, so a hostile or broken sender cannot make it allocate without limit:
# frames are at most WIRE_MAX_SIDE pixels a side (readers shrink to transport.frame_max_side, at most that),
# checked from the header and the JPEG's own header before anything is decoded; ZeroMQ drops a message
# larger than a raw frame of that size (and the peer that sent it) before it is read.
MAX_MESSAGE_BYTES = 3 * WIRE_MAX_SIDE * WIRE_MAX_SIDE + (1 << 20)

MessageType = Literal["frame", "verdict", "eos", "status"]
Received = TypeVar("Received")
Policy = Literal["block", "drop"]


class WireError(StreamVADError):
    """A message does not follow the wire format (or cannot be encoded into it)."""


@dataclass
class Message:
    """One decoded message: the header as sent, plus the decoded frame or verdict for those types."""

    type: MessageType
    header: dict[str, Any]
    frame: Frame | None = None
    verdict: Verdict | None = None
    jpeg: bytes | None = None  # a frame's JPEG as sent, when it came as one: keeping it needs no new encoding

    @property
    def camera(self) -> str:
        return str(self.header["camera"])

    @property
    def last_key(self) -> FrameKey | None:
        """For an EOS: the key of the last frame its reader queued (None if it queued none, or predates
        the field); the events process waits for that frame's verdict before closing the camera's events."""
        if self.type != "eos" or self.header.get("index") is None:
            return None
        return FrameKey(self.camera, self.header["index"], float(self.header["pts"]))


# --------------------------------------------------------------------------- encoding


def _pack(header: dict[str, Any], payload: bytes = b"") -> list[bytes]:
    return [json.dumps({"v": WIRE_VERSION, **header}, separators=(",", ":")).encode("utf-8"), payload]


def encode_frame(frame: Frame, encoding: Literal["jpeg", "raw"] = "jpeg", quality: int = 90, *,
                 preview: bool = False) -> list[bytes]:
    """Frame -> [header, JPEG or raw HxWx3 uint8 bytes]; `preview`: a live tile that no verdict follows."""
    img = frame.image
    if not (isinstance(img, np.ndarray) and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3):
        got = f"{getattr(img, 'dtype', type(img).__name__)} {getattr(img, 'shape', '')}"
        raise WireError(f"frame {frame.camera}/{frame.index}: expected a uint8 [H, W, 3] image, got {got}")
    if encoding == "jpeg":
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        payload = buf.getvalue()
    elif encoding == "raw":
        payload = np.ascontiguousarray(img).tobytes()
    else:
        raise WireError(f"frame encoding must be 'jpeg' or 'raw', got {encoding!r}")
    header = {
        "type": "frame", "camera": frame.camera, "index": int(frame.index), "pts": float(frame.pts),
        "wall_time": float(frame.wall_time), "label": None if frame.label is None else int(frame.label),
        "source": frame.source, "shape": list(img.shape), "encoding": encoding,
    }
    for flag, on in (("restart", frame.restart), ("preview", preview)):
        if on:
            header[flag] = True
    return _pack(header, payload)


def encode_verdict(verdict: Verdict, frame_wall_time: float | None = None) -> list[bytes]:
    """Verdict -> [header, float16 patch confidences, then its evidence if any]; `frame_wall_time` lets sinks
    measure latency."""
    k = verdict.key
    payload = np.asarray(verdict.patch_confidences, dtype="<f2").tobytes()
    shape = None
    if (ev := verdict.evidence) is not None:
        shape = {"patches": len(ev.patches), "dim": int(ev.vectors.shape[1]), "motion": ev.velocities is not None}
        payload += np.asarray(ev.patches, dtype="<i4").tobytes() + np.asarray(ev.vectors, dtype="<f2").tobytes()
        payload += b"" if ev.velocities is None else np.asarray(ev.velocities, dtype="<f4").tobytes()
    header = {
        "type": "verdict", "camera": k.camera, "index": int(k.index), "pts": float(k.pts),
        "score": float(verdict.score), "raw_score": float(verdict.raw_score),
        "anomalous": bool(verdict.anomalous), "global_confidence": float(verdict.global_confidence),
        "grid": [int(verdict.grid[0]), int(verdict.grid[1])], "unsafe_patches": int(verdict.unsafe_patches),
        "threshold": float(verdict.threshold), "decided_by": verdict.decided_by,
        "wall_time": None if frame_wall_time is None else float(frame_wall_time),
        "motion_score": None if verdict.motion_score is None else float(verdict.motion_score),
        "tamper": verdict.tamper, "model_version": verdict.model_version, "evidence": shape,
    }
    return _pack(header, payload)


def encode_eos(camera: str, last: FrameKey | None = None, frames: int | None = None) -> list[bytes]:
    """Explicit end of stream for one camera: the worker flushes its batch, the tracker closes events.

    `last` (sent as `index`/`pts`) is the last frame the reader queued and `frames` how many it queued:
    with several workers the EOS reaches one of them, so it must say which verdict ends the stream.
    """
    header: dict[str, Any] = {"type": "eos", "camera": camera}
    if last is not None:
        header.update(index=int(last.index), pts=float(last.pts))
    if frames is not None:
        header["frames"] = int(frames)
    return _pack(header)


def relay(msg: Message) -> list[bytes]:
    """A header-only message (EOS, status) exactly as received, fields this build does not know included,
    so a hop in between (the worker) never strips what the sender meant for the receiver."""
    if msg.type in ("frame", "verdict"):
        raise WireError(f"relay: a {msg.type} message has a payload; encode it instead")
    return [json.dumps(msg.header, separators=(",", ":")).encode("utf-8"), b""]


def encode_status(camera: str, state: str, **info: Any) -> list[bytes]:
    """Operator-facing state of a reader (e.g. "connected", "reconnecting") with free-form JSON fields."""
    return _pack({**info, "type": "status", "camera": camera, "state": state})


# --------------------------------------------------------------------------- decoding


def _split(parts: Sequence[bytes]) -> tuple[dict[str, Any], bytes]:
    """The validated header (its type's model in messages.py, dumped to plain JSON values) and the payload."""
    if len(parts) != 2:
        raise WireError(f"expected 2 message parts [header, payload], got {len(parts)}")
    raw_header, payload = (bytes(p) for p in parts)
    try:
        header = json.loads(raw_header.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WireError(f"header is not UTF-8 JSON: {err}") from None
    if not isinstance(header, dict):
        raise WireError(f"header must be a JSON object, got {type(header).__name__}")
    if header.get("v") != WIRE_VERSION:
        raise WireError(f"unsupported wire version {str(header.get('v'))[:20]} (this build speaks v{WIRE_VERSION})")
    kind = header.get("type")
    if kind not in MESSAGE_TYPES:
        raise WireError(f"unknown message type {str(kind)[:20]!r}, expected one of {', '.join(MESSAGE_TYPES)}")
    try:
        model = header_model(header).model_validate_json(raw_header)
    except ValueError as err:  # pydantic's ValidationError is a ValueError; so is an unknown status role
        raise WireError(first_error(err, kind) if isinstance(err, ValidationError) else str(err)) from None
    return model.model_dump(mode="json", exclude_unset=True), payload  # the fields as sent, validated


def _decode_jpeg(payload: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """The JPEG's pixels, once its own header (read without decoding) agrees with the message's shape: the
    shape is bounded, so a decompression bomb is refused before a byte of it is decoded. The decoding itself is
    OpenCV's (libjpeg-turbo, about twice as fast as Pillow's on a worker's frames), told to ignore any EXIF
    orientation, so the pixels are those the header described."""
    try:
        with Image.open(io.BytesIO(payload)) as img:
            if img.format != "JPEG":
                raise WireError(f"frame payload is {img.format}, not JPEG")
            if (img.height, img.width) != shape[:2]:
                raise WireError(f"JPEG is {img.height}x{img.width}, header says {shape[0]}x{shape[1]}; not decoded")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise WireError(f"frame payload is not a decodable JPEG: {err}") from None
    bgr = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None or bgr.shape[:2] != tuple(shape[:2]):
        raise WireError(f"frame payload is not a decodable JPEG of {shape[0]}x{shape[1]}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _frame_from(header: dict[str, Any], payload: bytes) -> Frame:
    shape = tuple(header["shape"])
    if header["encoding"] == "raw":
        if len(payload) != shape[0] * shape[1] * 3:
            raise WireError(f"raw frame payload is {len(payload)} bytes, shape {list(shape)} needs "
                            f"{shape[0] * shape[1] * 3}")
        image = np.frombuffer(payload, dtype=np.uint8).reshape(shape).copy()
    else:
        image = _decode_jpeg(payload, shape)
    return Frame(camera=header["camera"], index=header["index"], pts=header["pts"], wall_time=header["wall_time"],
                 image=image, label=header.get("label"), source=header["source"], restart=header.get("restart", False))


def _evidence_from(shape: dict[str, Any], payload: bytes, n_patches: int) -> Evidence:
    k, dim = shape["patches"], shape["dim"]
    need = 4 * k + 2 * k * dim + (8 * k if shape["motion"] else 0)
    if len(payload) != need:
        raise WireError(f"verdict evidence is {len(payload)} bytes, {k} patches of {dim} dims need {need}")
    patches = np.frombuffer(payload[: 4 * k], dtype="<i4").astype(np.int64)
    if patches.min() < 0 or patches.max() >= n_patches:
        raise WireError(f"verdict evidence names patches outside the grid's {n_patches}")
    vectors = np.frombuffer(payload[4 * k: 4 * k + 2 * k * dim], dtype="<f2").reshape(k, dim).copy()
    velocities = np.frombuffer(payload[4 * k + 2 * k * dim:], dtype="<f4").reshape(k, 2).copy() if shape["motion"] \
        else None
    return Evidence(patches, vectors, velocities)


def _verdict_from(header: dict[str, Any], payload: bytes) -> Verdict:
    h, w = header["grid"]
    if len(payload) < 2 * h * w or (header.get("evidence") is None and len(payload) != 2 * h * w):
        raise WireError(f"verdict payload is {len(payload)} bytes, grid {h}x{w} needs {2 * h * w} (float16)")
    shape = header.get("evidence")
    return Verdict(
        key=FrameKey(header["camera"], header["index"], header["pts"]), score=header["score"],
        raw_score=header["raw_score"], anomalous=header["anomalous"], global_confidence=header["global_confidence"],
        patch_confidences=np.frombuffer(payload[: 2 * h * w], dtype="<f2").astype(np.float32), grid=(h, w),
        unsafe_patches=header["unsafe_patches"], threshold=header["threshold"], decided_by=header["decided_by"],
        motion_score=header.get("motion_score"), tamper=header.get("tamper"),
        model_version=header.get("model_version"),
        evidence=None if shape is None else _evidence_from(shape, payload[2 * h * w:], h * w),
    )


def decode(parts: Sequence[bytes]) -> Message:
    """Any message -> `Message`; raises `WireError` (one line) for anything malformed."""
    header, payload = _split(parts)
    kind = header["type"]
    if kind == "frame":
        return Message("frame", header, frame=_frame_from(header, payload),
                       jpeg=payload if header["encoding"] == "jpeg" else None)
    if kind == "verdict":
        return Message("verdict", header, verdict=_verdict_from(header, payload))
    return Message(kind, header)


def _expect(parts: Sequence[bytes], kind: MessageType) -> Message:
    msg = decode(parts)
    if msg.type != kind:
        raise WireError(f"expected a {kind} message, got {msg.type}")
    return msg


def decode_frame(parts: Sequence[bytes]) -> Frame:
    frame = _expect(parts, "frame").frame
    assert frame is not None
    return frame


def as_transported(frame: Frame, max_side: int | None, quality: int | None) -> Frame:
    """The frame a worker decodes when a reader sends `frame`: shrunk to `max_side`, then through JPEG at
    `quality` (None: no JPEG round trip). Offline fit, replay and eval embed this, so a model sees the same
    pixels whether footage reaches it live or from a recording."""
    frame = limit_size(frame, min(max_side or WIRE_MAX_SIDE, WIRE_MAX_SIDE))
    if quality is None:
        return frame
    return dataclasses.replace(frame, image=decode_frame(encode_frame(frame, "jpeg", quality)).image)


def decode_verdict(parts: Sequence[bytes]) -> tuple[Verdict, dict[str, Any]]:
    """-> (verdict, header); the header carries `wall_time` of the source frame (or None)."""
    msg = _expect(parts, "verdict")
    assert msg.verdict is not None
    return msg.verdict, msg.header


# --------------------------------------------------------------------------- sockets


def private_socket_dir(folder: Path) -> None:
    """Make sure an ipc:// socket's directory exists, is ours and admits no one else (mode 0700): a socket
    file in a shared directory can be connected to, or taken first, by any local user."""
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = folder.stat()
    except OSError as err:
        raise WireError(f"{folder}: cannot create the ipc:// socket directory ({err.strerror})") from None
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise WireError(f"{folder}: ipc:// socket directory must be private (yours, mode 0700); it is mode "
                        f"{st.st_mode & 0o777:o}, owner uid {st.st_uid}; use another path or chmod 700 it")


def ipc_in_use(path: str, wait_s: float = 1.0) -> bool:
    """Whether a process listens on the ipc:// socket file at `path`. ZeroMQ binds over a live ipc socket without a
    word, so a second `serve` with the same endpoints would quietly take the first one's frames or requests. A
    listener that is closing (a socket of this process closed a moment ago) is given `wait_s` to go."""
    deadline = time.monotonic() + wait_s
    while True:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(wait_s)
            try:
                probe.connect(path)
            except TimeoutError:
                return True  # its backlog is full: someone listens
            except OSError:
                return False  # no file, or a stale one nobody listens on
        if time.monotonic() >= deadline:
            return True
        time.sleep(0.05)


def _socket(kind: int, endpoints: str | Sequence[str], bind: bool, linger_ms: int,
            options: dict[int, int | bytes]) -> tuple[zmq.Socket, str]:
    """Create, configure and bind/connect a socket; options must be set before bind/connect to apply.

    Returns the socket and its endpoint(s) as text, with a wildcard port ("tcp://127.0.0.1:*")
    resolved to the port actually bound, so the other side can be told where to connect.
    """
    listed = [endpoints] if isinstance(endpoints, str) else list(endpoints)
    paths = sorted(e[len("ipc://"):] for e in listed if e.startswith("ipc://")) if bind else []
    with contextlib.ExitStack() as locks:
        for path in paths:
            private_socket_dir(Path(path).parent)
            locks.enter_context(_bind_lock(path))
            if ipc_in_use(path):
                raise WireError(f"cannot bind ipc://{path}: another process listens there (a second serve with the "
                                f"same transport endpoints?); give each its own")
        return _open(kind, listed, bind, linger_ms, options)


@contextlib.contextmanager
def _bind_lock(path: str, timeout_s: float = 10.0) -> Iterator[None]:
    """Held from the in-use probe of an ipc:// socket file to its bind, so two processes starting at once cannot
    both find it free and both bind it (the second would take it over). An flock on `<path>.lock`, which the
    kernel drops with a process that dies holding it."""
    try:
        lock = open(f"{path}.lock", "a")  # noqa: SIM115 - the with below closes it; an error here is one line
    except OSError as err:
        raise WireError(f"cannot bind ipc://{path}: cannot open {path}.lock ({err.strerror})") from None
    with lock:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise WireError(f"cannot bind ipc://{path}: {path}.lock stayed locked {timeout_s:g} s (another "
                                    "process binding it hangs?)") from None
                time.sleep(0.02)
        yield  # closing the file releases the lock


def _open(kind: int, listed: list[str], bind: bool, linger_ms: int,
          options: dict[int, int | bytes]) -> tuple[zmq.Socket, str]:
    """_socket past its ipc:// checks."""
    sock = zmq.Context.instance().socket(kind)
    sock.setsockopt(zmq.LINGER, linger_ms)
    for opt, value in options.items():
        sock.setsockopt(opt, value)
    security.secure(sock, listed, bind)
    names = []
    for endpoint in listed:
        try:
            sock.bind(endpoint) if bind else sock.connect(endpoint)
        except zmq.ZMQError as err:
            sock.close(0)
            raise WireError(f"cannot {'bind' if bind else 'connect'} {endpoint}: {err}") from None
        names.append(sock.getsockopt_string(zmq.LAST_ENDPOINT) if bind else endpoint)
    return sock, ",".join(names)


class ControlServer:
    """`serve`'s control socket (REP, bound): each request (an `EnrolRequest`) gets one `ControlReply`; a malformed
    one is answered with what is wrong with it, and counted."""

    def __init__(self, endpoint: str | Sequence[str]) -> None:
        self._sock, self.endpoint = _socket(zmq.REP, endpoint, True, 0, {zmq.MAXMSGSIZE: 1 << 16})
        self.malformed = 0

    def serve_one(self, handle: Callable[[EnrolRequest], tuple[bool, str]], timeout_ms: int = 0) -> bool:
        """Answer one request if one arrives within `timeout_ms`; whether one did."""
        if not self._sock.poll(timeout_ms, zmq.POLLIN):
            return False
        raw = self._sock.recv()
        try:
            request = EnrolRequest.model_validate_json(raw)
        except ValidationError as err:
            self.malformed += 1
            ok, message = False, first_error(err, "control")
            log.warning("control: refused a malformed request (%d so far): %s", self.malformed, message)
        else:
            ok, message = handle(request)
        self._sock.send(ControlReply(v=WIRE_VERSION, ok=ok, message=message).model_dump_json().encode())
        return True

    def close(self) -> None:
        self._sock.close()


def control_request(endpoint: str, request: EnrolRequest, timeout_s: float = 10.0) -> ControlReply:
    """Send one control message to a running `serve` and wait for its answer."""
    sock, _ = _socket(zmq.REQ, endpoint, False, 0, {})
    try:
        sock.send(request.model_dump_json().encode())
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            raise WireError(f"no answer on {endpoint} within {timeout_s:g} s: is `serve` running with this config?")
        try:
            return ControlReply.model_validate_json(sock.recv())
        except ValidationError as err:
            raise WireError(f"{endpoint}: not a control reply ({first_error(err, 'reply')})") from None
    finally:
        sock.close(0)


class _Receiver(Generic[Received]):
    """Shared receive loop: malformed messages are logged, counted and skipped, never raised."""

    def __init__(self, sock_and_endpoint: tuple[zmq.Socket, str]) -> None:
        self._sock, self.endpoint = sock_and_endpoint
        self.received = 0
        self.malformed = 0

    def _decode(self, parts: list[bytes]) -> Received:
        raise NotImplementedError

    def recv(self, timeout_ms: int | None = None) -> Received | None:
        """The next well-formed message, or None when `timeout_ms` passes (None waits forever)."""
        deadline = None if timeout_ms is None else time.monotonic() + timeout_ms / 1000
        while True:
            left = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self._sock.poll(left, zmq.POLLIN):
                return None
            parts = self._sock.recv_multipart()
            try:
                msg = self._decode(parts)
            except WireError as err:
                self.malformed += 1
                log.warning("dropped malformed message on %s (%d so far): %s",
                            self.endpoint, self.malformed, err)
                continue
            self.received += 1
            return msg

    def close(self) -> None:
        self._sock.close()


class FramePusher:
    """Sends frames (PUSH). Readers normally connect to a worker that binds.

    policy "drop": non-blocking send with IMMEDIATE set, so a frame that cannot be queued (queue full,
    or no worker connected) is dropped and counted in `dropped`. policy "block": waits for room.
    `endpoint` may be a list of workers' endpoints; ZeroMQ then round-robins frames among them.
    A socket is not thread-safe: use one pusher per thread.
    """

    def __init__(self, endpoint: str | Sequence[str], hwm: int = 64, policy: Policy = "block",
                 bind: bool = False, encoding: Literal["jpeg", "raw"] = "jpeg", quality: int = 90,
                 linger_ms: int = _DEFAULT_LINGER_MS) -> None:
        if policy not in ("block", "drop"):
            raise WireError(f"transport policy must be 'block' or 'drop', got {policy!r}")
        options = {zmq.SNDHWM: hwm, zmq.IMMEDIATE: int(policy == "drop")}
        self._sock, self.endpoint = _socket(zmq.PUSH, endpoint, bind, linger_ms, options)
        self.policy = policy
        self.encoding: Literal["jpeg", "raw"] = encoding
        self.quality = quality
        self.sent = 0
        self.dropped = 0
        # Per camera, since its last EOS: the last frame queued and how many were, which that EOS reports.
        self._last: dict[str, FrameKey] = {}
        self._queued: Counter[str] = Counter()

    @classmethod
    def from_config(cls, cfg: TransportConfig, bind: bool = False,
                    encoding: Literal["jpeg", "raw"] = "jpeg") -> FramePusher:
        return cls(cfg.frames, cfg.hwm, cfg.policy, bind, encoding, cfg.jpeg_quality)

    def send(self, frame: Frame) -> bool:
        """True if the frame was queued; False (and counted) if policy "drop" had to drop it."""
        parts = encode_frame(frame, self.encoding, self.quality)
        if self.policy == "block":
            self._sock.send_multipart(parts)
        else:
            try:
                self._sock.send_multipart(parts, flags=zmq.NOBLOCK)
            except zmq.Again:
                self.dropped += 1
                return False
        self.sent += 1
        self._last[frame.camera] = frame.key
        self._queued[frame.camera] += 1
        return True

    def send_eos(self, camera: str, timeout_ms: int = 5000) -> bool:
        """End of stream is never dropped for lack of room: it waits up to `timeout_ms` for it. It names the
        camera's last queued frame, whose verdict the events process waits for (see `encode_eos`)."""
        if not self._sock.poll(timeout_ms, zmq.POLLOUT):
            log.warning("could not send end-of-stream for %s within %d ms (no worker?)", camera, timeout_ms)
            return False
        self._sock.send_multipart(encode_eos(camera, self._last.pop(camera, None), self._queued.pop(camera, 0)))
        return True

    def send_status(self, camera: str, state: str, **info: Any) -> bool:
        """Status is advisory: dropped rather than waited for."""
        try:
            self._sock.send_multipart(encode_status(camera, state, **info), flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        return True

    def close(self, linger_ms: int | None = None) -> None:
        self._sock.close(linger_ms)


class FramePuller(_Receiver[Message]):
    """Receives frames (PULL), fair-queued across all connected readers. Workers normally bind."""

    def _decode(self, parts: list[bytes]) -> Message:
        return decode(parts)

    def __init__(self, endpoint: str | Sequence[str], hwm: int = 64, bind: bool = True,
                 linger_ms: int = 0) -> None:
        super().__init__(_socket(zmq.PULL, endpoint, bind, linger_ms,
                                 {zmq.RCVHWM: hwm, zmq.MAXMSGSIZE: MAX_MESSAGE_BYTES}))

    @classmethod
    def from_config(cls, cfg: TransportConfig, bind: bool = True) -> FramePuller:
        return cls(cfg.frames, cfg.hwm, bind)


@dataclass
class _Unacked:
    seq: int
    parts: list[bytes]  # the wire messages after the link header: [frame header, JPEG,] header, payload
    sent_at: float | None = None  # monotonic; None: not yet handed to ZeroMQ (no events process connected)

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.parts)


class VerdictLink:
    """The worker's end of the verdict link (DEALER, connects to the events process): at-least-once delivery.

    Every verdict (with its snapshot frame) and relayed EOS is numbered in this sender's session and kept
    until the events process acknowledges it, which it does only once it has committed it to its database.
    A killed events process therefore loses nothing it had received but not committed: what stays
    unacknowledged for `resend_after_s` is sent again, in order, and the events process drops the repeats
    by number. The buffer is bounded (`capacity` messages and `max_bytes`, since a verdict may carry its
    frame's JPEG): past either the oldest are dropped and counted, and each message tells the receiver the
    oldest number still held, so it knows what is gone for good.
    """

    def __init__(self, endpoint: str, *, capacity: int = 10_000, max_bytes: int = 256 << 20,
                 resend_after_s: float = 5.0, hwm: int = 1000, linger_ms: int = _DEFAULT_LINGER_MS) -> None:
        options = {zmq.SNDHWM: hwm, zmq.IMMEDIATE: 1, zmq.MAXMSGSIZE: 1 << 16}
        self._sock, self.endpoint = _socket(zmq.DEALER, endpoint, False, linger_ms, options)
        self.sender = uuid.uuid4().hex
        self.capacity, self.max_bytes, self.resend_after_s = capacity, max_bytes, resend_after_s
        self._seq = 0
        self._unacked: OrderedDict[int, _Unacked] = OrderedDict()
        self.bytes = 0  # held unacknowledged
        self._in_order = True  # everything numbered so far has been handed to ZeroMQ
        self.resent = 0
        self.lost = 0  # dropped unacknowledged from the full buffer

    @property
    def unacked(self) -> int:
        return len(self._unacked)

    def send(self, parts: list[bytes]) -> None:
        """Number `parts` (one or two encoded messages), keep them until acknowledged and send them now,
        unless earlier ones still wait to go out (then `service` sends them all, in order)."""
        self._seq += 1
        self._unacked[self._seq] = entry = _Unacked(self._seq, parts)
        self.bytes += entry.size
        while len(self._unacked) > 1 and (len(self._unacked) > self.capacity or self.bytes > self.max_bytes):
            self._pop_oldest()  # the newest is always kept, however large
            self.lost += 1
            if self.lost == 1 or self.lost % 1000 == 0:
                log.error("verdict link to %s: %d unacknowledged verdicts dropped so far (buffer of %d messages or "
                          "%d MiB full; is the events process down?)", self.endpoint, self.lost, self.capacity,
                          self.max_bytes >> 20)
        if self._in_order:
            self._in_order = self._transmit(entry)

    def _pop_oldest(self) -> None:
        self.bytes -= self._unacked.popitem(last=False)[1].size

    def _transmit(self, entry: _Unacked) -> bool:
        oldest = next(iter(self._unacked))
        link = _pack({"type": "link", "sender": self.sender, "seq": entry.seq, "oldest": oldest})[0]
        try:
            self._sock.send_multipart([link, *entry.parts], flags=zmq.NOBLOCK)
        except zmq.Again:
            return False
        entry.sent_at = time.monotonic()
        return True

    def service(self) -> None:
        """Take in acknowledgements and resend what is overdue; call it often (the worker does every loop)."""
        while self._sock.poll(0, zmq.POLLIN):
            parts = self._sock.recv_multipart()
            try:
                ack = AckHeader.model_validate_json(parts[0]) if len(parts) == 1 else None
            except ValidationError:
                ack = None
            if ack is None or ack.sender != self.sender:
                log.warning("verdict link to %s: ignoring a reply that is not an ack for this sender", self.endpoint)
                continue
            while self._unacked and next(iter(self._unacked)) <= ack.seq:
                self._pop_oldest()
        if not self._unacked:
            self._in_order = True
            return
        head = next(iter(self._unacked.values()))
        if head.sent_at is None or time.monotonic() - head.sent_at >= self.resend_after_s:
            self._resend()

    def _resend(self) -> None:
        """Go back N: send everything unacknowledged again, in order (the receiver takes them only in order)."""
        for entry in self._unacked.values():
            again = entry.sent_at is not None
            if not self._transmit(entry):
                self._in_order = False
                return
            self.resent += again
        self._in_order = True

    def flush(self, timeout_s: float) -> bool:
        """Wait up to `timeout_s` for everything to be acknowledged; True if it was."""
        deadline = time.monotonic() + timeout_s
        while self._unacked and time.monotonic() < deadline:
            self._sock.poll(50, zmq.POLLIN)
            self.service()
        return not self._unacked

    def close(self, linger_ms: int | None = None) -> None:
        self._sock.close(linger_ms)


@dataclass
class Delivery:
    """Messages one link header carried (a verdict, its snapshot frame first if anomalous, or an EOS)."""

    peer: bytes
    link: LinkHeader
    messages: list[Message]


class VerdictInbox(_Receiver[Delivery]):
    """The events process's end of the verdict link (ROUTER, binds): deliveries from any number of workers,
    acknowledged by `ack` once committed. With `auto_ack` each is acknowledged on receipt (tools and tests
    that keep no database)."""

    def __init__(self, endpoint: str | Sequence[str], *, bind: bool = True, hwm: int = 1000,
                 auto_ack: bool = False) -> None:
        super().__init__(_socket(zmq.ROUTER, endpoint, bind, 0,
                                 {zmq.RCVHWM: hwm, zmq.MAXMSGSIZE: 2 * MAX_MESSAGE_BYTES}))
        self.auto_ack = auto_ack
        self._queue: list[Message] = []

    def _decode(self, parts: list[bytes]) -> Delivery:
        peer, *rest = parts
        if len(rest) not in (3, 5):
            raise WireError(f"expected a link header and one or two messages (3 or 5 parts), got {len(rest)}")
        try:
            link = LinkHeader.model_validate_json(rest[0])
        except ValidationError as err:
            raise WireError(first_error(err, "link")) from None
        delivery = Delivery(peer, link, [decode(rest[i:i + 2]) for i in range(1, len(rest), 2)])
        if self.auto_ack:
            self.ack(peer, link.sender, link.seq)
        return delivery

    def ack(self, peer: bytes, sender: str, seq: int) -> None:
        """Tell `peer` that everything of `sender` up to `seq` is committed (dropped if the peer is gone)."""
        with contextlib.suppress(zmq.ZMQError):  # the peer is gone: it resends, and the repeat is acknowledged then
            self._sock.send_multipart([peer, _pack({"type": "ack", "sender": sender, "seq": seq})[0]],
                                      flags=zmq.NOBLOCK)

    def recv_message(self, timeout_ms: int | None = None) -> Message | None:
        """The next message alone (tools and tests that only read verdicts; use with `auto_ack`)."""
        if not self._queue:
            delivery = self.recv(timeout_ms)
            if delivery is None:
                return None
            self._queue.extend(delivery.messages)
        return self._queue.pop(0)
