r"""Training input throughput: our tf.data pipeline vs the seed's keras.utils.Sequence.

    python -m benchmarks.train_input [--records_dir data/records] [--batches 60]

Both read the same images (the records job's input and output of one dataset) at the same
batch size on the same machine, in one run. The seed project's generator is copied
faithfully: per batch, ``load_img(path, color_mode="grayscale", target_size=(320, 320))``
for each file, ``img_to_array / 255``, one process (Keras' default ``workers=1``).

Rows: "as training reads it" is ``make_dataset`` with the trainer's default flags
(augmentation on, which now happens in the train step, frontal heads); the per-record view
filter and augmentation in tf.data are the earlier versions, rebuilt here for comparison
(the latter: the old per-image random affine, ``ImageProjectiveTransformV3``, mapped on the
batches). ``--baseline DIR`` adds DIR's own ``trainer/input.py`` (an earlier checkout) with
the same flags, as "before".

Fair timing on a small machine: one untimed pass first (the first pipeline in a process
pays for thread pools and the allocator's first large blocks: up to 2x slower), then
``--repeats`` rounds that time every row in turn, and the median of the rounds per row.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from serving import preprocess
from trainer import augment
from trainer import config as config_lib
from trainer import input as input_lib


class SeedSequence(keras.utils.PyDataset):
    """The 2019 project's DataGenerator, as it read CheXpert."""

    def __init__(self, paths, labels, batch_size=16, dim=(320, 320)):
        super().__init__()
        self.paths, self.labels, self.batch_size, self.dim = paths, labels, batch_size, dim

    def __len__(self):
        return len(self.paths) // self.batch_size

    def __getitem__(self, index):
        batch = self.paths[index * self.batch_size:(index + 1) * self.batch_size]
        x = np.empty((self.batch_size, *self.dim, 1), np.float32)
        for i, path in enumerate(batch):
            img = keras.utils.load_img(path, color_mode="grayscale", target_size=self.dim)
            x[i] = keras.utils.img_to_array(img) / 255.0
        y = np.asarray(self.labels[index * self.batch_size:(index + 1) * self.batch_size], np.float32)
        return x, y


def _augment_in_tf_data(ds: tf.data.Dataset, size: int) -> tf.data.Dataset:
    """The augmentation tf.data did before it moved into the step: per batch, random
    parameters (stateful ops) and the projective transform kernel on the host."""
    def affine(batch):
        n = tf.shape(batch["image"])[0]
        params = (tf.random.uniform([n], -augment.ROTATION_DEGREES, augment.ROTATION_DEGREES),
                  tf.random.uniform([n], *augment.SCALE_RANGE),
                  tf.random.uniform([n], -augment.SHIFT_FRACTION, augment.SHIFT_FRACTION),
                  tf.random.uniform([n], -augment.SHIFT_FRACTION, augment.SHIFT_FRACTION))
        image = preprocess.to_pixels(preprocess.transform(tf.cast(batch["image"], tf.float32),
                                                          augment.affine_matrices(*params, size=size)))
        return {**batch, "image": image}

    return ds.map(affine, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False).prefetch(tf.data.AUTOTUNE)


def _rate(ds: tf.data.Dataset, batches: int, batch_size: int) -> float:
    it = iter(ds)
    for _ in range(5):  # warm-up: fill the shuffle buffer and prefetch
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def _load_baseline(checkout: str):
    """An earlier checkout's trainer/input.py as a module (its imports resolve to this
    checkout's schemas/serving/trainer.config, whose interfaces it shares)."""
    path = os.path.join(checkout, "trainer", "input.py")
    spec = importlib.util.spec_from_file_location("baseline_trainer_input", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # autograph looks functions' modules up here
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records_dir", default="data/records")
    parser.add_argument("--batches", type=int, default=1000, help="Timed batches per tf.data row and round.")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="Rounds; each times every row once.")
    parser.add_argument("--baseline", default=None, help="An earlier checkout: its trainer/input.py as 'before'.")
    args = parser.parse_args()
    manifest = config_lib.read_manifest(args.records_dir)
    root = manifest.options["input_dir"]
    size = manifest.image_size
    cfg = config_lib.make_config(pathology="atelectasis", records_dir=args.records_dir, job_dir="/tmp/unused",
                                 image_size=size, augment=False)
    files = input_lib.shard_files(args.records_dir, "train", manifest)

    # The same frontal images, read by the seed's generator from the JPEGs: one pass over
    # the frontal training images (at most --batches batches).
    paths = []
    ds = input_lib.make_dataset(files, cfg, training=False, batch_size=256)
    for b in ds:
        paths += [os.path.join(root, p.decode()) for p in b["path"].numpy()]
        if len(paths) >= args.batches * args.batch_size:
            break
    seq = SeedSequence(paths, np.zeros(len(paths)), batch_size=args.batch_size, dim=(size, size))
    seq[0]  # imports and first file opens, untimed

    def seed_rate() -> float:
        start = time.perf_counter()
        for i in range(len(seq)):
            seq[i]
        return len(seq) * args.batch_size / (time.perf_counter() - start)

    if input_lib.frontal_counts(args.records_dir, files) is None:
        print(f"note: {args.records_dir} predates frontal-first shards; both tf.data rows filter per record")
    # The trainer's defaults (augment on, frontal heads) at the records' size.
    defaults = config_lib.make_config(pathology="atelectasis", records_dir=args.records_dir, job_dir="/tmp/unused",
                                      image_size=size)
    assert defaults.augment and defaults.views == "frontal"
    make = lambda how="auto", lib=input_lib: lib.make_dataset(files, defaults, training=True,  # noqa: E731
                                                              batch_size=args.batch_size, frontal_only_by=how)
    rows = [("as training reads it (defaults; augment in step)", make, " (goal >= 10x)")]
    if args.baseline:
        before = _load_baseline(args.baseline)
        rows.append((f"before: {os.path.basename(args.baseline.rstrip('/'))}'s make_dataset, same flags",
                     lambda: make(lib=before), ""))
    rows += [("before: per-record view filter, no augmentation", lambda: make("filter"), ""),
             ("before: augmentation in tf.data (host CPU)", lambda: _augment_in_tf_data(make(), size), "")]
    _rate(make(), 200, args.batch_size)  # the untimed first pass (see the module docstring)
    rates = {label: [] for label, _, _ in rows}
    seed_rates = []
    for _ in range(args.repeats):
        seed_rates.append(seed_rate())
        for label, build, _ in rows:
            rates[label].append(_rate(build(), args.batches, args.batch_size))
    seed = statistics.median(seed_rates)
    print(f"cores: {os.cpu_count()}  images: {args.batches * args.batch_size} per tf.data row and round, "
          f"{len(seq) * args.batch_size} for the seed's, at {size}x{size}, batch {args.batch_size}; "
          f"median of {args.repeats} rounds (ratios: each round's range)")
    print(f"  {'seed keras.utils.Sequence (load_img, 1 process)':56s} {seed:8.0f} img/s")
    for label, _, goal in rows:
        r = rates[label]
        lo, hi = min(x / s for x, s in zip(r, seed_rates)), max(x / s for x, s in zip(r, seed_rates))
        print(f"  {label:56s} {statistics.median(r):8.0f} img/s   {statistics.median(r) / seed:5.1f}x "
              f"({lo:.1f}-{hi:.1f}){goal}")


if __name__ == "__main__":
    main()
