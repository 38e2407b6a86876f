"""What the serve process knows about its children, served as /healthz (JSON) and /metrics (Prometheus) by the
console's app (console/api.py).

Readers, workers and the events process each send a status snapshot every second (cumulative
counters, histogram buckets) to the supervisor; `ServeState` keeps the latest one per child and
the HTTP thread renders it on request. Children therefore never run an HTTP server, and a child
that restarts simply starts its counters again (Prometheus treats that as a counter reset).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

log = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
WEBHOOK_COUNTERS = ("delivered", "retries", "failures", "dead")
_CRASH_LOOP = 3  # consecutive crashes (without a stable run between) that make a child crash-looping


@dataclass
class Buckets:
    """A histogram a child fills and ships as plain JSON; the supervisor exposes it unchanged."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)  # per bucket, non-cumulative; last one is +Inf
    total: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        i = next((i for i, b in enumerate(self.bounds) if value <= b), len(self.bounds))
        self.counts[i] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the q-quantile (coarse, for logs and benchmarks)."""
        target, seen = q * self.count, 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            seen += n
            if seen >= target and seen:
                return bound
        return 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum": self.total}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Buckets:
        return cls(tuple(data["bounds"]), list(data["counts"]), float(data["sum"]))


@dataclass
class _Report:
    header: dict[str, Any]
    received: float


class ServeState:
    """Latest status of every child, written by the supervisor loop and read by the HTTP thread.

    Only the children the supervisor started report here (`expect`): a status from any other process is
    refused, counted, and makes /healthz unavailable for `stale_after_s`, since something on the status
    channel is not what this supervisor runs (a stale process, a second supervisor, or a forger).
    """

    def __init__(self, stale_after_s: float = 5.0) -> None:
        self.stale_after_s = stale_after_s
        self._lock = threading.Lock()
        self._reports: dict[tuple[str, str], _Report] = {}  # (role, name) -> last status
        self._processes: dict[str, dict[str, Any]] = {}  # child name -> alive, pid, restarts, failures
        self._expected: dict[tuple[str, str], str] = {}  # (role, name it reports as) -> child process name
        self._unknown: dict[tuple[str, str], float] = {}  # (role, name) of refused reports -> when (monotonic)
        self.unknown_reports = 0

    def expect(self, role: str, name: str, process: str) -> None:
        """The child `process` will report as `name` in `role`."""
        with self._lock:
            self._expected[(role, name)] = process

    @staticmethod
    def _key(header: Mapping[str, Any]) -> tuple[str, str]:
        return str(header.get("role", "")), str(header["camera"])

    def known(self, header: Mapping[str, Any]) -> bool:
        """Whether the status comes from a child this supervisor started."""
        with self._lock:
            return self._key(header) in self._expected

    def update(self, header: Mapping[str, Any]) -> dict[str, Any] | None:
        """Store a status header; returns the previous one of the same child (for change logs). A header from
        a process that was not expected is refused (returns None)."""
        key = self._key(header)
        with self._lock:
            if key not in self._expected:
                if key not in self._unknown:
                    log.warning("status from unknown process %s (role %s) refused: this supervisor did not start it",
                                key[1], key[0])
                self._unknown[key] = time.monotonic()
                self.unknown_reports += 1
                return None
            old = self._reports.get(key)
            self._reports[key] = _Report(dict(header), time.monotonic())
        return None if old is None else old.header

    def set_process(self, name: str, *, alive: bool, pid: int | None, restarts: int, failures: int = 0) -> None:
        with self._lock:
            self._processes[name] = {"alive": alive, "pid": pid, "restarts": restarts, "failures": failures}

    def reports(self, role: str) -> dict[str, dict[str, Any]]:
        """Fresh reports of one role by child name; a report older than `stale_after_s` is left out."""
        now = time.monotonic()
        with self._lock:
            return {name: r.header for (rl, name), r in self._reports.items()
                    if rl == role and now - r.received <= self.stale_after_s}

    def processes(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return {k: dict(v) for k, v in self._processes.items()}

    def _expected_of(self, role: str) -> dict[str, str]:
        with self._lock:
            return {name: proc for (rl, name), proc in self._expected.items() if rl == role}

    def worker_states(self) -> dict[str, str]:
        """Each expected worker: "ready" (models loaded, serving), "loading", "stalled" (frames in hand but no
        batch scored for `stale_after_s`: a hung forward pass), or "dead" (its process is not running, or it has
        not reported for `stale_after_s`). A worker whose cameras are all learning is ready."""
        procs, reports = self.processes(), self.reports("worker")
        states = {}
        for name, proc in self._expected_of("worker").items():
            report = reports.get(name)
            if not procs.get(proc, {}).get("alive", False) or report is None:
                states[name] = "dead"
            elif report.get("state") != "ready":
                states[name] = "loading"
            elif report.get("pending", 0) and report.get("idle_s", 0.0) > self.stale_after_s:
                states[name] = "stalled"
            else:
                states[name] = "ready"
        return states

    def events_problems(self) -> list[str]:
        """Why the events process is not healthy (empty: it is, or this process does not run it)."""
        if not self._expected_of("events"):
            return []
        proc = self.processes().get("events", {})
        if proc.get("failures", 0) >= _CRASH_LOOP:
            return [f"events process crash-looping ({proc['failures']} crashes in a row, {proc['restarts']} restarts)"]
        if not proc.get("alive", False):
            return ["events process down (restarting)"]
        report = self.reports("events").get("events")
        if report is None:
            return ["events process not reporting"]
        problems = [f"sink {name} failing: {error}" for name, error in (report.get("failing_sinks") or {}).items()]
        if report.get("short_of_space"):
            problems.append("media disk below events.min_free_mb with no closed event left to delete")
        return problems

    def unknown_problems(self) -> list[str]:
        now = time.monotonic()
        with self._lock:
            recent = sorted(k for k, when in self._unknown.items() if now - when <= self.stale_after_s)
        return [f"status from unknown process {name} (role {role})" for role, name in recent]

    def cameras(self) -> dict[str, dict[str, Any]]:
        procs = self.processes()
        cameras = {}
        for name, h in self.reports("reader").items():
            cameras[name] = {k: h.get(k) for k in ("online", "url", "fps_in", "frames_in", "frames_emitted",
                                                   "frames_dropped", "reconnects", "last_error", "state")}
            cameras[name]["restarts"] = procs.get(f"reader-{name}", {}).get("restarts", 0)
        for h in self.reports("worker").values():  # scoring, or learning (no model yet): from the camera's worker
            for name, model_state in (h.get("cameras") or {}).items():
                cameras.setdefault(name, {"online": False})["model"] = model_state
            for name, version in (h.get("versions") or {}).items():
                cameras.setdefault(name, {"online": False})["model_version"] = version
            for name, ks in (h.get("drift") or {}).items():
                camera = cameras.setdefault(name, {"online": False})
                camera["drift"], camera["reenrol_suggested"] = ks, name in (h.get("reenrol") or [])
        for name, h in self.reports("enrolment").items():
            cameras.setdefault(name, {"online": False})["enrolment"] = {
                k: h.get(k) for k in ("phase", "recorded_s", "duration_s", "version", "error")}
        return cameras

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Ready = at least one worker ready, a camera online, the events process up and reporting with its
        sinks writable, and no status from an unknown process. Some workers not ready: "degraded" (200),
        since the others' cameras are still watched; each worker's state is listed."""
        workers = self.worker_states()
        cameras = self.cameras()
        problems = [f"{name} {state}" for name, state in sorted(workers.items()) if state != "ready"]
        fatal = [*self.events_problems(), *self.unknown_problems()]
        if not any(c["online"] for c in cameras.values()):
            fatal.append("no camera online")
        ok = "ready" in workers.values() and not fatal
        status = "unavailable" if not ok else "degraded" if problems else "ok"
        advice = [f"{name}: re-enrol suggested (its live scores have parted from its model's hold-out: KS "
                  f"{c['drift']:.2f})" for name, c in sorted(cameras.items()) if c.get("reenrol_suggested")]
        body = {"status": status, "reasons": problems + fatal, "advice": advice, "workers": workers, "cameras": cameras,
                "events_reporting": bool(self.reports("events")), "processes": self.processes()}
        return ok, body


class StatusCollector:
    """Renders the latest child reports as Prometheus metrics at scrape time."""

    def __init__(self, state: ServeState) -> None:
        self.state = state

    def collect(self) -> Iterator[Metric]:
        yield from self._readers(self.state.reports("reader"))
        yield from self._workers(self.state.reports("worker"))
        yield from self._events(self.state.reports("events"))
        denied = CounterMetricFamily("streamvad_auth_denied", "ZeroMQ connections refused for an unknown CURVE key",
                                     labels=["process"])
        for role in ("worker", "events"):
            for name, h in self.state.reports(role).items():
                denied.add_metric([name], h.get("auth_denied", 0))
        yield denied
        yield CounterMetricFamily("streamvad_status_unknown", "Status reports refused: not from a child this "
                                  "supervisor started", value=self.state.unknown_reports)
        restarts = CounterMetricFamily("streamvad_process_restarts", "Child processes restarted by the watchdog",
                                       labels=["process"])
        for name, p in self.state.processes().items():
            restarts.add_metric([name], p["restarts"])
        yield restarts

    @staticmethod
    def _readers(reports: dict[str, dict[str, Any]]) -> Iterator[Metric]:
        counters = {
            "frames_in": ("streamvad_reader_frames_decoded", "Frames decoded by the reader"),
            "frames_emitted": ("streamvad_reader_frames_sampled", "Frames kept by the sampler"),
            "sent": ("streamvad_reader_frames_sent", "Frames queued to the worker(s)"),
            "frames_dropped": ("streamvad_frames_dropped", "Frames lost (undecodable or dropped under backpressure)"),
            "reconnects": ("streamvad_reader_reconnects", "Reconnections to the camera"),
        }
        for key, (name, doc) in counters.items():
            fam = CounterMetricFamily(name, doc, labels=["camera"])
            for cam, h in reports.items():
                fam.add_metric([cam], h.get(key) or 0)
            yield fam
        online = GaugeMetricFamily("streamvad_camera_online", "1 while the camera delivers frames", labels=["camera"])
        fps = GaugeMetricFamily("streamvad_camera_fps_in", "Incoming frame rate before sampling", labels=["camera"])
        for cam, h in reports.items():
            online.add_metric([cam], float(bool(h.get("online"))))
            fps.add_metric([cam], h.get("fps_in") or 0.0)
        yield online
        yield fps

    @staticmethod
    def _workers(reports: dict[str, dict[str, Any]]) -> Iterator[Metric]:
        frames_in = CounterMetricFamily("streamvad_worker_frames_in", "Frames received by a worker",
                                        labels=["worker", "camera"])
        frames_out = CounterMetricFamily("streamvad_worker_frames_out", "Verdicts published by a worker",
                                         labels=["worker", "camera"])
        anomalous = CounterMetricFamily("streamvad_worker_anomalous_frames", "Frames decided anomalous",
                                        labels=["worker", "camera"])
        stale = CounterMetricFamily("streamvad_worker_stale_frames", "Frames shed for being older than max_age_s",
                                    labels=["worker", "camera"])
        malformed = CounterMetricFamily("streamvad_malformed_messages", "Malformed messages dropped",
                                        labels=["worker"])
        learning = CounterMetricFamily("streamvad_worker_learning_frames",
                                       "Frames of cameras with no model yet (not scored)", labels=["worker", "camera"])
        foreign = CounterMetricFamily("streamvad_worker_foreign_frames",
                                      "Frames of cameras another worker owns, dropped", labels=["worker", "camera"])
        missing = CounterMetricFamily("streamvad_worker_missing_frames", "Frames a reader numbered that never "
                                      "reached the worker (gaps in the frame index)", labels=["worker", "camera"])
        depth = GaugeMetricFamily("streamvad_worker_queue_depth", "Frames received but not yet scored",
                                  labels=["worker"])
        models = GaugeMetricFamily("streamvad_worker_models", "Normality models loaded by a worker", labels=["worker"])
        model_bytes = GaugeMetricFamily("streamvad_worker_model_bytes", "Memory of a loaded model's fitted state",
                                        labels=["worker", "model"])
        unacked = GaugeMetricFamily("streamvad_worker_link_unacked", "Verdicts sent but not yet committed by the "
                                    "events process", labels=["worker"])
        unacked_bytes = GaugeMetricFamily("streamvad_worker_link_unacked_bytes", "Bytes of those verdicts (with "
                                          "their frames)", labels=["worker"])
        resent = CounterMetricFamily("streamvad_worker_link_resent", "Verdicts sent again for want of an ack",
                                     labels=["worker"])
        link_lost = CounterMetricFamily("streamvad_worker_link_lost", "Unacknowledged verdicts dropped from the "
                                        "worker's full buffer", labels=["worker"])
        for worker, h in reports.items():
            for fam, key in ((unacked, "unacked"), (unacked_bytes, "unacked_bytes"), (resent, "resent"),
                             (link_lost, "lost")):
                fam.add_metric([worker], h.get(key, 0))
            for fam, key in ((frames_in, "frames_in"), (frames_out, "frames_out"), (anomalous, "anomalous"),
                             (stale, "stale"), (learning, "learning"), (foreign, "foreign"), (missing, "missing")):
                for cam, n in (h.get(key) or {}).items():
                    fam.add_metric([worker, cam], n)
            malformed.add_metric([worker], h.get("malformed", 0))
            depth.add_metric([worker], h.get("pending", 0))
            loaded = h.get("models") or {}
            models.add_metric([worker], len(loaded))
            for path, n in loaded.items():
                model_bytes.add_metric([worker, path], n)
        drift = GaugeMetricFamily("streamvad_score_drift", "Kolmogorov-Smirnov distance of a camera's recent scores "
                                  "from its model's hold-out", labels=["camera"])
        reenrol = GaugeMetricFamily("streamvad_reenrol_suggested", "1 while a camera's drift suggests re-enrolling",
                                    labels=["camera"])
        for h in reports.values():
            for cam, ks in (h.get("drift") or {}).items():
                drift.add_metric([cam], ks)
                reenrol.add_metric([cam], float(cam in (h.get("reenrol") or [])))
        yield from (frames_in, frames_out, anomalous, stale, learning, foreign, missing, malformed, depth, models,
                    model_bytes, unacked, unacked_bytes, resent, link_lost, drift, reenrol)
        histograms = {
            "batch_size": ("streamvad_batch_size", "Frames per scored batch"),
            "embed_s": ("streamvad_embed_seconds", "Backbone time per batch"),
            "score_s": ("streamvad_score_seconds", "Scoring time per batch"),
            "latency_s": ("streamvad_frame_to_verdict_seconds", "Reader wall time to verdict published"),
        }
        for key, (name, doc) in histograms.items():
            fam = HistogramMetricFamily(name, doc, labels=["worker"])
            for worker, h in reports.items():
                if key in h:
                    _add_histogram(fam, [worker], Buckets.from_dict(h[key]))
            yield fam

    @staticmethod
    def _events(reports: dict[str, dict[str, Any]]) -> Iterator[Metric]:
        events = CounterMetricFamily("streamvad_events", "Event updates emitted", labels=["camera", "kind"])
        webhook = {k: CounterMetricFamily(f"streamvad_webhook_{k}", f"Webhook deliveries: {k}", labels=["url"])
                   for k in WEBHOOK_COUNTERS}
        pending = GaugeMetricFamily("streamvad_webhook_pending", "Webhook deliveries waiting in the spool",
                                    labels=["url"])
        sink_errors = CounterMetricFamily("streamvad_sink_errors", "Event updates a sink failed to take (logged)",
                                          labels=["process"])
        repeats = CounterMetricFamily("streamvad_events_repeats", "Resent verdicts already committed (dropped)",
                                      labels=["process"])
        lost = CounterMetricFamily("streamvad_events_lost", "Verdicts a worker dropped before they were committed",
                                   labels=["process"])
        per_camera = {
            "late": CounterMetricFamily("streamvad_verdicts_late", "Verdicts too far out of order to count",
                                        labels=["camera"]),
            "restarts": CounterMetricFamily("streamvad_stream_restarts", "Camera streams that began again at pts 0",
                                            labels=["camera"]),
            "suppressed": CounterMetricFamily("streamvad_events_suppressed", "Event openings held back by cooldown",
                                              labels=["camera"]),
        }
        mqtt = {"published": CounterMetricFamily("streamvad_mqtt_published", "Messages handed to the MQTT client"),
                "dropped": CounterMetricFamily("streamvad_mqtt_dropped",
                                               "MQTT messages dropped: the queue for an unreachable broker was full"),
                "connected": GaugeMetricFamily("streamvad_mqtt_connected", "1 while connected to the MQTT broker")}
        for name, h in reports.items():
            sink_errors.add_metric([name], h.get("sink_errors", 0))
            for k, fam in mqtt.items():
                if h.get("mqtt"):
                    fam.add_metric([], h["mqtt"].get(k, 0))
            repeats.add_metric([name], h.get("repeats", 0))
            lost.add_metric([name], h.get("lost", 0))
            for cam, kinds in (h.get("events") or {}).items():
                for kind, n in kinds.items():
                    events.add_metric([cam, kind], n)
            for key, fam in per_camera.items():
                for cam, n in (h.get(key) or {}).items():
                    fam.add_metric([cam], n)
            for url, stats in (h.get("webhooks") or {}).items():
                for k in WEBHOOK_COUNTERS:
                    webhook[k].add_metric([url], stats.get(k, 0))
                pending.add_metric([url], stats.get("pending", 0))
        yield from (events, sink_errors, repeats, lost)
        yield from per_camera.values()
        yield from webhook.values()
        yield pending
        yield from mqtt.values()


def _add_histogram(fam: HistogramMetricFamily, labels: list[str], b: Buckets) -> None:
    cumulative, running = [], 0
    for bound, n in zip((*b.bounds, float("inf")), b.counts, strict=True):
        running += n
        cumulative.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    fam.add_metric(labels, cumulative, sum_value=b.total)
