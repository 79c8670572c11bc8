"""Large photos and video frames shrunk for the network: the longer side at most `max_side` px,
bicubic (PIL), with the (x, y) ratio of the new pixels to the old, so that joints found in the
small image go back to the original's pixels (px p <-> (p + 0.5) x ratio - 0.5)."""
import numpy as np

MAX_IMAGE_SIDE = 1024     # px: predict's default; larger photos are resized first (the network sees < 400 px of a person)


def shrink(image: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (H, W, 3) resized so that its longer side is at most `max_side` px, (x, y)
    ratio new / old); the image itself and ratio 1 when it is small enough."""
    from PIL import Image
    if max(image.shape[:2]) <= max_side:
        return image, np.ones(2)
    return resized(Image.fromarray(image), max_side)


def resized(image, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """(PIL `image` resized bicubically so that its longer side is `max_side` px, as uint8, (x, y)
    ratio new / old)."""
    from PIL import Image
    ratio = max_side / max(image.size)
    size = (max(1, round(image.width * ratio)), max(1, round(image.height * ratio)))
    small = np.asarray(image.resize(size, Image.Resampling.BICUBIC))
    return small, np.array([size[0] / image.width, size[1] / image.height])
