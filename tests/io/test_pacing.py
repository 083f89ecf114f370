"""Pacer: periodic rewrites take at most their share of the wall time."""

from __future__ import annotations

import pytest

from slidescan.io.pacing import Pacer


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_wait_scales_with_the_cost_of_the_last_write() -> None:
    clock = FakeClock()
    pacer = Pacer(share=0.02, clock=clock)
    assert pacer.due()
    with pacer.timed():
        clock.now += 0.5  # a write of 0.5 s: next one due 25 s later
    clock.now += 24.9
    assert not pacer.due()
    clock.now += 0.2
    assert pacer.due()
    with pacer.timed():
        clock.now += 0.001  # cheap writes: due again almost at once
    clock.now += 0.06
    assert pacer.due()


def test_a_failed_write_still_counts() -> None:
    clock = FakeClock()
    pacer = Pacer(share=0.5, clock=clock)
    with pytest.raises(OSError), pacer.timed():
        clock.now += 2.0
        raise OSError("disk full")
    clock.now += 3.0
    assert not pacer.due()
    clock.now += 1.0
    assert pacer.due()


@pytest.mark.parametrize("share", [0.0, -1.0, 1.5])
def test_share_must_be_a_fraction(share: float) -> None:
    with pytest.raises(ValueError, match="share"):
        Pacer(share=share)
