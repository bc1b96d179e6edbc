"""Did forgetting happen? The standard forget-set diagnostics (open-unlearning's), before and after a run.

Against a held-out set of the same unit (the paired run's forget set: the
same unit and seed, disjoint documents, never trained on by this run):

* perplexity of the forget and of the held-out chunks (exp of the mean
  next-token cross-entropy over all their tokens): unlearning should raise
  the forget set's more than the held-out set's;
* min-k% membership inference: each chunk's score is the mean of its k%
  lowest token log-probabilities (k = 20%); the AUC is the probability that
  a held-out chunk scores higher than a forget chunk (Mann-Whitney U over
  the two sets' sizes). Before unlearning it is near 0.5 for sets drawn
  alike (below for influence sets, which the model fits better); an AUC
  that rose after the run says the forget chunks became less likely than
  comparable chunks the run never trained on.

Chunks, not documents, are the unit: a document longer than the training
window is several chunks, as in training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

MIN_K = 0.2


def perplexity(token_logprobs: Sequence[np.ndarray]) -> float:
    tokens = np.concatenate(list(token_logprobs)) if token_logprobs else np.array([])
    return float(math.exp(-tokens.mean())) if tokens.size else float("nan")


def min_k_scores(token_logprobs: Sequence[np.ndarray], k: float = MIN_K) -> np.ndarray:
    """Each chunk's mean of its ceil(k n) lowest token log-probabilities."""
    return np.array([np.sort(lp)[: max(1, math.ceil(k * len(lp)))].mean() for lp in token_logprobs if len(lp)])


def membership_auc(forget_scores: np.ndarray, heldout_scores: np.ndarray) -> float:
    """P(a held-out chunk scores higher than a forget chunk), ties counting a half (Mann-Whitney U / n1 n2)."""
    if not len(forget_scores) or not len(heldout_scores):
        return float("nan")
    u = stats.mannwhitneyu(heldout_scores, forget_scores, alternative="two-sided").statistic
    return float(u / (len(forget_scores) * len(heldout_scores)))


def diagnose(token_logprobs_of: Callable[[Sequence], list[np.ndarray]], forget_chunks, heldout_chunks) -> dict:
    """Perplexities of both sets and the min-k% membership AUC, for one model state.

    `token_logprobs_of(chunks)`: each chunk's next-token log-probabilities under that state
    (unlearn.chunk_token_logprobs, bound to the model).
    """
    forget = token_logprobs_of(forget_chunks)
    heldout = token_logprobs_of(heldout_chunks)
    return {
        "forget_ppl": perplexity(forget),
        "heldout_ppl": perplexity(heldout),
        "min_k_auc": membership_auc(min_k_scores(forget), min_k_scores(heldout)),
    }
