from __future__ import annotations

from watchdogd.clock import SteadyClock


class Clocks:
    def __init__(self) -> None:
        self.wall = 1_000_000.0
        self.mono = 50.0

    def step(self, seconds: float, wall_jump: float = 0.0) -> None:
        self.mono += seconds
        self.wall += seconds + wall_jump


def test_follows_the_monotonic_clock_through_wall_clock_steps() -> None:
    clocks = Clocks()
    clock = SteadyClock(lambda: clocks.wall, lambda: clocks.mono)
    assert clock() == 1_000_000.0 and clock.drift() == 0.0
    clocks.step(10.0, wall_jump=3600.0)
    assert clock() == 1_000_010.0
    assert clock.drift() == 3600.0
    clocks.step(5.0, wall_jump=-7200.0)
    assert clock() == 1_000_015.0
    assert clock.drift() == -3600.0
