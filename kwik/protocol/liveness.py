"""Is the peer of a path alive? (sans-IO, time passed in).

kwik decides from evidence that does not depend on either application reading:

* **any datagram** from the peer proves it alive (its QUIC stack answers our QUIC PINGs and
  acknowledges our data even while its kwik layer, or ours, withholds flow-control credit
  because an application is not reading). KWIK echoes are therefore not needed for liveness;
  they are only counted and give the heartbeat RTT;
* an **idle** path is probed every ``interval`` (the client side also sends a KWIK Ping, as
  KWIK v2 does; both sides send a QUIC PING, which any QUIC peer acknowledges). It fails when
  nothing at all arrived for ``interval * miss_threshold``;
* a **busy** path (bytes in flight) fails when nothing arrived for
  ``max(stall_timeout, 3 * PTO)`` since the bytes left or the last datagram, whichever is
  later. Once it has been quiet for a third of that, it is probed, so a peer that withholds
  credit (its application not reading) keeps answering. A path that hears from its peer all
  the time (a transfer) costs no probe beyond the heartbeat.

The transport reports datagrams with :meth:`Liveness.on_activity` and the in-flight state with
:meth:`Liveness.on_in_flight`, and acts on what :meth:`Liveness.handle_timer` returns.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Liveness", "LivenessAction"]


class LivenessAction(Enum):
    """What the transport must do when the liveness timer fires."""

    NOTHING = "nothing"
    HEARTBEAT = "heartbeat"
    """The heartbeat is due (every ``interval``): a QUIC PING, and a KWIK Ping on the client
    side of a path (as KWIK v2 does)."""
    PROBE = "probe"
    """A busy path went quiet: a QUIC PING (the cheapest thing its peer must answer)."""
    FAIL = "fail"
    """The peer is silent past the bound: fail the path (see :attr:`Liveness.reason`)."""


class Liveness:
    """Liveness of one path (see the module docstring)."""

    __slots__ = (
        "_busy_since",
        "_last_probe",
        "_next_probe",
        "_pto",
        "failed",
        "interval",
        "last_activity",
        "miss_threshold",
        "probes_sent",
        "reason",
        "stall_timeout",
    )

    def __init__(
        self, *, interval: float, miss_threshold: int, stall_timeout: float, now: float
    ) -> None:
        if interval <= 0 or miss_threshold < 1 or stall_timeout <= 0:
            raise ValueError("interval and stall_timeout must be positive, miss_threshold >= 1")
        self.interval = interval
        self.miss_threshold = miss_threshold
        self.stall_timeout = stall_timeout
        self.last_activity = now
        self._busy_since: float | None = None
        self._pto = 0.0
        self._next_probe = now + interval
        self._last_probe = now
        self.failed = False
        self.reason = ""
        self.probes_sent = 0

    @property
    def busy(self) -> bool:
        """Whether bytes are in flight."""
        return self._busy_since is not None

    @property
    def idle_bound(self) -> float:
        """Seconds of silence after which an idle path fails."""
        return self.interval * self.miss_threshold

    @property
    def busy_bound(self) -> float:
        """Seconds without any datagram after which a path with bytes in flight fails."""
        return max(self.stall_timeout, 3 * self._pto)

    def on_activity(self, now: float) -> None:
        """A datagram from the peer was received."""
        self.last_activity = now

    def on_in_flight(self, in_flight: bool, pto: float, now: float) -> None:
        """Whether bytes are in flight (sent and neither acknowledged nor declared lost), and
        QUIC's current probe timeout."""
        self._pto = pto
        if in_flight:
            if self._busy_since is None:
                self._busy_since = now
                # probe sooner than the idle schedule: the busy bound is much shorter
                self._next_probe = min(self._next_probe, now + self.busy_bound / 3)
        else:
            self._busy_since = None

    def _deadline(self) -> float:
        idle = self.last_activity + self.idle_bound
        if self._busy_since is None:
            return idle
        return min(idle, max(self.last_activity, self._busy_since) + self.busy_bound)

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (None once failed)."""
        if self.failed:
            return None
        return min(self._deadline(), self._next_probe)

    def handle_timer(self, now: float) -> LivenessAction:
        """Advance to ``now``: fail the path, send a probe, or nothing."""
        if self.failed:
            return LivenessAction.NOTHING
        if now >= self._deadline():
            self.failed = True
            silent = now - self.last_activity
            kind = "with data in flight" if self._busy_since is not None else "idle"
            self.reason = f"peer silent for {silent:.1f} s ({kind})"
            return LivenessAction.FAIL
        if now >= self._next_probe:
            # the heartbeat is due every interval; a busy path is probed sooner, but only
            # once it has been quiet (a datagram since says more than a probe would)
            quiet_step = self.interval if self._busy_since is None else self.busy_bound / 3
            heartbeat_due = now >= self._last_probe + self.interval
            quiet_since = max(self.last_activity, self._last_probe)
            if heartbeat_due or now >= quiet_since + quiet_step:
                self._last_probe = now
                self.probes_sent += 1
                self._next_probe = now + quiet_step
                return LivenessAction.HEARTBEAT if heartbeat_due else LivenessAction.PROBE
            self._next_probe = min(self._last_probe + self.interval, quiet_since + quiet_step)
        return LivenessAction.NOTHING
