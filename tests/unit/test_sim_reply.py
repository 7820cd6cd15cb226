import pytest

from router.sim.reply import Decoder, generate_reply
from router.sim.template import render_chat
from router.sim.tokens import tokenize

PROMPT = tokenize("what is a kv cache")
CHAT = render_chat([("system", "be brief"), ("user", "what is a kv cache?")])
COMPLETION = "Once upon a time, a router"


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
    chat = generate_reply(tokenize(CHAT), 0, 3, leading_space=False)
    assert not chat.text.startswith(" ")
    assert all(piece.startswith(" ") for piece in chat.pieces[1:])
    completion = generate_reply(tokenize(COMPLETION), 0, 3, leading_space=True)
    assert all(piece.startswith(" ") for piece in completion.pieces)


def test_only_a_word_that_starts_a_line_goes_without_a_space():
    assert not generate_reply(tokenize("a line\n"), 0, 1, leading_space=False).text[0].isspace()
    assert generate_reply(tokenize("a line"), 0, 1, leading_space=False).text.startswith(" ")
    assert generate_reply(tokenize("a line\n"), 0, 1, leading_space=True).text.startswith(" ")


@pytest.mark.parametrize(
    ("prompt", "leading_space"), [(CHAT, False), (CHAT + "partial", False), (COMPLETION, True)]
)
def test_prompt_text_plus_generated_pieces_tokenizes_as_prompt_ids_plus_reply_ids(
    prompt, leading_space
):
    reply = generate_reply(tokenize(prompt), 5, 12, leading_space=leading_space)
    for k in range(len(reply.pieces) + 1):
        text = prompt + "".join(reply.pieces[:k])
        assert tokenize(text) == tokenize(prompt) + list(reply.token_ids[:k])


@pytest.mark.parametrize(("prompt", "leading_space"), [(CHAT, False), (COMPLETION, True)])
def test_generating_from_prompt_plus_k_pieces_gives_the_rest_of_the_reply(prompt, leading_space):
    full = generate_reply(tokenize(prompt), 7, 16, leading_space=leading_space)
    for k in (0, 1, 8, 15, 16):
        context = tokenize(prompt + "".join(full.pieces[:k]))
        rest = generate_reply(context, 7, 16 - k, leading_space=leading_space)
        assert rest.pieces == full.pieces[k:]
        assert rest.token_ids == full.token_ids[k:]


def test_every_token_of_the_context_matters():
    ids = tokenize("word " * 2000)
    base = generate_reply(ids, 0, 8, leading_space=True)
    for position in (0, 1000, len(ids) - 1):
        changed = [*ids]
        changed[position] += 1
        assert generate_reply(changed, 0, 8, leading_space=True) != base


def test_decoder_extended_by_hand_matches_a_decoder_of_the_longer_context():
    decoder = Decoder(PROMPT[:2], 9, leading_space=True)
    decoder.extend(PROMPT[2:])
    assert decoder.next_piece() == Decoder(PROMPT, 9, leading_space=True).next_piece()


def test_words_spread_over_the_whole_list():
    reply = generate_reply(PROMPT, 1, 3000, leading_space=True)
    assert len(set(reply.pieces)) == 61


def test_huge_seeds_are_accepted():
    assert len(generate_reply(PROMPT, 2**80, 2, leading_space=True).pieces) == 2


def test_zero_length_is_an_empty_reply():
    assert generate_reply(PROMPT, 0, 0, leading_space=False).text == ""
