"""Named mutants: each guarantee the README states, broken on purpose, must fail its tests.

    python -m tests.mutation.run                 # every mutant (make mutate)
    python -m tests.mutation.run -k study --list # which mutants a pattern selects, and their tests
    python -m tests.mutation.run --mutmut         # and mutmut over setup.cfg's [mutmut] modules

Each mutant is a text patch (file, the exact old text, the new text) and the pytest node ids
that must fail with it. The runner copies the checkout's files (``git ls-files``: tracked and
untracked-but-not-ignored) to a temporary folder once, runs the tests there unmutated (a
"kill" by a test that already fails means nothing), then per mutant writes the patched file,
runs its tests with a time limit and writes the original back. The checkout itself is never
written: an interrupted run (Ctrl-C, a crash, a killed runner) leaves only a temporary folder.

A mutant is *killed* when pytest reports failed tests (exit 1) or its time limit passes; it
*survived* when its tests pass; any other pytest exit (collection error, no tests selected)
is an *error* and counted as survived, since nothing showed the break. An old text that is
not in its file exactly once is a stale mutant (the code moved): the run stops before testing
anything. The last line is ``mutants: N killed, M survived``; the exit status is 0 only when
nothing survived.

``--mutmut`` also runs mutmut (its own mutants of every line) in a second copy, over the
TF-free modules setup.cfg's ``[mutmut]`` section names with their unit tests as the runner
(minutes, not the hour a whole-tree run takes). Its survivors that are equivalent mutants (no
test can tell them from the original) are listed with the reason in ``equivalent.txt`` next to
this file; they are reported apart and not counted as survived.

Why here and not under ``benchmarks/`` or a ``tools/`` folder: the table names test node ids,
so it has to move with the tests, and it is not part of the installed packages.
"""

from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@dataclasses.dataclass(frozen=True)
class Mutant:
    """One deliberate break.

    Attributes:
        name: a short slug (``-k`` matches it).
        why: the guarantee it breaks, in words.
        file: the path relative to the repository root.
        old: text that occurs exactly once in ``file``.
        new: what replaces it.
        tests: pytest node ids, at least one of which must fail.
    """

    name: str
    why: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


SERVING = "tests/serving/test_serving.py"
EVALUATE = "tests/trainer/test_evaluate_predict.py"
EVAL_UNIT = "tests/trainer/test_evaluate_aggregation.py"
COMMIT = "tests/unit/core/test_commit.py"
TRAINER = "tests/trainer/test_trainer.py"
DISTILL = "tests/trainer/test_distill.py"
METRICS = "tests/unit/trainer/test_metrics.py"
WEBDEMO = "tests/webdemo/test_webdemo.py"

MUTANTS = (
    Mutant(
        "serving-decode-nearest-flipped",
        "the SavedModel's bytes signature resizes as training did (not nearest-neighbour, not upside down)",
        "serving/export.py",
        "    image = tf.io.decode_image(data, channels=1, dtype=tf.uint8, expand_animations=False)\n"
        "    return tf.ensure_shape(preprocess.resize_pixels(image, size), [size, size, 1])",
        "    image = tf.reverse(tf.io.decode_image(data, channels=1, dtype=tf.uint8, expand_animations=False), [0])\n"
        "    image = tf.cast(tf.image.resize(image, [size, size], method='nearest'), tf.uint8)\n"
        "    return tf.ensure_shape(image, [size, size, 1])",
        (f"{SERVING}::test_tf_data_export_and_inference_prepare_the_same_pixels",),
    ),
    Mutant(
        "serving-decode-flipped",
        "the SavedModel's bytes signature keeps the image's orientation",
        "serving/export.py",
        "    return tf.ensure_shape(preprocess.resize_pixels(image, size), [size, size, 1])",
        "    return tf.ensure_shape(preprocess.resize_pixels(tf.reverse(image, [0]), size), [size, size, 1])",
        (f"{SERVING}::test_tf_data_export_and_inference_prepare_the_same_pixels",),
    ),
    Mutant(
        "input-no-file-shuffle",
        "training reads the shard files in a shuffled order",
        "trainer/input.py",
        "        files_ds = files_ds.shuffle(len(files), seed=cfg.seed, reshuffle_each_iteration=True)",
        "        files_ds = files_ds",
        ("tests/trainer/test_trainer_input.py::test_files_are_shuffled_per_epoch_and_sharded_per_input_pipeline",),
    ),
    Mutant(
        "input-file-order-fixed-across-epochs",
        "the shard files' order differs between epochs",
        "trainer/input.py",
        "        files_ds = files_ds.shuffle(len(files), seed=cfg.seed, reshuffle_each_iteration=True)",
        "        files_ds = files_ds.shuffle(len(files), seed=cfg.seed, reshuffle_each_iteration=False)",
        ("tests/trainer/test_trainer_input.py::test_files_are_shuffled_per_epoch_and_sharded_per_input_pipeline",),
    ),
    Mutant(
        "studies-min-not-max",
        "a study's probability (predict, score) is the max over its frontal images",
        "core/studies.py",
        "probs={t: max(float(item[2][t]) for item in used) for t in tasks},",
        "probs={t: min(float(item[2][t]) for item in used) for t in tasks},",
        ("tests/unit/core/test_studies.py",),
    ),
    Mutant(
        "studies-laterals-with-frontals",
        "laterals enter a study's max only when it has no frontal image",
        "core/studies.py",
        "        used = frontal or items\n",
        "        used = items\n",
        ("tests/unit/core/test_studies.py",),
    ),
    Mutant(
        "evaluate-study-min-not-max",
        "evaluate's study-level score is the max over the study's images",
        "trainer/evaluate.py",
        'ps.append(max(r["probs"][task] for r in items))',
        'ps.append(min(r["probs"][task] for r in items))',
        (f"{EVAL_UNIT}::test_a_study_scores_the_max_of_its_images",),
    ),
    Mutant(
        "evaluate-tta-ignored",
        "--tta averages the test-time transforms",
        "trainer/evaluate.py",
        "    if not tta:\n        return predict_batch(job, images)",
        "    if True:\n        return predict_batch(job, images)",
        (f"{EVAL_UNIT}::test_tta_is_the_mean_over_its_transforms",),
    ),
    Mutant(
        "evaluate-ensemble-first-member",
        "an ensemble scores the mean of its members",
        "trainer/evaluate.py",
        '"probs": {t: float(np.mean([p[path]["probs"][t] for p in per_job])) for t in tasks}}',
        '"probs": {t: float(per_job[0][path]["probs"][t]) for t in tasks}}',
        (f"{EVAL_UNIT}::test_an_ensemble_is_the_mean_of_its_members",),
    ),
    Mutant(
        "evaluate-thresholds-on-reported-split",
        "F1 thresholds are tuned on the holdout, never on the split reported",
        "trainer/evaluate.py",
        "ensemble([predict_records(j, tune_split, views, tta, skip_corrupt, skipped) for j in jobs])",
        "ensemble([predict_records(j, split, views, tta, skip_corrupt, skipped) for j in jobs])",
        (f"{EVALUATE}::test_study_level_metrics_match_sklearn_and_the_report_is_complete",),
    ),
    Mutant(
        "shards-python-hash",
        "a record's shard is the same in every process (no per-process hash seed)",
        "pipeline/shards.py",
        'int.from_bytes(hashlib.sha256(("shard:" + key).encode()).digest()[:8], "big") % num_shards',
        'hash("shard:" + key) % num_shards',
        ("tests/unit/pipeline/test_shards.py",),
    ),
    Mutant(
        "checkpoint-without-model-and-optimizer",
        "a resumed job restores the model's weights and the optimizer's state",
        "trainer/train.py",
        "ckpt = tf.train.Checkpoint(model=trainer.model, optimizer=trainer.optimizer, epoch=epoch_var,",
        "ckpt = tf.train.Checkpoint(epoch=epoch_var,",
        ("tests/trainer/test_trainer.py::test_the_backup_holds_the_models_weights_and_the_optimizers_state",),
    ),
    Mutant(
        "commit-manifest-written-in-place",
        "the commit is one atomic step: manifest.json is replaced by a rename, never rewritten in place",
        "core/commit.py",
        "        storage.write_bytes(tmp, data)\n        storage.rename(tmp, final)",
        "        storage.write_bytes(final, data)",
        (f"{COMMIT}::test_a_fault_at_any_step_of_a_run_leaves_the_old_commit_or_the_new_one_whole",),
    ),
    Mutant(
        "commit-lock-not-taken",
        "one run at a time holds an output folder (a second one is refused, naming the holder)",
        "core/commit.py",
        "            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)",
        "            pass",
        (f"{COMMIT}::test_an_output_folder_holds_one_run_at_a_time_and_a_killed_holder_releases_it",),
    ),
    Mutant(
        "commit-gc-deletes-committed-files",
        "garbage collection deletes only what the committed manifest does not reference",
        "core/commit.py",
        "                doomed += [storage.join(path, rel) for rel in storage.files_under(path)\n"
        "                           if f\"{name}/{rel}\" not in referenced]",
        "                doomed += [storage.join(path, rel) for rel in storage.files_under(path)]",
        (f"{COMMIT}::test_garbage_is_what_no_manifest_references_and_committed_or_user_files_stay",),
    ),
    Mutant(
        "commit-verify-ignores-sizes",
        "\"nothing new\" trusts the committed output only with every file at the size its manifest records",
        "core/commit.py",
        "        if got != want:",
        "        if False:",
        (f"{COMMIT}::test_committed_output_is_trusted_only_with_every_file_at_its_recorded_size",),
    ),
    Mutant(
        "precision-flag-ignored",
        "--precision sets the dtype policy the model is built (and the step computes) in",
        "trainer/train.py",
        "            with _precision_policy(cfg.precision):\n                self.model = model_fn(cfg)",
        "            with _precision_policy(\"float32\"):\n                self.model = model_fn(cfg)",
        (f"{TRAINER}::test_each_precision_runs_the_step_in_its_dtype_and_trains",),
    ),
    Mutant(
        "precision-float16-without-loss-scaling",
        "mixed_float16 scales the loss (a LossScaleOptimizer) so that small gradients survive float16",
        "trainer/train.py",
        "                optimizer = keras.optimizers.LossScaleOptimizer(optimizer)",
        "                pass",
        (f"{TRAINER}::test_each_precision_runs_the_step_in_its_dtype_and_trains",),
    ),
    Mutant(
        "distill-term-without-gradient",
        "the distillation term reaches the gradient, weighted by --distill_alpha",
        "trainer/train.py",
        "loss = (1.0 - self.cfg.distill_alpha) * loss + self.cfg.distill_alpha * soft",
        "loss = (1.0 - self.cfg.distill_alpha) * loss + self.cfg.distill_alpha * tf.stop_gradient(soft)",
        (f"{DISTILL}::test_the_teacher_term_reaches_the_gradient_weighted_by_alpha",),
    ),
    Mutant(
        "distill-teacher-not-fed-to-the-step",
        "the batch's cached teacher logits reach the train step",
        "trainer/train.py",
        'args = (batch["image"], batch["targets"], batch["masks"], denominators, batch.get("teacher"), key)',
        'args = (batch["image"], batch["targets"], batch["masks"], denominators, None, key)',
        (f"{DISTILL}::test_the_teacher_term_reaches_the_gradient_weighted_by_alpha",),
    ),
    # An outside tester's breaks (session 7): each survived the suite before its test.
    Mutant(
        "npv-is-specificity",
        "the report's NPV is TN / (TN + FN)",
        "trainer/metrics.py",
        '"npv": div(tn, tn + fn)}',
        '"npv": div(tn, tn + fp)}',
        (f"{METRICS}::test_threshold_metrics_equal_sklearn",),
    ),
    Mutant(
        "bootstrap-ci-90-percent",
        "the AUROC interval is a 95% percentile bootstrap interval",
        "trainer/metrics.py",
        "[50 * (1 - level), 100 - 50 * (1 - level)]",
        "[100 * (1 - level), 100 - 100 * (1 - level)]",
        (f"{METRICS}::test_bootstrap_ci_brackets_the_auroc_and_is_seeded",),
    ),
    Mutant(
        "adam-betas-swapped",
        "Adam gets --beta_1 and --beta_2 as given (its first step cannot tell them apart)",
        "trainer/train.py",
        "beta_1=cfg.beta_1,",
        "beta_1=cfg.beta_2,",
        (f"{TRAINER}::test_the_command_line_defaults_are_the_2019_projects_and_reach_the_optimizer",),
    ),
    Mutant(
        "threshold-default-not-0.35",
        "the command line's threshold is the 2019 project's 0.35",
        "trainer/task.py",
        'flags.DEFINE_float("threshold", 0.35,',
        'flags.DEFINE_float("threshold", 0.5,',
        (f"{TRAINER}::test_the_command_line_defaults_are_the_2019_projects_and_reach_the_optimizer",),
    ),
    Mutant(
        "webdemo-binds-every-interface",
        "the web demo binds to 127.0.0.1 unless --host says otherwise",
        "webdemo/app.py",
        'parser.add_argument("--host", default="127.0.0.1"',
        'parser.add_argument("--host", default="0.0.0.0"',
        (f"{WEBDEMO}::test_the_command_binds_to_loopback_by_default_and_says_the_model_is_synthetic",),
    ),
    Mutant(
        "change-detector-ignores-mtime",
        "a scheduled run sees a file rewritten at the same size (size and mtime)",
        "core/fingerprint.py",
        'return f"{st.st_size}:{st.st_mtime_ns}"\n\n\ndef _stat(',
        'return f"{st.st_size}:0"\n\n\ndef _stat(',
        ("tests/unit/core/test_fingerprint.py",),
    ),
    Mutant(
        "change-detector-follows-links",
        "an image replaced by a link (same size and mtime) is a change for --incremental",
        "core/fingerprint.py",
        "        st = os.stat(path, dir_fd=dir_fd, follow_symlinks=False)",
        "        st = os.stat(path, dir_fd=dir_fd)",
        ("tests/unit/core/test_fingerprint.py",
         "tests/pipeline/test_bad_inputs.py::test_build_refuses_a_link_out_of_the_dataset"),
    ),
    Mutant(
        "score-shrink-guard-never-trips",
        "score fails, committing nothing, when its output would lose more than --max_shrink_fraction",
        "pipeline/score.py",
        'previous.get("scored", 0), opts.max_shrink_fraction',
        'previous.get("scores", 0), opts.max_shrink_fraction',
        ("tests/pipeline/test_guards.py::test_score_guards_and_damage",),
    ),
    Mutant(
        "score-no-synthetic-warning",
        "score's command line warns when the model was trained on synthetic data",
        "pipeline/score.py",
        'if m.get("model_data") == "synthetic":',
        'if m.get("model_data") == "SYNTHETIC":',
        ("tests/pipeline/test_guards.py::test_score_guards_and_damage",),
    ),
    Mutant(
        "external-records-said-real",
        "records of make_external's NIH/MIMIC sets record that the data is synthetic",
        "pipeline/build_config.py",
        "if dataset is not None else (root,)))",
        "if dataset is None else (root,)))",
        ("tests/trainer/test_evaluate_external.py::test_a_generated_external_set_is_evaluated_and_said_to_be_synthetic",),
    ),
    Mutant(
        "retrained-labeller-is-nothing-new",
        "a retrained labeller (its model's sha256) changes the input fingerprint",
        "pipeline/build_config.py",
        '_TRANSIENT_OPTIONS = ("overwrite",',
        '_TRANSIENT_OPTIONS = ("teacher_sha256", "overwrite",',
        ("tests/pipeline/test_self_trained.py::test_incremental_build_with_a_labeller_equals_a_full_rebuild",),
    ),
    Mutant(
        "reject-guard-at-its-fraction",
        "the guards trip only past their fraction: =1 accepts every row rejected",
        "core/commit.py",
        "    if total and rejected / total > max_fraction:",
        "    if total and rejected / total >= max_fraction:",
        (f"{COMMIT}::test_the_guards_trip_only_past_their_fraction",),
    ),
    Mutant(
        "deterministic-flag-ignored",
        "--deterministic: the same seed gives the same weights",
        "trainer/train.py",
        "    with _op_determinism(cfg.deterministic):",
        "    with _op_determinism(False):",
        (f"{TRAINER}::test_deterministic_runs_with_one_seed_give_the_same_weights",),
    ),
    # A second outside tester's breaks (session 7).
    Mutant(
        "score-default-threshold",
        "score calls positives at the job's own threshold (job_spec.json)",
        "pipeline/score.py",
        "opts.threshold if opts.threshold is not None else spec.threshold",
        "opts.threshold if opts.threshold is not None else 0.35",
        ("tests/pipeline/test_scheduled.py::test_a_job_with_its_own_threshold_is_scored_at_it",),
    ),
    Mutant(
        "predict-default-threshold",
        "predict calls positives at the job's own threshold unless one is given",
        "trainer/predict.py",
        "threshold = job.spec.threshold if threshold is None else threshold",
        "threshold = 0.35 if threshold is None else threshold",
        ("tests/trainer/test_predict_outputs.py::test_predictions_are_called_at_the_jobs_own_threshold_unless_one_is_given",),
    ),
    Mutant(
        "records-resize-ignored",
        "--resize squash|crop|pad decides the records' pixels",
        "pipeline/build_config.py",
        "resize=opts.resize,",
        'resize="squash",',
        ("tests/pipeline/test_build_records.py::test_records_hold_the_pixels_of_the_resize_mode_asked_for",),
    ),
    Mutant(
        "job-records-resize-ignored",
        "a job's scorers repeat its records' resize mode",
        "trainer/config.py",
        'records_resize=manifest.options.get("resize", "squash"),',
        'records_resize="squash",',
        (f"{TRAINER}::test_a_job_on_pad_records_says_pad_and_its_scorers_pad",),
    ),
    Mutant(
        "split-rejects-uncounted",
        "each split's rejected counts in the manifest are its dead letters",
        "pipeline/manifest_builder.py",
        'if r["split"] in splits:',
        'if r["split"] in splits and False:',
        ("tests/pipeline/test_build_records.py::test_each_splits_rejected_counts_are_its_dead_letters",),
    ),
    Mutant(
        "paper-auroc-changed",
        "the report's paper column shows the CheXpert paper's published AUROC",
        "trainer/report.py",
        '"cardiomegaly": 0.854,',
        '"cardiomegaly": 0.845,',
        ("tests/trainer/test_report.py::test_the_paper_column_shows_the_published_auroc_beside_each_task",),
    ),
    Mutant(
        "train-no-model-without-defined-auroc",
        "a run whose validation AUROC is never defined still ends with a model, said not to be selected",
        "trainer/train.py",
        "        elif not self.selected:",
        "        elif False:",
        (f"{TRAINER}::test_a_run_without_a_defined_validation_auroc_keeps_its_last_epoch_and_says_so",
         f"{TRAINER}::test_no_defined_auroc_keeps_the_last_epoch_until_one_is_defined"),
    ),
    Mutant(
        "train-best-not-checkpointed",
        "a resumed job keeps the best model from before its restart",
        "trainer/train.py",
        "            best_var.assign(saver.best)",
        "            pass",
        (f"{TRAINER}::test_a_resumed_job_keeps_the_best_model_from_before_its_restart",),
    ),
    Mutant(
        "train-best-not-restored",
        "a resumed job keeps the best model from before its restart",
        "trainer/train.py",
        "        saver = BestModel(job_dir, float(best_var.numpy()),",
        "        saver = BestModel(job_dir, -1.0,",
        (f"{TRAINER}::test_a_resumed_job_keeps_the_best_model_from_before_its_restart",),
    ),
    Mutant(
        "train-mean-auroc-first-task",
        "early stopping and model selection use the mean AUROC over every task",
        "trainer/train.py",
        'metrics_lib.nanmean(t["auroc"] for t in tasks.values())',
        'metrics_lib.nanmean(t["auroc"] for t in list(tasks.values())[:1])',
        (f"{TRAINER}::test_the_validation_mean_auroc_averages_every_task_with_a_defined_auroc",),
    ),
    Mutant(
        "config-blank-flag-ignored",
        "trainer.task --blank overrides the records' blank handling without a rebuild",
        "trainer/config.py",
        "        blank = blank or manifest.blank",
        "        blank = manifest.blank",
        ("tests/trainer/test_trainer_input.py::test_the_blank_flag_overrides_the_records_blank_handling",),
    ),
    Mutant(
        "config-encoding-ignored",
        "the trainer reads png and jpeg records as it reads raw ones",
        "trainer/config.py",
        "                      records_encoding=manifest.encoding,",
        '                      records_encoding="raw",',
        ("tests/trainer/test_trainer_input.py::test_png_and_jpeg_records_are_read_as_the_raw_ones",),
    ),
    # A third outside tester's breaks (session 7).
    Mutant(
        "lsr-zeros-range",
        "lsr_zeros draws uncertain targets from U(0, 0.3)",
        "schemas/chexpert.py",
        '"lsr_zeros": (_NEG, (0.0, 0.3, 1.0, 0.0), _NEG, _POS),',
        '"lsr_zeros": (_NEG, (0.05, 0.25, 1.0, 0.0), _NEG, _POS),',
        ("tests/unit/schemas/test_chexpert.py::test_lsr_targets_span_their_ranges",),
    ),
    Mutant(
        "tta-shift-not-3-percent",
        "TTA is identity, +-3% shifts and a 1.05 zoom, as the report says",
        "trainer/evaluate.py",
        "    s = 0.03 * size",
        "    s = 0.3 * size",
        (f"{EVAL_UNIT}::test_tta_is_the_mean_over_its_transforms",),
    ),
    Mutant(
        "held-lock-exit-1",
        "a run on a locked output exits 2 naming the holder",
        "pipeline/build_records.py",
        "    except (ConfigError, commit_lib.LockedError, commit_lib.OutputError) as e:",
        "    except (ConfigError, commit_lib.OutputError) as e:",
        ("tests/pipeline/test_build_records.py::test_a_second_run_on_a_locked_output_exits_with_a_clear_message",),
    ),
    Mutant(
        "jpeg-draft-below-target",
        "a JPEG is decoded at a reduced scale never smaller than the target size",
        "core/imaging.py",
        '                im.draft("L", (draft_size, draft_size))',
        '                im.draft("L", (draft_size // 2, draft_size // 2))',
        ("tests/unit/core/test_imaging.py::test_jpeg_draft_decodes_large_files_at_reduced_scale_with_the_same_result_shape",),
    ),
    Mutant(
        "evaluate-records-views-ignored",
        "evaluate --views all on records scores laterals too",
        "trainer/evaluate.py",
        "    cfg = dataclasses.replace(member.cfg, views=views)",
        "    cfg = member.cfg",
        (f"{EVALUATE}::test_ensemble_of_one_job_twice_and_tta_and_csv_mode",),
    ),
    Mutant(
        "webdemo-lateral-warning-for-every-job",
        "the lateral warning names only jobs trained on frontal views",
        "webdemo/app.py",
        "        if view == views.LATERAL and frontal_only:",
        "        if view == views.LATERAL:",
        (f"{WEBDEMO}::test_a_lateral_is_warned_of_only_for_the_jobs_trained_on_frontal_views",),
    ),
    Mutant(
        "dicom-voi-lut-ignored",
        "a DICOM windowed by a VOI LUT sequence is shown through its LUT",
        "core/imaging.py",
        '    windowed = "WindowCenter" in ds or "VOILUTSequence" in ds',
        '    windowed = "WindowCenter" in ds',
        ("tests/unit/core/test_imaging.py::test_dicom_windowed_by_a_voi_lut_sequence_shows_the_lut",),
    ),
    Mutant(
        "heatmap-frame-swapped",
        "a crop or pad job's heatmap lies on the part of the film the model saw",
        "serving/heatmap.py",
        "gradcam.SourceMap(cam, (top, left, fh, fw), decoded, source.shape)",
        "gradcam.SourceMap(cam, (left, top, fh, fw), decoded, source.shape)",
        (f"{EVALUATE}::test_a_heatmap_is_drawn_where_the_model_saw_each_part_of_the_film",),
    ),
    Mutant(
        "csv-parts-overlap",
        "a CSV read in parts gives each row once",
        "core/csv_reader.py",
        "        if index % parts != k or row.line in skip:",
        "        if row.line in skip:",
        ("tests/unit/core/test_csv_reader.py::test_a_files_parts_together_yield_each_row_once_as_the_whole_file_does",
         "tests/pipeline/test_records.py::test_read_csv_in_parts_reads_every_row_once"),
    ),
    Mutant(
        "plain-read-skips-link-check",
        "the writer's one-lstat read refuses a folder link out of the dataset",
        "core/imaging.py",
        "    _refuse_outside(name, os.path.join(_real_dir(parent, folder, real_folders), base),",
        "    (name, os.path.join(_real_dir(parent, folder, real_folders), base),",
        ("tests/unit/core/test_imaging.py::"
         "test_the_writers_one_lstat_read_gives_the_general_paths_verdicts_and_bytes",),
    ),
    Mutant(
        "index-keeps-the-drivers-stat",
        "a file changed after the driver's stat is rebuilt by the next incremental run (the index's stat)",
        "pipeline/build_records.py",
        'index[path] = {"stat": file_stat, "row"',
        'index[path] = {"stat": by_path[path].stat, "row"',
        ("tests/pipeline/test_scheduled.py::"
         "test_a_file_changed_after_the_drivers_stat_is_rebuilt_by_the_next_incremental_run",),
    ),
    Mutant(
        "fingerprint-of-the-drivers-stats",
        "a file changed after the driver's stat is rebuilt by the next incremental run (the fingerprint)",
        "pipeline/build_records.py",
        "    manifest.fingerprint = _fingerprint_as_read(cfg, sources, rows, dataset, seen, fp)",
        "    manifest.fingerprint = fp",
        ("tests/pipeline/test_scheduled.py::"
         "test_a_file_changed_after_the_drivers_stat_is_rebuilt_by_the_next_incremental_run",),
    ),
    Mutant(
        "fingerprint-ignores-rejecting-reads",
        "a row rejected while its file was briefly empty, gone or a FIFO is retried by the next run",
        "pipeline/build_records.py",
        "        seen.update(w.rejected_files)",
        "        pass",
        ("tests/pipeline/test_scheduled.py::"
         "test_a_file_changed_after_the_drivers_stat_is_rebuilt_by_the_next_incremental_run",),
    ),
)


def copy_tree(dest: str) -> None:
    """The checkout's files, as git sees them (no .venv, no data, no build output), in ``dest``."""
    names = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = os.path.join(ROOT, name)
        if not os.path.isfile(src):  # deleted but not yet committed
            continue
        os.makedirs(os.path.dirname(os.path.join(dest, name)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, name))


def check_patches(mutants) -> list[str]:
    """Stale mutants: their old text is not in their file exactly once."""
    problems = []
    for m in mutants:
        with open(os.path.join(ROOT, m.file), encoding="utf-8") as f:
            n = f.read().count(m.old)
        if n != 1:
            problems.append(f"{m.name}: its old text occurs {n} times in {m.file}")
    return problems


def run_tests(tree: str, tests: tuple[str, ...], timeout: float) -> tuple[str, float]:
    """``passed``, ``failed``, ``timeout`` or ``error (exit N)``, and the seconds taken."""
    env = dict(os.environ, PYTHONPATH=tree + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONDONTWRITEBYTECODE="1")
    if not tests:
        raise ValueError("no tests to run: pytest would run the whole suite")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    try:
        # Own process group, so a timeout ends the test's children (the pipeline's, the trainer's) too.
        proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.communicate()
        return "timeout", time.monotonic() - start
    except BaseException:
        os.killpg(proc.pid, 9)
        raise
    seconds = time.monotonic() - start
    if proc.returncode in (0, 1):
        return ("passed" if proc.returncode == 0 else "failed"), seconds
    tail = "\n".join(out.decode(errors="replace").splitlines()[-15:])
    return f"error (exit {proc.returncode})\n{tail}", seconds


def which_copy(tree: str) -> str:
    """Where the copy's interpreter imports the project from (must be the copy)."""
    env = dict(os.environ, PYTHONPATH=tree)
    return subprocess.run([sys.executable, "-c", "import core, os; print(os.path.dirname(os.path.dirname(core.__file__)))"],
                          cwd=tree, env=env, check=True, capture_output=True, text=True).stdout.strip()


EQUIVALENT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "equivalent.txt")


def equivalent_mutants() -> set[str]:
    """mutmut mutant names argued equivalent: ``NAME  reason`` per line, ``#`` comments."""
    out = set()
    with open(EQUIVALENT, encoding="utf-8") as f:
        for line in f:
            if line.strip() and not line.startswith("#"):
                out.add(line.split()[0])
    return out


def run_mutmut(timeout: float) -> tuple[int, dict[str, list[str]]]:
    """mutmut over setup.cfg's [mutmut] modules in a fresh copy: (killed, {survivor: its diff lines}).

    Mutants no selected test reaches count as survived; ``timeout`` bounds the whole run.
    """
    import json

    tree = tempfile.mkdtemp(prefix="mutmut-")
    try:
        copy_tree(tree)
        mutmut = [sys.executable, "-m", "mutmut"]
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        proc = subprocess.Popen(mutmut + ["run"], cwd=tree, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout)
        except BaseException:  # its timeout, Ctrl-C, SIGTERM: end mutmut's forked workers too
            os.killpg(proc.pid, 9)
            proc.communicate()
            raise
        if proc.returncode != 0:
            raise RuntimeError(f"mutmut run failed (exit {proc.returncode}):\n{err.decode()[-2000:]}")
        subprocess.run(mutmut + ["export-cicd-stats"], cwd=tree, env=env, check=True, capture_output=True)
        with open(os.path.join(tree, "mutants", "mutmut-cicd-stats.json")) as f:
            stats = json.load(f)
        results = subprocess.run(mutmut + ["results"], cwd=tree, env=env, check=True, capture_output=True,
                                 text=True).stdout
        survivors = {}
        for line in results.splitlines():
            if line.strip().endswith((": survived", ": no tests")):
                name = line.split(":")[0].strip()
                diff = subprocess.run(mutmut + ["show", name], cwd=tree, env=env, capture_output=True, text=True).stdout
                survivors[name] = [d for d in diff.splitlines() if d[:1] in "-+" and d[:3] not in ("---", "+++")]
        return int(stats["killed"]) + int(stats.get("timeout", 0)), survivors
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-k", dest="pattern", default="*", help="Run mutants whose name matches this glob.")
    parser.add_argument("--list", action="store_true", help="List the selected mutants and their tests; run nothing.")
    parser.add_argument("--timeout", type=float, default=900, help="Seconds per mutant (and for the baseline).")
    parser.add_argument("--against", action="append", metavar="NODEID",
                        help="Run these tests instead of each mutant's own (repeatable): which tests kill it.")
    parser.add_argument("--mutmut", action="store_true", help="Also run mutmut over setup.cfg's [mutmut] modules.")
    parser.add_argument("--mutmut-timeout", type=float, default=3600, help="Seconds for the whole mutmut run.")
    parser.add_argument("--no-baseline", action="store_true",
                        help="Skip running the tests unmutated first (only when you know they pass).")
    args = parser.parse_args(argv)
    pattern = args.pattern if any(c in args.pattern for c in "*?[") else f"*{args.pattern}*"
    mutants = [m for m in MUTANTS if fnmatch.fnmatch(m.name, pattern)]
    if args.against:
        mutants = [dataclasses.replace(m, tests=tuple(args.against)) for m in mutants]
    if args.list:
        for m in mutants:
            print(f"{m.name}: {m.why}\n  {m.file}\n  " + "\n  ".join(m.tests))
        return 0
    stale = check_patches(mutants)
    if stale:
        print("stale mutants (update tests/mutation/run.py):\n  " + "\n  ".join(stale), file=sys.stderr)
        return 2
    # A SIGTERM (a CI timeout, `timeout`) unwinds like Ctrl-C, so the temporary copies go too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tree = tempfile.mkdtemp(prefix="mutate-")
    try:
        copy_tree(tree)
        if os.path.realpath(which_copy(tree)) != os.path.realpath(tree):
            print(f"the project imports from {which_copy(tree)}, not the copy {tree}", file=sys.stderr)
            return 2
        # No mutant selected (`-k NONE --mutmut`): no baseline, since pytest with no test
        # arguments would run the whole suite.
        if mutants and not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in mutants for t in m.tests))
            outcome, seconds = run_tests(tree, tests, args.timeout)
            print(f"baseline (unmutated): {outcome} in {seconds:.0f} s", flush=True)
            if outcome != "passed":
                return 2
        killed, survived = [], []
        for m in mutants:
            path = os.path.join(tree, m.file)
            with open(path, encoding="utf-8") as f:
                original = f.read()
            try:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(original.replace(m.old, m.new, 1))
                outcome, seconds = run_tests(tree, m.tests, args.timeout)
            finally:
                with open(path, "w", encoding="utf-8") as f:
                    f.write(original)
            verdict = "killed" if outcome in ("failed", "timeout") else "SURVIVED"
            (killed if verdict == "killed" else survived).append(m.name)
            print(f"{verdict:8} {m.name} ({outcome}, {seconds:.0f} s)", flush=True)
        if survived:
            print("survivors: " + ", ".join(survived))
        n_killed = len(killed)
        if args.mutmut:
            mm_killed, mm_left = run_mutmut(args.mutmut_timeout)
            known = equivalent_mutants()
            equivalent = [n for n in mm_left if n in known]
            mm_survived = [n for n in mm_left if n not in known]
            print(f"mutmut: {mm_killed} killed, {len(mm_survived)} survived, {len(equivalent)} equivalent "
                  f"({os.path.relpath(EQUIVALENT, ROOT)})")
            for name in mm_survived:
                print(f"SURVIVED {name}\n    " + "\n    ".join(mm_left[name]))
            n_killed += mm_killed
            survived += mm_survived
        print(f"mutants: {n_killed} killed, {len(survived)} survived")
        return 1 if survived else 0
    finally:
        shutil.rmtree(tree, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
