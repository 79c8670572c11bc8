"""`python -m cpm_jax.predict clip.mp4` as a user runs it: the shipped `synthetic` model follows a
synthetic figure walking across the frame while it turns (tests/videos.py) to within PCK@0.2 of
the truth, writing one JSON line per processed frame and a pose MP4 that decodes to the same
frames; --every / --max_frames pick the frames; a phone's portrait clip (turned frames plus a
display rotation) is read upright; a truncated download keeps the frames that decode and says
where it stopped; files that are not videos, have no frames, or come with a photo
are one error line and leave nothing behind. The follow rule (inference/tracking.py) on its own:
moving, size, "lost" and "reset"."""
import errno
import json
import subprocess
import sys
from concurrent import futures

import av
import jax.numpy as jnp
import numpy as np
import pytest

from cpm_jax import errors
from cpm_jax.evaluation import metrics, multiscale
from cpm_jax.inference import frames, models, tracking, video
from data_pipelines import skeleton, synthetic
from tests import videos
from tests.conftest import ROOT, python_env, tiny_config

N, WIDTH, HEIGHT, FIGURE, FPS = 40, 256, 192, 110.0, 25
LENGTH = N + 4                  # the clip's frames; the tracked run stops after N (--max_frames)


def predict(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cpm_jax.predict", *map(str, args)], capture_output=True,
                          text=True, env=python_env(), cwd=ROOT, timeout=timeout)


def read_lines(path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def joints_of(lines: list[dict]) -> np.ndarray:
    return np.array([[[j["x"], j["y"]] for j in line["joints"]] for line in lines])


def decoded(path) -> tuple[int, tuple[int, int], float]:
    """(frames, (width, height), frames/s) of an MP4, counted by decoding it."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return count, (stream.width, stream.height), float(stream.average_rate)


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """The walking figure as a web MP4 (index first, so that a cut copy still decodes), its true
    joints (LENGTH, 14, 2) px and the centre of the first frame's figure."""
    folder = tmp_path_factory.mktemp("video")
    truth = videos.walking_video(folder / "walk.mp4", LENGTH, WIDTH, HEIGHT, FIGURE, fps=FPS, faststart=True)
    return folder / "walk.mp4", truth, 0.5 * (truth[0].min(0) + truth[0].max(0))


@pytest.fixture(scope="module")
def tracked(clip, tmp_path_factory):
    path, truth, start = clip
    out = tmp_path_factory.mktemp("tracked")
    result = predict(path, "--pretrained", "synthetic", "--center", f"{start[0]:.1f},{start[1]:.1f}",
                     "--scale", FIGURE, "--max_frames", N, "--out", out)
    assert result.returncode == 0, result.stderr
    return result, out


def test_the_figure_is_followed_within_pck(clip, tracked):
    """Placed once on the first frame, the person is found on every frame as it walks 180 px and
    turns by up to 35 degrees; keeping the first placement instead scores about 0.2. --max_frames
    stops it after N frames."""
    _, truth, _ = clip
    truth = truth[:N]
    result, out = tracked
    lines = read_lines(out / "walk.jsonl")
    assert [line["frame"] for line in lines] == list(range(N))
    np.testing.assert_allclose([line["time"] for line in lines], np.arange(N) / FPS, atol=1e-3)
    assert set(lines[0]) == {"frame", "time", "state", "found", "note", "center", "scale", "joints", "single_person"}
    assert [j["name"] for j in lines[0]["joints"]] == list(skeleton.LSP.joint_names)
    assert lines[0]["state"] == "first" and all(line["state"] != "reset" for line in lines)
    pred = joints_of(lines)
    assert metrics.lsp_pck(pred, truth, 0.2)["total"] >= 0.7
    per_frame = [metrics.lsp_pck(pred[i:i + 1], truth[i:i + 1], 0.2)["total"] for i in range(N)]
    assert np.mean(np.array(per_frame) >= 0.5) >= 0.9
    # The placement follows the figure: centre near its box middle, scale near its height.
    middle = 0.5 * (truth.min(1) + truth.max(1))
    assert np.abs(np.array([line["center"] for line in lines]) - middle).max() < 0.3 * FIGURE
    assert np.abs(np.array([line["scale"] for line in lines]) / FIGURE - 1).max() < 0.25
    report = json.loads(result.stdout)
    assert report["frames"] == N and report["pretrained"] == "synthetic" and report["warnings"] == []
    assert sum(report["states"].values()) == N


def test_the_pose_video_has_every_frame_at_the_size_and_rate(tracked):
    _, out = tracked
    assert decoded(out / "walk_pose.mp4") == (N, (WIDTH, HEIGHT), FPS)
    assert sorted(p.name for p in out.iterdir()) == ["walk.jsonl", "walk_pose.mp4"]


def test_a_truncated_video_keeps_every_nth_frame_that_decodes_and_says_where_it_stopped(clip, tmp_path):
    path, _, _ = clip
    cut = tmp_path / "cut.mp4"
    videos.truncated(path, cut, 0.6)
    result = predict(cut, "--pretrained", "synthetic", "--every", 3, "--scales", 1, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    lines = read_lines(tmp_path / "out" / "cut.jsonl")
    kept = len(lines)
    indices = [line["frame"] for line in lines]
    assert 1 < kept < LENGTH / 3 and indices == list(range(0, 3 * kept, 3))
    np.testing.assert_allclose([line["time"] for line in lines], np.array(indices) / FPS, atol=1e-3)
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"predict: warning: {cut}: decoding stopped at frame ")
    stop = int(warnings[0].split("stopped at frame ")[1].split()[0])
    assert indices[-1] < stop <= indices[-1] + 3                   # the frames after the last kept one
    assert warnings[0].endswith(f"(the container lists {LENGTH}): the file ends early (truncated?); the "
                                f"outputs hold the {kept} frames processed before it")
    count, size, rate = decoded(tmp_path / "out" / "cut_pose.mp4")
    assert (count, size) == (kept, (WIDTH, HEIGHT)) and rate == pytest.approx(FPS / 3)
    assert json.loads(result.stdout)["warnings"] == [warnings[0].split(f"{cut}: ", 1)[1]]
    assert "frames/s" in result.stderr


ERRORS = ("random_bytes", "no_frames", "with_a_photo", "every_0", "centre_outside")


@pytest.fixture(scope="module")
def error_runs(clip, tmp_path_factory) -> dict:
    """case -> (the result, the line expected after "cpm_jax.predict: error: ", the --out given):
    the runs side by side (each is mostly the command's start-up)."""
    folder = tmp_path_factory.mktemp("errors")
    noise, empty, photo, walk = folder / "noise.mp4", folder / "empty.avi", folder / "photo.jpg", clip[0]
    noise.write_bytes(np.random.default_rng(0).bytes(5000))
    videos.no_frames(empty)
    with av.open(str(empty)) as container:                      # really a video stream of 0 frames
        assert container.streams.video and sum(1 for _ in container.decode(video=0)) == 0
    photo.write_bytes(b"not read")
    cases = {
        "random_bytes": ([noise], f"{noise}: not a video FFmpeg can read (Invalid data found when "
                                  "processing input): a damaged, truncated or unsupported file"),
        "no_frames": ([empty], f"{empty}: the video has no frames that decode"),
        "with_a_photo": ([walk, photo], f"{walk}: a video is predicted alone, without photos ({photo}); "
                                        "run predict once per video"),
        "every_0": ([walk, "--every", 0], "--every 0: process every N-th frame, N >= 1"),
        "centre_outside": ([walk, "--center", "300,20"], f"{walk}: centre (300, 20) lies outside the "
                                                         f"{WIDTH}x{HEIGHT} image"),
    }

    def run(case):
        args, expected = cases[case]
        out = folder / f"out_{case}"
        return case, (predict(*args, "--pretrained", "synthetic", "--out", out), expected, out)
    with futures.ThreadPoolExecutor(2) as pool:
        return dict(pool.map(run, ERRORS))


@pytest.mark.parametrize("case", ERRORS)
def test_a_bad_video_or_request_is_one_error_line_and_writes_nothing(case, error_runs):
    result, expected, out = error_runs[case]
    assert result.returncode == 1, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"cpm_jax.predict: error: {expected}"), result.stderr
    assert not out.exists()


# ------------------------------------------------------------------ the follow rule on its own

DATA = tiny_config().data
DATA.person_height = 0.9


def upright(centre, height) -> np.ndarray:
    """A standing synthetic figure's joints (14, 2) px: `height` px tall, box middle `centre`."""
    pose = synthetic._sample_pose(np.random.default_rng(3)) * height
    return pose - 0.5 * (pose.min(0) + pose.max(0)) + np.asarray(centre)


def test_the_size_rule_matches_the_synthetic_figures_scale():
    """The bone rule's size from the true joints is the figure's scale (its height) within 15%
    for 9 in 10 of the drawn figures, whatever their pose and turn."""
    examples = [synthetic.render_example(0, "heldout", i) for i in range(60)]
    sizes = [tracking.estimate(e["joints"], np.ones(14), skeleton.LSP, float(e["scale"])).scale / e["scale"]
             for e in examples]
    assert np.mean(np.abs(np.array(sizes) - 1) < 0.15) >= 0.9


def test_a_pose_moving_right_moves_the_centre_right_with_bounded_steps():
    first = multiscale.person_from_scale((100.0, 100.0), 100.0, DATA, 128)
    tracker = tracking.Tracker(first, (200, 400), DATA, 128, skeleton.LSP)
    centres, scales = [], []
    for x in (110, 120, 130, 140, 300):             # the last: a jump no crop should follow at once
        state, found = tracker.observe(upright((x, 100), 100), np.full(14, 0.9))
        assert found.found and state == ("first" if x == 110 else "tracked")
        centres.append(tracker.person.center[0])
        scales.append(tracker.scale_of(tracker.person))
    assert all(a < b for a, b in zip(centres, centres[1:]))
    assert centres[-1] - centres[-2] <= tracking.MAX_SHIFT * scales[-2] + 1e-6
    assert np.allclose(scales, 100, rtol=0.2)
    tracker.observe(upright((centres[-1], 100), 200), np.full(14, 0.9))     # twice as tall
    assert tracker.scale_of(tracker.person) == pytest.approx(scales[-1] * tracking.MAX_GROWTH)


def test_a_collapsed_pose_is_lost_then_the_first_placement_returns():
    first = multiscale.person_from_scale((100.0, 100.0), 100.0, DATA, 128)
    tracker = tracking.Tracker(first, (200, 400), DATA, 128, skeleton.LSP, reset_after=3)
    tracker.observe(upright((150, 100), 100), np.full(14, 0.9))
    moved = tracker.person
    assert moved.center[0] > 100
    weak = [tracker.observe(upright((150, 100), 100), np.full(14, 0.05)) for _ in range(3)]
    assert [s for s, _ in weak] == ["lost"] * 3 and "weak beliefs" in weak[0][1].reason
    assert tracker.person == first and tracker.state == "reset"
    state, found = tracker.observe(np.full((14, 2), 150.0), np.full(14, 0.9))    # all joints in one spot
    assert state == "reset" and not found.found and "degenerate" in found.reason
    assert tracker.observe(upright((150, 100), 100), np.full(14, 0.9))[0] == "tracked"


# ------------------------------------------------------ the job in-process, with a blind network

def blind_model(config) -> models.Model:
    """A "network" that sees no one: all beliefs 0."""
    m = config.model
    cells = m.input_size // 8

    def apply(variables, crops):
        return jnp.zeros((crops.shape[0], m.num_stages, cells, cells, m.num_parts + 1), jnp.float32)
    return models.Model(config, apply, None, None, "jax")


def test_nobody_there_is_lost_then_reset_every_few_frames(clip, tmp_path):
    report = video.predict_video(blind_model(tiny_config()), str(clip[0]), str(tmp_path), multiscale.Options(scales=(1.0,)),
                                 max_frames=12, log=lambda line: None)
    lines = read_lines(tmp_path / "walk.jsonl")
    reset = tracking.RESET_AFTER
    expected = (["first"] + ["lost"] * (reset - 1) + ["reset"] + ["lost"] * (reset - 1) + ["reset"])[:12]
    assert [line["state"] for line in lines] == expected + ["lost"] * (12 - len(expected))
    assert not any(line["found"] for line in lines)
    assert len({tuple(line["center"]) for line in lines}) == 1        # the first placement kept
    assert report["states"]["reset"] == 2 and report["frames"] == 12


def test_a_write_failure_part_way_leaves_no_outputs(clip, tmp_path, monkeypatch):
    write = frames.Writer.write

    def full_disk(self, rgb):
        if self.count == 3:
            raise OSError(errno.ENOSPC, "No space left on device", self.path)
        write(self, rgb)
    monkeypatch.setattr(frames.Writer, "write", full_disk)
    with pytest.raises(errors.OutputError, match=f"cannot write {tmp_path / 'walk_pose.mp4'}: No space left"):
        video.predict_video(blind_model(tiny_config()), str(clip[0]), str(tmp_path), multiscale.Options(scales=(1.0,)),
                            log=lambda line: None)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("turn", [90, -90, 180])
def test_a_phone_clip_stored_turned_with_a_display_rotation_is_read_upright(turn, tmp_path):
    """Phones store a portrait clip as landscape frames plus a display rotation; the reader (so
    the network, the JSON pixels and the pose video) sees what a player shows."""
    y, x = np.mgrid[0:96, 0:64]
    shown = np.stack([4 * x, 2.5 * y, np.where((x < 20) & (y < 30), 255, 40)], -1).astype(np.uint8)
    stored = np.rot90(shown, -turn // 90)                    # what the camera writes
    path = tmp_path / "phone.mp4"
    videos.write(path, [stored] * 3, rotation=turn)
    info = frames.probe(str(path))
    assert (info.width, info.height) == (64, 96)
    read = [rgb for _, _, rgb in frames.Reader(str(path))]
    assert len(read) == 3 and all(rgb.shape == shown.shape for rgb in read)
    error = np.abs(read[0].astype(float) - shown).mean()
    assert error < 4, error                                  # H.264's loss only
