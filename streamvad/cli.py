"""`streamvad`: learn what is normal for each camera from its own footage, and flag what deviates, and where.

Operator errors (`StreamVADError`) print one line and exit 2; anything else is a bug and keeps its
traceback. Heavy imports happen inside the commands so `streamvad --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

import yaml

from streamvad.config import NormalityConfig, StreamVADConfig, load_config
from streamvad.errors import ConfigError, InputError, StreamVADError

_INDEXES = get_args(NormalityConfig.model_fields["index"].annotation)  # normality.index's choices

log = logging.getLogger("streamvad")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML configuration (see configs/)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override backbone.device")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def _config(args: argparse.Namespace) -> StreamVADConfig:
    cfg = load_config(args.config)
    if getattr(args, "device", None):
        cfg = cfg.model_copy(update={"backbone": cfg.backbone.model_copy(update={"device": args.device})})
    return cfg


def _dataset_options(args: argparse.Namespace) -> dict[str, Any]:
    """`--dataset-option key=value` pairs; values are read as YAML scalars (0.7, 1, null, text)."""
    options: dict[str, Any] = {}
    for item in args.dataset_option or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--dataset-option: expected KEY=VALUE, got {item!r}")
        options[key] = yaml.safe_load(value)
    return options


def _sample_fps(args: argparse.Namespace, default: float | None) -> float | None:
    if args.sample_fps is None:
        return default
    return None if args.sample_fps <= 0 else args.sample_fps


def _memory_budget(value: float, option: str = "--memory-budget-mb") -> float | None:
    """A memory budget option in MiB: 0 keeps every vector (None)."""
    if value < 0:
        raise ConfigError(f"{option}: expected MiB >= 0 (0: every vector), got {value}")
    return None if value == 0 else value


def cmd_fit(args: argparse.Namespace) -> int:
    from streamvad.datasets.base import load_dataset
    from streamvad.offline.pipeline import clips_from_paths, fit

    cfg = _config(args)
    if args.memory_budget_mb is not None:
        cfg = cfg.model_copy(update={"normality": NormalityConfig.model_validate(
            {**cfg.normality.model_dump(), "memory_budget_mb": _memory_budget(args.memory_budget_mb)})})
    if args.dataset:
        if args.sources:
            raise ConfigError("fit: give either --dataset/--root or SOURCE paths, not both")
        split = load_dataset(args.dataset, args.root, **_dataset_options(args))
        clips, default_fps = split.train, split.sample_fps
    elif args.sources:
        split, clips, default_fps = None, clips_from_paths(args.sources), cfg.sampling.fps
    else:
        raise ConfigError("fit: nothing to fit on; give --dataset KIND --root PATH or SOURCE paths")
    res = fit(cfg, clips, args.out, sample_fps=_sample_fps(args, default_fps), detector=args.detector,
              progress=not args.no_progress)
    if split is not None and (cameras := split.write_cameras(res.model_dir)):
        print(f"cameras the dataset loader inferred -> {cameras} (check it; pass it back as cameras_file=)")
    thresholds = ", ".join(f"{k}={v:.3f}" for k, v in res.thresholds.items()) or "none (no held-out frames)"
    print(f"fitted {res.kind} model on {res.n_train} frames ({res.n_holdout} held out) in {res.seconds:.0f} s "
          f"-> {res.model_dir}\nthresholds from normal frames it was not fitted on: {thresholds}")
    _print_budget(res, cfg, args.sample_fps)
    if res.stages:
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in res.stages.items())
        memory = f"; serving memory {res.serving_bytes / 2**20:.1f} MiB" if res.serving_bytes else ""
        print(f"stages: {stages}{memory}")
    return 0


def _print_budget(res: Any, cfg: StreamVADConfig, sample_fps: float | None) -> None:
    """The alert budget's threshold beside the quantile one: events.false_alerts_per_day, or 1 a day to show."""
    from streamvad.scoring.budget import budget_for

    per_day = cfg.events.false_alerts_per_day or 1.0
    fps = sample_fps or cfg.sampling.fps
    try:
        budget = budget_for({"holdout_sequences": res.holdout_sequences}, per_day, fps, cfg.events)
    except ConfigError as err:
        print(f"alert budget: none ({err})")
        return
    assert budget is not None
    fused = "motion" in res.thresholds and cfg.scoring.motion != "appearance"  # fused verdicts decide at 1
    quantile = 1.0 if fused else res.thresholds.get(f"{cfg.scoring.method}/{cfg.scoring.rule}", float("nan"))
    print(f"alert budget {per_day:g} false events a day at {fps:g} fps ({cfg.events.open_n} of {cfg.events.open_m} "
          f"frames open one): threshold {budget.threshold:.3f} on the served score, beside the calibrated "
          f"quantile's {quantile:.3f}")


def cmd_replay(args: argparse.Namespace) -> int:
    from streamvad.offline.pipeline import clips_from_paths, replay
    from streamvad.scoring.engine import load_engine

    cfg = _config(args)
    clips = clips_from_paths(args.sources)
    engine = load_engine(args.model, backbone=cfg.backbone)
    res = replay(engine, clips, sample_fps=_sample_fps(args, engine.info.sample_fps or cfg.sampling.fps),
                 out_jsonl=args.out, heatmaps=args.heatmaps, tamper=cfg.tamper, progress=not args.no_progress)
    recs = next(iter(res.records.values()))
    flagged = sum(r["anomalous"] for r in recs)
    print(f"scored {res.frames} frames in {res.seconds:.1f} s ({res.frames / max(res.seconds, 1e-9):.1f} frames/s); "
          f"{flagged} anomalous -> {args.out}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from streamvad.datasets.base import load_dataset
    from streamvad.offline.evaluation import summary_table
    from streamvad.offline.pipeline import evaluate
    from streamvad.scoring.engine import load_engine

    cfg = _config(args)
    split = load_dataset(args.dataset, args.root, **_dataset_options(args))
    engine = load_engine(args.model, backbone=cfg.backbone)
    rules = [r for r in (args.rules or "").split(",") if r]
    normal = [c for c in split.train if c.name in engine.info.holdout]  # the fit's hold-out: never trained on
    reports = evaluate(engine, split.test, args.out, sample_fps=_sample_fps(args, split.sample_fps),
                       rules=rules, oracle=args.oracle, events=cfg.events, normal=normal,
                       progress=not args.no_progress)
    print(summary_table([{"scorer": name, **rep} for name, rep in reports.items()]))
    if cameras := split.write_cameras(args.out):
        print(f"cameras the dataset loader inferred -> {cameras} (check it; pass it back as cameras_file=)")
    print(f"report -> {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from streamvad.offline.demo import run_demo

    return run_demo(args.out, progress=not args.no_progress, config=args.config)


def cmd_serve(args: argparse.Namespace) -> int:
    from streamvad.live.serve import Role, serve

    cfg = _config(args)
    if args.http_port is not None:
        cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={"http_port": args.http_port})})
    if args.camera is not None and args.role != "reader":
        raise ConfigError(f"serve: --camera is for --role reader, not --role {args.role}")
    return serve(cfg, Role(args.role, args.camera, args.worker_index))


def cmd_bench(args: argparse.Namespace) -> int:
    from streamvad.bench import write_json

    if args.what == "scoring":
        from streamvad.bench.scoring import run_scoring_bench

        result = run_scoring_bench(n_patches=args.patches, dim=args.dim, n_train=args.train, batch=args.batch,
                                   faithful_frames=args.faithful_frames)
    elif args.what == "motion":
        from streamvad.bench.motion import run_motion_bench

        result = run_motion_bench(seconds=args.seconds, batch=args.batch)
    elif args.fleet:
        from streamvad.bench.fleet import run_fleet_bench

        budget = NormalityConfig().memory_budget_mb if args.memory_budget_mb is None \
            else _memory_budget(args.memory_budget_mb)
        result = run_fleet_bench(args.fleet, args.seconds, train_vectors=args.train_vectors,
                                 memory_budget_mb=budget, max_batch=args.max_batch, device=args.device,
                                 index=args.index)
    else:
        from streamvad.bench.throughput import run_throughput_bench

        result = run_throughput_bench(cameras=args.cameras, seconds=args.seconds, models=args.models,
                                      device=args.device, dtype=args.dtype, max_batch=args.max_batch,
                                      capacity_readers=args.capacity_readers, train_seconds=args.train_seconds,
                                      with_curve=args.curve, runtimes=args.runtimes,
                                      image_size=tuple(args.image_size))
    write_json(result, args.json)
    print(json.dumps(result, indent=2))
    return 0


def cmd_receive(args: argparse.Namespace) -> int:
    from streamvad.sinks.receiver import run_receiver

    return run_receiver(args.host, args.port, args.secret, args.tolerance)


def cmd_requeue(args: argparse.Namespace) -> int:
    from streamvad.sinks import requeue_dead, webhook_spool

    cfg = _config(args)
    hooks = [h for h in cfg.sinks.webhooks if args.url is None or h.url == args.url]
    if not hooks:
        raise ConfigError(f"{args.config or 'the default config'}: sinks.webhooks has no webhook"
                          + (f" with url {args.url}" if args.url else ""))
    for hook in hooks:
        spool = webhook_spool(cfg.sinks, hook.url)
        print(f"{hook.url}: {requeue_dead(spool)} dead-lettered deliveries back in {spool}")
    return 0


def _duration(text: str) -> float:
    """`30m`, `90s`, `1h` or plain seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    number, unit = (text[:-1], units[text[-1]]) if text and text[-1] in units else (text, 1.0)
    try:
        value = float(number) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a duration like 30m, 90s or 1h, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive duration, got {text!r}")
    return value


def cmd_enroll(args: argparse.Namespace) -> int:
    from streamvad.enrolment import enrol

    cfg = _config(args)
    if args.serve:
        from streamvad import security
        from streamvad.live.fleet import camera_endpoint
        from streamvad.messages import WIRE_VERSION, EnrolRequest
        from streamvad.transport import control_request

        security.configure(cfg.transport)
        reply = control_request(camera_endpoint(cfg, cfg.camera(args.camera), "control"), EnrolRequest(
            v=WIRE_VERSION, type="enrol", camera=args.camera, duration_s=float(args.duration)))
        if not reply.ok:
            raise InputError(f"serve refused: {reply.message}")
        print(reply.message)
        return 0
    res = enrol(cfg, args.camera, args.duration, progress=not args.no_progress)
    fitted = f"({res.frames} frames, {res.excluded} left out as outliers or anomalous, {res.seconds:.0f} s)"
    if res.marked_again:  # feedback.carry_marks
        print(f"{res.camera}: version {res.current.name} is current: {res.version.name} {fitted} with the "
              f"{len(res.marked_again)} event(s) operators marked normal during the enrolment -> {res.current.path}")
    else:
        print(f"{res.camera}: version {res.version.name} is current {fitted} -> {res.version.path}")
    return 0


def _made_by(record: dict[str, Any]) -> str:
    """What made a model version, in `models list`: an operator's mark (feedback.py), or an enrolment's facts."""
    if record.get("event"):
        again = f" (again, as {record['carried_from']} did)" if record.get("carried_from") else ""
        return f"marked normal: event {record['event']}{again}"
    return ", ".join(f"{k}={record[k]}" for k in ("recorded_frames", "n_holdout", "duration_s") if k in record)


def cmd_models(args: argparse.Namespace) -> int:
    from streamvad.enrolment import camera_store

    cfg = _config(args)
    _camera, store = camera_store(cfg, args.camera)
    if args.models_command == "list":
        current = store.current()
        for v in store.versions():
            made = time.strftime("%Y-%m-%d %H:%M", time.localtime(v.created_at)) if v.created_at else "?"
            print(f"{'*' if current and current.name == v.name else ' '} {v.name}  {made}  {_made_by(v.record)}")
        if not store.versions():
            print(f"{args.camera}: no versions in {store.root} (the camera is learning)")
        return 0
    if args.models_command == "reindex":
        from streamvad.offline.reindex import reindex_current

        version = reindex_current(store, args.index, cfg.store.keep_versions)
        print(f"{args.camera}: version {version.name}, {version.record['previous']} served by {args.index} search, is "
              "current; running workers switch to it within worker.model_poll_s")
        return 0
    with store.writing():
        version = store.activate(args.version) if args.models_command == "activate" else store.rollback()
    print(f"{args.camera}: version {version.name} is current; running workers switch to it within "
          "worker.model_poll_s")
    return 0


def cmd_reindex(args: argparse.Namespace) -> int:
    from streamvad.offline.reindex import reindex

    model = reindex(args.model, args.out, args.index)
    print(f"{args.out}: the model of {args.model} ({model.n_tokens} tokens x {model.n_train} vectors), served by "
          f"{args.index} search")
    return 0


def cmd_keys_generate(args: argparse.Namespace) -> int:
    from streamvad.security import generate_keys

    made = generate_keys(args.dir)
    print(f"CURVE keys in {args.dir}: server and client pairs (secrets mode 0600); {made['allowed']} lists the "
          "client keys that bound sockets accept. Point transport.curve.keys at this directory on every host.")
    return 0


def cmd_hash_password(args: argparse.Namespace) -> int:
    """A console user's password as serve.auth.users takes it; read from stdin when piped, else asked twice."""
    import getpass

    from streamvad.console.auth import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise InputError("hash-password: the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    if len(password) < 8:
        raise InputError("hash-password: a console password needs at least 8 characters")
    print(hash_password(password))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from streamvad.doctor import report

    print(report())
    return 0


def _add_dataset_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset-option", action="append", metavar="KEY=VALUE",
                   help="a dataset loader option, e.g. camera=1, trim_file=trims.csv (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamvad", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="synthetic scene end to end: fit, replay, report (no network, no data)")
    _add_common(p)
    p.add_argument("--out", type=Path, default=Path("demo-out"))
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("fit", help="fit a normality model (or --detector) on normal footage")
    _add_common(p)
    p.add_argument("sources", nargs="*", help="video files or image folders of normal footage")
    p.add_argument("--dataset", choices=["ucsd", "safe-unsafe", "folder"])
    p.add_argument("--root", type=Path)
    _add_dataset_option(p)
    p.add_argument("--detector", choices=["uniformaly", "generalad", "s2vad"])
    p.add_argument("--sample-fps", type=float, help="frames per second to sample (0 = every frame)")
    p.add_argument("--out", type=Path, required=True, help="model directory to write")
    p.add_argument("--memory-budget-mb", type=float, metavar="MB",
                   help="override normality.memory_budget_mb (0: keep every training vector)")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("replay", help="score recorded sources, one JSON line per frame")
    _add_common(p)
    p.add_argument("sources", nargs="+", help="video files or image folders")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="results .jsonl")
    p.add_argument("--heatmaps", type=Path, help="folder for heatmap overlays of every frame")
    p.add_argument("--sample-fps", type=float, help="frames per second to sample (0 = every frame)")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("eval", help="evaluate a model on a labelled dataset: metrics.json + plots")
    _add_common(p)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--dataset", choices=["ucsd", "safe-unsafe", "folder"], required=True)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    _add_dataset_option(p)
    p.add_argument("--rules", help="compare scorers, e.g. distance/topk,knnn/majority,knnn/global,hdbscan/global")
    p.add_argument("--oracle", action="store_true",
                   help="also report the study's recall-weighted threshold chosen on test labels")
    p.add_argument("--sample-fps", type=float, help="frames per second to sample (0 = every frame)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("serve", help="run readers, worker and sinks from a config")
    _add_common(p)
    p.add_argument("--role", default="all", choices=["all", "reader", "worker", "events"],
                   help="run one part per host/container (see docker/README.md); all = everything here")
    p.add_argument("--camera", help="reader role: only this camera id (default: every camera)")
    p.add_argument("--worker-index", type=int, default=0,
                   help="worker role: be worker I of serve.workers (its cameras, its frame endpoint)")
    p.add_argument("--http-port", type=int, help="override serve.http_port (/healthz and /metrics)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("bench", help="benchmarks; results as JSON")
    p.add_argument("what", choices=["scoring", "throughput", "motion"])
    p.add_argument("--json", type=Path, help="write the result here as JSON")
    p.add_argument("--patches", type=int, default=256)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--train", type=int, default=2500)
    p.add_argument("--batch", type=int, default=16, help="frames per scoring call")
    p.add_argument("--faithful-frames", type=int, default=1)
    p.add_argument("--cameras", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--models", nargs="+", default=["efficientnet-lite0", "vit-s"],
                   help="throughput: efficientnet-lite0 (real weights), vit-s, vit-b, vit-l (DINOv2 shapes)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="throughput: backbone and scorer")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    p.add_argument("--max-batch", type=int, default=16, help="throughput: worker batch size")
    p.add_argument("--capacity-readers", type=int, help="throughput: unpaced readers feeding the capacity run")
    p.add_argument("--train-seconds", type=float, default=20.0,
                   help="throughput: normal footage the model is fitted on (4 fps; 600 ~ 2,400 training frames)")
    p.add_argument("--runtimes", "--runtime", nargs="+", default=["torch"],
                   help="throughput: torch, openvino, openvino-int8 (each with its own model; ratios to the first)")
    p.add_argument("--image-size", nargs=2, type=int, default=[224, 224], metavar=("H", "W"),
                   help="throughput: the backbone's input (Ped2's: 240 352)")
    p.add_argument("--curve", action="store_true",
                   help="throughput: repeat the capacity run with every tcp:// hop on CURVE and report the ratio")
    p.add_argument("--fleet", type=int, metavar="N",
                   help="throughput: N cameras on N models against N cameras on one model (Ped2-sized models)")
    p.add_argument("--train-vectors", type=int, default=2000,
                   help="throughput --fleet: training frames per model (vectors per token before the memory budget)")
    p.add_argument("--memory-budget-mb", type=float,
                   help="throughput --fleet: serving memory per model as `fit` sizes it (default "
                        "normality.memory_budget_mb; 0: every training vector)")
    p.add_argument("--index", choices=_INDEXES, default="dense",
                   help="throughput --fleet: the models' search (normality.index)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("receive", help="a webhook receiver that checks signatures and prints deliveries")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--secret", help="HMAC secret the webhooks are signed with (a whsec_ secret: Standard Webhooks)")
    p.add_argument("--tolerance", type=float, default=300.0,
                   help="seconds a signed timestamp may differ from this clock before a request is refused (401)")
    p.set_defaults(func=cmd_receive)

    p = sub.add_parser("requeue", help="send dead-lettered webhook deliveries again (after fixing the receiver)")
    _add_common(p)
    p.add_argument("--url", help="only this webhook (default: every webhook of the config)")
    p.set_defaults(func=cmd_requeue)

    p = sub.add_parser("enroll", help="record a camera from its stream, fit it, make the fit its current version")
    _add_common(p)
    p.add_argument("--camera", required=True, help="the camera id in the config")
    p.add_argument("--duration", type=_duration, required=True, help="stream time to record: 30m, 90s, 1h")
    p.add_argument("--serve", action="store_true",
                   help="ask the running serve (transport.control) to enrol; progress shows in its /healthz")
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("models", help="a camera's model versions: list, activate, rollback, reindex")
    models = p.add_subparsers(dest="models_command", required=True)
    for name, text in (("list", "the versions, current marked *"), ("activate", "make VERSION current"),
                       ("rollback", "make the version before the current one current"),
                       ("reindex", "add the current version served by --index as the next version, made current")):
        m = models.add_parser(name, help=text)
        _add_common(m)
        m.add_argument("camera")
        if name == "activate":
            m.add_argument("version")
        if name == "reindex":
            m.add_argument("--index", choices=_INDEXES, required=True, help="the search (normality.index)")
        m.set_defaults(func=cmd_models)

    p = sub.add_parser("reindex", help="copy a fitted model, served by another search index (no refit)")
    p.add_argument("--model", type=Path, required=True, help="the fitted model directory")
    p.add_argument("--index", choices=_INDEXES, required=True, help="the copy's search (normality.index)")
    p.add_argument("--out", type=Path, required=True, help="a new directory for the copy")
    p.set_defaults(func=cmd_reindex)

    p = sub.add_parser("keys", help="ZeroMQ CURVE keys for a site's tcp:// sockets (transport.curve.keys)")
    keys = p.add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("generate", help="server and client key pairs, and allowed/ with the client's public key")
    k.add_argument("dir", type=Path)
    k.set_defaults(func=cmd_keys_generate)

    p = sub.add_parser("hash-password", help="a console user's password hash for serve.auth.users (stdin or prompt)")
    p.set_defaults(func=cmd_hash_password)

    p = sub.add_parser("doctor", help="versions, devices and optional tools this machine has")
    p.set_defaults(func=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except StreamVADError as err:
        print(f"streamvad: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("streamvad: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED

