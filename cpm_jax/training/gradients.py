"""Histograms of gradient magnitude by layer depth during training (the paper, section 4.1 and
figure 5, "vanishing gradients"): with `training.gradient_histogram_every = N > 0` the train step
also counts |g| of the kernel gradient of every stage's first and last convolution
(`model.cpm.first_and_last_convs`) in fixed log-spaced bins, the loop sums the counts over each
period of N steps and process 0 writes

  <workdir>/gradients.npz   edges (B+1,), names (L,), paths (L,), period_end (N,), period_steps (N,),
                            counts (N, L, B) int64, intermediate_supervision (bool)
  <workdir>/gradients.png   one panel per layer (rows: stages; columns: first / last conv), one
                            line per period coloured early -> late: x log |gradient|, y fraction
                            of the layer's gradient elements (summed over the period's steps).

Bins: `EDGES` (B + 1 = 57 edges, 10^-12 .. 10^2, four bins a decade); bin i holds
EDGES[i] <= |g| < EDGES[i+1], except that the first bin also holds everything below EDGES[0]
(exact zeros included) and the last everything at or above EDGES[-1] (inf and NaN included), so
a layer's counts sum to its kernel's size per step.

The step's counts come from the device-averaged gradients, inside the jitted step; the loop keeps
a running sum on the device and reads it back only at period ends (and often enough that its
int32 cannot overflow): no per-step host synchronisation. Periods are steps (k-1) N + 1 .. k N
(`period_steps`: the final one may be shorter). The npz is rewritten at every period end, the
picture drawn when the loop ends (or is preempted). A resumed run keeps the workdir's periods
that end at or before its starting step, drops later ones (trained again) and appends its own;
after a resume from inside a period, its first period is shorter.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np

from cpm_jax.model import cpm as cpm_model

EDGES = np.logspace(-12, 2, 57)  # |g| bin edges; see the module docstring for the end bins
NPZ, PNG = "gradients.npz", "gradients.png"
_INT32_MAX = np.iinfo(np.int32).max


def histograms(grads, paths: dict[str, tuple[str, ...]], edges: np.ndarray = EDGES) -> dict[str, jax.Array]:
    """{name: (len(edges) - 1,) int32 counts of |g|} of the arrays at `paths` ({name: key path
    into `grads`}), binned by `edges` (end bins as the module docstring says). Pure jnp: traced
    inside the train step."""
    inner = jnp.asarray(np.asarray(edges)[1:-1], jnp.float32)
    out = {}
    for name, path in paths.items():
        a = jnp.abs(jnp.asarray(cpm_model.at_path(grads, path), jnp.float32)).ravel()
        a = jnp.where(jnp.isnan(a), jnp.inf, a)
        index = jnp.searchsorted(inner, a, side="right")  # how many inner edges are <= |g|
        out[name] = jnp.bincount(index, length=len(edges) - 1).astype(jnp.int32)
    return out


def path_label(path: tuple[str, ...]) -> str:
    """("stage1", "layers", "conv1", "kernel") -> "stage1/layers/conv1"."""
    return "/".join(p for p in path if p != "kernel")


def save(path: str, periods, counts, names, paths=None, intermediate_supervision: bool = True,
         period_steps=None, edges: np.ndarray = EDGES) -> None:
    """Writes the npz (fields as the module docstring lists): `periods` (N,) period end steps,
    `counts` (N, L, B), `names` (L,) layer names, `paths` (L,) their parameter paths ("/"
    joined; default: the names), `period_steps` (N,) steps summed in each period (default: the
    gaps between period ends, the first from step 0). Written to a temporary file and renamed,
    so a reader never sees half a file."""
    periods = np.asarray(periods, np.int64).reshape(-1)
    counts = np.asarray(counts, np.int64).reshape(len(periods), len(names), len(edges) - 1)
    if period_steps is None:
        period_steps = np.diff(np.concatenate([[0], periods]))
    tmp = path + ".tmp.npz"
    np.savez(tmp, edges=np.asarray(edges, np.float64), names=np.asarray(list(names), str),
             paths=np.asarray(list(paths if paths is not None else names), str), period_end=periods,
             period_steps=np.asarray(period_steps, np.int64), counts=counts,
             intermediate_supervision=np.asarray(bool(intermediate_supervision)))
    os.replace(tmp, path)


def load(path: str) -> dict:
    """The npz as a dict of numpy arrays (`intermediate_supervision` a bool)."""
    with np.load(path) as f:
        data = {k: f[k] for k in f.files}
    data["intermediate_supervision"] = bool(data["intermediate_supervision"])
    return data


def plot(data, png_path: str) -> None:
    """Draws `data` (an npz path or `load`'s dict) to `png_path`: rows stages, columns first /
    last convolution, one line per period coloured from the earliest (dark) to the latest
    (yellow) period end; x: |gradient| (log), y: fraction of the layer's elements in the bin.
    The end bins hold everything beyond the axis (module docstring). Drawn on a `Figure`, not
    pyplot, as visualize.py; matplotlib is imported here so that `train` does not load it."""
    from matplotlib import cm, colors
    from matplotlib.figure import Figure
    if isinstance(data, (str, os.PathLike)):
        data = load(os.fspath(data))
    edges, counts, names = data["edges"], np.asarray(data["counts"], np.float64), list(data["names"])
    paths = list(data.get("paths", names))
    ends = np.asarray(data["period_end"])
    rows = sorted({n.rsplit("_", 1)[0] for n in names}, key=lambda s: int(s[len("stage"):]))
    fig = Figure(figsize=(9, 2.4 * len(rows) + 0.8))
    axes = fig.subplots(len(rows), 2, squeeze=False, sharex=True)
    norm = colors.Normalize(vmin=ends.min() if len(ends) else 0, vmax=ends.max() if len(ends) else 1)
    cmap = cm.viridis
    for name, path, layer in zip(names, paths, range(len(names))):
        stage, side = name.rsplit("_", 1)
        ax = axes[rows.index(stage), 0 if side == "first" else 1]
        for k in range(len(ends)):
            total = counts[k, layer].sum()
            fraction = counts[k, layer] / total if total else counts[k, layer]
            ax.stairs(fraction, edges, color=cmap(norm(ends[k])), lw=1.2)
        ax.set_xscale("log")
        ax.set_title(f"{stage} {side} conv: {path}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylabel("fraction", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("|gradient| (end bins hold what lies beyond)", fontsize=8)
    mapper = cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(mapper, ax=axes.ravel().tolist(), label="period end (step)", fraction=0.03)
    flag = "on" if data["intermediate_supervision"] else "off"
    fig.suptitle(f"Gradient magnitudes by layer; intermediate supervision {flag}", fontsize=10)
    fig.savefig(png_path, dpi=100)


class Recorder:
    """Sums the train step's counts (`metrics["grad_histograms"]`: (devices, L, B) or (L, B),
    device 0's row used) over periods of `every` steps and writes `<workdir>/gradients.npz` at
    each period end and, with the picture, at `finish`. `sizes`: element count of each layer's
    kernel (bounds how many steps the device-side int32 sum may hold)."""

    def __init__(self, workdir: str, every: int, names, paths, sizes, intermediate_supervision: bool,
                 start_step: int = 0):
        self.npz, self.png = os.path.join(workdir, NPZ), os.path.join(workdir, PNG)
        self.every, self.names, self.paths = every, list(names), list(paths)
        self.intermediate_supervision = bool(intermediate_supervision)
        self.flush_every = max(1, _INT32_MAX // max(int(s) for s in sizes))
        self.ends, self.steps, self.counts = [], [], []
        self._device_sum, self._on_device = None, 0       # running sum not yet read back
        self._host_sum, self._in_period = None, 0         # this period's sum read back so far
        if os.path.exists(self.npz):
            old = load(self.npz)
            if list(old["names"]) == self.names and np.array_equal(old["edges"], EDGES):
                keep = old["period_end"] <= start_step
                self.ends = [int(e) for e in old["period_end"][keep]]
                self.steps = [int(s) for s in old["period_steps"][keep]]
                self.counts = list(old["counts"][keep])

    def add(self, step: int, counts) -> None:
        """Step `step`'s counts (a device array: stays on the device until a period ends)."""
        self._device_sum = counts if self._device_sum is None else self._device_sum + counts
        self._on_device += 1
        self._in_period += 1
        if step % self.every == 0 or self._on_device >= self.flush_every:
            self._read_back()
        if step % self.every == 0:
            self._close_period(step)
            save(self.npz, self.ends, self.counts_array(), self.names, self.paths,
                 self.intermediate_supervision, self.steps)

    def _read_back(self) -> None:
        if self._device_sum is None:
            return
        values = np.asarray(jax.device_get(self._device_sum)).astype(np.int64)
        values = values[0] if values.ndim == 3 else values
        self._host_sum = values if self._host_sum is None else self._host_sum + values
        self._device_sum, self._on_device = None, 0

    def _close_period(self, step: int) -> None:
        self.ends.append(int(step))
        self.steps.append(self._in_period)
        self.counts.append(self._host_sum)
        self._host_sum, self._in_period = None, 0

    def counts_array(self) -> np.ndarray:
        return (np.stack(self.counts) if self.counts
                else np.zeros((0, len(self.names), len(EDGES) - 1), np.int64))

    def finish(self, step: int) -> list[str]:
        """Closes a partial period ending at `step` (the last step run), writes the npz and the
        picture; returns their paths."""
        self._read_back()
        if self._in_period:
            self._close_period(step)
        save(self.npz, self.ends, self.counts_array(), self.names, self.paths, self.intermediate_supervision,
             self.steps)
        plot(self.npz, self.png)
        return [self.npz, self.png]


def recorder(config, params, workdir: str, start_step: int) -> Recorder | None:
    """The run's Recorder on process 0 when `training.gradient_histogram_every > 0`, else None.
    `params`: the model's parameters (or their gradients: same tree), to find the layers."""
    every = config.training.get("gradient_histogram_every", 0)
    if not every or jax.process_index() != 0:
        return None
    convs = cpm_model.first_and_last_convs(params)
    sizes = [int(np.prod(np.shape(cpm_model.at_path(params, p)))) for p in convs.values()]
    return Recorder(workdir, every, list(convs), [path_label(p) for p in convs.values()], sizes,
                    config.loss.intermediate_supervision, start_step)


def pictures(config, workdir: str) -> list[str]:
    """[<workdir>/gradients.png] when this run records gradients and the picture exists, else []."""
    path = os.path.join(workdir, PNG)
    return [path] if config.training.get("gradient_histogram_every", 0) and os.path.exists(path) else []
