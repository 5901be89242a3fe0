r"""Learning to teach (Fan et al., ICLR 2018) on the synthetic CheXpert: does a learned
data-selection policy get a student to a target validation AUROC in fewer steps than random
selection or an easy-first curriculum?

    python -m trainer.selection.experiment            # generates data/selection on first use

One command: makes a synthetic set (``--signal_noise``, so borderline studies are hard),
builds its records with the project's Beam job, and takes one observation under one
uncertainty policy (default Pleural Effusion under U-Ones: half of its uncertain labels are
truly negative in the generator, so "uncertain" marks a sample whose label is a coin flip;
Consolidation, whose uncertain labels are 70% wrong, is too subtle for a 14k-parameter
student at 32 px to learn within an episode).
Then:

1. calibration: with ``--target_auroc=auto`` the target is 97% of the worst final AUROC of
   two random-selection episodes, so the baselines reach it before ``--max_steps``;
2. training the learned selector (Fan et al.'s "teacher"): ``--iterations`` REINFORCE
   updates, each from ``--episodes_per_update`` episodes (a fresh student each, on
   training seeds);
3. evaluation on ``--eval_seeds`` unseen seeds, paired (the same initial weights and
   candidate stream for every selector): steps to the target for the learned selector
   (``l2t``), ``random`` (keep each candidate with p = 0.5, the learned one's starting point),
   ``all`` (plain SGD on every candidate), ``curriculum`` (lowest loss first, per class) and
   ``hardest`` (highest loss first, a control for what the learned selector learns).

A step is one student update on the candidates a selector kept out of ``--candidates``; the
target is checked every ``--eval_every`` steps; an episode that never reaches it counts as
``--max_steps``. Reward: ``-log(steps / max_steps)`` (0 when not reached), as in the paper.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time

import numpy as np

from trainer.selection import selector as selector_lib

log = logging.getLogger("selection")


@dataclasses.dataclass
class Task:
    """A binary task in memory.

    Attributes:
        x_train: (N, ...) inputs; y_train: float32 (N,) targets after the uncertainty policy;
        uncertain: float32 (N,) 1 where the raw label was uncertain; x_val: (V, ...);
        y_val: int (V,) true labels.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    uncertain: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray


@dataclasses.dataclass
class Episode:
    """One student's run: steps to the target (or max_steps), whether it got there, the
    fraction of offered candidates kept, and the validation AUROC when it stopped."""

    steps: int
    reached: bool
    kept_fraction: float
    final_auroc: float


def reward(steps: int, max_steps: int, reached: bool) -> float:
    """Fan et al.'s terminal reward: -log(steps / max_steps); 0 if the target was missed."""
    return float(-np.log(steps / max_steps)) if reached else 0.0


def run_episode(student, task: Task, selector, *, seed: int, max_steps: int, target: float, candidates: int,
                eval_every: int, trajectory=None, stop_at_target: bool = True,
                select_seed: int | None = None) -> Episode:
    """Trains a fresh student until it reaches ``target`` validation AUROC.

    The candidate stream and the initial weights depend only on ``seed``; the selector draws
    from its own generator (``select_seed``, default ``seed``). So selectors compared on one
    seed see the same data, and episodes that share ``seed`` but not ``select_seed`` differ
    only in the selector's decisions (common random numbers: the reward's differences are
    then the decisions' doing, which is what the policy gradient needs).
    """
    student.reset(seed)
    data_rng = np.random.default_rng([seed, 1])
    select_rng = np.random.default_rng([seed if select_seed is None else select_seed, 2])
    kept = offered = 0
    auroc = float("nan")
    for step in range(1, max_steps + 1):
        idx = data_rng.choice(len(task.y_train), candidates, replace=False)
        p, loss, y = student.state(idx)
        f = selector_lib.features(p, loss, y, task.uncertain[idx], step / max_steps)
        keep = selector.select(f, select_rng, trajectory)
        student.train_on(idx, keep)
        kept, offered = kept + int(keep.sum()), offered + candidates
        if step % eval_every == 0:
            auroc = student.val_auroc()
            if auroc >= target and stop_at_target:
                return Episode(step, True, kept / offered, auroc)
    return Episode(max_steps, auroc >= target, kept / offered, auroc)


def train_selector(student, task: Task, learned, *, iterations: int, episodes_per_update: int, seed0: int,
                   **episode_kw) -> list[dict]:
    """REINFORCE: each iteration runs ``episodes_per_update`` episodes on one new training
    seed (same initial student and candidate stream; the selector's draws differ) and takes
    one policy-gradient step. Returns a log line per iteration."""
    history = []
    for it in range(iterations):
        rewards, trajectories, steps = [], [], []
        for k in range(episodes_per_update):
            tr = selector_lib.Trajectory()
            ep = run_episode(student, task, learned, seed=seed0 + it, select_seed=seed0 + 7919 * (k + 1) + it,
                             trajectory=tr, **episode_kw)
            rewards.append(reward(ep.steps, episode_kw["max_steps"], ep.reached))
            trajectories.append(tr)
            steps.append(ep.steps)
        g = learned.update(rewards, trajectories)
        history.append({"iteration": it + 1, "mean_steps": float(np.mean(steps)), "mean_reward": float(np.mean(rewards)),
                        "kept": float(np.mean([t.kept / max(t.decisions, 1) for t in trajectories])),
                        "grad_norm": float(np.linalg.norm(g)), "w": learned.describe()})
        log.info("iteration %d: mean steps %.0f, reward %.3f, kept %.2f, w %s", it + 1, np.mean(steps),
                 np.mean(rewards), history[-1]["kept"], learned.describe())
    return history


def load_task(records_dir: str, observation: str, policy_name: str, image_size: int) -> Task:
    """One observation's frontal train and valid images from a records folder, in memory.

    Read through the trainer's own input pipeline (``trainer.input.make_dataset``: the same
    policy targets, U-SelfTrained targets, view selection and resize as training), then put in path
    order, so the experiment does not depend on how records are laid out in shards.
    Training targets use ``policy_name`` for ``observation``; entries it masks (e.g.
    ``ignore``) are left out. Valid labels are the valid split's (the hidden truth in the
    synthetic set).
    """
    from schemas import chexpert
    from trainer import config as config_lib
    from trainer import input as input_lib

    cfg = config_lib.make_config(pathology=observation, records_dir=records_dir, job_dir="unused",
                                 policy=f"{observation}={policy_name}", image_size=image_size, augment=False)
    manifest = config_lib.read_manifest(records_dir)
    out = {}
    for split in ("train", "valid"):
        files = input_lib.shard_files(records_dir, split, manifest)
        batches = list(input_lib.make_dataset(files, cfg, training=False, batch_size=256).as_numpy_iterator())
        cat = {k: np.concatenate([b[k] for b in batches]) for k in ("image", "targets", "masks", "raw", "path")}
        order = np.argsort(cat["path"], kind="stable")
        x, raw = cat["image"][order], cat["raw"][order, 0]
        if split == "train":
            keep = cat["masks"][order, 0] > 0
            y = cat["targets"][order, 0]
        else:
            keep = np.ones(len(order), bool)
            y = (raw == chexpert.Code.POSITIVE).astype(np.float32)
        out[split] = (x[keep], y[keep].astype(np.float32), (raw[keep] == chexpert.Code.UNCERTAIN).astype(np.float32))
    return Task(out["train"][0], out["train"][1], out["train"][2], out["valid"][0], out["valid"][1].astype(int))


def prepare_records(work_dir: str, num_patients: int, signal_noise: float, image_size: int) -> str:
    """Generates the synthetic set and builds its records once; returns the records folder."""
    from pipeline import build_records, make_sample

    sample, records_dir = os.path.join(work_dir, "sample"), os.path.join(work_dir, f"records-{image_size}")
    if not os.path.exists(os.path.join(sample, make_sample.DATASET_DIR, "train.csv")):
        log.info("generating the synthetic set in %s", sample)
        make_sample.generate(sample, num_patients=num_patients, num_valid_patients=max(num_patients // 3, 100),
                             seed=0, signal_noise=signal_noise, progress=False)
    if not os.path.exists(os.path.join(records_dir, "manifest.json")):
        log.info("building records in %s", records_dir)
        build_records.run([f"--input_dir={sample}", f"--output_dir={records_dir}", f"--image_size={image_size}",
                           "--runner=DirectRunner"], save_main_session=False)
    return records_dir


def summarize(results: dict[str, list[Episode]]) -> list[str]:
    """Markdown rows: steps to target per selector, mean +- SD, median, reached."""
    lines = ["| selector | steps to target, mean ± SD | median | reached | kept per step | AUROC when stopped |",
             "|---|---|---|---|---|---|"]
    for name, eps in results.items():
        steps = np.array([e.steps for e in eps], float)
        lines.append(f"| {name} | {steps.mean():.0f} ± {steps.std(ddof=1) if len(steps) > 1 else 0:.0f} | "
                     f"{np.median(steps):.0f} | {sum(e.reached for e in eps)}/{len(eps)} | "
                     f"{np.mean([e.kept_fraction for e in eps]):.2f} | "
                     f"{np.nanmean([e.final_auroc for e in eps]):.3f} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default="data/selection", help="Synthetic set and records (made once).")
    parser.add_argument("--records_dir", default=None, help="Use these records instead (e.g. a real CheXpert's).")
    parser.add_argument("--observation", default="pleural_effusion")
    parser.add_argument("--policy", default="ones", help="Uncertainty policy for the observation's training labels.")
    parser.add_argument("--num_patients", type=int, default=1500)
    parser.add_argument("--signal_noise", type=float, default=0.15)
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--candidates", type=int, default=64, help="Candidates offered per step (M).")
    parser.add_argument("--max_steps", type=int, default=150)
    parser.add_argument("--eval_every", type=int, default=5)
    parser.add_argument("--target_auroc", default="auto", help="A number, or auto (see the module docstring).")
    parser.add_argument("--iterations", type=int, default=40, help="REINFORCE updates of the learned selector.")
    parser.add_argument("--episodes_per_update", type=int, default=4)
    parser.add_argument("--eval_seeds", type=int, default=12)
    parser.add_argument("--selector_seed", type=int, default=1000,
                        help="First data seed of the learned selector's training episodes (evaluation uses "
                             "0..eval_seeds-1).")
    parser.add_argument("--learning_rate", type=float, default=1e-3, help="The student's Adam learning rate.")
    parser.add_argument("--selector_learning_rate", type=float, default=0.1,
                        help="The learned selector's Adam learning rate (REINFORCE).")
    parser.add_argument("--out", default=None, help="Write results and the learned selector's history as JSON here.")
    args = parser.parse_args(argv)
    from schemas import chexpert

    if args.observation not in chexpert.OBSERVATIONS:
        parser.error(f"--observation={args.observation}: expected one of {', '.join(chexpert.OBSERVATIONS)}")
    if args.policy not in chexpert.POLICIES or args.policy == chexpert.MULTICLASS:
        parser.error(f"--policy={args.policy}: expected a binary policy "
                     f"({', '.join(p for p in chexpert.POLICIES if p != chexpert.MULTICLASS)})")
    for flag in ("candidates", "max_steps", "eval_every", "iterations", "episodes_per_update", "eval_seeds"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be >= 1")
    if args.target_auroc != "auto":
        try:
            ok = 0.5 < float(args.target_auroc) < 1.0
        except ValueError:
            ok = False
        if not ok:
            parser.error(f"--target_auroc={args.target_auroc}: expected auto or a number in (0.5, 1)")
    if args.records_dir and not os.path.exists(os.path.join(args.records_dir, "manifest.json")):
        parser.error(f"--records_dir={args.records_dir}: no manifest.json; build records with pipeline.build_records")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    from trainer.selection.student import Student, small_cnn  # TensorFlow: after the flags are checked

    start = time.perf_counter()
    records_dir = args.records_dir or prepare_records(args.work_dir, args.num_patients, args.signal_noise,
                                                      args.image_size)
    task = load_task(records_dir, args.observation, args.policy, args.image_size)
    log.info("%s under %s: %d training images (%d uncertain, %.1f%% positive targets), %d valid (%d positive)",
             args.observation, args.policy, len(task.y_train), int(task.uncertain.sum()), 100 * task.y_train.mean(),
             len(task.y_val), int(task.y_val.sum()))
    student = Student(lambda: small_cnn(args.image_size), task.x_train, task.y_train, task.x_val, task.y_val,
                      args.learning_rate)
    kw = dict(max_steps=args.max_steps, candidates=args.candidates, eval_every=args.eval_every)
    if args.target_auroc == "auto":
        random_selection = selector_lib.RandomSelection()
        finals = [run_episode(student, task, random_selection, seed=10_000 + k, target=2.0, **kw).final_auroc
                  for k in range(2)]
        target = round(0.97 * min(finals), 3)
        log.info("calibration: random selection ends at AUROC %s; target %.3f", [round(f, 3) for f in finals], target)
    else:
        target = float(args.target_auroc)
    kw["target"] = target
    learned = selector_lib.LearnedSelector(learning_rate=args.selector_learning_rate)
    history = train_selector(student, task, learned, iterations=args.iterations,
                             episodes_per_update=args.episodes_per_update, seed0=args.selector_seed, **kw)
    selectors = [learned, selector_lib.RandomSelection(), selector_lib.RandomSelection(keep=1.0),
                 selector_lib.Curriculum(), selector_lib.HardestFirst()]
    names = ["l2t", "random", "all", "curriculum", "hardest"]
    results: dict[str, list[Episode]] = {n: [] for n in names}
    for seed in range(args.eval_seeds):
        for name, selector in zip(names, selectors):
            results[name].append(run_episode(student, task, selector, seed=seed, **kw))
        log.info("eval seed %d: %s", seed, ", ".join(f"{n} {results[n][-1].steps}" for n in names))
    lines = [f"{args.observation} under {args.policy}; target valid AUROC {target:.3f}; {args.eval_seeds} unseen "
             f"seeds; M={args.candidates}, max {args.max_steps} steps; learned selector trained for "
             f"{args.iterations} x {args.episodes_per_update} episodes; {time.perf_counter() - start:.0f}s in all", ""]
    lines += summarize(results)
    lines += ["", f"learned selector weights: {learned.describe()}"]
    print("\n".join(lines))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"target": target, "args": vars(args), "history": history, "weights": learned.describe(),
                       "results": {n: [dataclasses.asdict(e) for e in eps] for n, eps in results.items()}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
