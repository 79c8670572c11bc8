"""Following one person through a video: where the CPM looks in the next frame (its centre map is
how it is told whom to look at) from the pose it found in this one. Pure numpy.

The rule, per frame, from its joints (P, 2) px and peak beliefs (P,):
  * confident joints: peak >= CONFIDENT_FRACTION x the frame's median peak (relative, so that a
    model with weak beliefs, such as lspet_cpu, keeps its better half);
  * the person is LOST when the mean peak is under single_person.WEAK_MEAN_BELIEF (photos' weak
    warning), when fewer than MIN_BONES bones have both ends confident, or when the confident
    joints' box is degenerate (its longer side under MIN_BOX x the current scale);
  * else the target centre is the middle of the confident joints' box (the synthetic figures'
    centre, and LSPET's in the release), and the target scale (px, the records' scale: about the
    person's height) is the 75th percentile of the confident bones' lengths divided by their
    share of the person's height (BONE_SHARE: the synthetic figures' proportions, which follow
    human ones); a quantile, as the release's LSP scale (mpi_like_scale) uses, because
    foreshortening only shortens a bone, and not the maximum, which one wrong joint would set;
  * the next placement moves towards the target by CENTRE_GAIN / SCALE_GAIN (smoothing jitter),
    the centre by at most MAX_SHIFT x the scale and the scale by at most a factor MAX_GROWTH per
    frame (one wrong frame cannot throw the crop off the person), inside the frame.
A lost frame keeps the last good centre and scale for the next frame; after RESET_AFTER (5)
consecutive lost frames the next frame is placed as the first was (--center/--scale or the image
rule). States: "first", "reset" (placed by that first rule, whatever their own pose: `found`
says), "tracked" (placed from the previous pose, found), "lost" (its own pose collapsed).
"""
import dataclasses

import numpy as np

from cpm_jax.evaluation import multiscale, single_person
from data_pipelines import skeleton

CONFIDENT_FRACTION = 0.5
MIN_BONES = 3
MIN_BOX = 0.15
CENTRE_GAIN, SCALE_GAIN = 0.7, 0.5
MAX_SHIFT, MAX_GROWTH = 0.35, 1.2
RESET_AFTER = 5
MIN_SCALE, MAX_SCALE = 16.0, 2.0     # px; x the frame's longer side: a person is never followed beyond
# A bone's length as a share of the person's scale (height), by joint names without "r_"/"l_":
# data_pipelines/synthetic.py's proportions (torso side: shoulder to hip of the same side).
BONE_SHARE = {frozenset(("ankle", "knee")): 0.23, frozenset(("knee", "hip")): 0.24,
              frozenset(("hip",)): 0.18, frozenset(("wrist", "elbow")): 0.15,
              frozenset(("elbow", "shoulder")): 0.17, frozenset(("shoulder",)): 0.25,
              frozenset(("shoulder", "hip")): 0.27, frozenset(("neck", "head_top")): 0.13}


def _kind(name: str) -> str:
    return name[2:] if name[:2] in ("r_", "l_") else name


def bones(order: skeleton.Skeleton) -> tuple[np.ndarray, np.ndarray]:
    """(the limbs (B, 2) joint indices of `order` with a known share, their shares (B,))."""
    known = [(ij, BONE_SHARE[frozenset((_kind(a), _kind(b)))])
             for ij, (a, b) in zip(order.limb_indices, order.limbs)
             if frozenset((_kind(a), _kind(b))) in BONE_SHARE]
    return np.array([ij for ij, _ in known], int).reshape(-1, 2), np.array([s for _, s in known])


@dataclasses.dataclass(frozen=True)
class Estimate:
    """One frame's verdict: found (not lost), why not, and the target centre (2,) and scale px."""
    found: bool
    reason: str
    center: np.ndarray | None = None
    scale: float | None = None


def estimate(joints: np.ndarray, peaks: np.ndarray, order: skeleton.Skeleton, scale: float) -> Estimate:
    """The person's centre and scale from one frame's pose (the module docstring), or why it is
    lost; `scale` is the current one (px), for the degenerate-box test."""
    joints, peaks = np.asarray(joints, np.float64), np.asarray(peaks, np.float64)
    if not (np.isfinite(joints).all() and np.isfinite(peaks).all()):
        return Estimate(False, "non-finite joints or beliefs")
    mean = float(peaks.mean())
    if mean < single_person.WEAK_MEAN_BELIEF:
        return Estimate(False, f"weak beliefs: mean peak {mean:.3f} < {single_person.WEAK_MEAN_BELIEF}")
    confident = peaks >= CONFIDENT_FRACTION * np.median(peaks)
    low, high = joints[confident].min(0), joints[confident].max(0)
    if (high - low).max() < MIN_BOX * scale:
        return Estimate(False, f"degenerate pose: the confident joints span {(high - low).max():.1f} px")
    pairs, shares = bones(order)
    usable = confident[pairs].all(axis=1)
    if usable.sum() < MIN_BONES:
        return Estimate(False, f"{int(usable.sum())} bones with both ends confident (< {MIN_BONES})")
    lengths = np.linalg.norm(joints[pairs[usable, 0]] - joints[pairs[usable, 1]], axis=1) / shares[usable]
    size = float(np.quantile(lengths, 0.75))
    if size <= 0:
        return Estimate(False, "degenerate pose: zero-length bones")
    return Estimate(True, "", 0.5 * (low + high), size)


class Tracker:
    """The follow rule over a video of `image_size` (H, W): `person` is where to look in the
    frame about to be predicted and `state` how it was placed ("first", "tracked", "lost",
    "reset"); `observe(joints, peaks)` takes that frame's pose and returns the frame's final
    state and estimate, then moves `person` to the next frame's placement."""

    def __init__(self, first: multiscale.Person, image_size, data, input_size: int,
                 order: skeleton.Skeleton, reset_after: int = RESET_AFTER):
        self.first, self.data, self.input_size, self.order = first, data, int(input_size), order
        self.height, self.width = int(image_size[0]), int(image_size[1])
        self.reset_after = int(reset_after)
        self.person, self.state, self.lost_run = first, "first", 0

    def scale_of(self, person: multiscale.Person) -> float:
        """The person scale (px) that `person.base_factor` zooms to data.person_height x input."""
        return float(self.data.person_height) * self.input_size / person.base_factor

    def observe(self, joints: np.ndarray, peaks: np.ndarray) -> tuple[str, Estimate]:
        current = self.scale_of(self.person)
        found = estimate(joints, peaks, self.order, current)
        state = self.state if self.state in ("first", "reset") else ("tracked" if found.found else "lost")
        if found.found:
            self.lost_run = 0
            self.person, self.state = self._follow(found, current), "tracked"
        else:
            self.lost_run += 1
            if self.lost_run >= self.reset_after:
                self.person, self.state, self.lost_run = self.first, "reset", 0
            else:
                self.state = "lost"                   # same person: the last good placement
        return state, found

    def _follow(self, found: Estimate, current: float) -> multiscale.Person:
        centre = np.asarray(self.person.center, np.float64)
        step = CENTRE_GAIN * (found.center - centre)
        step *= min(1.0, MAX_SHIFT * current / max(float(np.hypot(*step)), 1e-9))
        centre = np.clip(centre + step, 0, [self.width - 1, self.height - 1])
        growth = float(np.clip((found.scale / current) ** SCALE_GAIN, 1 / MAX_GROWTH, MAX_GROWTH))
        scale = np.clip(current * growth, MIN_SCALE, MAX_SCALE * max(self.height, self.width))
        return multiscale.person_from_scale(centre, float(scale), self.data, self.input_size)
