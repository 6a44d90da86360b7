"""Is the peer of a path alive? (sans-IO, time passed in). TEMPORARY stand-in."""

from __future__ import annotations

from enum import Enum

__all__ = ["Liveness", "LivenessAction"]


class LivenessAction(Enum):
    NOTHING = "nothing"
    HEARTBEAT = "heartbeat"
    PROBE = "probe"
    FAIL = "fail"


class Liveness:
    def __init__(
        self,
        *,
        interval: float,
        miss_threshold: int,
        stall_timeout: float | None,
        pings: bool,
        now: float,
    ) -> None:
        self.interval = interval
        self.miss_threshold = miss_threshold
        self.stall_timeout = stall_timeout
        self.pings = pings
        self.evidence = now
        self.next_beat = now + interval
        self.failed = False
        self.reason = ""
        self.probes_sent = 0
        self._exempt = False
        self._busy = False

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def idle_bound(self) -> float:
        return self.interval * self.miss_threshold

    def on_datagram(self, now: float) -> None:
        if not self.pings or self._exempt:
            self.evidence = max(self.evidence, now)

    def on_echo(self, now: float) -> None:
        self.evidence = max(self.evidence, now)

    def on_state(
        self, now: float, *, in_flight: bool, pto: float, withholding: bool, blocked: bool
    ) -> bool:
        self._busy = in_flight
        self._exempt = withholding or blocked
        return False

    def get_timer(self) -> float | None:
        if self.failed:
            return None
        return min(self.next_beat, self.evidence + self.idle_bound)

    def handle_timer(self, now: float) -> LivenessAction:
        if self.failed:
            return LivenessAction.NOTHING
        if now >= self.evidence + self.idle_bound:
            self.failed = True
            self.reason = f"peer silent for {now - self.evidence:.1f} s"
            return LivenessAction.FAIL
        if now >= self.next_beat:
            self.next_beat = now + self.interval
            self.probes_sent += 1
            return LivenessAction.HEARTBEAT
        return LivenessAction.NOTHING
