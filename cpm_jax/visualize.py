"""PNG pictures of results: skeleton overlays and belief maps stage by stage (matplotlib).

Every picture is drawn on its own `matplotlib.figure.Figure` and written with `fig.savefig`, not
through pyplot: that needs no backend (savefig picks Agg for a .png), works the same from a CLI,
a test or a notebook whatever backend is active there, leaves no figure in pyplot's registry (no
`plt.close`, nothing shown inline) and is safe from threads. Importing this module sets nothing.
"""
import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from data_pipelines import skeleton

RIGHT, LEFT, CENTRE = "#e8453c", "#3c7be8", "#f2c12e"


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Model input (H, W, 3), x/256 - 0.5, back to displayable uint8."""
    return np.clip((np.asarray(image) + 0.5) * 256.0, 0, 255).astype(np.uint8)


def _limb_colour(a: str, b: str) -> str:
    names = a + b
    return RIGHT if "r_" in names and "l_" not in names else LEFT if "l_" in names and "r_" not in names else CENTRE


def draw_skeleton(ax, joints: np.ndarray, style: str = "-", alpha: float = 1.0,
                  order: skeleton.Skeleton = skeleton.LSP) -> None:
    """Draws (P, 2) pixel joints on `ax`: right limbs red, left limbs blue."""
    for (a, b), (name_a, name_b) in zip(order.limb_indices, order.limbs):
        ax.plot(joints[[a, b], 0], joints[[a, b], 1], style, color=_limb_colour(name_a, name_b), lw=2,
                alpha=alpha)
    ax.scatter(joints[:, 0], joints[:, 1], s=10, c="white", edgecolors="black", linewidths=0.5,
               zorder=3, alpha=alpha)


def skeleton_grid(images, predictions, path: str, ground_truth=None, titles=None,
                  order: skeleton.Skeleton = skeleton.LSP) -> None:
    """A row of images (N, H, W, 3) uint8 with predicted skeletons (N, P, 2) drawn solid and the
    ground truth, if given, dotted."""
    n = len(images)
    fig = Figure(figsize=(2.6 * n, 2.8))
    axes = fig.subplots(1, n, squeeze=False)
    for i, ax in enumerate(axes[0]):
        ax.imshow(images[i])
        if ground_truth is not None:
            draw_skeleton(ax, ground_truth[i], ":", alpha=0.7, order=order)
        draw_skeleton(ax, predictions[i], order=order)
        ax.set_axis_off()
        if titles:
            ax.set_title(titles[i], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def overlay_heatmap(ax, image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.55,
                    cmap: str = "inferno") -> None:
    """Shows `image` (H, W, 3) uint8 with `heatmap` (h, w) on the belief-map grid (cell g centred
    at input pixel 3.5 + 8g for stride 8) stretched over it, values 0..1, semi-transparent."""
    h, w = image.shape[:2]
    ax.imshow(image)
    ax.imshow(heatmap, cmap=cmap, alpha=alpha, vmin=0, vmax=1, extent=(-0.5, w - 0.5, h - 0.5, -0.5),
              interpolation="bilinear")
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)


def belief_strip(image: np.ndarray, beliefs: np.ndarray, path: str, joints_per_stage=None,
                 order: skeleton.Skeleton = skeleton.LSP, part: str | None = None) -> None:
    """One column per stage: the image with that stage's beliefs overlaid, of every part (max over
    parts) or of the named `part` alone (e.g. "r_wrist", a name of `order`).

    image: (H, W, 3) uint8; beliefs: (T, h, w, P+1) cells; joints_per_stage: (T, P, 2) pixels."""
    num_stages = beliefs.shape[0]
    fig = Figure(figsize=(2.4 * num_stages, 2.6))
    axes = fig.subplots(1, num_stages, squeeze=False)
    for t, ax in enumerate(axes[0]):
        shown = beliefs[t, ..., :-1].max(-1) if part is None else beliefs[t, ..., order.index[part]]
        overlay_heatmap(ax, image, shown, alpha=0.6)
        if joints_per_stage is not None:
            draw_skeleton(ax, joints_per_stage[t], alpha=0.8, order=order)
        ax.set_title(f"stage {t + 1}" + (f": {part}" if part else ""), fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def pck_curve(curve: dict, path: str, title: str = "", metric: str = "PCK") -> None:
    """A PCK curve: `curve` as metrics.pck_curve returns it ({"thresholds", "total", "parts"});
    fractions are drawn in percent, the total bold, each part group thin. None values are gaps."""
    thresholds = np.asarray(curve["thresholds"], np.float64)

    def percent(values):
        return np.array([np.nan if v is None else 100.0 * v for v in values])

    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for group, values in curve.get("parts", {}).items():
        ax.plot(thresholds, percent(values), lw=1.2, label=group)
    ax.plot(thresholds, percent(curve["total"]), color="black", lw=2.5, label="total")
    _save_pck_axes(fig, ax, thresholds, path, title, metric)


def stage_pck_curves(curves: list[dict], path: str, title: str = "", metric: str = "PCK") -> None:
    """One PCK curve per stage (`curves[t]` as metrics.curve returns it, stage t + 1's total),
    in percent against the normalised threshold: how much each stage moves the whole curve."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    colours = colormaps["viridis"](np.linspace(0.0, 0.9, len(curves)))
    for t, (curve, colour) in enumerate(zip(curves, colours)):
        total = [np.nan if v is None else 100.0 * v for v in curve["total"]]
        ax.plot(curve["thresholds"], total, color=colour, lw=2, label=f"stage {t + 1}")
    _save_pck_axes(fig, ax, np.asarray(curves[0]["thresholds"] if curves else [], np.float64), path, title, metric)


def learning_curve(rows: list[dict], path: str) -> None:
    """Held-out score against training step, one line per stage: `rows` as train.HeldOut
    records them ({"step", "metric", "per_stage": [fraction or None per stage]}), in step order."""
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    num_stages = max((len(r["per_stage"]) for r in rows), default=0)
    colours = colormaps["viridis"](np.linspace(0.0, 0.9, max(num_stages, 1)))
    steps = [r["step"] for r in rows]
    for t in range(num_stages):
        values = [100.0 * r["per_stage"][t] if t < len(r["per_stage"]) and r["per_stage"][t] is not None
                  else np.nan for r in rows]
        ax.plot(steps, values, "o-", color=colours[t], lw=2, ms=4, label=f"stage {t + 1}")
    _save_percent_axes(fig, ax, path, "training step", f"held-out {rows[0]['metric'] if rows else 'score'} (%)")


def _save_pck_axes(fig: Figure, ax, thresholds: np.ndarray, path: str, title: str, metric: str) -> None:
    ax.set_xlim(thresholds.min() if thresholds.size else 0, thresholds.max() if thresholds.size else 1)
    _save_percent_axes(fig, ax, path, "normalised distance threshold", f"{metric} (%)", title)


def _save_percent_axes(fig: Figure, ax, path: str, xlabel: str, ylabel: str, title: str = "") -> None:
    """Labels, a 0-100 % y axis, grid and legend, then the PNG: what every score plot shares."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def pose_and_beliefs(image: np.ndarray, joints_per_stage: np.ndarray, maps_per_stage: np.ndarray,
                     path: str, order: skeleton.Skeleton = skeleton.LSP, stages=None,
                     title: str = "") -> None:
    """A user's photo: the final skeleton with joint labels, then one panel per stage with that
    stage's part beliefs (max over parts, scaled to the stage's own maximum, printed in the title)
    and skeleton.

    image: (H, W, 3) uint8; joints_per_stage: (T', P, 2) original px; maps_per_stage:
    (T', H', W', P) beliefs over the same image extent at any resolution; stages: the T' stage
    numbers (default 1..T')."""
    num = len(joints_per_stage)
    stages = list(stages) if stages is not None else list(range(1, num + 1))
    h, w = image.shape[:2]
    panel = 3.2 * min(1.6, max(0.6, w / h))
    fig = Figure(figsize=(panel * (num + 1), 3.6))
    axes = fig.subplots(1, num + 1, squeeze=False)
    ax = axes[0, 0]
    ax.imshow(image)
    draw_skeleton(ax, joints_per_stage[-1], order=order)
    for (x, y), name in zip(joints_per_stage[-1], order.joint_names):
        ax.annotate(name, (x, y), xytext=(3, 3), textcoords="offset points", fontsize=5, color="white",
                    bbox=dict(boxstyle="round,pad=0.1", fc="black", alpha=0.4, lw=0))
    ax.set_title(title or f"stage {stages[-1]}", fontsize=8)
    ax.set_axis_off()
    for k, ax in enumerate(axes[0, 1:]):
        beliefs = np.asarray(maps_per_stage[k]).max(-1)
        top = float(beliefs.max())
        ax.imshow(image)
        ax.imshow(beliefs, cmap="inferno", alpha=0.65, vmin=0, vmax=max(top, 1e-6),
                  extent=(-0.5, w - 0.5, h - 0.5, -0.5), interpolation="bilinear")
        draw_skeleton(ax, joints_per_stage[k], alpha=0.8, order=order)
        ax.set_title(f"stage {stages[k]} beliefs (max {top:.2f})", fontsize=8)
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def stack_pictures(paths: list[str], path: str, width: int = 1400) -> None:
    """One PNG of the pictures `paths`, one above the other, each scaled to `width` px wide
    (a gallery of `predict`'s per-photo pictures)."""
    from PIL import Image
    rows = []
    for p in paths:
        with Image.open(p) as picture:
            picture = picture.convert("RGB")
            rows.append(picture.resize((width, max(1, round(picture.height * width / picture.width))),
                                       Image.LANCZOS))
    sheet = Image.new("RGB", (width, sum(r.height for r in rows)), "white")
    top = 0
    for row in rows:
        sheet.paste(row, (0, top))
        top += row.height
    sheet.save(path)
