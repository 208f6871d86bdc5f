"""pass@k from n attempts with c successes: the unbiased estimator 1 - C(n-c, k) / C(n, k) (Chen et al., 2021,
"Evaluating Large Language Models Trained on Code"), computed as a product so that n in the hundreds does not
overflow or lose precision.

A task kept by a pass@k filter stores c and n, so a trainer can recompute any k <= n and drop tasks that are
too easy (pass@1 near 1) as well as those never solved (c = 0).
"""

from __future__ import annotations

from collections.abc import Iterable


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k attempts drawn without replacement from the n made succeeds."""
    if not 0 <= c <= n:
        raise ValueError(f"successes c={c} must be between 0 and the attempts n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and the attempts n={n}")
    if n - c < k:
        return 1.0
    failure = 1.0
    for i in range(n - c + 1, n + 1):
        failure *= 1.0 - k / i
    return 1.0 - failure


def pass_at_ks(n: int, c: int, ks: Iterable[int]) -> dict[str, float]:
    """{"pass@k": value} for every k in `ks` that is at most n (n itself included when asked for)."""
    return {f"pass@{k}": pass_at_k(n, c, k) for k in sorted(set(ks)) if 1 <= k <= n}
