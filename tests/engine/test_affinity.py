"""Session affinity on real llama.cpp servers: every turn of a chat lands on one server, and
that server's prompt cache grows with the conversation (llama.cpp reports it in
`usage.prompt_tokens_details.cached_tokens`)."""

from __future__ import annotations

import itertools
from collections import defaultdict

from loadtests.player import Player, Record
from router.tooling.fleet import LocalFleet
from tests.engine.chat import sessions

SESSIONS = 8
TURNS = 4


async def test_every_turn_of_a_session_stays_on_one_server_and_its_cache_grows(
    fleet: LocalFleet,
) -> None:
    plans = sessions(SESSIONS, TURNS, seed=1)
    async with fleet.router_in_process() as url:  # the default placement policy
        player = Player(url, 1.0, request_timeout=60)
        await player.run([[plan] for plan in plans], seed=1)

    assert [r.error for r in player.records if not r.ok] == []
    by_session: dict[str, list[Record]] = defaultdict(list)
    for record in sorted(player.records, key=lambda r: r.turn):
        by_session[record.session].append(record)
    assert len(by_session) == SESSIONS and all(len(r) == TURNS for r in by_session.values())
    for session, records in by_session.items():
        assert len({r.worker for r in records}) == 1, (session, [r.worker for r in records])
        for before, after in itertools.pairwise(records):
            # The whole previous prompt is a prefix of this one, and the server still has it.
            assert after.cached_tokens >= before.prompt_tokens, (session, before, after)
            assert after.cached_tokens > before.cached_tokens, (session, before, after)
    assert {r.worker for r in player.records} == set(fleet.names)  # both servers had work
