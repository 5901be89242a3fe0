"""The Beam jobs' command lines: --help lists every job flag with its default, typos are
errors on local runners, runner flags pass through to remote runners."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import tests
from core import cli
from core import errors as cli_errors
from pipeline import build_records, make_sample, score
from schemas import chexpert

ROOT = tests.ROOT


@pytest.mark.parametrize("module", ["pipeline.build_records", "pipeline.score"])
def test_help_lists_every_job_flag_with_its_default(module):
    mod = {"pipeline.build_records": build_records, "pipeline.score": score}[module]
    out = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert out.returncode == 0, out.stderr
    flags = [s for a in mod.make_parser()._actions for s in a.option_strings if s.startswith("--") and s != "--help"]
    assert len(flags) >= 10
    help_text = " ".join(out.stdout.split())
    for flag in flags:
        assert flag in help_text, flag
    assert "(default: 0.05)" in help_text and "--max_reject_fraction" in help_text
    assert f"python -m {module}" in help_text


@pytest.mark.parametrize("argv,hint", [
    (["--image_sise=256"], "did you mean --image_size?"),
    (["--incremantal"], "did you mean --incremental?"),
    (["--direct_num_workrs=2"], "did you mean --direct_num_workers?"),
    (["stray"], "see python -m pipeline.build_records --help"),
])
def test_an_unknown_flag_is_an_error_on_the_local_runner(tmp_path, capsys, argv, hint):
    with pytest.raises(SystemExit) as e:
        build_records.run([f"--output_dir={tmp_path}", "--runner=DirectRunner", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert repr(argv[0]) in err and hint in err
    assert not os.listdir(tmp_path)  # nothing was built at the default size
    with pytest.raises(SystemExit):
        score.run([f"--output_dir={tmp_path}", *argv])  # no --runner: DirectRunner as well


def test_runner_flags_pass_through_to_remote_runners():
    parser = build_records.make_parser()
    argv = ["--image_size=64", "--runner=DataflowRunner", "--project=p", "--region=r",
            "--dataflow_service_options=enable_prime", "--some_future_service_flag=1"]
    opts, rest = cli.parse_flags(parser, argv)
    assert opts.image_size == 64
    assert rest == argv[1:]  # not checked: the service may know flags this install does not
    opts, rest = cli.parse_flags(parser, ["--runner=DirectRunner", "--direct_num_workers=2",
                                           "--direct_running_mode=multi_processing"])
    assert rest == ["--runner=DirectRunner", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]


# What TensorFlow's C++ side prints at start-up when nothing hides it.
TF_CHATTER = ("oneDNN", "cuda", "cuInit", "absl::InitializeLog", "port.cc", "cpu_feature_guard")


def test_evaluate_cli_is_quiet_and_reads_one_job_dir_as_one_job(trained_job, tmp_path):
    """The flags are parsed before TensorFlow loads (for --help) and again by absl: a repeated
    flag must not collect its values twice (one --job_dir reported as an ensemble of 2)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    done = subprocess.run([sys.executable, "-m", "trainer.evaluate", f"--job_dir={trained_job}", "--bootstrap=10",
                           "--tune_split=", f"--report_dir={tmp_path}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"# Evaluation of job {trained_job}" in done.stdout and "ensemble" not in done.stdout.split("\n")[0]
    assert not [line for line in done.stderr.splitlines() if any(c in line for c in TF_CHATTER)], done.stderr
    helped = subprocess.run([sys.executable, "-m", "trainer.evaluate", "--help"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert "--job_dir" in helped.stdout and "--[no]verbose" in helped.stdout
    assert not [line for line in helped.stderr.splitlines() if any(c in line for c in TF_CHATTER)]


def test_a_misspelt_runner_is_a_one_line_error_before_any_work(tmp_path, capsys):
    for job in (build_records, score):
        with pytest.raises(SystemExit) as e:
            job.run([f"--output_dir={tmp_path}", "--runner=DirectRuner"])
        assert e.value.code == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines() == [
            f"python -m {job.__name__}: error: --runner=DirectRuner: not a Beam runner; did you mean DirectRunner?"]
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("flag", ["--max_reject_fraction=nan", "--max_shrink_fraction=2", "--max_reject_fraction=-0.1"])
def test_guard_fractions_out_of_range_are_one_line_errors_in_both_jobs(tmp_path, capsys, flag):
    for job in (build_records, score):
        with pytest.raises(SystemExit) as e:
            job.run([f"--output_dir={tmp_path}", "--runner=DirectRunner", flag])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "expected a fraction in [0, 1]" in err[0]
    assert not os.listdir(tmp_path)


def test_a_renamed_flag_still_works_and_warns_once(capsys):
    parser = build_records.make_parser()
    opts, _ = cli.parse_flags(parser, ["--teacher=jobs/l", "--teacher_batch_size=4", "--runner=DirectRunner"])
    assert (opts.labeller, opts.labeller_batch_size) == ("jobs/l", 4)
    err = capsys.readouterr().err.splitlines()
    assert err == ["python -m pipeline.build_records: warning: --teacher is deprecated; use --labeller",
                   "python -m pipeline.build_records: warning: --teacher_batch_size is deprecated; use "
                   "--labeller_batch_size"]
    opts, _ = cli.parse_flags(parser, ["--labeller=jobs/l"])
    assert opts.labeller == "jobs/l" and not capsys.readouterr().err
    # The entry point's early --help check parses quietly: one warning per run, not two.
    from pipeline import options
    options.build_records_parser("doc", warn=False).parse_known_args(["--teacher=x"])
    assert not capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--teacher=jobs/a", "--labeller=jobs/b"], ["--labeller=jobs/b", "--teacher=jobs/a"],
                                  ["--labeller_batch_size=8", "--teacher_batch_size=4"]])
def test_a_renamed_flag_and_its_new_name_together_are_an_error_not_a_silent_choice(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_flags(build_records.make_parser(), argv + ["--runner=DirectRunner"])
    assert e.value.code == 2
    assert "is the deprecated name of --labeller" in capsys.readouterr().err


def test_an_unexpected_error_is_one_line_and_exit_1_or_the_exception_itself_with_verbose(capsys):
    error = OSError(28, "No space left on device")
    assert cli.unexpected("score", error, False, "; nothing committed") == 1
    assert capsys.readouterr().err == "score: error: OSError: [Errno 28] No space left on device; nothing committed\n"
    with pytest.raises(OSError) as raised:
        cli.unexpected("score", error, True)
    assert raised.value is error


def test_one_line_is_the_first_line_of_an_error():
    assert cli.one_line(RuntimeError("OSError: [Errno 28] No space\n  [while running 'WriteShards']")) == (
        "RuntimeError: OSError: [Errno 28] No space")
    assert cli.one_line(KeyError()) == "KeyError: "


@pytest.mark.parametrize("module,extra", [("trainer.task", "train"), ("trainer.evaluate", "train"),
                                          ("trainer.predict", "train"), ("webdemo.app", "web")])
def test_a_command_without_its_extra_says_which_to_install_in_one_line(module, extra):
    # pip install . is the Beam side: a trainer or web command in such an install must name
    # the extra, not die on an import. The extra is made "missing" by naming a module that
    # is not installed anywhere; the entry point runs for real.
    code = (f"from core import cli; cli.EXTRAS[{extra!r}] = ('not_installed_module',); import runpy, sys; "
            f"sys.argv = [{module!r}, '--help']; runpy.run_module({module!r}, run_name='__main__')")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines() == [
        f"{module.split('.app')[0]}: error: not_installed_module not installed; this needs the [{extra}] extra: "
        f"pip install '.[{extra}]'"]


def test_jobs_whose_local_workers_load_a_model_say_the_serving_extra_is_missing(trained_job, tmp_path, monkeypatch):
    monkeypatch.setitem(cli.EXTRAS, "serving", ("not_installed_module",))
    with pytest.raises(cli_errors.ConfigError, match=r"not_installed_module not installed; .*\[serving\] extra"):
        score.run([f"--job_dir={trained_job}", f"--input_pattern={tmp_path}/*.png", f"--output_dir={tmp_path}/s",
                   "--runner=DirectRunner"])
    assert not os.path.exists(tmp_path / "s")  # before any work
    (tmp_path / "train.csv").write_text(",".join(chexpert.CSV_COLUMNS) + "\n")
    with pytest.raises(cli_errors.ConfigError, match=r"--labeller: not_installed_module not installed"):
        build_records.run([f"--input_dir={tmp_path}", f"--output_dir={tmp_path}/r", f"--labeller={trained_job}",
                           "--policy=atelectasis=self_trained,consolidation=ignore", "--runner=DirectRunner"])


def test_make_sample_into_an_unusable_folder_is_one_line_naming_it(tmp_path, capsys):
    in_the_way = tmp_path / "a_file"
    in_the_way.write_text("")
    assert make_sample.main(["--output_dir", str(in_the_way), "--num_patients=2", "--num_valid_patients=1",
                             "--workers=1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"python -m pipeline.make_sample: error: --output_dir={in_the_way}: ")
