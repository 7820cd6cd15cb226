"""A llama.cpp server killed with SIGKILL in the middle of a chat load: no request fails, every
stream it was serving is continued on the other server (whose reply starts with an echo of the
continued text, which the client must not see twice), and the sessions it held are served on
the survivor from then on, recomputed there once."""

from __future__ import annotations

import asyncio
import itertools

import aiohttp

from loadtests.player import Player, Stream
from router.tooling.fleet import LocalFleet
from tests.conftest import counted
from tests.engine.chat import sessions
from tests.waiting import until

SESSIONS = 8
TURNS = 5
VICTIM = "llama-1"


def doubled_prefix(text: str, at_least: int) -> int | None:
    """The length k >= `at_least` of a prefix that is repeated right after itself, if any."""
    for k in range(max(at_least, 1), len(text) // 2 + 1):
        if text[k : 2 * k] == text[:k]:
            return k
    return None


def cut_candidates(player: Player) -> list[Stream]:
    return [s for s in player.in_flight() if s.worker == VICTIM and len(s.pieces) >= 4]


async def test_a_server_killed_mid_load_fails_no_request_and_cut_streams_resume(
    fleet: LocalFleet,
) -> None:
    plans = sessions(SESSIONS, TURNS, seed=2, max_tokens=96, think=0.2)
    victim = fleet.workers[fleet.names.index(VICTIM)]
    async with fleet.router_in_process() as url, aiohttp.ClientSession() as http:
        player = Player(url, 1.0, request_timeout=90)
        run = asyncio.create_task(player.run([[plan] for plan in plans], seed=2))
        await until(lambda: len(cut_candidates(player)) >= 2, "two streams under way on the "
                    "victim", timeout=60)  # fmt: skip
        cut = {s: s.received for s in cut_candidates(player)}
        victim.kill()
        killed_at = player.now()
        await asyncio.wait_for(run, 120)
        resumed = await counted(http, url, "kvrouter_stream_resumes_total", outcome="resumed")

    assert [r.error for r in player.records if not r.ok] == []
    assert len(player.records) == SESSIONS * TURNS
    assert resumed >= len(cut)
    for stream, before in cut.items():
        text = stream.received
        assert text.startswith(before) and len(text) > len(before), (before, text)
        assert doubled_prefix(text, len(before)) is None, ("echo not removed", before, text)

    turns = {(r.session, r.turn): r for r in player.records}
    moved = {r.session for r in player.records if r.worker == VICTIM}
    for session in moved:
        last = max((r for r in player.records if r.session == session and r.worker == VICTIM),
                   key=lambda r: r.turn)  # fmt: skip
        later = [turns[session, t] for t in range(last.turn + 1, TURNS + 1)]
        assert all(r.worker != VICTIM for r in later), (session, later)
        if not later:
            continue
        if last.ended > killed_at:  # cut and continued on the survivor, which now holds it
            assert later[0].cached_tokens >= 0.9 * last.prompt_tokens, (session, last, later)
        else:  # between turns at the kill: recomputed on the survivor
            assert later[0].cached_tokens < last.prompt_tokens, (session, last, later)
        for before, after in itertools.pairwise(later):  # then warm there
            assert after.cached_tokens >= before.prompt_tokens, (session, before, after)
