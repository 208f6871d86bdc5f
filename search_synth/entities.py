"""Long-tail entities: the documents a question is built around.

A question about a famous entity is answered from memory; one about an entity no document mentions has no
facts to join. So candidates are ranked toward few mentions (how many other documents name the entity's
title, `Corpus.mentions`) among those with enough support (passages, attributes and links that can carry a
fact), as DeepSeek-V3.2's search-agent pipeline and ASearcher sample long-tail entities from their corpora.

The pool is a seeded reservoir sample of the corpus (bounded memory on any corpus size), mentions are
counted only for the pool, and every pick keeps why it was picked: its mentions, its support, its rank, the
pool size, the seed and the thresholds.

    picks = long_tail_entities(corpus, count=20, seed=7)
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

from tasksynth.hashing import content_hash

POOL_FACTOR = 8          # documents sampled per entity wanted, before mentions are counted
MIN_SUPPORT = 2          # fewer supporting passages than this: too little to build a question on
MIN_TITLE_CHARS = 3
MAX_TITLE_WORDS = 8
_SENTENCE = re.compile(r"[.!?;](?:\s|$)")


@dataclass
class EntityPick:
    entity_id: str
    corpus: str
    doc_id: str
    title: str
    mentions: int
    support: int
    why: dict[str, Any] = field(default_factory=dict)

    def row(self, run_id: str | None = None) -> dict[str, Any]:
        return {"entity_id": self.entity_id, "corpus": self.corpus, "doc_id": self.doc_id, "title": self.title,
                "mentions": self.mentions, "support": self.support, "why": self.why, "run_id": run_id}


def support_of(document) -> int:
    """Passages that can carry a fact: sentences of the text, attributes and links."""
    sentences = len([s for s in _SENTENCE.split(document.text or "") if len(s.split()) >= 3])
    return sentences + len(document.attributes or {}) + len(document.links or [])


def usable_title(title: str) -> bool:
    title = (title or "").strip()
    return len(title) >= MIN_TITLE_CHARS and len(title.split()) <= MAX_TITLE_WORDS


def long_tail_entities(corpus, count: int, seed: int, *, min_support: int = MIN_SUPPORT,
                       pool_factor: int = POOL_FACTOR) -> list[EntityPick]:
    """`count` entities of `corpus`, fewest mentions first among the well supported ones of a seeded pool.

    Ties are broken by the seeded order, so the same corpus and seed give the same picks."""
    rng = random.Random(seed)
    pool_size = max(count * pool_factor, count)
    pool: list[tuple[str, str, int]] = []  # (doc_id, title, support), a reservoir sample
    seen = 0
    for document in corpus.documents():
        if not usable_title(document.title):
            continue
        support = support_of(document)
        if support < min_support:
            continue
        seen += 1
        entry = (document.doc_id, document.title.strip(), support)
        if len(pool) < pool_size:
            pool.append(entry)
        else:
            slot = rng.randrange(seen)
            if slot < pool_size:
                pool[slot] = entry
    rng.shuffle(pool)
    # mentions() counts the entity's own document too when it names itself; only the order matters here
    scored = [(corpus.mentions(title), order, doc_id, title, support)
              for order, (doc_id, title, support) in enumerate(pool)]
    scored.sort(key=lambda s: (s[0], s[1]))
    info = corpus.info
    picks = []
    for rank, (mentions, _, doc_id, title, support) in enumerate(scored[:count]):
        why = {"rank": rank, "mentions": mentions, "support": support, "pool": len(pool),
               "eligible": seen, "seed": seed, "min_support": min_support,
               "rule": "fewest mentions among well-supported documents of a seeded sample"}
        picks.append(EntityPick(entity_id=content_hash(info.content_hash, doc_id), corpus=info.name,
                                doc_id=doc_id, title=title, mentions=mentions, support=support, why=why))
    return picks
