"""TensorBoard event files of a training run, `<workdir>/tensorboard`, written with `tf.summary`.

    writer = summaries.open(os.path.join(workdir, "tensorboard"))
    writer.scalars(step, {"train/loss": 12.3, "train/learning_rate": 8e-5})
    writer.close()

Only process 0 of a multi-process job writes (`jax.process_index() == 0`); elsewhere `open`
returns a writer that does nothing. Scalars are written as `tf.summary.write` tensors with the
scalars plugin's metadata, what `tf.summary.scalar` writes when the `tensorboard` package is
installed (it is not a dependency: TensorFlow alone cannot call `tf.summary.scalar`). A resumed
run appends a new event file; TensorBoard keeps the newest value where steps repeat.
"""
import jax


class Writer:
    """Scalars of process 0 into one event file of `logdir` (flushed every 2 minutes and at
    `close`)."""

    def __init__(self, logdir: str):
        from cpm_jax import tf_loader
        tf = tf_loader.import_tensorflow()
        from tensorflow.core.framework import summary_pb2
        self._tf = tf
        self._writer = tf.summary.create_file_writer(logdir)
        self._metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
            data_class=summary_pb2.DATA_CLASS_SCALAR)
        self.logdir = logdir

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """One point per tag at `step` (tags such as "train/loss"; TensorBoard groups by the part
        before the first "/")."""
        with self._writer.as_default():
            for tag, value in values.items():
                self._tf.summary.write(tag, self._tf.constant(float(value), self._tf.float32), step=step,
                                       metadata=self._metadata)

    def close(self) -> None:
        self._writer.close()


class NoWriter:
    """What processes other than 0 get: the Writer's methods, doing nothing."""
    logdir = None

    def scalars(self, step: int, values: dict[str, float]) -> None:
        del step, values

    def close(self) -> None:
        pass


def open(logdir: str) -> Writer | NoWriter:  # noqa: A001  (summaries.open reads as what it does)
    """A writer into `logdir` (created if needed) on process 0, a NoWriter elsewhere."""
    return Writer(logdir) if jax.process_index() == 0 else NoWriter()
