"""Data selectors for one student step: the learned selector and fixed baselines.

Each step the student is offered ``M`` candidate samples; a selector returns a keep mask
(M,) and the student trains on the kept ones. The learned selector is what Fan et al. call
the teacher ("Learning to Teach", ICLR 2018), in its simplest form: a logistic policy over
per-sample state features,

    pi(keep | s) = sigmoid(w . f(s)),

trained with REINFORCE on one terminal reward per episode (how fast the student reached the
target; see ``experiment.reward``). With a single reward per episode the gradient of the
expected reward is ``E[(R - b) * sum over decisions of grad log pi(a | s)]`` and, for a
Bernoulli-logistic policy, ``grad_w log pi(a | s) = (a - pi(keep | s)) * f(s)``; the
episode's sum is accumulated online (``Trajectory``) so no decision is stored.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# f(s), one row per candidate: what the selector sees of the student and the sample.
FEATURES = ("bias", "p_student", "loss", "label", "uncertain_label", "progress", "loss_x_progress")
NUM_FEATURES = len(FEATURES)
LOSS_SCALE = 5.0  # losses are clipped to [0, 5] and scaled to [0, 1]


def features(p: np.ndarray, loss: np.ndarray, label: np.ndarray, uncertain: np.ndarray,
             progress: float) -> np.ndarray:
    """The selector's state features for M candidates.

    Args:
        p: float (M,) the student's P(positive) now.
        loss: float (M,) the student's loss on each candidate now.
        label: float (M,) the training target (after the uncertainty policy).
        uncertain: float (M,) 1 where the raw label was uncertain (-1.0 in the CSV).
        progress: step / max_steps, in [0, 1].

    Returns:
        float32 (M, NUM_FEATURES) in ``FEATURES`` order, every column within [0, 1].
    """
    scaled = np.clip(loss, 0.0, LOSS_SCALE) / LOSS_SCALE
    m = len(p)
    return np.stack([np.ones(m), p, scaled, label, uncertain, np.full(m, progress), scaled * progress],
                    axis=1).astype(np.float32)


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


@dataclasses.dataclass
class Trajectory:
    """The running sum of grad log pi(a | s) over an episode's decisions, and their count."""

    score: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(NUM_FEATURES))
    decisions: int = 0
    kept: int = 0

    def add(self, f: np.ndarray, keep_prob: np.ndarray, action: np.ndarray) -> None:
        self.score += ((action - keep_prob)[:, None] * f).sum(axis=0)
        self.decisions += len(action)
        self.kept += int(action.sum())


class LearnedSelector:
    """The logistic selection policy with REINFORCE updates (Adam on w).

    The baseline is the mean reward of the update's own episodes, which share one data seed
    (``experiment.train_selector``): the reward's spread within the batch is then due to the
    selector's decisions, not to a lucky initialisation.
    """

    name = "l2t"

    def __init__(self, learning_rate: float = 0.05, init_keep: float = 0.5):
        self.w = np.zeros(NUM_FEATURES)
        self.w[0] = np.log(init_keep / (1 - init_keep))  # start as "keep each with init_keep"
        self.lr = learning_rate
        self._m = np.zeros(NUM_FEATURES)
        self._v = np.zeros(NUM_FEATURES)
        self._t = 0

    def keep_prob(self, f: np.ndarray) -> np.ndarray:
        return _sigmoid(f @ self.w)

    def select(self, f: np.ndarray, rng: np.random.Generator, trajectory: Trajectory | None = None) -> np.ndarray:
        """Samples a keep mask (M,) float32 and records the decision in ``trajectory``."""
        prob = self.keep_prob(f)
        action = (rng.random(len(prob)) < prob).astype(np.float32)
        if trajectory is not None:
            trajectory.add(f, prob, action)
        return action

    def gradient(self, rewards: list[float], trajectories: list[Trajectory], baseline: float) -> np.ndarray:
        """REINFORCE estimate of d E[R] / d w over a batch of episodes: the mean over episodes
        of (R - baseline) * (sum of grad log pi) / decisions (per-decision scale, so the step
        size does not depend on the episode length)."""
        g = np.zeros(NUM_FEATURES)
        for r, tr in zip(rewards, trajectories):
            g += (r - baseline) * tr.score / max(tr.decisions, 1)
        return g / max(len(rewards), 1)

    def update(self, rewards: list[float], trajectories: list[Trajectory]) -> np.ndarray:
        """One policy-gradient ascent step (Adam) from a batch of episodes; returns the gradient."""
        g = self.gradient(rewards, trajectories, float(np.mean(rewards)))
        self._t += 1
        self._m = 0.9 * self._m + 0.1 * g
        self._v = 0.999 * self._v + 0.001 * g * g
        m_hat, v_hat = self._m / (1 - 0.9 ** self._t), self._v / (1 - 0.999 ** self._t)
        self.w += self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)
        return g

    def describe(self) -> dict:
        return {name: round(float(v), 3) for name, v in zip(FEATURES, self.w)}


class RandomSelection:
    """Keeps each candidate with a fixed probability: the learned selector's starting point,
    and plain SGD on random mini-batches of the same expected size."""

    name = "random"

    def __init__(self, keep: float = 0.5):
        self.keep = keep

    def select(self, f: np.ndarray, rng: np.random.Generator, trajectory=None) -> np.ndarray:
        return (rng.random(len(f)) < self.keep).astype(np.float32)


class Curriculum:
    """Easy samples first (self-paced learning), per class: keeps the fraction ``start +
    (1 - start) * min(1, progress / ramp)`` of each label's candidates with the lowest
    current loss.

    Per class, because the plain version collapses: a fresh student's losses are lowest on
    whichever class its initial bias favours, so it keeps only that class, learns to predict
    it everywhere, and never sees the other (measured: it reached no target, BUILD_NOTES).
    """

    name = "curriculum"

    def __init__(self, start: float = 0.5, ramp: float = 0.5):
        self.start, self.ramp = start, ramp

    def select(self, f: np.ndarray, rng: np.random.Generator, trajectory=None) -> np.ndarray:
        progress = float(f[0, FEATURES.index("progress")])
        frac = self.start + (1 - self.start) * min(1.0, progress / self.ramp)
        loss, label = f[:, FEATURES.index("loss")], f[:, FEATURES.index("label")] >= 0.5
        keep = np.zeros(len(f), np.float32)
        for cls in (False, True):
            members = np.flatnonzero(label == cls)
            if len(members):
                k = max(1, int(round(frac * len(members))))
                keep[members[np.argsort(loss[members], kind="stable")[:k]]] = 1.0
        return keep


class HardestFirst:
    """The opposite control (hard-example mining): keeps the fraction ``keep`` of the
    candidates with the highest current loss."""

    name = "hardest"

    def __init__(self, keep: float = 0.5):
        self.keep = keep

    def select(self, f: np.ndarray, rng: np.random.Generator, trajectory=None) -> np.ndarray:
        k = max(1, int(round(self.keep * len(f))))
        order = np.argsort(-f[:, FEATURES.index("loss")], kind="stable")
        keep = np.zeros(len(f), np.float32)
        keep[order[:k]] = 1.0
        return keep
