"""The benchmark's table for people: `summarise` turns `measure.measure`'s dict into aligned lines.

One header line (model, batch, dtype, parameters, backend, devices, versions), the convolution
forms and the oneDNN status, the peak assumed, the memory bandwidth, FLOPs per image, then one
row per runner (images/s at the median step, the slowest and fastest, seconds per step, the JAX
/ PyTorch ratio: > 1 means JAX is faster; an exported model's row: "JAX r x", JAX's rate over its), the per-convolution table (`layer_table`, when the
`layers` part ran), achieved GFLOP/s, compile times and memory. The JSON line of `--json` holds
the same figures, unrounded.
"""
from cpm_jax.benchmarks.exported import LABELS as RUNTIME_LABELS
from cpm_jax.benchmarks.hardware import CACHE_MIB
from cpm_jax.benchmarks.layers import FORM_NAMES


def summarise(out: dict) -> str:
    """The table people read."""
    c = out["config"]
    lines = [f"cpm_jax bench: {c['num_stages']} stages, {c['input_size']}x{c['input_size']}, batch {c['batch']}, "
             f"{c['dtype']}, {out['params']:,} parameters; {out['backend']} ({out['device']}, "
             f"{out['devices']} device(s), {out['cpu_cores']} CPU cores), jax {out['jax']}"
             + (f", torch {out['torch']} ({out['torch_threads']} threads)" if "torch" in out else "")]
    forms = ", ".join(f"{count} {FORM_NAMES[form]}" for form, count in out["convolution_forms"].items())
    lines.append(f"convolutions: {forms + '; ' if forms else ''}{out['convolutions']}")
    lines.append(f"peak assumed: {out['peak_reckoned']}; a large matrix product reaches "
                 f"{out['matmul_gflops']:.0f} GFLOP/s here")
    lines.append(f"memory bandwidth: {out['memory_gb_per_s']:.1f} GB/s over arrays larger than the caches, "
                 f"{out['cache_gb_per_s']:.1f} GB/s over {CACHE_MIB} MiB (elementwise read + write)")
    xla = "XLA, without oneDNN's convolutions" if out["convolutions"].startswith("oneDNN") else "XLA"
    lines.append(f"forward FLOPs/image: {out['forward_gflops_per_image']:.3f} G (layer list)"
                 + (f", {out['xla_forward_gflops_per_image']:.3f} G ({xla})" if out.get("xla_forward_gflops_per_image") else ""))
    if out.get("xla_train_gflops_per_image"):
        lines.append(f"train FLOPs/image: {out['train_gflops_per_image']:.3f} G (3 x forward), "
                     f"{out['xla_train_gflops_per_image']:.3f} G ({xla}, whole step)")
    rows = [("", "images/s (median)", "min .. max", "s/step", "vs PyTorch")]
    for kind in ("train", "inference"):
        for who in ("jax", "torch") + tuple(RUNTIME_LABELS):
            key = f"{who}_{kind}"
            if f"{key}_images_per_s" in out:
                ratio = out.get(f"{kind}_ratio") if who == "jax" else None
                if who in RUNTIME_LABELS:      # the exported model: JAX's rate over this one's
                    ratio_text = f"JAX {out[f'{who}_inference_ratio']:.2f}x"
                else:
                    ratio_text = f"{ratio:.2f}x" if ratio else ""
                label = {"jax": "JAX", "torch": "PyTorch"}.get(who) or f"exported, {RUNTIME_LABELS[who]}"
                rows.append((f"{label} {kind}", f"{out[f'{key}_images_per_s']:.1f}",
                             f"{out[f'{key}_min_images_per_s']:.1f} .. {out[f'{key}_max_images_per_s']:.1f}",
                             f"{out[f'{key}_median_s']:.3f}", ratio_text))
    if "pipeline_images_per_s" in out:
        rows.append(("input pipeline alone", f"{out['pipeline_images_per_s']:.1f}", "", "", ""))
    if "fed_train_images_per_s" in out:
        rows.append(("JAX train fed by it", f"{out['fed_train_images_per_s']:.1f}", "", "", ""))
    if len(rows) > 1:
        lines += aligned(rows)
    if "layers" in out:
        lines += layer_table(out)
    if "train_images_per_s" in out:
        fraction = out.get("train_peak_fraction")
        lines.append(f"train: {out['train_gflops_per_s']:.1f} GFLOP/s achieved (direct convolutions' count)"
                     + (f" = {100 * fraction:.0f}% of peak" if fraction else "")
                     + f", {100 * out['train_matmul_fraction']:.0f}% of the matrix product's rate"
                     + f"; compile {out['train_compile_s']:.1f} s; first step after compiling "
                       f"{out['first_step_s']:.3f} s ({out['first_step_ratio']:.1f}x the median), "
                       f"{out['recompilations']} compilation(s) after it")
    if "inference_images_per_s" in out:
        lines.append(f"inference: {out['inference_gflops_per_s']:.1f} GFLOP/s; compile {out['inference_compile_s']:.1f} s")
    if "bound_by" in out:
        lines.append(f"training is bound by the {out['bound_by']}")
    memory = f"peak host memory {out['peak_host_memory_gb']:.2f} GB (process, after the JAX parts)"
    if out.get("peak_device_memory_gb") is not None:
        memory += f"; peak device memory {out['peak_device_memory_gb']:.2f} GB"
    lines.append(memory)
    if "torch_skipped" in out:
        lines.append(f"PyTorch comparison skipped: {out['torch_skipped']}")
    return "\n".join(lines)


def aligned(rows: list[tuple[str, ...]]) -> list[str]:
    """Table lines: each column left-aligned to its widest cell, two spaces apart."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def layer_table(out: dict) -> list[str]:
    """The `layers` part as table lines: per convolution and summed over the model (x count),
    milliseconds and the PyTorch / JAX time ratio (> 1: JAX is faster, as the images/s ratios)."""
    torch_ = "layers_torch_train_ms" in out
    head = ("convolution (per batch)", "count", "JAX form", "JAX fwd ms", "JAX train ms")
    head += ("PyTorch fwd ms", "PyTorch train ms", "fwd vs PyTorch", "train vs PyTorch") if torch_ else ()

    def cells(label, count, form, jf, jt, tf=None, tt=None):
        row = (label, str(count), form, f"{jf:.2f}", f"{jt:.2f}")
        return row + (f"{tf:.2f}", f"{tt:.2f}", f"{tf / jf:.2f}x", f"{tt / jt:.2f}x") if torch_ else row

    rows = [head]
    for r in out["layers"]:
        label = (f"{r['size']}x{r['size']}x{r['in_channels']} -> {r['features']}, {r['kernel']}x{r['kernel']}"
                 + (" (image)" if r["on_image"] else ""))
        rows.append(cells(label, r["count"], r["jax_form"], r["jax_forward_ms"], r["jax_train_ms"],
                          r.get("torch_forward_ms"), r.get("torch_train_ms")))
    rows.append(cells("all convolutions of the model", sum(r["count"] for r in out["layers"]), "",
                      out["layers_jax_forward_ms"], out["layers_jax_train_ms"],
                      out.get("layers_torch_forward_ms"), out.get("layers_torch_train_ms")))
    lines = aligned(rows)
    if "jax_train_median_s" in out:
        step_ms = 1e3 * out["jax_train_median_s"]
        lines.append(f"the whole JAX training step: {step_ms:.1f} ms, of which its convolutions timed alone "
                     f"{out['layers_jax_train_ms']:.1f} ms ({100 * out['layers_jax_train_ms'] / step_ms:.0f}%)")
    return lines
