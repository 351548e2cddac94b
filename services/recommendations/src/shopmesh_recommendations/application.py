"""The use cases: recommend for a product or a user; learn from a confirmed order, unlearn a cancelled one."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from shopmesh_chassis import call_context
from shopmesh_chassis.clocks import Clock, utc_now
from shopmesh_chassis.db import Database, DbConnection
from shopmesh_recommendations.domain.copurchase import purchase_effects
from shopmesh_recommendations.domain.models import CancelledOrder, CatalogProduct, ConfirmedOrder, Recommendation
from shopmesh_recommendations.domain.ports import BATCH_LIMIT, Catalog
from shopmesh_recommendations.domain.ranking import Candidate, Ranked, by_count, by_popularity, interleave, rank
from shopmesh_recommendations.domain.validation import ProductSubject, validate_request
from shopmesh_recommendations.store.repository import RecommendationsRepository

log = logging.getLogger("shopmesh.recommendations")

# A user's history considered: their most often bought products. Bounds the queries for heavy buyers.
HISTORY_LIMIT = 200
# Categories a user's "same category" fill comes from: those of their most often bought products.
USER_CATEGORY_SOURCES = 3
# Count tiers are read `limit` plus exclusions deep first; when products that left the catalog use up what
# was read, again this many times deeper, up to MAX_POOL rows: one request never scans without bound.
POOL_GROWTH = 4
MAX_POOL = 1000


@dataclass(frozen=True, slots=True)
class _Subject:
    """What one request's candidates come from, looked up once: the count tiers are read per pool size."""

    sources: list[str]  # products bought together with these come first
    fill: list[str]  # then these (same category), popular first
    exclude: set[str]
    # Summaries already at hand (from category listings): no catalog call needed for these.
    known: dict[str, CatalogProduct]
    # How deep the count tiers are read first.
    pool: int
    # A heavy buyer whose history read is cut: a candidate may be one of their purchases beyond it.
    owner: str | None = None


@dataclass(frozen=True, slots=True)
class _Candidates:
    tiers: list[list[Candidate]]
    exclude: set[str]
    # Per tier: read only `pool` deep, so more candidates may lie beyond what was read.
    cut: list[bool]


class RecommendationsApplication:
    def __init__(self, database: Database, catalog: Catalog, clock: Clock = utc_now) -> None:
        self._db = database
        self._catalog = catalog
        self._clock = clock

    async def recommend(self, product_id: str | None, user_id: str | None, max_results: int) -> list[Recommendation]:
        query = validate_request(product_id, user_id, max_results)
        if isinstance(query.subject, ProductSubject):
            subject = await self._for_product(query.subject.product_id, query.limit)
        else:
            # What a user bought shows in what they are recommended: only they may ask.
            call_context.check_acting_for(query.subject.user_id)
            subject = await self._for_user(query.subject.user_id, query.limit)
        pool = subject.pool
        # What this request learned from the catalog, kept across deeper reads: found summaries, and ids it
        # does not have (the client's cache may remember nothing: a zero time to live).
        summaries: dict[str, CatalogProduct] = dict(subject.known)
        gone: set[str] = set()
        while True:
            candidates = await self._candidates(subject, pool)
            ranked = rank(candidates.tiers, candidates.exclude)
            chosen = await self._summarized(ranked, summaries, gone, query.limit)
            if pool >= MAX_POOL or not _may_miss(candidates, chosen, query.limit):
                return chosen
            # Products that left the catalog (or are excluded) took the places read: read deeper. The
            # catalog client caches the summaries looked up already.
            pool = min(pool * POOL_GROWTH, MAX_POOL)

    async def _for_product(self, product_id: str, limit: int) -> _Subject:
        """Bought together with it; then its category, popular first; then popular anywhere.
        An unknown product has no co-purchases and no category: popular products only."""
        product = await self._catalog.product(product_id)
        siblings = await self._catalog.products_in_category(product.category) if product is not None else ()
        # As many as places plus exclusions: the first read fills the list unless the catalog lost some.
        pool = limit + 1
        return _Subject([product_id], [p.id for p in siblings], {product_id}, {p.id: p for p in siblings}, pool)

    async def _for_user(self, user_id: str, limit: int) -> _Subject:
        """Bought together with what they bought; then the categories they buy most from; then popular.
        Nothing they bought already. An unknown user has no history: popular products only."""
        async with self._db.read() as session:
            history = await RecommendationsRepository(session).purchases_of(user_id, HISTORY_LIMIT)
        bought = list(history)
        sources = bought[:USER_CATEGORY_SOURCES]
        favourites = await self._catalog.products(sources) if sources else {}
        categories = dict.fromkeys(favourites[p].category for p in sources if p in favourites)
        listings = await asyncio.gather(*(self._catalog.products_in_category(c) for c in categories))
        fill = interleave([[p.id for p in listing] for listing in listings])
        known = {p.id: p for listing in listings for p in listing}
        # The history read is cut: a candidate may be one of their purchases beyond it.
        owner = user_id if len(bought) == HISTORY_LIMIT else None
        return _Subject(bought, fill, set(bought), known, limit + len(bought), owner)

    async def _candidates(self, subject: _Subject, pool: int) -> _Candidates:
        """The tiers, with the count tiers (co-purchases, popular) read `pool` deep."""
        async with self._db.read() as session:
            repository = RecommendationsRepository(session)
            together = await repository.co_purchase_counts(subject.sources, pool)
            popular = await repository.most_popular(pool)
            popularity = await repository.popularity(subject.fill)
            exclude = subject.exclude
            if subject.owner is not None:
                candidates = {*together, *popular, *subject.fill} - exclude
                exclude = exclude | await repository.bought_among(subject.owner, sorted(candidates))
        tiers = [by_count(together), by_popularity(subject.fill, popularity), by_count(popular)]
        return _Candidates(tiers, exclude, [len(together) == pool, False, len(popular) == pool])

    async def _summarized(
        self, ranked: Sequence[Ranked], summaries: dict[str, CatalogProduct], gone: set[str], limit: int
    ) -> list[Recommendation]:
        """The first `limit` ranked products the catalog still has, with their summaries. Products that
        left the catalog are skipped and the next ones move up (`recommend` reads deeper when they used up
        a tier read only in part). Looks up what is in neither `summaries` nor `gone`, and adds it there."""
        chosen: list[Recommendation] = []
        for index, ranked_product in enumerate(ranked):
            if len(chosen) == limit:
                break
            product_id = ranked_product.product_id
            if product_id not in summaries and product_id not in gone:
                # The next ranked ids not looked up yet, a whole catalog batch: when the top of the ranking
                # left the catalog, asking for the places left only walked it 5 ids per round trip.
                unknown = [r.product_id for r in ranked[index:] if r.product_id not in summaries]
                wanted = list(dict.fromkeys(p for p in unknown if p not in gone))[:BATCH_LIMIT]
                found = await self._catalog.products(wanted)
                summaries.update(found)
                gone.update(p for p in wanted if p not in found)
            if product_id in summaries:
                chosen.append(Recommendation(summaries[product_id], ranked_product.score))
        return chosen

    async def record_order(self, session: DbConnection, order: ConfirmedOrder) -> None:
        """Count what the order teaches, in the caller's transaction (the one that records the event id)."""
        effects = purchase_effects(order)
        if not await RecommendationsRepository(session).record(effects, self._clock()):
            log.info("order %s was counted or cancelled already", order.order_id, extra={"order_id": order.order_id})
            return
        log.info(
            "learned from order %s: %d products, %d pairs",
            order.order_id,
            len(effects.products),
            len(effects.pairs),
            extra={"order_id": order.order_id},
        )

    async def forget_order(self, session: DbConnection, order: CancelledOrder) -> None:
        """Take back what a confirmed order taught once it is cancelled. An order not counted (yet) changes
        no count, and is remembered as cancelled: a confirmation that arrives later does not count it."""
        if await RecommendationsRepository(session).take_back(purchase_effects(order), self._clock()):
            log.info("unlearned cancelled order %s", order.order_id, extra={"order_id": order.order_id})


def _may_miss(candidates: _Candidates, chosen: Sequence[Recommendation], limit: int) -> bool:
    """Whether a deeper read could change `chosen`. A tier read in part continues, beyond what was read,
    above every later tier: the answer stands only if it is full and none of it comes after that tier."""
    earlier: set[str] = set()
    for tier, cut in zip(candidates.tiers, candidates.cut, strict=True):
        earlier.update(c.product_id for c in tier)
        if cut:
            return len(chosen) < limit or any(r.product.id not in earlier for r in chosen)
    return False
