"""The wire's message headers as one versioned schema (docs/WIRE.md): what a receiver accepts, and nothing else.

Every header is validated against its type's model before any of its fields is used: integers are
integers (not bools or strings), numbers are finite, camera ids are bounded in length and charset
(nothing that could break a log line), frame sides are bounded (a shape claiming 9000 pixels is refused
from the header), and fields a type does not define are refused. Status reports are typed per role for
every field the health endpoint and /metrics read, so a forged or broken report cannot put a string
where a counter goes. Later fields (model versions, new event types) are added here, with the version.
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, create_model, model_validator

from streamvad.config import WIRE_MAX_SIDE
from streamvad.sources.status import SourceStatus
from streamvad.types import TAMPER_TYPES

WIRE_VERSION = 1

CameraId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,128}$")]
Count = Annotated[int, Field(ge=0)]
Side = Annotated[int, Field(gt=0, le=WIRE_MAX_SIDE)]
Text = Annotated[str, StringConstraints(max_length=4096)]
Tamper = Literal[TAMPER_TYPES]  # type: ignore[valid-type]


class _Header(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid", frozen=True)

    v: Literal[1]
    camera: CameraId


class FrameHeader(_Header):
    type: Literal["frame"]
    index: Count
    pts: float
    wall_time: float
    label: int | None = None
    source: Text
    shape: tuple[Side, Side, Literal[3]]
    encoding: Literal["jpeg", "raw"]
    restart: bool = False  # a looped file's next pass or a reconnected stream begins (no motion against the one before)
    preview: bool = False  # a worker's live tile of a camera it does not score yet (learning): no verdict follows


class EvidenceShape(BaseModel):
    """What follows a verdict's patch confidences in its payload: `patches` int32 patch indices, their embeddings
    (`patches` x `dim` float16) and, with `motion`, their velocities (`patches` x 2 float32); see types.Evidence."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    patches: Annotated[int, Field(ge=1, le=WIRE_MAX_SIDE)]
    dim: Annotated[int, Field(ge=1, le=8192)]
    motion: bool


class VerdictHeader(_Header):
    type: Literal["verdict"]
    index: Count
    pts: float
    wall_time: float | None = None  # of the source frame, for latency
    score: float
    raw_score: float
    anomalous: bool
    global_confidence: float
    grid: tuple[Side, Side]
    unsafe_patches: Count
    threshold: float
    decided_by: Annotated[str, StringConstraints(max_length=256)]
    motion_score: float | None = None
    tamper: Tamper | None = None
    model_version: Annotated[str, StringConstraints(max_length=64)] | None = None
    evidence: EvidenceShape | None = None


class EosHeader(_Header):
    """End of stream; `index` and `pts` name the camera's last queued frame (older readers send neither).
    Fields it does not define are kept: a worker relays an EOS unchanged (transport.relay)."""

    model_config = ConfigDict(extra="allow")

    type: Literal["eos"]
    index: Count | None = None
    pts: float | None = None
    frames: Count | None = None

    @model_validator(mode="after")
    def _last_frame(self) -> EosHeader:
        if (self.index is None) != (self.pts is None):
            raise ValueError("fields 'index' and 'pts' come together")
        return self


class Histogram(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")

    bounds: list[float]
    counts: list[Count]
    sum: Annotated[float, Field(ge=0.0)]

    @model_validator(mode="after")
    def _one_count_per_bucket(self) -> Histogram:
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError(f"{len(self.counts)} counts for {len(self.bounds)} bounds (expected one more)")
        return self


class _Status(_Header):
    """What every process reports; other fields of a role's own are allowed but only typed ones are read."""

    model_config = ConfigDict(extra="allow")

    type: Literal["status"]
    state: Annotated[str, StringConstraints(max_length=64)]


# A reader reports its SourceStatus: the schema is derived from that dataclass's fields, so the two cannot drift.
_READER_TYPES: dict[str, Any] = {"int": Count, "float": Annotated[float, Field(ge=0.0)], "bool": bool, "str": Text,
                                 "float | None": float | None, "str | None": Text | None}
ReaderStatus = create_model(
    "ReaderStatus", __base__=_Status, role=(Literal["reader"], ...), sent=(Count, 0),
    **{f.name: (_READER_TYPES[str(f.type)], None if f.default is MISSING else f.default)
       for f in fields(SourceStatus) if f.name not in ("camera", "_arrivals")},
)


class WorkerStatus(_Status):
    role: Literal["worker"]
    frames_in: dict[CameraId, Count] = {}
    frames_out: dict[CameraId, Count] = {}
    anomalous: dict[CameraId, Count] = {}
    stale: dict[CameraId, Count] = {}
    learning: dict[CameraId, Count] = {}
    foreign: dict[CameraId, Count] = {}
    missing: dict[CameraId, Count] = {}
    cameras: dict[CameraId, Literal["learning", "scoring"]] = {}
    models: dict[Text, Count] = {}
    versions: dict[CameraId, Annotated[str, StringConstraints(max_length=64)]] = {}
    drift: dict[CameraId, Annotated[float, Field(ge=0.0, le=1.0)]] = {}  # KS distance from the hold-out
    reenrol: list[CameraId] = []  # cameras whose drift suggests re-enrolling
    pending: Count = 0
    idle_s: Annotated[float, Field(ge=0.0)] = 0.0
    malformed: Count = 0
    auth_denied: Count = 0
    unacked: Count = 0
    resent: Count = 0
    lost: Count = 0
    batch_size: Histogram | None = None
    embed_s: Histogram | None = None
    score_s: Histogram | None = None
    latency_s: Histogram | None = None


class WebhookStats(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    delivered: Count = 0
    retries: Count = 0
    failures: Count = 0
    dead: Count = 0
    pending: Count = 0


class MqttStats(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")

    published: Count = 0
    dropped: Count = 0
    connected: Annotated[int, Field(ge=0, le=1)] = 0


class EventsStatus(_Status):
    role: Literal["events"]
    verdicts: Count = 0
    events: dict[CameraId, dict[Annotated[str, StringConstraints(max_length=64)], Count]] = {}
    late: dict[CameraId, Count] = {}
    restarts: dict[CameraId, Count] = {}
    suppressed: dict[CameraId, Count] = {}
    webhooks: dict[Text, WebhookStats] = {}
    mqtt: MqttStats | None = None
    sink_errors: Count = 0
    auth_denied: Count = 0


class EnrolmentStatus(_Status):
    """An enrolment `serve` runs for a camera (`camera` is the camera): where it is, and how it ended."""

    role: Literal["enrolment"]
    phase: Literal["starting", "recording", "fitting", "done", "failed"] = "starting"
    recorded_s: Annotated[float, Field(ge=0.0)] = 0.0
    duration_s: Annotated[float, Field(gt=0.0)] = 1.0
    version: Annotated[str, StringConstraints(max_length=64)] | None = None
    error: Text | None = None


class EnrolRequest(BaseModel):
    """A control message to `serve`: enrol `camera` from its stream for `duration_s` of stream time."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid", frozen=True)

    v: Literal[1]
    type: Literal["enrol"]
    camera: CameraId
    duration_s: Annotated[float, Field(gt=0.0, le=7 * 86400.0)]


class ControlReply(BaseModel):
    """`serve`'s answer to a control message: accepted or not, and why, in one line."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    v: Literal[1]
    ok: bool
    message: Text


SenderId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]


class LinkHeader(BaseModel):
    """What precedes each verdict (with its snapshot frame) or EOS on the worker-to-events link: the sending
    worker's session, the message's sequence number there, and the oldest one the sender still holds
    (everything older was acknowledged, or dropped from its bounded buffer and is not coming)."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    v: Literal[1]
    type: Literal["link"]
    sender: SenderId
    seq: Annotated[int, Field(ge=1)]
    oldest: Annotated[int, Field(ge=1)]

    @model_validator(mode="after")
    def _ordered(self) -> LinkHeader:
        if self.oldest > self.seq:
            raise ValueError(f"oldest ({self.oldest}) is after seq ({self.seq})")
        return self


class AckHeader(BaseModel):
    """The events process's answer once it has committed a sender's messages up to `seq` to its database."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    v: Literal[1]
    type: Literal["ack"]
    sender: SenderId
    seq: Count


HEADERS: dict[str, type[_Header]] = {"frame": FrameHeader, "verdict": VerdictHeader, "eos": EosHeader}
STATUS_ROLES: dict[str, type[_Status]] = {"reader": ReaderStatus, "worker": WorkerStatus, "events": EventsStatus,
                                          "enrolment": EnrolmentStatus}


def header_model(header: dict[str, Any]) -> type[_Header]:
    """The model a header (already JSON-decoded, with a known `type`) must satisfy."""
    if header["type"] != "status":
        return HEADERS[header["type"]]
    role = header.get("role")
    if role not in STATUS_ROLES:
        raise ValueError(f"status header: role should be one of {', '.join(STATUS_ROLES)}, got {str(role)[:40]!r}")
    return STATUS_ROLES[role]


def first_error(err: ValidationError, kind: str) -> str:
    """One line naming the first failing field and what it should be."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    got = first.get("input")
    shown = "" if isinstance(got, dict | list) else f", got {str(got)[:40]!r}"
    return f"{kind} header: field {loc!r}: {first['msg']}{shown}" if loc else f"{kind} header: {first['msg']}"
