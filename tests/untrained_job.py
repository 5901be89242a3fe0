"""Writes an untrained job folder (``config.json`` + ``model.keras``): what trainer.train
leaves after an epoch, without the epoch. A subprocess of the tests, so that the test
process never holds a large backbone.

    python -m tests.untrained_job RECORDS_DIR JOB_DIR BACKBONE IMAGE_SIZE
"""

import os
import sys

import keras

from trainer import config as config_lib
from trainer import model as model_lib

records_dir, job_dir, backbone, image_size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cfg = config_lib.make_config(pathology="atelectasis,cardiomegaly", records_dir=records_dir, job_dir=job_dir,
                             backbone=backbone, image_size=image_size, weights="none")
keras.utils.set_random_seed(cfg.seed)
os.makedirs(job_dir, exist_ok=True)
with open(os.path.join(job_dir, "config.json"), "w") as f:
    f.write(cfg.to_json())
# The same file trainer.train saves for its best epoch: the probability model.
model_lib.probability_model(model_lib.build_model(cfg), cfg).save(os.path.join(job_dir, "model.keras"))
