"""How often predict's single-person warning (single_person.py) fires where it should not and
where it should: on held-out photos of one person that predict's default placement fits, and on
two of those photos pasted side by side. Its thresholds are chosen from these figures:

    python -m cpm_jax.evaluate single_person --pretrained lspet_cpu [--count N] [--json]

Photos: the model's evaluation split (lspet_cpu: the 1,000 held-out LSPET people). A photo fits
the default placement (image centre, the LSP rule's zoom 0.8 x input / image height) when its
person's canonical zoom (data.person_height x input / scale) is within a factor FIT of it and
their centre within CENTRE_OFFSET x the image height of the image centre: there the model should
see one person. Pairs: fitting photos k and k+1, both resized to the taller one's height and
pasted left to right, so that the default placement falls between two people. Each image is
predicted as `predict` predicts a photo (multi-scale, default placement, shrunk to MAX_IMAGE_SIDE px)
and judged by `single_person.check`. Rates are fractions of images; each sign is reported alone
and the warning (any sign) as predict gives it.
"""
import dataclasses
from typing import Callable, Iterator

import numpy as np

from cpm_jax.evaluation import multiscale, single_person

FIT = 1.5                    # zoom ratio either way within which the default placement fits the person
CENTRE_OFFSET = 0.15         # x image height: the person's centre this close to the image centre


def fits(record: dict, height: int, width: int, data, input_size: int) -> bool:
    """Whether the default placement of a (height, width) photo fits its annotated person."""
    default, _ = multiscale.place_person((height, width), data, input_size)
    own = multiscale.person_from_scale(record["center"], float(record["scale"]), data, input_size)
    offset = np.hypot(*np.subtract(own.center, default.center)) / height
    return bool(1 / FIT <= own.base_factor / default.base_factor <= FIT and offset <= CENTRE_OFFSET)


def side_by_side(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two RGB photos (H, W, 3) uint8 at the taller one's height, `a` left of `b` (bicubic)."""
    from PIL import Image
    height = max(a.shape[0], b.shape[0])
    parts = [np.asarray(Image.fromarray(x).resize((round(x.shape[1] * height / x.shape[0]), height),
                                                   Image.Resampling.BICUBIC)) for x in (a, b)]
    return np.concatenate(parts, axis=1)


def judge(predictor, image: np.ndarray, config) -> single_person.Evidence:
    """`single_person.check` of `image` predicted as predict does with the default placement."""
    from cpm_jax.inference.resizing import MAX_IMAGE_SIDE, shrink
    from data_pipelines import registry
    small, _ = shrink(image, MAX_IMAGE_SIDE)
    person, _ = multiscale.place_person(small.shape, config.data, config.model.input_size)
    return single_person.of_prediction(predictor.predict_with_maps(small, person), person.base_factor,
                                       config.model.input_size, registry.get(config.data.dataset).skeleton)


@dataclasses.dataclass
class Rates:
    """Per kind ("single", "pair"): how many images, each sign's rate, the warning's rate and the
    mean-belief percentiles (1, 5, 25, 50)."""
    counts: dict
    rates: dict

    def as_dict(self) -> dict:
        return {"counts": self.counts, "rates": self.rates,
                "thresholds": {"weak_mean_belief": single_person.WEAK_MEAN_BELIEF,
                               "two_peaks_parts": single_person.TWO_PEAKS_PARTS,
                               "long_limbs": single_person.LONG_LIMBS}}


def measure(predictor, config, photos: Iterator[np.ndarray], on_image: Callable[[str, int], None] = lambda k, n: None
            ) -> Rates:
    """`photos`: the fitting photos, in order; pairs are photos (2i, 2i + 1)."""
    found = {"single": [], "pair": []}
    beliefs = {"single": [], "pair": []}
    previous = None
    for photo in photos:
        images = [("single", photo)]
        if previous is not None:
            images.append(("pair", side_by_side(previous, photo)))
        for kind, image in images:
            evidence = judge(predictor, image, config)
            found[kind].append(evidence.signs())
            beliefs[kind].append(evidence.mean_belief)
            on_image(kind, len(found[kind]))
        previous = photo if previous is None else None
    rates = {}
    for kind, rows in found.items():
        if not rows:
            rates[kind] = None
            continue
        rates[kind] = {sign: float(np.mean([r[sign] for r in rows])) for sign in rows[0]}
        rates[kind]["warning"] = float(np.mean([any(r.values()) for r in rows]))
        rates[kind]["mean_belief_percentiles"] = {str(q): float(np.percentile(beliefs[kind], q)) for q in (1, 5, 25, 50)}
    return Rates({kind: len(rows) for kind, rows in found.items()}, rates)


def fitting_photos(config, count: int = 0) -> Iterator[np.ndarray]:
    """The evaluation split's photos (RGB (H, W, 3) uint8) that `fits` says the default placement
    fits, in the split's order; the first `count` (0: all)."""
    from data_pipelines import registry
    source = registry.open_split(config.data, registry.eval_split(config.data))
    given = 0
    for index in range(registry.example_count(source, config.data)):
        record = source.load(index)
        image = record["image"]
        if fits(record, image.shape[0], image.shape[1], config.data, config.model.input_size):
            yield image
            given += 1
            if given == count:
                return
