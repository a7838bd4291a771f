"""Expensive requests take turns per requester (api/turns.py)."""

from __future__ import annotations

import anyio

from api.turns import Turns


def test_one_requester_queues_behind_itself_not_others() -> None:
    async def scenario() -> list[str]:
        turns, log = Turns(total=4), []

        async def scan(who: str, seconds: float) -> None:
            async with turns.turn(who):
                log.append(f"{who} start")
                await anyio.sleep(seconds)
                log.append(f"{who} end")

        async with anyio.create_task_group() as tg:
            for _ in range(5):  # alice's five slow listings
                tg.start_soon(scan, "key:alice", 0.2)
            await anyio.sleep(0.05)
            assert turns.waiting("key:alice") == 5
            tg.start_soon(scan, "key:bob", 0.01)  # bob's small one: not behind alice's queue
        assert turns.waiting("key:alice") == 0 and turns._mine == {}  # nothing kept per requester
        return log

    log = anyio.run(scenario)
    assert log.index("key:bob end") < 4  # bob finished during alice's first scan
    alice = [e for e in log if e.startswith("key:alice")]
    assert alice == ["key:alice start", "key:alice end"] * 5  # hers one at a time


def test_at_most_total_turns_at_once() -> None:
    async def scenario() -> int:
        turns, running, peak = Turns(total=2), 0, 0

        async def scan(who: str) -> None:
            nonlocal running, peak
            async with turns.turn(who):
                running += 1
                peak = max(peak, running)
                await anyio.sleep(0.02)
                running -= 1

        async with anyio.create_task_group() as tg:
            for i in range(6):
                tg.start_soon(scan, f"ip:10.0.0.{i}")
        return peak

    assert anyio.run(scenario) == 2
