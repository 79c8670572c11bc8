"""The model's convolution equals XLA's, in values and gradients, on whichever path it takes:
oneDNN's kernels where they are loaded (Linux x86-64 with the `cpu` extra), else the narrow-layer
and DFT forms (the tests of the narrow forms hide oneDNN: `without_onednn`)."""
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from cpm_jax import configs
from cpm_jax.benchmarks import layers
from cpm_jax.cpu import convolution, onednn
from cpm_jax.model import architecture
from cpm_jax.model import cpm as cpm_model
from tests.conftest import normal, tiny_config
from tests.test_paper_defaults import experiment

NHWC = ("NHWC", "HWIO", "NHWC")
ONEDNN_EXPECTED = onednn.supported_platform()


@pytest.fixture
def without_onednn(monkeypatch):
    """The paths a CPU takes where oneDNN's kernels are not loaded."""
    monkeypatch.setattr(onednn, "available", lambda: False)


needs_onednn = pytest.mark.skipif(not onednn.available(), reason=f"oneDNN kernels not loaded: {onednn.status()}")


def both(x, kernel, padding, **kwargs):
    ours = convolution.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=NHWC, **kwargs)
    theirs = lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=NHWC, **kwargs)
    return ours, theirs


def takes_narrow_path(x, kernel, padding="SAME") -> bool:
    """Whether the compiled CPU forward has no convolution left (the elementwise form)."""
    fn = jax.jit(lambda a, b: convolution.conv_general_dilated(a, b, (1, 1), padding, dimension_numbers=NHWC))
    return "convolution(" not in fn.lower(x, kernel).compile().as_text()


@pytest.mark.parametrize("kernel_shape, padding", [
    ((3, 3, 3, 16), "SAME"), ((5, 5, 3, 8), "SAME"), ((2, 2, 3, 4), "SAME"), ((3, 3, 1, 5), "VALID"),
    ((3, 3, 3, 16), ((2, 0), (1, 1))), ((1, 1, 4, 32), "SAME")])
def test_narrow_layers_match_xla(kernel_shape, padding, without_onednn):
    x = normal(0, (2, 13, 11, kernel_shape[2]))
    kernel = normal(1, kernel_shape)
    assert takes_narrow_path(x, kernel, padding)
    ours, theirs = jax.jit(functools.partial(both, padding=padding))(x, kernel)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_bfloat16_keeps_its_dtype_and_accumulates_in_float32(without_onednn):
    x = normal(2, (2, 16, 16, 3), jnp.bfloat16)
    kernel = normal(3, (3, 3, 3, 16), jnp.bfloat16)
    ours, _ = both(x, kernel, "SAME")
    exact = lax.conv_general_dilated(x.astype(jnp.float32), kernel.astype(jnp.float32), (1, 1), "SAME",
                                     dimension_numbers=NHWC)
    assert ours.dtype == jnp.bfloat16
    np.testing.assert_allclose(ours.astype(jnp.float32), exact, rtol=1e-2, atol=5e-2)


def test_gradients_match_xlas_and_training_uses_the_patch_product(without_onednn):
    x = normal(4, (2, 12, 12, 3))
    kernel = normal(5, (3, 3, 3, 16))
    cotangent = normal(6, (2, 12, 12, 16))

    def grads(conv):
        fn = jax.jit(jax.grad(lambda a, b: jnp.sum(jax.nn.relu(conv(a, b)) * cotangent), argnums=(0, 1)))
        return fn(x, kernel), fn.lower(x, kernel).compile().as_text()

    (ours, hlo), (theirs, _) = [grads(lambda a, b, f=f: f(a, b, (1, 1), "SAME", dimension_numbers=NHWC))
                                for f in (convolution.conv_general_dilated, lax.conv_general_dilated)]
    for o, t in zip(ours, theirs):
        np.testing.assert_allclose(o, t, rtol=1e-5, atol=1e-5)
    # Forward: the patch product (a dot), no (2, 12, 12, 16) convolution; the two gradient
    # convolutions remain (input: (2, 12, 12, 3); kernel).
    assert "f32[2,12,12,16]{3,2,1,0} convolution(" not in hlo
    assert hlo.count(" convolution(") == 2


@pytest.mark.parametrize("input_shape, kernel_shape, pads, tile", [
    ((2, 13, 11, 3), (3, 3, 3, 4), ((1, 1), (1, 1)), 4),    # tiles that overhang the output
    ((2, 20, 17, 5), (5, 3, 5, 6), ((2, 0), (0, 3)), 8),    # non-square kernel, uneven pads
    ((1, 9, 9, 2), (9, 9, 2, 3), ((4, 4), (4, 4)), 16),     # one tile larger than the map
    ((1, 10, 10, 2), (3, 3, 2, 2), ((0, 0), (0, 0)), 3),    # VALID
    ((1, 10, 9, 2), (3, 4, 2, 2), ((0, 0), (1, 2)), 3),     # an odd window width (no Nyquist bin)
])
def test_dft_conv_equals_xlas_convolution(input_shape, kernel_shape, pads, tile):
    x, kernel = normal(10, input_shape), normal(11, kernel_shape)
    ours = convolution.dft_conv(x, kernel, pads, tile)
    theirs = lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=NHWC)
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_dft_conv_refuses_a_tile_too_small_for_the_kernel():
    with pytest.raises(ValueError, match="tile 8 is smaller than the kernel 11x11"):
        convolution.dft_conv(jnp.zeros((1, 16, 16, 2)), jnp.zeros((11, 11, 2, 2)), ((5, 5), (5, 5)), 8)


def conv_gradients(conv, x, kernel, cotangent):
    """(gradients of x and kernel, the compiled CPU program's text) for
    `sum(relu(conv(x, kernel)) * cotangent)` (the ReLU keeps the forward pass in the program)."""
    fn = jax.jit(jax.grad(
        lambda a, b: jnp.sum(jax.nn.relu(conv(a, b, (1, 1), "SAME", dimension_numbers=NHWC)) * cotangent),
        argnums=(0, 1)))
    return fn(x, kernel), fn.lower(x, kernel).compile().as_text()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("onednn_loaded", [True, False])
def test_large_layers_take_the_dft_form_that_matches_xlas(dtype, onednn_loaded, monkeypatch):
    """A 9x9 64 -> 64 layer on a batch of 4 40x44 maps (36 tiles): on a CPU no convolution is
    left in the program (oneDNN loaded or not), and values and gradients equal XLA's."""
    if not onednn_loaded:
        monkeypatch.setattr(onednn, "available", lambda: False)
    x = normal(12, (4, 40, 44, 64), dtype)
    kernel = normal(13, (9, 9, 64, 64), dtype) * 0.05
    cotangent = normal(14, (4, 40, 44, 64), dtype)
    (ours, hlo), (theirs, _) = [conv_gradients(conv, x, kernel, cotangent)
                                for conv in (convolution.conv_general_dilated, lax.conv_general_dilated)]
    assert "dft_conv" in hlo and " convolution(" not in hlo and "custom-call" not in hlo
    assert convolution.cpu_form(x.shape, kernel.shape, ((4, 4), (4, 4)), dtype) == "dft"
    forward = jax.jit(lambda a, b: convolution.conv_general_dilated(a, b, (1, 1), "SAME", dimension_numbers=NHWC))
    ours_out, theirs_out = forward(x, kernel), lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=NHWC)
    tolerance = 1e-4 if dtype == jnp.float32 else 2e-2
    for o, t in [(ours_out, theirs_out), *zip(ours, theirs)]:
        assert o.dtype == t.dtype == dtype
        scale = float(jnp.max(jnp.abs(t.astype(jnp.float32))))
        np.testing.assert_allclose(o.astype(jnp.float32) / scale, t.astype(jnp.float32) / scale, atol=tolerance)


def test_dft_gradients_keep_the_inputs_not_the_spectra():
    """Three DFT layers in a row: their gradients keep each layer's input and recompute its
    windows' spectra, so the gradient program needs less temporary memory than autodiff of
    `dft_conv` itself, which keeps the spectra from the forward pass (compiled, not run)."""
    x, kernel = jax.ShapeDtypeStruct((4, 64, 64, 64), jnp.float32), jax.ShapeDtypeStruct((9, 9, 64, 64), jnp.float32)

    def temporary_bytes(conv):
        def loss(a, b):
            for _ in range(3):
                a = jax.nn.relu(conv(a, b, ((4, 4), (4, 4)), convolution.DFT_TILE))
            return jnp.sum(a)
        return jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel).compile().memory_analysis().temp_size_in_bytes

    assert temporary_bytes(convolution._dft_conv_keeping_inputs) < 0.9 * temporary_bytes(convolution.dft_conv)


@pytest.mark.parametrize("input_shape, kernel_shape", [
    ((8, 24, 24, 64), (9, 9, 64, 64)),   # 4 tiles an image, 56% filled: under MIN_DFT_FILL
    ((1, 40, 185, 64), (9, 9, 64, 64)),  # a side over MAX_DFT_SIDE
    ((4, 40, 40, 64), (9, 7, 64, 64)),   # a kernel side under MIN_DFT_KERNEL
    ((4, 40, 40, 64), (19, 19, 64, 64)), # a kernel wider than DFT_TILE + 1
    ((4, 40, 40, 48), (9, 9, 48, 64)),   # too few input channels
    ((4, 40, 40, 64), (9, 9, 64, 15)),   # too few outputs (a stage's belief maps)
    ((1, 40, 40, 64), (9, 9, 64, 64)),   # too few tiles: 3 x 3 < MIN_DFT_TILES
])
def test_other_layers_keep_xlas_gradients(input_shape, kernel_shape, without_onednn):
    x, kernel = normal(15, input_shape), normal(16, kernel_shape)
    cotangent = normal(17, input_shape[:3] + kernel_shape[-1:])
    _, hlo = conv_gradients(convolution.conv_general_dilated, x, kernel, cotangent)
    assert "dft_conv" not in hlo and hlo.count(" convolution(") == 3
    pads = lax.padtype_to_pads(input_shape[1:3], kernel_shape[:2], (1, 1), "SAME")
    assert convolution.cpu_form(input_shape, kernel_shape, pads) == "xla"


@pytest.mark.parametrize("kernel_shape, kwargs", [
    ((9, 9, 3, 128), {}),                       # too many multiply-adds per pixel
    ((3, 3, 8, 16), {}),                        # too many input channels
    ((3, 3, 3, 16), {"rhs_dilation": (2, 2)}),  # dilated
    ((3, 3, 1, 12), {"feature_group_count": 3}),
])
def test_other_layers_go_to_xla_unchanged(kernel_shape, kwargs, without_onednn):
    channels = kernel_shape[2] * kwargs.get("feature_group_count", 1)
    x = normal(7, (1, 12, 12, channels))
    kernel = normal(8, kernel_shape)
    ours, theirs = both(x, kernel, "SAME", **kwargs)
    np.testing.assert_array_equal(ours, theirs)
    if not kwargs:
        assert not takes_narrow_path(x, kernel)


def test_model_uses_it_for_the_first_layer_only(without_onednn):
    """The demo model's inference has exactly two convolutions fewer in its compiled HLO (the
    two image-trunk first layers, 3 -> 16 channels, 3x3) than its layer list has."""
    m = experiment("synthetic").model
    model = cpm_model.CPM(m, conv=convolution.conv_general_dilated)
    image = jnp.zeros((1, m.input_size, m.input_size, 3))
    center = jnp.zeros((1, m.input_size // 8, m.input_size // 8, 1))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), image, center)["params"])
    hlo = jax.jit(lambda p: model.apply({"params": p}, image, center)).lower(params).compile().as_text()
    layers = (2 * architecture.image_trunk(m) + architecture.stage1_head(m)
              + (m.num_stages - 1) * (architecture.refinement_features(m) + architecture.refinement_head(m)))
    convs = sum(isinstance(layer, architecture.Conv) for layer in layers)
    # 1x1 convolutions become dots
    ones = sum(isinstance(layer, architecture.Conv) and layer.kernel == 1 for layer in layers)
    assert hlo.count(" convolution(") == convs - ones - 2


def test_model_gradients_with_dft_layers_match_xlas(monkeypatch):
    """A 2-stage CPM on 128x128 images with 64-channel 9x9 trunk layers: the trunks' 64x64 layers
    take the DFT form, and the parameters' gradients equal those with XLA's convolutions."""
    m = tiny_config(input_size=128).model
    m.trunk_kernel, m.trunk_features, m.bottleneck_features = 9, 64, 64
    model = cpm_model.CPM(m, conv=convolution.conv_general_dilated)
    image = normal(18, (2, 128, 128, 3)) * 0.3   # 2 x 16 tiles at 64x64: MIN_DFT_TILES
    center = jnp.zeros((2, 16, 16, 1))
    targets = normal(19, (2, m.num_stages, 16, 16, m.num_parts + 1))
    params = model.init(jax.random.key(0), image, center)["params"]

    def gradients():
        fn = jax.jit(jax.grad(lambda p: jnp.sum((model.apply({"params": p}, image, center) - targets) ** 2)))
        return fn(params), fn.lower(params).compile().as_text()

    ours, hlo = gradients()
    monkeypatch.setattr(convolution, "MIN_DFT_TILES", 10 ** 6)
    monkeypatch.setattr(onednn, "available", lambda: False)
    theirs, xla_hlo = gradients()
    assert "dft_conv" in hlo and "dft_conv" not in xla_hlo
    for (path, o), t in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(o, t, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(t))), err_msg=str(path[0]))


def test_onednn_kernels_load_on_linux_x86_64():
    """Where the `cpu` extra installs oneDNN's wheels, runtime.setup() (conftest) built and
    loaded the kernels; a failed build shows here, not as a silently slower model."""
    if not ONEDNN_EXPECTED:
        pytest.skip(f"oneDNN's kernels are built for Linux x86-64 only: {onednn.status()}")
    assert onednn.available(), onednn.status()


def custom_calls(hlo: str) -> int:
    return sum(hlo.count(f'custom_call_target="{name}"') for name in onednn.TARGETS)


@needs_onednn
@pytest.mark.parametrize("input_shape, kernel_shape, padding", [
    ((2, 16, 16, 3), (3, 3, 3, 16), "SAME"),            # the first layer: 3 input channels
    ((1, 13, 11, 8), (5, 3, 8, 6), ((2, 0), (0, 2))),   # non-square kernel, uneven pads
    ((2, 12, 12, 16), (7, 7, 16, 32), "SAME"),          # a later stage's layer
    ((3, 10, 9, 4), (3, 3, 4, 5), "VALID"),
    ((2, 8, 8, 32), (1, 1, 32, 15), "SAME"),            # a stage's output layer
    # Fewer images than threads: bands of rows, each with the rows its kernel reaches
    ((1, 16, 16, 8), (3, 3, 8, 4), "SAME"),
    ((1, 7, 9, 4), (7, 7, 4, 5), "SAME"),               # the kernel taller than a band
    ((1, 9, 9, 4), (9, 9, 4, 4), ((8, 0), (4, 4))),     # pads up to the kernel's size - 1
    ((1, 3, 5, 2), (3, 3, 2, 2), ((0, 2), (1, 1))),     # fewer rows than bands
])
def test_onednn_matches_xla_in_values_and_gradients(input_shape, kernel_shape, padding):
    x, kernel = normal(20, input_shape), normal(21, kernel_shape) * 0.3
    ours, theirs = jax.jit(functools.partial(both, padding=padding))(x, kernel)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    cotangent = normal(22, ours.shape)

    def gradients(conv):
        fn = jax.jit(jax.grad(lambda a, b: jnp.sum(
            jax.nn.relu(conv(a, b, (1, 1), padding, dimension_numbers=NHWC)) * cotangent), argnums=(0, 1)))
        return fn(x, kernel), fn.lower(x, kernel).compile().as_text()

    (ours, hlo), (theirs, _) = gradients(convolution.conv_general_dilated), gradients(lax.conv_general_dilated)
    assert custom_calls(hlo) == 3 and " convolution(" not in hlo  # forward, both gradients
    for o, t in zip(ours, theirs):
        np.testing.assert_allclose(o, t, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(t))))


@needs_onednn
@pytest.mark.parametrize("dtype, padding", [
    (jnp.bfloat16, "SAME"),              # float32 only
    (jnp.float32, ((3, 3), (0, 0))),     # a pad as wide as the kernel
])
def test_onednn_leaves_other_layers_to_xla(dtype, padding):
    x, kernel = normal(23, (1, 9, 9, 4), dtype), normal(24, (3, 3, 4, 5), dtype)
    fn = jax.jit(lambda a, b: convolution.conv_general_dilated(a, b, (1, 1), padding, dimension_numbers=NHWC))
    assert custom_calls(fn.lower(x, kernel).compile().as_text()) == 0


@needs_onednn
def test_onednn_under_vmap():
    x, kernel = normal(25, (3, 2, 8, 8, 4)), normal(26, (3, 3, 4, 5))
    ours = jax.vmap(lambda a: convolution.conv_general_dilated(a, kernel, (1, 1), "SAME", dimension_numbers=NHWC))(x)
    theirs = lax.conv_general_dilated(x.reshape(6, 8, 8, 4), kernel, (1, 1), "SAME", dimension_numbers=NHWC)
    np.testing.assert_allclose(ours.reshape(theirs.shape), theirs, rtol=1e-5, atol=1e-5)


# oneDNN's convolutions and gradients run inline on the main thread (runtime.setup()); prints the
# main thread's OpenMP thread count before and after.
OPENMP_SCRIPT = """
import ctypes, jax, jax.numpy as jnp
from cpm_jax import runtime
from cpm_jax.cpu import convolution
runtime.setup(tensorflow=False)
gomp = ctypes.CDLL("libgomp.so.1")
gomp.omp_set_num_threads(3)
x, k = jnp.ones((2, 12, 12, 8)), jnp.ones((3, 3, 8, 8))
assert convolution.cpu_form(x.shape, k.shape, ((1, 1), (1, 1))) == "onednn"
loss = lambda x, k: convolution.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")).sum()
jax.block_until_ready(jax.jit(jax.grad(loss, argnums=(0, 1)))(x, k))
print(jax.config.read("jax_cpu_enable_async_dispatch"), gomp.omp_get_max_threads())
"""


@needs_onednn
def test_onednn_leaves_the_calling_threads_openmp_setting_as_it_was():
    """The kernels run oneDNN on one OpenMP thread, and restore the calling thread's count: a
    PyTorch in the same process (the benchmark's peer) shares that setting on the main thread."""
    done = subprocess.run([sys.executable, "-c", OPENMP_SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "3"], done.stdout


@needs_onednn
def test_model_gradients_with_onednn_match_xlas(monkeypatch):
    """The tiny CPM's parameter gradients: every convolution on oneDNN against every one XLA's."""
    m = tiny_config().model
    model = cpm_model.CPM(m, conv=convolution.conv_general_dilated)
    image = normal(27, (2, m.input_size, m.input_size, 3)) * 0.3
    center = jnp.zeros((2, m.input_size // 8, m.input_size // 8, 1))
    targets = normal(28, (2, m.num_stages, m.input_size // 8, m.input_size // 8, m.num_parts + 1))
    params = model.init(jax.random.key(0), image, center)["params"]

    def gradients():
        fn = jax.jit(jax.grad(lambda p: jnp.sum((model.apply({"params": p}, image, center) - targets) ** 2)))
        return fn(params), fn.lower(params).compile().as_text()

    ours, hlo = gradients()
    monkeypatch.setattr(onednn, "available", lambda: False)
    monkeypatch.setattr(convolution, "MAX_ELEMENTWISE_INPUTS", 0)  # XLA's convolution everywhere
    theirs, xla_hlo = gradients()
    assert custom_calls(hlo) > 0 and " convolution(" not in hlo and custom_calls(xla_hlo) == 0
    for (path, o), t in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(theirs)):
        np.testing.assert_allclose(o, t, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(t))), err_msg=str(path[0]))


@pytest.mark.parametrize("compiler, reason, cache", [
    ("no-such-compiler", "no C++ compiler", "cache"), ("false", "failed", "cache"),
    ("g++", "cannot build", "a-file")])  # the cache directory cannot be made
def test_onednn_build_failure_is_reported_and_xla_runs(tmp_path, compiler, reason, cache):
    """A machine where the kernels cannot be built: setup() says why, in the process a user runs,
    and the model still runs (on XLA's convolutions)."""
    if not ONEDNN_EXPECTED:
        pytest.skip(f"oneDNN's kernels are built for Linux x86-64 only: {onednn.status()}")
    script = ("from cpm_jax.cpu import onednn, convolution; import jax.numpy as jnp; print(onednn.setup()); "
              "print(convolution.conv_general_dilated(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 1)), (1, 1), "
              "'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))[0, 1, 1, 0])")
    (tmp_path / "a-file").write_text("")
    env = {**os.environ, "CXX": compiler, "XDG_CACHE_HOME": str(tmp_path / cache)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    status, value = done.stdout.strip().splitlines()[-2:]
    assert status.startswith("XLA's own convolutions") and reason in status, status
    assert float(value) == 18.0


@pytest.mark.parametrize("input_size, batch, dft", [
    (128, 8, 4),    # the trunks' 64x64 and 32x32 128 -> 128 9x9 layers (16 and 4 tiles an image)
    (128, 1, 2),    # the 64x64 ones (32x32: 4 tiles < MIN_DFT_TILES)
    (128, 16, 14),  # and the stages' 16x16x128 -> 128 11x11 ones (1 tile an image)
    (368, 8, 14),   # the trunks' 184x184 and 92x92 layers, the stages' 46x46x128 -> 128 11x11 ones
    (368, 1, 4),    # the 184x184 and 92x92 layers only (144 and 36 tiles; the 46x46 ones have 9)
])
def test_which_paper_model_layers_take_the_dft_form(input_size, batch, dft, without_onednn):
    """`cpu_form` (what the benchmark reports) names the form `conv_general_dilated` takes."""
    m = configs.resolve_dtype(experiment("lsp_paper"), "cpu").model
    m.input_size = input_size
    forms = layers.convolution_forms(m, batch)
    assert forms.get("dft", 0) == dft
    assert sum(forms.values()) == sum(architecture.model_convolutions(m).values())
    assert set(forms) <= {"dft", "xla"}  # oneDNN hidden; no narrow layer in the paper model
