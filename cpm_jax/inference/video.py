"""Pose on a video, following one person: `python -m cpm_jax.predict clip.mp4 --pretrained NAME`.

Every `every`-th frame (at most `max_frames`) is decoded, predicted with the paper's multi-scale
procedure (the last stage) where the tracker says the person is, drawn and encoded, one frame at
a time (memory does not grow with the video). The first frame is placed as a photo is
(--center X,Y / --scale PX, else the image rule: multiscale.place_person); each next one from the
previous pose (inference/tracking.py: its rule, the "lost" fallback and the reset to the first
placement after tracking.RESET_AFTER lost frames). Outputs in `out`:

  <stem>.jsonl       one JSON object per processed frame: {"frame" (index in the video, 0-based),
                     "time" (s), "state" ("first" | "tracked" | "lost" | "reset"), "found"
                     (false: the pose collapsed), "note" (why not found, else ""), "center" [x, y]
                     and "scale" (px: the placement used), "joints" [{"name", "x", "y", "belief"}]
                     (the video's px, the part's belief), "single_person" {"mean_belief",
                     "long_limbs"} (evaluation/single_person.py's cheap signs)}
  <stem>_pose.mp4    the frames with the skeleton (grey: lost) and "frame state" drawn, same size,
                     at the video's rate / every

Both are written under temporary names and moved into place only when the video is done: a
failed run leaves neither. A file that stops decoding part-way (truncated, damaged) keeps the
frames that decoded: one `predict: warning:` line names where it stopped (also in "warnings").
Frames over `max_side` px are resized for the network; joints are in the video's own pixels.
"""
import json
import math
import os
import sys
import time

import numpy as np

from cpm_jax import errors, outputs, progress
from cpm_jax.evaluation import multiscale, single_person
from cpm_jax.inference import frames, models, resizing, tracking
from data_pipelines import registry

PROGRESS_EVERY_S = 5.0


def check_counts(every: int, max_frames: int | None) -> None:
    """InputError for --every < 1 or --max_frames < 0 (0 or None: all frames)."""
    if every < 1:
        raise errors.InputError(f"--every {every}: process every N-th frame, N >= 1")
    if max_frames is not None and max_frames < 0:
        raise errors.InputError(f"--max_frames {max_frames}: a number of frames >= 0 (0: all)")


def run(source: models.Source, path: str, out: str, options: multiscale.Options, center=None,
        scale: float | None = None, every: int = 1, max_frames: int | None = None, log=None,
        max_side: int = 1024) -> dict:
    """The command's job: flags, --out, the model's config and the video checked (one line each)
    before the model loads, then `predict_video`; returns its report with the model's source."""
    check_counts(every, max_frames)
    if scale is not None and not (np.isfinite(scale) and scale > 0):
        raise errors.InputError(f"--scale {scale}: the person's size in pixels must be > 0")
    outputs.check_directory(out, "--out")
    config = models.open_config(source)
    info = frames.probe(path)
    try:
        multiscale.place_person((info.height, info.width), config.data, config.model.input_size, center, scale)
    except errors.InputError as error:
        raise errors.InputError(f"{path}: {error}") from error
    model = models.load(source)
    report = predict_video(model, path, out, options, center, scale, every, max_frames, log, info, max_side)
    return {**source.as_dict(), "runtime": model.runtime, "checkpoint_step": model.step, **report}


def output_paths(out: str, path: str) -> tuple[str, str]:
    stem = os.path.splitext(os.path.basename(path))[0] or "video"
    return os.path.join(out, f"{stem}.jsonl"), os.path.join(out, f"{stem}_pose.mp4")


def predict_video(model: models.Model, path: str, out: str, options: multiscale.Options, center=None,
                  scale: float | None = None, every: int = 1, max_frames: int | None = None, log=None,
                  info: frames.VideoInfo | None = None, max_side: int = 1024) -> dict:
    """Writes <out>/<stem>.jsonl and <stem>_pose.mp4 (the module docstring); returns the summary:
    {"video", "width", "height", "fps", "every", "frames" (processed), "states" {state: count},
    "person" (how the first frame was placed), "jsonl", "pose_video", "stage", "scales", "flip",
    "subpixel", "seconds", "frames_per_second", "warnings"}. `log(line)`: progress (stderr)."""
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    check_counts(every, max_frames)
    max_frames = max_frames or None
    info = info or frames.probe(path)
    config = model.config
    size, num_stages = config.model.input_size, config.model.num_stages
    order = registry.get(config.data.dataset).skeleton
    first, how = multiscale.place_person((info.height, info.width), config.data, size, center, scale)
    predictor = model.predictor(multiscale.Options(
        scales=options.scales, stages=(num_stages,), flip=options.flip, subpixel=options.subpixel,
        batch_size=1, canvas_multiple=options.canvas_multiple))
    tracker = tracking.Tracker(first, (info.height, info.width), config.data, size, order)
    jsonl, mp4 = output_paths(out, path)
    os.makedirs(out, exist_ok=True)
    partial = [os.path.join(out, f".{os.path.basename(p)}.partial") for p in (jsonl, mp4)]
    total = math.ceil(info.frames / every) if info.frames else None
    total = min(total, max_frames) if total and max_frames else (total or max_frames)
    name = os.path.basename(path)
    log(f"predict: {path} ({info.width}x{info.height}, {float(info.fps):.3g} frames/s, "
        f"{info.frames or 'unknown number of'} frames): every {every}, {total or 'all'} to process")
    reader = frames.Reader(path, every, max_frames)
    states = dict.fromkeys(("first", "tracked", "lost", "reset"), 0)
    clock = progress.Progress(total or sys.maxsize)       # unknown length: lines on time, no ETA
    started = time.perf_counter()
    writer = None
    try:
        # A late failure (a full disk) names the output it hit: outputs.writing.
        with outputs.writing(jsonl), open(partial[0], "w") as lines:
            with outputs.writing(mp4):
                writer = frames.Writer(partial[1], info.width, info.height, info.fps / every)
            for index, seconds, rgb in reader:
                where = tracker.person
                small, ratio = resizing.shrink(rgb, max_side)
                shown = multiscale.Person(tuple((np.asarray(where.center) + 0.5) * ratio - 0.5),
                                          where.base_factor / float(ratio[1]))
                joints, peaks = predictor.predict(small, shown)
                joints = np.clip((joints[-1] + 0.5) / ratio - 0.5, 0, [info.width - 1, info.height - 1])
                peaks = peaks[-1]
                state, found = tracker.observe(joints, peaks)
                states[state] += 1
                lines.write(json.dumps(_line(index, seconds, state, found, where, tracker, joints, peaks,
                                             order, size)) + "\n")
                with outputs.writing(mp4):
                    writer.write(frames.draw_pose(rgb, joints, order, f"{index} {state}", faded=not found.found))
                clock.update(writer.count)
                if clock.due(PROGRESS_EVERY_S):
                    rate = clock.rate()
                    done = (f"{writer.count}/{total} processed, {clock.describe(unit='frames/s')}" if total else
                            f"{writer.count} processed, " + (f"{rate:.1f} frames/s" if rate else "compiling"))
                    log(f"predict: {name}: frame {index}, {done}")
            with outputs.writing(mp4):
                writer.close()
        if writer.count == 0:
            raise errors.InputError(f"{path}: no frame decoded")
        with outputs.writing(jsonl):
            os.replace(partial[1], mp4)                  # the JSON lines last: they say it is done
            os.replace(partial[0], jsonl)
    finally:
        if writer is not None:
            writer.abandon()
        for p in partial:
            if os.path.exists(p):
                os.remove(p)
    warnings = []
    problem = reader.problem()
    if problem:
        warnings.append(f"{problem}; the outputs hold the {writer.count} frame{'s' * (writer.count != 1)} "
                        "processed before it")
        log(f"predict: warning: {path}: {warnings[-1]}")
    elapsed = time.perf_counter() - started
    counts = ", ".join(f"{n} {s}" for s, n in states.items() if n)
    log(f"predict: {name}: {writer.count} frames in {elapsed:.1f}s ({writer.count / elapsed:.2f} frames/s; "
        f"{counts}) -> {jsonl}, {mp4}")
    return {"video": path, "width": info.width, "height": info.height, "fps": float(info.fps),
            "every": every, "frames": writer.count, "states": states, "person": how, "jsonl": jsonl,
            "pose_video": mp4, "stage": num_stages, "scales": list(options.scales), "flip": options.flip,
            "subpixel": options.subpixel, "seconds": round(elapsed, 2),
            "frames_per_second": round(writer.count / elapsed, 3), "warnings": warnings}


def _line(index, seconds, state, found, where, tracker, joints, peaks, order, size) -> dict:
    """One frame's JSON object (the module docstring)."""
    window = size / where.base_factor                     # the crop's side at scale 1, video px
    return {"frame": int(index), "time": float(seconds), "state": state, "found": bool(found.found),
            "note": found.reason, "center": [round(float(c), 2) for c in where.center],
            "scale": round(tracker.scale_of(where), 2),
            "joints": [{"name": n, "x": round(float(x), 2), "y": round(float(y), 2), "belief": round(float(b), 4)}
                       for n, (x, y), b in zip(order.joint_names, joints, peaks)],
            "single_person": {"mean_belief": round(float(np.mean(peaks)), 4),
                              "long_limbs": list(single_person.long_limbs(joints, window, order))}}
