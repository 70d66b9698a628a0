"""Ranking: text relevance (BM25) combined with recency and engagement.

    score = w_text * bm25 / max_bm25  +  w_recency * recency  +  w_engagement * popularity

over the ``candidates`` best BM25 matches. Defaults (``RankWeights``): w_text 1.0,
w_recency 0.5 with a 6-hour half-life, w_engagement 0.3 saturating at 1,000 interactions.
A post a half-life old loses as much as a quarter of the best text match; engagement can lift
a weaker match but not a non-match (only BM25 candidates are re-ranked).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class RankWeights:
    """How the final score mixes relevance, recency and engagement."""

    text: float = 1.0
    recency: float = 0.5
    engagement: float = 0.3
    half_life_s: float = 6 * 3600.0
    engagement_ref: int = 1000
    candidates: int = 200


def recency_score(age_s: float, half_life_s: float) -> float:
    """Exponential time decay ``2^(-age / half_life)``: 1 for a post made now, 1/2 one
    half-life ago (the "exp" decay of Elasticsearch's function_score, parameterised by its
    half-life). Future-dated ages count as 0."""
    return 2.0 ** (-max(age_s, 0.0) / half_life_s)


def engagement_score(total: int, ref: int) -> float:
    """Log-scaled popularity ``min(1, log(1 + total) / log(1 + ref))``: each tenfold rise in
    interactions adds the same amount (as the logarithm of votes in Reddit's "hot" rank)."""
    if total <= 0:
        return 0.0
    return min(1.0, math.log1p(total) / math.log1p(ref))


def combined_score(
    bm25: float, best_bm25: float, age_s: float, engagement: int, w: RankWeights
) -> float:
    """The final score of one candidate (see the module docstring)."""
    text = bm25 / best_bm25 if best_bm25 > 0 else 0.0
    return (
        w.text * text
        + w.recency * recency_score(age_s, w.half_life_s)
        + w.engagement * engagement_score(engagement, w.engagement_ref)
    )
