"""AdaLoss: every loss term divided by a moving average of itself (the PHI-S paper's Ada-MSE and Ada-PHI-S,
arXiv 2410.01680 Table 12; AM-RADIO arXiv 2312.06709 App. E.2; AdaLoss of Hu et al., "Learning Anytime
Predictions in Neural Networks via Adaptive Loss Balancing", AAAI 2019).

Hu et al. weight each loss term ℓ_i by the inverse of its expected value, so that the total behaves like
Σ_i log ℓ_i and every term contributes in proportion to its *relative* improvement, whatever its scale;
the expectation is tracked by an exponential moving average of the term's observed values. Here, per
term i at step t (the values are detached: the average is a weight, not part of the graph):

    m_i,1 = ℓ_i,1                                  (started at the first value: no zero-start bias)
    m_i,t = β · m_i,t−1 + (1 − β) · ℓ_i,t           (β = DEFAULT_BETA = 0.99)
    weighted term = ℓ_i,t / max(m_i,t, EPS)

The current value is folded in before dividing, so on a constant loss c every weight is exactly 1/c and
every weighted term exactly 1. The terms are the per-teacher summary and feature losses
(``loss/<teacher>/summary``, ``loss/<teacher>/patches``); the configured teacher / summary / feature
weights multiply the weighted terms as before. The averages are float64 Python floats, checkpointed with
the run (``state_dict``), so a stopped and resumed run continues with bit-identical weights; under data
parallelism the observed values are averaged over ranks first (``reduce``), so every rank holds the same
averages.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping

DEFAULT_BETA = 0.99
EPS = 1e-12  # a term whose moving average is below this is divided by EPS (an exactly-zero loss stays 0)


class AdaLoss:
    """The moving averages of named loss terms and the weights 1 / m they give (module docstring)."""

    def __init__(self, beta: float = DEFAULT_BETA) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"AdaLoss beta must be in [0, 1), got {beta}")
        self.beta = float(beta)
        self.ema: dict[str, float] = {}
        self.steps = 0

    def update(self, values: Mapping[str, float],
               reduce: Callable[[list[float]], list[float]] | None = None) -> dict[str, float]:
        """Fold one step's term values into the averages; returns {term: weight 1 / max(m, EPS)}.

        ``reduce`` maps the list of values to their mean over data-parallel ranks (None: one process).
        A term seen for the first time starts its average at its value; a non-finite value is refused
        (it would poison the average for the rest of the run)."""
        names = sorted(values)
        observed = [float(values[n]) for n in names]
        if reduce is not None:
            observed = [float(v) for v in reduce(observed)]
        bad = [n for n, v in zip(names, observed) if not math.isfinite(v)]
        if bad:
            raise ValueError(f"AdaLoss got non-finite loss terms {bad} at step {self.steps + 1}")
        for name, v in zip(names, observed):
            prev = self.ema.get(name)
            self.ema[name] = v if prev is None else self.beta * prev + (1.0 - self.beta) * v
        self.steps += 1
        return {n: 1.0 / max(self.ema[n], EPS) for n in names}

    def state_dict(self) -> dict:
        """Plain values for a checkpoint (torch.load weights_only reads them)."""
        return {"beta": self.beta, "steps": self.steps, "ema": dict(self.ema)}

    def load_state_dict(self, state: Mapping) -> None:
        if float(state["beta"]) != self.beta:
            raise ValueError(f"checkpoint's AdaLoss beta {state['beta']} differs from this run's {self.beta}")
        self.steps = int(state["steps"])
        self.ema = {str(k): float(v) for k, v in state["ema"].items()}
