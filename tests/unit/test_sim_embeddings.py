"""The simulated worker's embeddings: deterministic, unit length, similar for related texts."""

from __future__ import annotations

import math

from router.sim.embeddings import embed_text, features

FACT = "Remember this: the access code for the Falcon storage vault is 4417."
QUESTION = "What is the access code for the Falcon storage vault?"
SHARING_WORDS = (
    "The Falcon storage migration finished early.",
    "Vault maintenance for the storage cluster starts at noon.",
    "Access reviews for the Falcon project are due next week.",
)


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_the_same_text_gets_the_same_unit_vector():
    first, second = embed_text(FACT, 256), embed_text(FACT, 256)
    assert first == second and len(first) == 256
    assert math.isclose(math.sqrt(sum(v * v for v in first)), 1.0, rel_tol=1e-9)


def test_a_text_without_words_is_the_zero_vector():
    assert embed_text("  ... !!", 16) == [0.0] * 16


def test_features_are_words_and_adjacent_pairs_without_function_words():
    assert features("What is the Falcon vault?") == ["falcon", "vault", "falcon vault"]


def test_the_question_is_close_to_the_fact_and_far_from_texts_sharing_a_few_words():
    question = embed_text(QUESTION, 256)
    assert cosine(question, embed_text(FACT, 256)) > 0.7
    for text in SHARING_WORDS:
        assert cosine(question, embed_text(text, 256)) < 0.35, text
    assert abs(cosine(question, embed_text("How do I bake sourdough bread?", 256))) < 0.15
