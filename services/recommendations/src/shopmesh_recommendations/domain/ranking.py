"""Ranking: candidate lists in tiers of decreasing relevance, merged into one scored, de-duplicated list.

A tier is, for example, "bought together with the subject", then "same category", then "popular". Every
candidate of a tier outranks every candidate of the tiers after it; within a tier, a higher weight ranks
higher. Scores lie in (0, 1]: tier i of n owns the band ((n-1-i)/n, (n-i)/n], and a candidate's place in
its band is its weight relative to the tier's largest weight.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    product_id: str
    weight: float  # > 0


@dataclass(frozen=True, slots=True)
class Ranked:
    product_id: str
    score: float


def by_count(counts: Mapping[str, int]) -> list[Candidate]:
    """A tier from counts (co-purchases, popularity): most first, ties by id so answers are stable."""
    ordered = sorted(((pid, n) for pid, n in counts.items() if n > 0), key=lambda item: (-item[1], item[0]))
    return [Candidate(pid, float(n)) for pid, n in ordered]


def by_popularity(product_ids: Sequence[str], popularity: Mapping[str, int]) -> list[Candidate]:
    """A tier of fill-ins (e.g. a category's products, in catalog order): popular ones first; those never
    bought keep the given order behind them."""
    weighted = [Candidate(pid, 1.0 + max(popularity.get(pid, 0), 0)) for pid in product_ids]
    return sorted(weighted, key=lambda c: -c.weight)  # stable: equal weights keep the given order


def interleave(lists: Sequence[Sequence[str]]) -> list[str]:
    """Round robin over `lists` (first of each, then second of each, ...): fill-ins from several
    categories take turns instead of the first category taking every place."""
    longest = max((len(items) for items in lists), default=0)
    return [items[i] for i in range(longest) for items in lists if i < len(items)]


def rank(tiers: Sequence[Sequence[Candidate]], exclude: Collection[str]) -> list[Ranked]:
    """Every candidate once (its first occurrence wins), none of `exclude`, highest score first."""
    seen = set(exclude)
    ranked: list[Ranked] = []
    count = len(tiers)
    for index, tier in enumerate(tiers):
        kept: list[Candidate] = []
        for candidate in tier:
            if candidate.weight > 0 and candidate.product_id not in seen:
                seen.add(candidate.product_id)
                kept.append(candidate)
        if not kept:
            continue
        heaviest = max(c.weight for c in kept)
        below = count - 1 - index
        ordered = sorted(kept, key=lambda c: -c.weight)
        ranked.extend(Ranked(c.product_id, (below + c.weight / heaviest) / count) for c in ordered)
    return ranked
