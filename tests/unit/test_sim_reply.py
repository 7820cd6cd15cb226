from router.sim.reply import generate_reply
from router.sim.tokens import tokenize

PROMPT = tokenize("what is a kv cache")


def test_reply_is_deterministic_for_prompt_and_seed():
    a = generate_reply(PROMPT, 0, 20, leading_space=False)
    assert a == generate_reply(PROMPT, 0, 20, leading_space=False)
    assert a != generate_reply(PROMPT, 1, 20, leading_space=False)
    assert a != generate_reply(tokenize("another prompt"), 0, 20, leading_space=False)


def test_reply_has_one_token_per_piece():
    for leading_space in (False, True):
        reply = generate_reply(PROMPT, 3, 25, leading_space=leading_space)
        assert len(reply.pieces) == 25
        assert tokenize(reply.text) == list(reply.token_ids)


def test_chat_replies_start_without_a_space_and_completions_with_one():
    assert not generate_reply(PROMPT, 0, 3, leading_space=False).text.startswith(" ")
    assert generate_reply(PROMPT, 0, 3, leading_space=True).text.startswith(" ")


def test_huge_seeds_are_accepted():
    assert len(generate_reply(PROMPT, 2**80, 2, leading_space=True).pieces) == 2
