"""Evidence, from one prediction's belief maps, that a photo does not show ONE person where the
network looked: the CPM is single-person by design (docs/paper_notes.md section 5: one person,
placed by a centre and a scale), so two people side by side give one skeleton straddling both.

`check` measures three signs, each against a threshold chosen on the shipped lspet_cpu model
(`python -m cpm_jax.evaluate single_person`: held-out LSPET photos of one person against pairs
of them pasted side by side; inference/single_person_rates.py):
weak beliefs (a low mean of the parts' peak beliefs), parts whose map has two strong peaks far
apart, and limbs too long for one person. Lengths are in units of the window, the side of the
network's crop at scale 1 in the photo (input size / base zoom): the person is about 0.64 of it.
"""
import dataclasses

import numpy as np
from scipy import ndimage

from data_pipelines import skeleton

# Figures: lspet_cpu on 398 held-out one-person photos / 199 pairs (`evaluate single_person`).
# Weak: about single photos' 1st percentile (0.215): below it 0.8% of them, 35.7% of pairs.
WEAK_MEAN_BELIEF = 0.21
# A second peak of at least 0.7 x the part's maximum: weaker ones are the model's usual noise.
TWO_PEAKS_RATIO = 0.7
# At least 0.4 window apart: a person's own left/right confusions (wrists, ankles) lie closer.
TWO_PEAKS_DISTANCE = 0.4
# So many parts with two peaks: 0.8% of single photos, 6.5% of pairs.
TWO_PEAKS_PARTS = 4
# A limb over 0.22 window (a third of the person's height): one alone is common in one person ...
LONG_LIMB = 0.22
# ... 4 or more: 4.3% of single photos, 22.6% of pairs. Any sign (the warning): 5.3% / 47.2%.
LONG_LIMBS = 4
PEAK_NEIGHBOURHOOD = 5         # px of the picture's maps: a local maximum is the largest in 5 x 5


@dataclasses.dataclass(frozen=True)
class Evidence:
    mean_belief: float                 # mean over parts of the part's peak belief
    two_peak_parts: tuple[str, ...]    # parts with two strong peaks far apart
    long_limbs: tuple[str, ...]        # limbs ("a-b") longer than LONG_LIMB window

    def signs(self) -> dict[str, bool]:
        """Whether each sign is over its threshold: "weak", "two_peaks", "long_limbs"."""
        return {"weak": self.mean_belief < WEAK_MEAN_BELIEF,
                "two_peaks": len(self.two_peak_parts) >= TWO_PEAKS_PARTS,
                "long_limbs": len(self.long_limbs) >= LONG_LIMBS}

    def reasons(self) -> list[str]:
        """One phrase per sign over its threshold; empty: nothing says it is not one person."""
        signs, found = self.signs(), []
        if signs["weak"]:
            found.append(f"weak beliefs: mean peak {self.mean_belief:.3f} < {WEAK_MEAN_BELIEF}")
        if signs["two_peaks"]:
            found.append(f"{len(self.two_peak_parts)} parts with two distant peaks")
        if signs["long_limbs"]:
            found.append(f"{len(self.long_limbs)} limbs too long for one person")
        return found

    def as_dict(self) -> dict:
        return {"mean_belief": round(self.mean_belief, 4), "two_peak_parts": list(self.two_peak_parts),
                "long_limbs": list(self.long_limbs)}


def two_peak_parts(maps: np.ndarray, window: float, order: skeleton.Skeleton) -> tuple[str, ...]:
    """Names of the parts whose map (H, W, P) holds a local maximum >= TWO_PEAKS_RATIO x its
    maximum at least TWO_PEAKS_DISTANCE x `window` (px of the maps) from the arg-max."""
    found = []
    for p, name in enumerate(order.joint_names):
        m = np.asarray(maps[..., p], np.float32)
        top = float(m.max())
        if top <= 0:
            continue
        local = (m == ndimage.maximum_filter(m, size=PEAK_NEIGHBOURHOOD)) & (m >= TWO_PEAKS_RATIO * top)
        ys, xs = np.nonzero(local)
        ty, tx = np.unravel_index(int(m.argmax()), m.shape)
        if (np.hypot(xs - tx, ys - ty) >= TWO_PEAKS_DISTANCE * window).any():
            found.append(name)
    return tuple(found)


def long_limbs(joints: np.ndarray, window: float, order: skeleton.Skeleton) -> tuple[str, ...]:
    """The limbs of `joints` (P, 2) longer than LONG_LIMB x `window` (both in the same px)."""
    joints = np.asarray(joints, np.float64)
    return tuple(f"{a}-{b}" for (i, j), (a, b) in zip(order.limb_indices, order.limbs)
                 if np.hypot(*(joints[i] - joints[j])) > LONG_LIMB * window)


def check(maps: np.ndarray, peaks: np.ndarray, joints: np.ndarray, window: float,
          order: skeleton.Skeleton) -> Evidence:
    """maps (H, W, P): the last stage's scale-averaged part beliefs; peaks (P,): each part's peak
    belief; joints (P, 2) and `window` in the maps' px."""
    return Evidence(float(np.mean(peaks)), two_peak_parts(maps, window, order),
                    long_limbs(joints, window, order))


def of_prediction(prediction, base_factor: float, input_size: int, order: skeleton.Skeleton) -> Evidence:
    """`check` of `MultiScalePredictor.predict_with_maps`'s (joints, peaks, maps, ratio) for a
    person placed at zoom `base_factor` (the window: input_size / base_factor image px)."""
    joints, peaks, maps, ratio = prediction
    return check(maps[-1], peaks[-1], (joints[-1] + 0.5) * ratio - 0.5, input_size / base_factor * ratio, order)
