"""Sources in the tf.data pipeline (pipeline.py): sharding and epochs, resuming across an epoch
boundary, joints outside the image, multi-person stage-1 targets, FLIC's flip."""
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf

from cpm_jax.model import losses
from data_pipelines import lsp, mpii, pipeline, registry, sources
from tests import images, mat_files
from tests.conftest import tiny_config

# ---------------------------------------------------------------------------------------------
# A small LSPET layout whose image i is a solid colour that tells i back.

IMAGE_W, IMAGE_H = 40, 48
STEP = 6          # red channel = STEP * i


def colour_of(i: int) -> tuple[int, int, int]:
    return STEP * i, 100, 200 - 3 * i


def index_of(image: np.ndarray) -> int:
    return int(round(float(np.median(image[..., 0])) / STEP))


def person(rng, width: int = IMAGE_W, height: int = IMAGE_H) -> np.ndarray:
    """14 joints (1-based pixels) of a small upright figure inside a width x height image."""
    xs = rng.uniform(8, width - 8, 14)
    ys = np.linspace(height - 6, 6, 14) + rng.uniform(-2, 2, 14)
    return np.stack([xs, ys], -1)


def write_lspet(root, n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    joints = np.stack([person(rng) for _ in range(n)])
    root = images.write_layout(root, joints, np.ones((n, 14)), "lspet")
    for i in range(n):
        solid = np.zeros((IMAGE_H, IMAGE_W, 3), np.uint8) + np.array(colour_of(i), np.uint8)
        images.write_jpeg(root / images.image_name("lspet", i), solid, quality=95)
    return root


def lspet_config(root, input_size: int = 32, augment: bool = True):
    config = tiny_config(input_size=input_size)
    config.data.dataset = "lspet"
    config.data.paths.lspet = str(root)
    if not augment:
        config.data.scale_range = (1.0, 1.0)
        config.data.max_rotation = 0.0
        config.data.flip_probability = 0.0
    return config


@pytest.fixture(scope="module")
def lspet40(tmp_path_factory):
    return write_lspet(tmp_path_factory.mktemp("lspet40"), 40)


def stream_indices(size, seed, shard, start, stop):
    """[(index, key)] of stream positions start..stop-1 of process `shard`."""
    ds = tf.data.Dataset.range(start, stop).map(pipeline._stream_indices(size, seed, shard))
    return [(int(i), int(k)) for i, k in ds.as_numpy_iterator()]


# ---------------------------------------------------------------------------------------------
# Sharding and epochs.

def test_two_processes_read_disjoint_examples_that_cover_each_epoch(lspet40):
    source = registry.open_split(lspet_config(lspet40).data, "train")
    assert source.size == 40
    per_process = 20
    read = {}
    for process in (0, 1):
        to_index = pipeline._stream_indices(source.size, 0, (process, 2))
        stream = pipeline.record_stream(source, tf.data.Dataset.range(2 * per_process), to_index)
        read[process] = []
        for record in stream.as_numpy_iterator():
            # The image decoded is the example's own.
            assert index_of(record["image"]) == record["index"]
            read[process].append(int(record["index"]))
    for epoch in (0, 1):
        a = read[0][epoch * per_process:(epoch + 1) * per_process]
        b = read[1][epoch * per_process:(epoch + 1) * per_process]
        assert not set(a) & set(b), f"epoch {epoch}: both processes read {set(a) & set(b)}"
        assert sorted(a + b) == list(range(40)), f"epoch {epoch}: every example exactly once"
    assert read[0][:per_process] != read[0][per_process:], "each epoch its own order"


def test_an_odd_split_leaves_one_example_out_per_epoch_and_never_repeats():
    size, processes = 41, 2
    for epoch in range(3):
        taken = []
        for process in range(processes):
            per = size // processes
            taken += [i for i, _ in stream_indices(size, 5, (process, processes), epoch * per, (epoch + 1) * per)]
        assert len(taken) == 40 and len(set(taken)) == 40 and set(taken) <= set(range(size))


def test_three_processes_partition_an_epoch():
    size = 30
    epochs = [[], []]
    for process in range(3):
        for epoch in (0, 1):
            epochs[epoch].append({i for i, _ in stream_indices(size, 1, (process, 3), 10 * epoch, 10 * epoch + 10)})
    for parts in epochs:
        assert len(parts[0] | parts[1] | parts[2]) == 30 and sum(len(p) for p in parts) == 30


def test_epochs_are_fresh_permutations_fixed_by_the_seed():
    size = 40
    order = [i for i, _ in stream_indices(size, 3, (0, 1), 0, 3 * size)]
    epochs = [order[e * size:(e + 1) * size] for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch) == list(range(size))
    assert epochs[0] != epochs[1] and epochs[1] != epochs[2] and epochs[0] != epochs[2]
    assert epochs[0] != list(range(size)), "shuffled"
    assert [i for i, _ in stream_indices(size, 3, (0, 1), 0, 3 * size)] == order, "same seed, same order"
    assert [i for i, _ in stream_indices(size, 4, (0, 1), 0, size)] != epochs[0], "another seed, another order"
    # A stream started part-way gives the same examples at the same positions.
    assert [i for i, _ in stream_indices(size, 3, (0, 1), 55, 70)] == order[55:70]


def test_augmentation_keys_are_new_every_epoch_and_unique():
    size = 40
    pairs = stream_indices(size, 0, (1, 2), 0, 3 * (size // 2))
    per = size // 2
    for e in range(3):
        for index, key in pairs[e * per:(e + 1) * per]:
            assert key == e * size + index         # (seed, epoch x size + index), module docstring
    keys_by_index = {}
    for index, key in pairs:
        keys_by_index.setdefault(index, []).append(key)
    assert any(len(k) > 1 for k in keys_by_index.values())
    for index, keys in keys_by_index.items():
        assert len(set(keys)) == len(keys), f"example {index} augmented twice with the same key"
    other = stream_indices(size, 0, (0, 2), 0, 3 * per)
    assert not {k for _, k in pairs} & {k for _, k in other}, "no key shared between processes"


def test_the_same_example_is_augmented_differently_in_another_epoch(lspet40):
    config = lspet_config(lspet40)
    examples = list(pipeline.train_examples(config).take(80).as_numpy_iterator())
    first = {int(e["index"]): e for e in examples[:40]}
    second = {int(e["index"]): e for e in examples[40:]}
    assert sorted(first) == sorted(second) == list(range(40))
    differ = [i for i in range(40) if not np.allclose(first[i]["joints"], second[i]["joints"])]
    assert len(differ) == 40


# ---------------------------------------------------------------------------------------------
# Resuming.

def test_resuming_across_an_epoch_boundary_replays_the_uninterrupted_stream(tmp_path):
    root = write_lspet(tmp_path / "lspet10", 10)
    config = lspet_config(root)                 # global batch 4: step 2 holds positions 8..11
    assert config.training.global_batch_size == 4
    stream = pipeline.train_batches(config, 1)
    uninterrupted = [next(stream) for _ in range(5)]
    for k in (2, 3, 4):
        resumed = next(pipeline.train_batches(config, 1, start_step=k))
        assert resumed.keys() == uninterrupted[k].keys()
        for key in resumed:
            np.testing.assert_array_equal(resumed[key], uninterrupted[k][key], err_msg=f"step {k} {key}")
    assert not np.array_equal(uninterrupted[2]["image"], uninterrupted[3]["image"])
    # Two processes resume their own halves.
    half = [next(pipeline.train_batches(config, 1, start_step=3, shard=(p, 2))) for p in (0, 1)]
    stream = pipeline.train_batches(config, 1, shard=(1, 2))
    for _ in range(3):
        next(stream)
    np.testing.assert_array_equal(next(stream)["image"], half[1]["image"])
    assert half[0]["image"].shape == (1, 2, 32, 32, 3)


def epoch_order(size: int, seed: int, epoch: int, slots: int) -> list[int]:
    """The first `slots` examples of an epoch's order: the stateless permutation of (seed, epoch)
    (pipeline.py, "Order"), drawn here from TensorFlow's primitive, not from the pipeline."""
    order = tf.random.experimental.index_shuffle(tf.range(size, dtype=tf.int64), seed=tf.constant([seed, epoch], tf.int64),
                                                 max_index=tf.constant(size - 1, tf.int64)).numpy().tolist()
    assert sorted(order) == list(range(size)), "a permutation"
    return order[:slots]


def test_step_k_reads_slots_kB_to_k1B_of_the_epoch_order_each_process_every_nth(lspet40):
    """The documented rule itself, not a resumed run against an uninterrupted one (a shift of the
    stream common to every run passes those): step k (from 0) of global batch B reads stream slots
    kB .. (k+1)B - 1, slot g being example g mod E of epoch g // E's order (E = n x (size // n));
    process i of n gets the slots = i (mod n). Each batch row is checked against the record loaded
    by index through the source: its crop's joints (augmentation off: the canonical crop) and colour."""
    source = registry.open_split(lspet_config(lspet40).data, "train")
    records = [source.load(i) for i in range(source.size)]
    for processes, batch, steps in ((1, 4, (0, 9, 11)), (2, 4, (0, 10)), (3, 6, (0, 7))):
        config = lspet_config(lspet40, input_size=SIZE, augment=False)
        config.seed, config.training.global_batch_size = 3, batch
        per_epoch = processes * (source.size // processes)
        for k in steps:
            for process in range(processes):
                slots = range(k * batch + process, (k + 1) * batch, processes)
                expected = [epoch_order(source.size, 3, g // per_epoch, per_epoch)[g % per_epoch] for g in slots]
                got = next(pipeline.train_batches(config, 1, start_step=k, shard=(process, processes)))
                if k == 0:         # and the first batch of an ordinary stream, as training starts
                    for key, value in next(pipeline.train_batches(config, 1, shard=(process, processes))).items():
                        np.testing.assert_array_equal(value, got[key])
                for row, index in enumerate(expected):
                    record, where = records[index], f"{processes} processes, step {k}, process {process}, row {row}"
                    crop = canonical_crop(record["joints"], record["center"], record["scale"], config.data.person_height)
                    np.testing.assert_allclose(got["joints"][0, row], crop, atol=1e-3, err_msg=where)
                    centre = (got["image"][0, row, SIZE // 2, SIZE // 2] + 0.5) * 256
                    np.testing.assert_allclose(centre, np.median(record["image"], axis=(0, 1)), atol=4, err_msg=where)
    assert len({index_of(r["image"]) for r in records}) == source.size     # colours tell examples apart


@pytest.mark.xfail(strict=True, reason=(
    "known limitation, documented in pipeline.py: skipped bad examples leave gaps in the stream, "
    "so with skip_bad_examples a resumed run is exact only up to the first skipped example"))
def test_resuming_replays_step_k_also_when_bad_examples_are_skipped(tmp_path):
    root = write_lspet(tmp_path / "lspet10", 10)
    (root / "images" / "im00002.jpg").write_bytes(b"garbage")
    config = lspet_config(root)
    config.data.skip_bad_examples = True
    stream = pipeline.train_batches(config, 1)
    uninterrupted = [next(stream) for _ in range(5)]
    for k in (3, 4):
        resumed = next(pipeline.train_batches(config, 1, start_step=k))
        np.testing.assert_array_equal(resumed["image"], uninterrupted[k]["image"], err_msg=f"step {k}")


def test_each_process_reports_its_skips_at_the_end_of_its_epoch(tmp_path, monkeypatch):
    warnings = []
    monkeypatch.setattr(sources.logging, "warning", lambda message, *args: warnings.append(message % args))
    root = write_lspet(tmp_path / "lspet", 40)
    mine = [i for i, _ in stream_indices(40, 0, (0, 2), 0, 20)]     # process 0's first epoch
    (root / images.image_name("lspet", mine[3])).write_bytes(b"garbage")
    config = lspet_config(root)
    config.data.skip_bad_examples = True
    source = registry.open_split(config.data, "train")
    stream = pipeline.train_records(source, 0, shard=(0, 2), count=20)
    assert [int(r["index"]) for r in stream.as_numpy_iterator()] == mine[:3] + mine[4:]
    assert source.bad_examples.total_skipped == 1
    assert len(warnings) == 1 and "skipped 1 bad examples" in warnings[0]


# ---------------------------------------------------------------------------------------------
# Labels: joints outside the original image; other people.

SIZE = 64
CELLS = SIZE // 8


def gaussian_maps(people_joints, people_visibility, sigma: float = 7.0) -> np.ndarray:
    """docs/paper_notes.md section 3, from its definition: (8, 8, P+1) for crop joints of one or more people."""
    centres = 3.5 + 8 * np.arange(CELLS)
    num_parts = people_joints.shape[-2]
    parts = np.zeros((CELLS, CELLS, num_parts))
    for joints, visibility in zip(people_joints, people_visibility):
        for p in range(num_parts):
            if visibility[p] == 0:
                continue
            d2 = (centres[None, :] - joints[p, 0]) ** 2 + (centres[:, None] - joints[p, 1]) ** 2
            peak = np.exp(-d2 / (2 * sigma ** 2))
            parts[..., p] += np.where(peak < 0.01, 0.0, peak)
    parts = np.minimum(parts, 1.0)
    return np.concatenate([parts, np.maximum(0.0, 1.0 - parts.max(-1, keepdims=True))], -1)


def canonical_crop(points, center, scale, person_height):
    """Crop pixels of original `points` at the canonical scale, no rotation: scaled about the
    person centre (pixel centres at integers) into the middle of the SIZE x SIZE crop."""
    factor = person_height * SIZE / scale
    return (np.asarray(points, np.float64) - center) * factor + (SIZE - 1) / 2


def find(examples, index):
    for example in examples:
        if int(example["index"]) == index:
            return example
    raise AssertionError(f"example {index} not in the stream")


def test_label_visibility_drops_joints_outside_the_original_image():
    image = tf.zeros([10, 20, 3], tf.uint8)             # H 10, W 20: pixels -0.5 .. 19.5 x -0.5 .. 9.5
    joints = tf.constant([[-0.6, 3], [-0.4, 3], [19.4, 9.4], [19.5, 3], [5, -0.51], [5, 9.5], [5, 5]], tf.float32)
    visibility = tf.constant([2, 2, 1, 2, 2, 2, 0], tf.int32)
    record = {"image": image, "joints": joints, "visibility": visibility,
              "others_joints": joints[None], "others_visibility": tf.fill([1, 7], 1)}
    out = pipeline._label_visibility(record)
    assert out["visibility"].numpy().tolist() == [0, 2, 1, 0, 0, 0, 0]
    assert out["others_visibility"].numpy().tolist() == [[0, 1, 1, 0, 0, 0, 1]]
    np.testing.assert_array_equal(out["joints"].numpy(), joints.numpy())   # coordinates kept


def test_joints_outside_the_image_get_no_peak_and_joints_inside_do(tmp_path):
    # One LSPET person in an 80 x 100 image; its right ankle (labelled) lies left of the image,
    # its left wrist (labelled) inside: only the inside one gets a peak.
    figure = np.array([(30, 90), (31, 70), (32, 55), (42, 55), (43, 70), (44, 90), (20, 57),
                       (24, 42), (29, 27), (45, 27), (50, 42), (54, 57), (37, 25), (37, 10)], np.float64)
    figure[0] = (-9, 90)                                 # 1-based x = -9: outside
    flags = np.ones((2, 14))
    root = images.write_layout(tmp_path / "lspet", np.stack([figure, figure + 2]), flags, "lspet",
                               np.array([[80, 100], [80, 100]]))
    config = lspet_config(root, input_size=SIZE, augment=False)
    ann = lsp.read(str(root), "lspet", "train")
    assert ann.visibility[0, 0] == 2 and ann.visibility[0, 11] == 2 and ann.joints[0, 0, 0] < -0.5

    example = find(pipeline.train_examples(config).take(2).as_numpy_iterator(), 0)
    crop = canonical_crop(ann.joints[0], ann.center[0], ann.scale[0], config.data.person_height)
    assert (crop > 4).all() and (crop < SIZE - 4).all(), "every joint, the outside one too, is in the crop"
    np.testing.assert_allclose(example["joints"], crop, atol=1e-3)
    visibility = ann.visibility[0].copy()
    visibility[0] = 0                                    # outside the original image: no peak
    assert example["visibility"].tolist() == visibility.tolist()
    np.testing.assert_allclose(example["targets"], gaussian_maps(crop[None], visibility[None]), atol=1e-4)
    assert example["targets"][..., 0].max() == 0
    assert example["targets"][..., 11].max() > 0.5 and example["targets"][..., 13].max() > 0.5
    assert "stage1_targets" not in example              # LSPET is single-person


MPII_ID = {"r_ankle": 0, "neck": 8, "head_top": 9, "r_wrist": 10, "l_wrist": 15}
LSP_INDEX = {"r_ankle": 0, "r_wrist": 6, "l_wrist": 11, "neck": 12, "head_top": 13}


def write_mpii(root):
    """One training image (90 x 64) with two annotated people and one without points."""
    people = [
        {"objpos": (30, 32), "scale": 0.4, "head": (25, 8, 35, 22), "points": [
            {"id": MPII_ID["head_top"], "x": 30, "y": 12, "is_visible": 1},
            {"id": MPII_ID["neck"], "x": 30, "y": 20, "is_visible": 1},
            {"id": MPII_ID["r_ankle"], "x": 28, "y": 55, "is_visible": 0}]},
        {"objpos": (60, 32), "scale": 0.4, "head": (55, 8, 65, 22), "points": [
            {"id": MPII_ID["head_top"], "x": 44, "y": 14, "is_visible": 1},
            {"id": MPII_ID["l_wrist"], "x": 52, "y": 30, "is_visible": 1}]},
        {"objpos": (80, 32), "scale": 0.4},
    ]
    root.mkdir(parents=True, exist_ok=True)
    mat_files.write_mpii_release(root / mpii.RELEASE_FILE, [{"name": "a.jpg", "people": people}])
    images.write_jpeg(root / "images" / "a.jpg", images.gradient(64, 90))
    return people


def test_multi_person_stage1_targets_hold_everyone_later_stages_the_primary(tmp_path):
    people = write_mpii(tmp_path / "mpii")
    config = tiny_config(num_stages=3, input_size=SIZE)
    config.data.dataset = "mpii"
    config.data.paths.mpii = str(tmp_path / "mpii")
    config.data.scale_range, config.data.max_rotation, config.data.flip_probability = (1.0, 1.0), 0.0, 0.0
    assert registry.get("mpii").multi_person

    example = find(pipeline.train_examples(config).take(2).as_numpy_iterator(), 0)
    # From the file (1-based) by hand: person 1 is primary, person 2 the other.
    def labels(p):
        joints, visibility = np.zeros((14, 2)), np.zeros(14, np.int32)
        for point in people[p]["points"]:
            j = LSP_INDEX[next(n for n, i in MPII_ID.items() if i == point["id"])]
            joints[j] = (point["x"] - 1, point["y"] - 1)
            visibility[j] = 2 if point["is_visible"] else 1
        return joints, visibility
    (a, a_vis), (b, b_vis) = labels(0), labels(1)
    centre = np.array(people[0]["objpos"], np.float64) - 1
    scale = 200 * people[0]["scale"]
    a_crop = canonical_crop(a, centre, scale, config.data.person_height)
    b_crop = canonical_crop(b, centre, scale, config.data.person_height)
    assert ((b_crop[b_vis > 0] > 0) & (b_crop[b_vis > 0] < SIZE - 1)).all(), "the other person is in the crop"

    np.testing.assert_allclose(example["targets"], gaussian_maps(a_crop[None], a_vis[None]), atol=1e-4)
    np.testing.assert_allclose(example["stage1_targets"],
                               gaussian_maps(np.stack([a_crop, b_crop]), np.stack([a_vis, b_vis])), atol=1e-4)
    l_wrist, head = LSP_INDEX["l_wrist"], LSP_INDEX["head_top"]
    assert example["targets"][..., l_wrist].max() == 0 and example["stage1_targets"][..., l_wrist].max() > 0.5
    # Both heads in stage 1: summed where the peaks overlap, clipped at 1.
    assert example["stage1_targets"][..., head].sum() > example["targets"][..., head].sum() + 1

    per_stage = losses.stage_targets(jnp.asarray(example["targets"])[None],
                                     jnp.asarray(example["stage1_targets"])[None], 3)
    assert per_stage.shape == (1, 3, CELLS, CELLS, 15)
    np.testing.assert_array_equal(per_stage[0, 0], example["stage1_targets"])
    np.testing.assert_array_equal(per_stage[0, 1], example["targets"])
    np.testing.assert_array_equal(per_stage[0, 2], example["targets"])

    batch = next(pipeline.train_batches(config, 1))
    assert batch["stage1_targets"].shape == batch["targets"].shape == (1, 4, CELLS, CELLS, 15)


def test_the_other_person_is_seen_from_both_sides(tmp_path):
    write_mpii(tmp_path / "mpii")
    ann = mpii.read(str(tmp_path / "mpii"), "train")
    assert len(ann) == 2 and ann.others_joints.shape == (2, 1, 14, 2)
    np.testing.assert_array_equal(ann.others_joints[0, 0], ann.joints[1])
    np.testing.assert_array_equal(ann.others_joints[1, 0], ann.joints[0])
    record = sources.from_annotations(ann).load(1)
    assert record["image"].shape == (64, 90, 3)


def test_head_boxes_reach_the_record_stream(tmp_path):
    people = write_mpii(tmp_path / "mpii")
    source = sources.from_annotations(mpii.read(str(tmp_path / "mpii"), "train"))
    streamed = list(pipeline.numpy_iterator(pipeline.record_stream(source, tf.data.Dataset.range(2))))
    for record, person in zip(streamed, people):
        assert record["head_box"].dtype == np.float32
        np.testing.assert_array_equal(record["head_box"], np.array(person["head"]) - 1)
    synthetic = registry.open_split(tiny_config().data, "train")
    first = next(pipeline.numpy_iterator(pipeline.record_stream(synthetic, tf.data.Dataset.range(1))))
    assert first["head_box"].shape == (4,) and np.isnan(first["head_box"]).all()


# ---------------------------------------------------------------------------------------------
# FLIC's 9 parts (docs/paper_notes.md section 7): l shoulder, l elbow, l wrist, r shoulder, r elbow,
# r wrist, l hip, r hip, nose.

def test_flic_flip_swaps_left_and_right_and_keeps_the_nose():
    skeleton = registry.get("flic").skeleton
    assert skeleton.joint_names == ("l_shoulder", "l_elbow", "l_wrist", "r_shoulder", "r_elbow",
                                    "r_wrist", "l_hip", "r_hip", "nose")
    assert skeleton.flip_permutation == (3, 4, 5, 0, 1, 2, 7, 6, 8)
    # genJSON.m's FLIC swap, coords([1..8]) = coords([4 5 6 1 2 3 8 7]), 1-based.
    assert [i + 1 for i in skeleton.flip_permutation[:8]] == [4, 5, 6, 1, 2, 3, 8, 7]
    assert registry.get("flic").num_parts == 9 and registry.get("flic").multi_person
