"""Runs two train steps under MirroredStrategy on two logical CPUs (a subprocess of the
tests, so that XLA_FLAGS=--xla_dump_to takes effect before TensorFlow starts).

    python -m tests.xla_probe RECORDS_DIR [--nojit]
"""

import json
import sys

import tensorflow as tf

cpus = tf.config.list_physical_devices("CPU")
tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)

from trainer import config as config_lib  # noqa: E402
from trainer import input as input_lib  # noqa: E402
from trainer import train  # noqa: E402

records = sys.argv[1]
cfg = config_lib.make_config(pathology="atelectasis,cardiomegaly", records_dir=records, job_dir="/nonexistent",
                             image_size=32, backbone="tiny", jit_compile="--nojit" not in sys.argv)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
files = input_lib.shard_files(records, "train", config_lib.read_manifest(records))
trainer = train.Trainer(cfg, strategy)
ds = strategy.distribute_datasets_from_function(
    lambda ctx: input_lib.make_dataset(files, cfg, training=True, batch_size=4, input_context=ctx))
it = iter(ds)
losses = [float(trainer.train_step(it)) for _ in range(2)]
print(json.dumps({"replicas": strategy.num_replicas_in_sync, "losses": losses}))
