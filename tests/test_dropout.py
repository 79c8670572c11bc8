"""Dropout (docs/paper_notes.md section 1): rate 0.5 after stage 1's 9x9 and first 1x1 convolutions, in
training only; the shared image trunk and every stage t >= 2 add no randomness of their own.

The check: run the model in training mode (dropout live) and record stage 1's output; then run it
in evaluation mode with stage 1's output replaced by that recording (flax.linen.intercept_methods).
Every later stage then sees exactly the inputs it saw in training, so its output must be the
training output, for any dropout rng. A Dropout anywhere after stage 1 (trunk, a stage's 5x5
features, its head) breaks the equality."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cpm_jax import configs
from cpm_jax.model import architecture
from cpm_jax.model import cpm as cpm_model
from tests.conftest import normal, tiny_config

STAGES = 3


def setup(num_stages: int = STAGES, dropout_rate: float = 0.5):
    config = tiny_config(num_stages=num_stages, dropout_rate=dropout_rate)
    m = config.model
    m.output_init = "he_normal"      # beliefs of order 1, so that differences are plain to see
    model = cpm_model.CPM(m)
    image = 0.3 * normal(0, (2, m.input_size, m.input_size, 3))
    cells = m.input_size // 8      # any center map will do: a bump in the middle of the grid
    g = jnp.exp(-((jnp.arange(cells) - (cells - 1) / 2) ** 2) / 4.0)
    center = jnp.broadcast_to(jnp.outer(g, g)[None, :, :, None], (2, cells, cells, 1))
    variables = model.init(jax.random.key(1), image, center, train=False)
    return model, variables, image, center


def train_run(model, variables, image, center, seed: int):
    """(beliefs (B, T, h, w, P+1), the intermediates of every module's __call__)."""
    out, state = model.apply(variables, image, center, train=True, rngs={"dropout": jax.random.key(seed)},
                             capture_intermediates=True, mutable=["intermediates"])
    return out, state["intermediates"]


def eval_with_stage1(model, variables, image, center, stage1_out):
    """Evaluation mode, with the top-level module "stage1" answering `stage1_out`."""
    def replace_stage1(next_fun, args, kwargs, context):
        if context.module.name == "stage1" and context.method_name == "__call__":
            return stage1_out
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(replace_stage1):
        return model.apply(variables, image, center, train=False)


def dropout_modules(tree, path=()) -> list[tuple[str, ...]]:
    """Paths of every Dropout module in an intermediates tree."""
    found = []
    for key, value in tree.items():
        if key.startswith("Dropout"):
            found.append(path + (key,))
        elif isinstance(value, dict):
            found += dropout_modules(value, path + (key,))
    return found


def test_stage1_varies_with_the_dropout_rng_and_later_stages_add_no_randomness():
    model, variables, image, center = setup()
    eval_out, eval_inter = model.apply(variables, image, center, train=False,
                                       capture_intermediates=True, mutable=["intermediates"])
    outs = {}
    for seed in (10, 11):
        out, inter = train_run(model, variables, image, center, seed)
        outs[seed] = out
        stage1 = inter["stage1"]["__call__"][0]
        np.testing.assert_array_equal(stage1, out[:, 0])
        # Dropout is live in stage 1 ...
        assert np.abs(out[:, 0] - eval_out[:, 0]).max() > 1e-3
        # ... and the trunk is the same in training and evaluation.
        trunk_train = inter["trunk"]["__call__"][0]
        np.testing.assert_allclose(trunk_train, eval_inter["intermediates"]["trunk"]["__call__"][0],
                                   rtol=1e-6, atol=1e-7)
        # Stage t >= 2 computed in evaluation mode from the training inputs = the training output.
        replayed = eval_with_stage1(model, variables, image, center, stage1)
        np.testing.assert_allclose(replayed[:, 0], out[:, 0], rtol=0, atol=0)
        for t in range(2, STAGES + 1):
            assert np.abs(out[:, t - 1] - eval_out[:, t - 1]).max() > 1e-2, "stage 1's dropout reaches stage t"
            np.testing.assert_allclose(replayed[:, t - 1], out[:, t - 1], rtol=1e-5, atol=1e-6,
                                       err_msg=f"stage {t} has randomness of its own in training")
    assert np.abs(outs[10][:, 0] - outs[11][:, 0]).max() > 1e-3, "stage 1 must vary with the dropout rng"


def test_dropout_modules_are_two_in_stage1_and_none_elsewhere():
    model, variables, image, center = setup()
    _, inter = train_run(model, variables, image, center, 0)
    paths = dropout_modules(inter)
    assert len(paths) == 2 and all(p[0] == "stage1" for p in paths), paths
    # The layer lists say the same, for the paper's model: after the 9x9 (512) and the 1x1 (512).
    m = configs.paper_model()
    head = architecture.stage1_head(m)
    drops = [i for i, layer in enumerate(head) if isinstance(layer, architecture.Dropout)]
    assert [head[i - 1] for i in drops] == [architecture.Conv(9, 512), architecture.Conv(1, 512)]
    assert all(head[i].rate == 0.5 for i in drops)
    later = architecture.image_trunk(m) + architecture.refinement_features(m) + architecture.refinement_head(m)
    assert not any(isinstance(layer, architecture.Dropout) for layer in later)


def test_evaluation_mode_is_deterministic_and_needs_no_rng():
    model, variables, image, center = setup(num_stages=2)
    a = model.apply(variables, image, center, train=False)
    b = model.apply(variables, image, center)          # train defaults to False
    np.testing.assert_array_equal(a, b)
