# The two commands a fresh machine needs: `make demo` and `make test`.
# Each creates .venv and installs the project into it when missing or out of date.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
export PYTHONUNBUFFERED := 1

# Demo size: CPU-friendly, see BUILD_NOTES.md for what it reaches.
DEMO_DATA := data/synthetic
DEMO_RECORDS := data/records
DEMO_PATIENTS ?= 1000

.PHONY: demo demo-external test test-fast mutate venv records sample bench gui clean selftrained select teach

$(STAMP): setup.cfg pyproject.toml setup.py
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python >= 3.11 is required" or 0)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

sample: $(STAMP)
	test -f $(DEMO_DATA)/CheXpert-v1.0-small/train.csv || \
		$(BIN)/python -m pipeline.make_sample --output_dir $(DEMO_DATA) --num_patients $(DEMO_PATIENTS)

records: sample
	$(BIN)/python -m pipeline.build_records --runner=DirectRunner \
		--direct_num_workers=2 --direct_running_mode=multi_processing \
		--input_dir=$(DEMO_DATA) --output_dir=$(DEMO_RECORDS) --overwrite

# CPU-friendly training: the tiny DenseNet at 128 px (resized in tf.data from the 320 px
# records), lr 1e-3 since it starts from scratch; one model per pathology as the seed did.
DEMO_TRAIN := --backbone tiny --image_size 128 --learning_rate 1e-3 --epochs 4 --patience 4

demo: records
	rm -rf jobs/atelectasis jobs/cardiomegaly  # a fresh demo, not a resume of the last one
	$(BIN)/python -m trainer.task --pathology atelectasis --job_dir jobs/atelectasis $(DEMO_TRAIN)
	$(BIN)/python -m trainer.task --pathology cardiomegaly --job_dir jobs/cardiomegaly $(DEMO_TRAIN)

# External validation, in one go: a model trained on the synthetic CheXpert (the five
# competition tasks and Support Devices, which NIH does not label) is evaluated on a synthetic
# NIH ChestX-ray14 (own folder: its hidden_truth.csv must not replace CheXpert's). The NIH
# folder also goes through the same records job, and the model is evaluated on those records too.
EXTERNAL_DATA := data/synthetic_nih
EXTERNAL_PATIENTS ?= 400
demo-external: records
	test -f $(EXTERNAL_DATA)/ChestX-ray14/Data_Entry_2017.csv || \
		$(BIN)/python -m pipeline.make_external --format nih --output_dir $(EXTERNAL_DATA) \
		--num_patients $(EXTERNAL_PATIENTS)
	rm -rf jobs/external
	$(BIN)/python -m trainer.task --pathology competition,support_devices --job_dir jobs/external $(DEMO_TRAIN)
	$(BIN)/python -m pipeline.build_records --runner=DirectRunner \
		--input_dir=$(EXTERNAL_DATA) --output_dir=data/records-nih --overwrite
	$(BIN)/python -m trainer.evaluate --job_dir jobs/external --input_dir $(EXTERNAL_DATA) \
		--report_dir jobs/external/eval-nih
	$(BIN)/python -m trainer.evaluate --job_dir jobs/external --records_dir data/records-nih --split test \
		--report_dir jobs/external/eval-nih-records

# U-SelfTrained, the whole loop: a Consolidation labeller trained with its uncertain labels
# ignored relabels them inside the records job; the student trains on those soft targets.
selftrained: records
	$(BIN)/python -m trainer.task --pathology consolidation --policy consolidation=ignore \
		--job_dir jobs/consolidation-labeller $(DEMO_TRAIN)
	$(BIN)/python -m pipeline.build_records --runner=DirectRunner \
		--direct_num_workers=2 --direct_running_mode=multi_processing \
		--input_dir=$(DEMO_DATA) --output_dir=data/records-selftrained --overwrite \
		--labeller=jobs/consolidation-labeller --policy=consolidation=self_trained
	$(BIN)/python -m trainer.task --pathology consolidation --records_dir data/records-selftrained \
		--job_dir jobs/consolidation-selftrained $(DEMO_TRAIN)

# Data selection (experiment, after Fan et al.'s learning to teach): a REINFORCE-trained
# selector of each mini-batch's samples against fixed baselines.
select: $(STAMP)
	$(BIN)/python -m trainer.selection.experiment --work_dir data/selection

# The target's name before `select`, kept for a release.
teach: select

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The unit tier: contracts and the TF-free kit, no TensorFlow or Beam imported (under a minute).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

# Mutation testing, never part of `make test`: each named break of a stated guarantee must fail
# its tests (tests/mutation/run.py), then mutmut over setup.cfg's [mutmut] modules. Both run in
# temporary copies of the tree. The last line: `mutants: N killed, M survived`. 30-45 min on 2 cores.
mutate: $(STAMP)
	$(BIN)/python -m tests.mutation.run --mutmut

bench: $(STAMP)
	$(BIN)/python -m benchmarks.build_records
	$(BIN)/python -m benchmarks.train_input
	$(BIN)/python -m benchmarks.predict
	$(BIN)/python -m benchmarks.train_step

# The web demo on http://127.0.0.1:8000 for the two models `make demo` trained: one bar each.
gui: $(STAMP)
	$(BIN)/python -m webdemo.app --job_dir jobs/atelectasis --job_dir jobs/cardiomegaly

clean:
	rm -rf data jobs .pytest_cache
