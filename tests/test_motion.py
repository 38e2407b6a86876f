"""Motion normality: measured per second of stream time, remembered per place, fused with appearance,
and scored the same live (real reader, real ZeroMQ, worker) as in replay."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from streamvad.bench.throughput import fit_small_model
from streamvad.config import BackboneConfig, CameraConfig, MotionConfig, ScoringConfig, StreamVADConfig, WorkerConfig
from streamvad.datasets.synthetic import AnomalySpec, make_scene
from streamvad.errors import ConfigError, InputError
from streamvad.motion import FusedScorer, MotionModel, MotionTracker
from streamvad.motion.flow import cell_motion, grey
from streamvad.motion.fusion import AppearanceScale
from streamvad.motion.model import calibrate_motion
from streamvad.normality.coreset import k_center
from streamvad.scoring.engine import load_engine
from streamvad.scoring.integrity import digest_files
from streamvad.types import Frame, MotionField
from tests.test_worker import running_worker

GRID = (6, 8)
# Motion needs a walker to cover a good part of a cell: the worker tests' 96x128 input has 6x8 cells of a
# 120x160 scene, where a walker fills at most a third of one; at 192x256 it covers several.
MOTION_BACKBONE = BackboneConfig(name="efficientnet-lite0", image_size=(192, 256), device="cpu", batch_size=16)
SCENE = (240, 320)


@pytest.fixture(scope="module")
def motion_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fit_small_model(MOTION_BACKBONE, tmp_path_factory.mktemp("motion"), seconds=24, size=SCENE, holdout=0.25)
CFG = MotionConfig(min_fraction=0.1)


def _textured(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(60, 120, (GRID[0] * 16, GRID[1] * 16, 3), dtype=np.uint8)


def _with_square(background: np.ndarray, x: int, y: int = 40, side: int = 20) -> np.ndarray:
    img = background.copy()
    img[y:y + side, x:x + side] = 230
    return img


def _frame(image: np.ndarray, pts: float, camera: str = "cam", index: int = 0) -> Frame:
    return Frame(camera, index, pts=pts, wall_time=0.0, image=image)


def test_speed_is_per_second_of_stream_time_whatever_the_sampling_rate() -> None:
    """A square moving 16 px/s, seen 0.25 s apart (4 px) and 0.5 s apart (8 px): the same velocity, to the right."""
    bg = _textured()
    speeds = []
    for dt in (0.25, 0.5):
        a, b = (grey(_with_square(bg, x), GRID, 16) for x in (30, 30 + round(16 * dt)))
        fraction, velocity = cell_motion(a, b, dt, GRID, CFG)
        moving = fraction >= CFG.min_fraction
        assert moving.any() and not moving.all()
        speeds.append(np.median(velocity[moving], axis=0))
    expected = 16 / (GRID[0] * 16)  # frame heights per second
    for vx, vy in speeds:
        assert vx == pytest.approx(expected, rel=0.35) and abs(vy) < 0.3 * expected
    assert speeds[0][0] == pytest.approx(speeds[1][0], rel=0.25)


def test_first_frame_gaps_and_restarted_streams_have_no_motion() -> None:
    bg = _textured()
    tracker = MotionTracker(GRID, CFG.model_copy(update={"max_gap_s": 1.0}))
    pts = [0.0, 0.25, 0.5, 3.0, 3.25, 0.0, 0.25]  # first frame; two steps; a 2.5 s gap; a step; restart; a step
    frames = [_frame(_with_square(bg, 10 + 4 * i), t, index=i) for i, t in enumerate(pts)]
    field = tracker.observe(frames)
    assert field.valid.tolist() == [False, True, True, False, True, False, True]
    assert (field.fraction[~field.valid] == 0).all()
    other = tracker.observe([_frame(bg, 0.25, camera="other")])  # cameras never share state
    assert not other.valid[0]
    looped = dataclasses.replace(_frame(_with_square(bg, 10), 0.5), restart=True)  # pts on, picture jumps back
    assert tracker.observe([looped, _frame(_with_square(bg, 14), 0.75)]).valid.tolist() == [False, True]


def _lanes(n: int, rng: np.random.Generator) -> MotionField:
    """Normal footage: in row 2 everything moves right at ~0.1 frame heights/s, in row 4 left; the rest is still."""
    fraction = np.zeros((n, GRID[0] * GRID[1]), dtype=np.float32)
    velocity = np.zeros((n, GRID[0] * GRID[1], 2), dtype=np.float32)
    for row, direction in ((2, 1.0), (4, -1.0)):
        cells = slice(row * GRID[1], (row + 1) * GRID[1])
        fraction[:, cells] = 0.5
        velocity[:, cells, 0] = direction * rng.uniform(0.08, 0.12, (n, GRID[1]))
        velocity[:, cells, 1] = rng.normal(0, 0.01, (n, GRID[1]))
    return MotionField(fraction, velocity, np.ones(n, dtype=bool))


def _one_mover(cell: int, vx: float) -> MotionField:
    fraction = np.zeros((1, GRID[0] * GRID[1]), dtype=np.float32)
    velocity = np.zeros((1, GRID[0] * GRID[1], 2), dtype=np.float32)
    fraction[0, cell], velocity[0, cell, 0] = 0.5, vx
    return MotionField(fraction, velocity, np.ones(1, dtype=bool))


def test_model_flags_a_fast_mover_a_wrong_way_walker_and_motion_off_the_path() -> None:
    normal = _lanes(200, np.random.default_rng(0))
    model = MotionModel.fit(normal, GRID, CFG)
    right_lane = 2 * GRID[1] + 3
    score = {name: float(model.score(_one_mover(cell, vx))[0] * 2) for name, cell, vx in [  # top-2 mean of one cell
        ("walker", right_lane, 0.1), ("cyclist", right_lane, 0.3), ("wrong way", right_lane, -0.1),
        ("lawn", 0 * GRID[1] + 3, 0.1)]}
    assert score["walker"] < 0.05
    for name in ("cyclist", "wrong way", "lawn"):  # the lawn walker scores its own speed in site-typical units: ~1
        assert score[name] > 0.9 and score[name] > 20 * score["walker"], (name, score)
    assert model.score(MotionField(normal.fraction[:1], normal.velocity[:1], np.zeros(1, dtype=bool)))[0] == 0


def test_the_crowd_counts_the_cells_that_move_as_normal_footage_moves_there() -> None:
    """Three walkers and a cyclist in the right lane, a walker on the lawn: the crowd is the three walkers; what
    moves wrong is no crowd, so it cannot excuse its own look; a frame without motion has no crowd to count."""
    model = MotionModel.fit(_lanes(200, np.random.default_rng(0)), GRID, CFG)
    lane = 2 * GRID[1]
    frame = _one_mover(lane + 1, 0.1)
    for cell, vx in ((lane + 2, 0.1), (lane + 3, 0.11), (lane + 6, 0.3), (3, 0.1)):
        frame.fraction[0, cell], frame.velocity[0, cell, 0] = 0.5, vx
    assert model.crowd(frame)[0] == 3
    left = np.arange(GRID[0] * GRID[1]) % GRID[1] < 2  # a mask of the two left-most columns
    assert model.crowd(frame, mask=left)[0] == 1
    assert np.isnan(model.crowd(MotionField(frame.fraction, frame.velocity, np.zeros(1, dtype=bool)))[0])


def test_a_velocity_marked_normal_is_normal_at_its_cell_only() -> None:
    """feedback.add_velocities: the console's "mark as normal" of a fast mover in the right lane."""
    from streamvad.feedback import add_velocities
    from streamvad.types import Evidence

    model = MotionModel.fit(_lanes(200, np.random.default_rng(0)), GRID, CFG)
    model.threshold = 1.0
    cell, other = 2 * GRID[1] + 3, 2 * GRID[1] + 6
    before = model.cell_scores(_one_mover(cell, 0.5))[0, cell]
    added = add_velocities(model, Evidence(np.array([cell, other]), np.zeros((2, 4), dtype=np.float16),
                                           np.array([[0.5, 0.0], [np.nan, np.nan]], dtype=np.float32)))
    assert added == 1 and before > 2.0  # the still cell (NaN) adds nothing
    assert model.cell_scores(_one_mover(cell, 0.5))[0, cell] < 0.01
    assert model.cell_scores(_one_mover(other, 0.5))[0, other] > 2.0  # elsewhere it is as fast as ever


def test_k_center_keeps_rare_velocities_within_the_budget() -> None:
    rng = np.random.default_rng(1)
    points = np.r_[rng.normal(0, 0.01, (5000, 2)), [[1.0, 1.0]]]  # one rare, far velocity
    kept = points[k_center(points, 32)]
    assert len(kept) == 32 and np.isclose(kept, [1.0, 1.0]).all(1).any()


@pytest.mark.slow
def test_calibration_uses_out_of_fold_normal_scores_windowed_as_served() -> None:
    normal = _lanes(400, np.random.default_rng(2))
    clips = np.repeat(np.arange(8), 50)
    pts = np.tile(np.arange(50) / 4, 8)  # eight clips of 12.5 s at 4 fps
    frames = CFG.model_copy(update={"min_threshold": 1e-6, "smooth_s": 0.0})
    _, alone, _ = calibrate_motion(normal, clips, pts, GRID, frames, 0.99, 4)
    threshold, oof, _ = calibrate_motion(normal, clips, pts, GRID, frames.model_copy(update={"smooth_s": 0.5}), 0.99, 4)
    assert oof.shape == (400,) and (oof > 0).any()
    # each frame's score is its clip's mean over 0.5 s (itself and the frame before), never across clips
    expected = np.array([alone[i] if i % 50 == 0 else (alone[i] + alone[i - 1]) / 2 for i in range(400)])
    assert oof == pytest.approx(expected, abs=1e-6)
    assert threshold == pytest.approx(np.quantile(oof, 0.99))
    # where normal footage barely moves the quantile is ~0, and the floor keeps near-normal motion quiet
    assert calibrate_motion(normal, clips, pts, GRID, CFG, 0.99, 4)[0] == max(CFG.min_threshold, threshold)


def test_saved_model_round_trips_and_bad_files_are_one_line_errors(tmp_path: Path) -> None:
    model = MotionModel.fit(_lanes(50, np.random.default_rng(3)), GRID, CFG)
    model.threshold, model.medians = 0.7, {"motion": 0.1, "distance/topk": 0.8, "crowd": 4.0}
    model.crowd_slopes, model.appearance_thresholds = {"distance/topk": 0.05}, {"distance/topk": 1.3}
    model.save(tmp_path / "motion")
    back = MotionModel.load(tmp_path / "motion")
    probe = _one_mover(2 * GRID[1], 0.3)
    assert back.threshold == 0.7 and back.score(probe) == pytest.approx(model.score(probe))
    assert back.medians == {"motion": 0.1, "distance/topk": 0.8, "crowd": 4.0}
    assert AppearanceScale.of(back, "distance/topk") == AppearanceScale(0.8, 1.3, 0.05, 4.0)
    meta = json.loads((tmp_path / "motion" / "motion.json").read_text())
    # fitted before motion was windowed (its threshold is of single frames) and before fusion had zero points
    del meta["config"]["smooth_s"], meta["config"]["window"], meta["medians"]
    (tmp_path / "motion" / "motion.json").write_text(json.dumps(meta))
    old = MotionModel.load(tmp_path / "motion")
    assert old.cfg.smooth_s == 0.0 and old.cfg.window == "mean" and old.medians == {}
    (tmp_path / "motion" / "motion.json").write_text(json.dumps({**meta, "medians": {"motion": "nan"}}))
    with pytest.raises(InputError, match=r"motion\.json: medians must be finite numbers"):
        MotionModel.load(tmp_path / "motion")
    (tmp_path / "motion" / "motion.json").write_text(json.dumps({**meta, "crowd_slopes": {"distance/topk": -1}}))
    with pytest.raises(InputError, match=r"motion\.json: crowd_slopes must be finite and >= 0"):
        MotionModel.load(tmp_path / "motion")
    (tmp_path / "motion" / "motion.json").write_text(json.dumps(meta))
    np.savez(tmp_path / "motion" / "motion.npz", memory=model.memory * np.nan, scale=model.scale)
    with pytest.raises(InputError, match=r"motion\.npz: memory and scale must be finite"):
        MotionModel.load(tmp_path / "motion")
    (tmp_path / "motion" / "motion.npz").write_bytes(b"truncated")
    with pytest.raises(InputError, match="unreadable motion model") as err:
        MotionModel.load(tmp_path / "motion")
    assert "\n" not in str(err.value)


def test_the_appearance_part_is_corrected_for_the_crowd_it_sees_on_normal_frames() -> None:
    """Normal frames whose appearance score rises with their crowd: the fitted slope takes the share of a crowd
    above the typical one out, so a crowded normal frame no longer outranks a quiet one; a quieter frame keeps its
    own score; a falling relation corrects nothing."""
    rng = np.random.default_rng(0)
    cells = rng.integers(0, 30, 2000).astype(float)
    raw = 10.0 + 0.5 * cells + rng.normal(0, 1, cells.size)
    scale = AppearanceScale.fit(raw, np.r_[cells[:-10], np.full(10, np.nan)], 0.99)
    assert scale.slope == pytest.approx(0.5, abs=0.02) and scale.typical == np.median(cells[:-10])
    corrected = scale.unit(raw[:-10], cells[:-10], threshold=99.0)
    busy = cells[:-10] >= scale.typical
    assert abs(np.corrcoef(cells[:-10][busy], corrected[busy])[0, 1]) < 0.05  # above typical: flat
    assert np.quantile(corrected, 0.99) == pytest.approx(1.0, abs=0.05)  # its own threshold, not the one passed
    quiet = scale.unit(raw[:-10][~busy], scale.typical, 99.0)
    assert scale.unit(raw[:-10][~busy], cells[:-10][~busy], 99.0) == pytest.approx(quiet)  # only discounts
    crowded, calm = scale.unit(np.array([21.0, 16.5]), np.array([25.0, 3.0]), 99.0)
    assert crowded < calm  # 21 is ordinary for a crowd of 25, 16.5 is not for 3
    assert scale.unit(15.0, np.nan, 99.0) == scale.unit(15.0, scale.typical, 99.0)  # no motion: a typical crowd
    assert AppearanceScale.fit(30.0 - 0.5 * cells, cells, 0.99).slope == 0.0
    assert AppearanceScale().unit(1.5, 7.0, threshold=2.0) == 0.75  # an older model: the raw score over its threshold


def _scene(root: Path, name: str, anomalies: list[AnomalySpec], seed: int) -> Path:
    return make_scene(root, seconds=8, fps=10, size=SCENE, seed=seed, place_seed=0, fmt="frames",
                      name=name, anomalies=anomalies).path


def test_fused_score_is_the_max_or_the_sum_of_appearance_and_motion_on_their_scales(motion_model: Path,
                                                                                     tmp_path: Path) -> None:
    from streamvad.offline.pipeline import clips_from_paths, replay, rule_variants

    engine = load_engine(motion_model)
    assert isinstance(engine.scorer, FusedScorer) and engine.tracker is not None
    motion_part = engine.scorer.motion
    sum_at = motion_part.sum_thresholds["distance/topk"]
    assert sum_at > 0 and set(motion_part.sum_thresholds) >= {"knnn/majority", "knnn/topk"}
    # each part's zero point is its median normal score, below its threshold
    assert motion_part.threshold is not None and set(motion_part.medians) >= {"motion", "distance/topk", "knnn/topk"}
    zero_m = motion_part.medians["motion"] / motion_part.threshold
    scale = AppearanceScale.of(motion_part, "distance/topk")
    assert 0 <= zero_m < 1 and scale.at is not None and 0 < scale.zero < scale.at and scale.slope >= 0
    names = ["distance/topk+motion:max", "distance/topk+motion:sum", "distance/topk", "motion"]
    clip = _scene(tmp_path, "cyclist", [AnomalySpec("cyclist", 2.0, 8.0, seed=1)], seed=21)
    recs = replay(engine, clips_from_paths([clip]), sample_fps=4.0, scorers=rule_variants(engine, names),
                  progress=False).records
    fused, summed, app, motion = (recs[k] for k in names)
    assert fused[0]["motion_score"] == 0.0  # the first frame has nothing to compare with
    discounted = 0
    for i, (f, s, a, m) in enumerate(zip(fused, summed, app, motion, strict=True)):
        # each part on the scale with its normal median at 0 and its threshold at 1
        moves = (m["raw_score"] - zero_m) / (1 - zero_m)
        looks = s["raw_score"] * sum_at - moves
        assert f["raw_score"] == pytest.approx(max(looks, moves), abs=1e-5)
        assert f["anomalous"] == (max(looks, moves) > 1.0)
        # ... the appearance part less its crowd share: slope x (moving cells - typical), none without motion
        share = a["raw_score"] - scale.zero - looks * (scale.at - scale.zero)
        assert share >= -1e-4  # a discount, never a surcharge
        if i == 0 or not scale.slope:
            assert share == pytest.approx(0.0, abs=1e-4)
        elif share > 1e-4:  # the crowd above typical, in whole cells
            cells = scale.typical + share / scale.slope
            assert cells == pytest.approx(round(cells), abs=1e-3) and 0 <= round(cells) <= len(engine.scorer.mask)
            discounted += 1
        for v in (f, s):
            assert v["threshold"] == 1.0 and v["anomalous"] == (v["raw_score"] > 1.0)
    assert max(m["raw_score"] for m in motion) > 1.0
    assert scale.slope > 0 and discounted > 0  # the scene's crowds lift its look, and a busier frame was discounted
    assert any(s["anomalous"] for s in summed)
    with pytest.raises(ConfigError, match=r"^scoring\.fusion: sum needs the threshold of nnn/topk \+ motion"):
        load_engine(motion_model, scoring=ScoringConfig(method="nnn", fusion="sum", frame_threshold=1.0))
    with pytest.raises(ConfigError, match="expected \\+motion, \\+motion:max or \\+motion:sum"):
        rule_variants(engine, ["distance/topk+motion:mean"])


def test_a_box_left_at_rest_is_caught_by_max_and_may_pass_the_sum(motion_model: Path, tmp_path: Path) -> None:
    """The trade-off the README states ("What fusion gives up"): a still object adds no motion to the sum, whose
    threshold normal frames' motion lifts above appearance's own, so a look that is only a little off can pass
    the default; `scoring.fusion: max` lets appearance decide alone and catches it."""
    from PIL import Image

    from streamvad.offline.pipeline import clips_from_paths, replay, rule_variants

    engine = load_engine(motion_model)
    folder = _scene(tmp_path, "box", [], seed=21)
    rows, cols = np.indices((48, 48))
    box = np.where((((rows // 8) + (cols // 8)) % 2 == 0)[..., None], [250, 40, 200], [10, 200, 30])
    for path in sorted(folder.glob("*.png"))[20:60]:  # put down at 2 s, taken away at 6 s
        image = np.asarray(Image.open(path)).copy()
        image[150:198, 40:88] = box
        Image.fromarray(image).save(path)
    names = ["distance/topk+motion:sum", "distance/topk+motion:max", "distance/topk"]
    recs = replay(engine, clips_from_paths([folder]), sample_fps=4.0, scorers=rule_variants(engine, names),
                  progress=False).records
    at_rest = [(s, f, a) for s, f, a in zip(*(recs[k] for k in names), strict=True) if 2.5 <= s["pts"] < 6.0]
    assert at_rest and all(a["anomalous"] and f["anomalous"] for _, f, a in at_rest)
    assert not all(s["anomalous"] for s, _, _ in at_rest)


def test_a_model_fitted_before_the_two_point_scale_fuses_as_it_did(motion_model: Path, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A motion.json without medians or sum thresholds (an older fit): zero points at 0, so each part is divided by
    its threshold alone; the default fusion falls back to max with a warning, an explicit sum is refused."""
    from streamvad.offline.pipeline import clips_from_paths, replay, rule_variants

    old = tmp_path / "old-model"
    shutil.copytree(motion_model, old)
    meta = json.loads((old / "motion" / "motion.json").read_text())
    del meta["medians"], meta["sum_thresholds"], meta["crowd_slopes"], meta["appearance_thresholds"]
    (old / "motion" / "motion.json").write_text(json.dumps(meta))
    doc = json.loads((old / "model.json").read_text())
    (old / "model.json").write_text(json.dumps({**doc, "files": digest_files(old, "model.json")}))
    engine = load_engine(old, scoring=ScoringConfig())  # a config that leaves `fusion` at its default
    assert isinstance(engine.scorer, FusedScorer) and engine.scorer.sum_at is None
    assert "fuses by max; refit it to fuse by sum" in caplog.text
    clip = clips_from_paths([_scene(tmp_path, "cyclist", [AnomalySpec("cyclist", 2.0, 8.0, seed=1)], seed=21)])
    names = ["distance/topk+motion:max", "distance/topk", "motion"]
    recs = replay(engine, clip, sample_fps=4.0, scorers=rule_variants(engine, names), progress=False).records
    for f, a, m in zip(*(recs[k] for k in names), strict=True):
        assert f["raw_score"] == pytest.approx(max(a["raw_score"] / a["threshold"], m["raw_score"]), abs=1e-5)
    with pytest.raises(ConfigError, match=r"^scoring\.fusion: sum needs the threshold of distance/topk \+ motion"):
        load_engine(old, scoring=ScoringConfig(fusion="sum"))


def test_the_motion_part_is_windowed_over_the_models_stream_time(motion_model: Path, tmp_path: Path) -> None:
    """A served motion score is the camera's motion scores windowed over the model's smooth_s of stream time (the
    mean over 0.5 s: at 4 fps the frame and the one before; or exponential with that time constant), while the
    appearance part stays the frame's own."""
    from streamvad.offline.pipeline import clips_from_paths, replay

    engine = load_engine(motion_model)
    fused = engine.scorer
    assert isinstance(fused, FusedScorer) and fused.motion.cfg.smooth_s == 0.5
    m = fused.motion
    framewise = MotionModel(m.memory, m.scale, m.grid, m.cfg.model_copy(update={"smooth_s": 0.0}), m.threshold)
    decaying = MotionModel(m.memory, m.scale, m.grid, m.cfg.model_copy(update={"window": "exponential"}), m.threshold)
    clip = clips_from_paths([_scene(tmp_path, "cyclist", [AnomalySpec("cyclist", 2.0, 8.0, seed=1)], seed=21)])
    scorers = {"windowed": FusedScorer(fused.appearance, fused.motion, "motion"),
               "frames": FusedScorer(fused.appearance, framewise, "motion"),
               "exponential": FusedScorer(fused.appearance, decaying, "motion")}
    recs = replay(engine, clip, sample_fps=4.0, scorers=scorers, progress=False).records
    alone = [r["motion_score"] for r in recs["frames"]]
    assert [r["motion_score"] for r in recs["windowed"]] == pytest.approx(
        [alone[0], *((a + b) / 2 for a, b in itertools.pairwise(alone))], abs=1e-6)
    assert max(alone) > 0
    # with the exponential window (tau 0.5 s) each frame keeps exp(-dt / 0.5) of the one before, dt its pts step
    pts, expected = [r["pts"] for r in recs["frames"]], [alone[0]]
    for a, dt in zip(alone[1:], np.diff(pts), strict=True):
        expected.append(a + np.exp(-dt / 0.5) * (expected[-1] - a))
    assert [r["motion_score"] for r in recs["exponential"]] == pytest.approx(expected, abs=1e-5)


@pytest.mark.parametrize("smooth_s", [0.0, 0.5])
def test_live_worker_scores_motion_as_replay_does(motion_model: Path, tmp_path: Path, smooth_s: float) -> None:
    """Frames sent by a real reader over ZeroMQ to a worker get the fused scores replay gives the same clip,
    frame by frame and smoothed over stream time (scoring.smooth_s) alike."""
    from streamvad.live.reader import run_reader
    from streamvad.offline.pipeline import clips_from_paths, replay

    clip = _scene(tmp_path, "walkway", [AnomalySpec("cyclist", 3.0, 8.0, seed=2)], seed=22)
    scoring = load_engine(motion_model).info.scoring.model_copy(update={"smooth_s": smooth_s})
    engine = load_engine(motion_model, scoring=scoring)
    with running_worker(engine, WorkerConfig(max_batch=4, max_wait_ms=200)) as (worker, _pusher, sub):
        run_reader(CameraConfig(id="walkway", url=str(clip), fps=4.0, realtime=False), worker.transport)
        live = {}
        while len(live) < 32 and (msg := sub.recv_message(10_000)) is not None:
            if msg.type == "verdict" and msg.verdict is not None:
                live[msg.verdict.key.index] = (msg.verdict.raw_score, msg.verdict.motion_score)
    offline = replay(load_engine(motion_model, scoring=scoring), clips_from_paths([clip]), sample_fps=4.0,
                     progress=False).records["primary"]
    assert sorted(live) == [r["frame"] for r in offline] and len(offline) == 32
    assert [r["raw_score"] for r in offline] == pytest.approx([live[r["frame"]][0] for r in offline], abs=1e-5)
    assert [r["motion_score"] for r in offline] == pytest.approx([live[r["frame"]][1] for r in offline], abs=1e-5)
    assert sum(r["motion_score"] > 0 for r in offline) > 16  # motion took part, not just appearance


def test_a_camera_sampled_at_another_rate_than_the_motion_model_is_refused(motion_model: Path) -> None:
    from streamvad.live.worker import build_worker

    cfg = StreamVADConfig(model_dir=motion_model, cameras=[CameraConfig(id="gate", url="x.mp4", fps=10.0)])
    with pytest.raises(ConfigError, match=r"cameras\.gate\.fps: 10, but model .* learnt motion at 4 fps"):
        build_worker(cfg)
    appearance = cfg.model_copy(update={"scoring": cfg.scoring.model_copy(update={"motion": "appearance"})})
    assert build_worker(appearance).fleet.engine("gate").tracker is None
