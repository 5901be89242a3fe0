r"""Trains a CheXpert classifier from the records job's TFRecords.

    python -m trainer.task --pathology atelectasis
    python -m trainer.task --pathology competition --backbone densenet121 --precision mixed_bfloat16
    python -m trainer.task --pathology cardiomegaly --policy cardiomegaly=ones   # no rebuild needed

Defaults are the seed project's: DenseNet121 on 320x320 gray, Adam lr 1e-4 (0.9, 0.999,
1e-8), batch 16 per replica, threshold 0.35. Writes to ``--job_dir``: config.json,
job_spec.json (what scorers read, ``schemas.job_spec``), model.keras, saved_model/, metrics.json, history.csv, logs/ (TensorBoard), backup/ (a
killed job restarted with the same flags resumes at its last finished epoch).

Multi-worker: set TF_CONFIG on each machine and pass ``--strategy multi_worker`` (or leave
``auto``).
"""

from __future__ import annotations

import logging
import math
import sys

from core import cli

cli.require_extra("train", "trainer.task")  # before absl: a Beam-only install says what is missing

from absl import app, flags  # noqa: E402
from absl import logging as absl_logging  # noqa: E402

from trainer import config as config_lib
from serving import startup

FLAGS = flags.FLAGS
flags.DEFINE_string("pathology", "atelectasis",
                    "An observation slug (atelectasis, cardiomegaly, ...), 'competition' (the 5 tasks), 'all' "
                    "(14 outputs), or a comma list.")
flags.DEFINE_string("records_dir", "data/records", "Output folder of pipeline.build_records (holds manifest.json).")
flags.DEFINE_string("job_dir", None, "Where the model, metrics and logs go. Default: jobs/<pathology>.")
flags.DEFINE_string("policy", "", "Uncertainty policy overrides, e.g. atelectasis=zeros; applied in tf.data to the "
                                  "stored raw codes (no rebuild). Default: the policy the records were built with.")
flags.DEFINE_enum("blank", None, ["negative", "ignore"], "Blank labels; default: as the records were built.")
flags.DEFINE_integer("image_size", 320, "Training image side; smaller than the records' resizes in tf.data.")
flags.DEFINE_enum("backbone", "densenet121", list(config_lib.BACKBONES), "'tiny' is a 4-block DenseNet for CPU.")
flags.DEFINE_string("weights", "none", "none, imagenet (needs network: RGB stem folded to gray) or a weights file.")
flags.DEFINE_integer("batch_size", 16, "Batch size PER REPLICA; the global batch is this times the replicas.")
flags.DEFINE_integer("epochs", 3, "Maximum epochs (early stopping may end sooner).")
flags.DEFINE_integer("steps_per_epoch", 0, "Steps per epoch; 0 = one pass over the training split.")
flags.DEFINE_integer("steps_per_execution", 1, "Optimizer steps per call into the compiled step (fewer host round "
                                               "trips; epochs keep their steps). >= 1.")
flags.DEFINE_float("learning_rate", 1e-4, "Adam learning rate.")
flags.DEFINE_float("beta_1", 0.9, "Adam beta_1.")
flags.DEFINE_float("beta_2", 0.999, "Adam beta_2.")
flags.DEFINE_float("epsilon", 1e-8, "Adam epsilon.")
flags.DEFINE_float("threshold", 0.35, "Decision threshold for F1, accuracy, sensitivity and specificity.")
flags.DEFINE_enum("strategy", "auto", list(config_lib.STRATEGIES),
                  "auto: multi_worker if TF_CONFIG has several workers, mirrored if several GPUs, else default.")
flags.DEFINE_boolean("jit_compile", True, "XLA-compile the per-replica forward+backward step (--nojit_compile).")
flags.DEFINE_enum("precision", "float32", list(config_lib.PRECISIONS), "Keras dtype policy.")
flags.DEFINE_integer("seed", 0, "Random seed (weights, shuffling, augmentation).")
flags.DEFINE_boolean("deterministic", False, "Same --seed, same weights: training records in a fixed order "
                                             "(parallel reads keep their order) and deterministic TensorFlow ops. "
                                             "Needs --nojit_compile (XLA has no deterministic max-pool "
                                             "gradient). Slower; without it the order of records varies between "
                                             "runs.")
flags.DEFINE_boolean("augment", True, "Small random rotation/shift/scale per image in the train step (on the "
                                      "replica's device, from --seed); never flips.")
flags.DEFINE_enum("views", "frontal", list(config_lib.VIEW_CHOICES), "Train and evaluate on frontal views, or all.")
flags.DEFINE_boolean("skip_corrupt", False, "Skip (and report) corrupt shards instead of stopping.")
flags.DEFINE_integer("patience", 3, "Early stopping: epochs without a better validation mean AUROC.")
flags.DEFINE_integer("shuffle_buffer", 2048, "Examples in the shuffle buffer (uint8 images).")
flags.DEFINE_list("distill_from", [], "Distil from these trainer.task job folders (comma list: an ensemble, "
                                      "averaged). Their predictions are computed once and cached in the job folder.")
# The flag's name before --distill_from; accepted, with a warning, for one release.
flags.DEFINE_list("teacher", [], "Deprecated: use --distill_from.")
flags.DEFINE_float("distill_alpha", 0.5, "Weight of the teacher's soft targets; 1 - alpha weighs the labels.")
flags.DEFINE_float("distill_temperature", 2.0, "Softening temperature T for teacher and student logits.")
flags.DEFINE_boolean("verbose", False, "Show TensorFlow's own start-up and INFO lines (hidden by default).")


def _distill_from() -> tuple[str, ...]:
    """--distill_from, or the deprecated --teacher (with a one-line warning on stderr)."""
    if not FLAGS.teacher:
        return tuple(FLAGS.distill_from)
    if FLAGS.distill_from:
        raise config_lib.ConfigError("--teacher is the deprecated name of --distill_from: give --distill_from only")
    print("trainer.task: warning: --teacher is deprecated; use --distill_from", file=sys.stderr)
    return tuple(FLAGS.teacher)


def config_from_flags() -> config_lib.TrainConfig:
    """The validated config of the parsed flags; raises ConfigError naming a bad flag."""
    job_dir = FLAGS.job_dir or f"jobs/{FLAGS.pathology.replace(',', '_')}"
    return config_lib.make_config(
        pathology=FLAGS.pathology, records_dir=FLAGS.records_dir, job_dir=job_dir, policy=FLAGS.policy,
        blank=FLAGS.blank, image_size=FLAGS.image_size, backbone=FLAGS.backbone, weights=FLAGS.weights,
        batch_size=FLAGS.batch_size, epochs=FLAGS.epochs, steps_per_epoch=FLAGS.steps_per_epoch,
        steps_per_execution=FLAGS.steps_per_execution,
        learning_rate=FLAGS.learning_rate, beta_1=FLAGS.beta_1, beta_2=FLAGS.beta_2, epsilon=FLAGS.epsilon,
        threshold=FLAGS.threshold, strategy=FLAGS.strategy, jit_compile=FLAGS.jit_compile,
        precision=FLAGS.precision, seed=FLAGS.seed, deterministic=FLAGS.deterministic, augment=FLAGS.augment,
        views=FLAGS.views,
        skip_corrupt=FLAGS.skip_corrupt, patience=FLAGS.patience, shuffle_buffer=FLAGS.shuffle_buffer,
        distill_from=_distill_from(), distill_alpha=FLAGS.distill_alpha,
        distill_temperature=FLAGS.distill_temperature,
    )


def print_report(report: dict, job_dir: str) -> None:
    print(f"\n{'task':20s} {'AUROC':>7s} {'AUPRC':>7s} {'F1':>7s} {'acc':>7s} {'sens':>7s} {'spec':>7s}   "
          f"(threshold {report['threshold']}, {report['split']}, {report['images']} images, "
          + (f"best epoch {report['best_epoch']})" if report.get("selected", True) else
             f"last epoch {report['epoch']}: not selected, no epoch had a defined validation mean AUROC)"))
    def num(v) -> str:  # undefined: NaN here, null in a resumed job's metrics.json
        return f"{v:7.3f}" if v is not None and math.isfinite(v) else f"{'n/a':>7s}"

    for task, r in report["tasks"].items():
        print(f"{task:20s} " + " ".join(num(r[k]) for k in ("auroc", "auprc", "f1", "accuracy", "sensitivity",
                                                           "specificity")))
    print(f"{'mean AUROC':20s} {num(report['mean_auroc'])}\nmodel, metrics and logs in {job_dir}")


def main(argv) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    # Our progress at INFO; TensorFlow's own INFO lines (savers, fingerprints, ...) hidden.
    absl_logging.set_verbosity(absl_logging.INFO if FLAGS.verbose else absl_logging.WARNING)
    logging.getLogger("trainer").setLevel(logging.INFO)
    try:
        cfg = config_from_flags()
    except config_lib.ConfigError as e:
        print(f"trainer.task: error: {e}", file=sys.stderr)
        return 2
    # Imported after flag validation: TensorFlow takes seconds to load and is noisy.
    startup.load_tensorflow(FLAGS.verbose)
    from trainer import train

    from trainer import input as input_lib

    try:
        report = train.run(cfg)
    except config_lib.ConfigError as e:
        print(f"trainer.task: error: {e}", file=sys.stderr)
        return 2
    except input_lib.CorruptShardError as e:
        print(f"trainer.task: error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # one line, not a traceback (--verbose shows it)
        return cli.unexpected("trainer.task", e, FLAGS.verbose)
    print_report(report, cfg.job_dir)
    return 0


if __name__ == "__main__":
    app.run(main)
