"""Builds a TFDS dataset (array_record shards) offline from hand-downloaded files.

  python -m data_pipelines.build_tfds --dataset lspet --manual_dir /data/lspet --data_dir /data/tfds

Prints progress (TFDS's progress bars go to stderr) and the resulting split sizes. The datasets,
the manual_dir layouts and the reading side are described in `data_pipelines/tfds_builders.py`.
"""
import os

from absl import flags

from cpm_jax import cli, errors, tf_loader
from data_pipelines import tfds_builders


def main(argv) -> None:
    tf_loader.hide_gpus_on_import()  # the only set-up a TensorFlow-only job needs (no JAX here)
    if len(argv) > 1:
        raise errors.InputError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    if not os.path.isdir(f.manual_dir) or not os.listdir(f.manual_dir):
        builder = tfds_builders.builder_class(f.dataset)
        raise errors.InputError(f"--manual_dir = {f.manual_dir}: no such directory, or empty: unpack the "
                                f"{f.dataset} release there (layout: {builder.__name__}.MANUAL_DOWNLOAD_INSTRUCTIONS "
                                "in data_pipelines/tfds_builders.py)")
    tfds_builders.build_and_report(f.dataset, f.manual_dir, f.data_dir, overwrite=f.overwrite,
                                   num_shards=f.num_shards)


if __name__ == "__main__":
    flags.DEFINE_enum("dataset", None, list(tfds_builders.BUILDERS), "Dataset to build.")
    flags.DEFINE_string("manual_dir", None, "Directory holding the hand-downloaded dataset "
                        "(layout: the builder's MANUAL_DOWNLOAD_INSTRUCTIONS).")
    flags.DEFINE_string("data_dir", None, "TFDS data directory to write the build into.")
    flags.DEFINE_bool("overwrite", False, "Rebuild even if this version is already built.")
    flags.DEFINE_integer("num_shards", None, "Shards per split (default: TFDS's choice, "
                         "at most 1 GiB each).")
    flags.mark_flags_as_required(["dataset", "manual_dir", "data_dir"])
    cli.run(main)
