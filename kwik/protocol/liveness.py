"""Is the peer of a path alive? (sans-IO: no asyncio, no clock; time is an argument).

One :class:`Liveness` per path. The transport reports what it sees (datagrams, KWIK echoes,
its own state after a transmit) and acts on what :meth:`Liveness.handle_timer` returns. The
contract, rule by rule:

**Evidence.** A path is judged from evidence that its peer is alive. The *evidence clock* is
the time of the latest evidence (the path's creation counts as evidence).

* The side that sends KWIK Pings (``pings=True``: the client side of a path) counts a KWIK
  **echo** of its Ping (:meth:`~Liveness.on_echo`). QUIC-level datagrams (the peer's QUIC
  acknowledging, its QUIC PINGs; :meth:`~Liveness.on_datagram`) count **only while echoes
  cannot arrive**: while this side withholds flow-control credit (``withholding``: our reader
  is paused, so the peer's records, echoes included, wait), or while our own records cannot
  leave because the peer withholds credit from us (``blocked``: our Ping cannot reach the
  peer). Datagrams seen before such a period do not count retroactively; those seen during it
  advance the evidence clock, so when the period ends the echo clock resumes from the last
  datagram and does not fail the path for the time the period lasted.
* The side that does not send KWIK Pings (``pings=False``: the server side; a Go client never
  answers a server's Ping) counts **any datagram** from the peer.

**Idle bound.** A path fails once it has been without evidence for ``idle_bound = interval *
miss_threshold`` seconds, idle or busy. Evidence is never later than the last datagram, so a
frozen or vanished peer fails its path at most ``idle_bound`` after its last datagram. A
**zombie** peer (its QUIC stack acknowledges, its KWIK layer never echoes) fails its path on
the pinging side within ``idle_bound`` of its last echo.

**Busy bound (optional).** With ``stall_timeout`` set, a *busy* path (bytes in flight) also
fails once it has been completely silent (no datagram since it last heard from the peer or
became busy, whichever is later) for ``max(stall_timeout, 3 * pto)``. ``pto`` is QUIC's probe
timeout *including its backoff* (base PTO x 2**pto_count), as last reported by
:meth:`~Liveness.on_state`, and it is **frozen once the silence exceeds stall_timeout**. Under
QUIC's doubling backoff the silence never reaches twice the current PTO, so an unfrozen
``3 * pto`` would stay ahead of it forever; frozen, the bound lands between 1.5 and 3 times
``stall_timeout + base PTO`` after the last datagram, and always after QUIC's first
retransmission following ``stall_timeout``, which gets at least one backed-off PTO to be
answered. So any blackout that ends before that retransmission (in particular any blackout up
to ``stall_timeout``) is survived, provided the idle bound, which still applies, is not reached
first (keep ``3 * stall_timeout`` below it). With ``stall_timeout=None`` there is no busy
bound: the idle bound applies to busy paths too.

**Schedule.** A heartbeat (:attr:`LivenessAction.HEARTBEAT`) is due every ``interval`` (the
first one ``interval`` after creation): the pinging side sends a KWIK Ping and a QUIC PING,
the other side a QUIC PING. Once the path has been without evidence for ``interval``, and
without any datagram for as long, it is also probed (:attr:`LivenessAction.PROBE`, a QUIC
PING) every ``interval / miss_threshold``, so that a live peer behind a lossy network answers
one of several probes before the bound (and QUIC's ACK clock resends a lost Ping or echo at
once instead of after its backed-off PTO). A path that hears datagrams is exchanging packets
already: a probe would neither hurry an echo that lags behind data nor make a zombie echo.
With ``stall_timeout`` set, a silent busy path is probed every third of its busy bound. A
heartbeat counts as a probe for the probe schedules. Nothing is stored as a pending deadline:
every deadline is derived from the current state, so a change between busy and idle, or of
``withholding``/``blocked``/``pto``, is reflected by the next :meth:`~Liveness.get_timer` (no
probe is ever left on a stale schedule).

**Timer.** :meth:`~Liveness.get_timer` is pure. After ``handle_timer(now)`` the next deadline
is strictly later than ``now`` (None once failed), so no timer fires more than once per real
deadline; deadlines within a microsecond of each other are one deadline (float rounding never
splits a heartbeat and a probe into two firings). :meth:`~Liveness.on_datagram` and
:meth:`~Liveness.on_echo` only ever move deadlines later: a transport that does not re-arm
after them gets at most one early firing, which returns :attr:`LivenessAction.NOTHING` and
leaves the later deadline in :meth:`~Liveness.get_timer`. :meth:`~Liveness.on_state` returns
True when the deadline changed.

**Echoes behind data.** An echo travels on the path's transport stream, in order, behind what
the peer had already written (up to its send window); likewise our Ping behind our data. On a
lossy busy path the first echo after a transfer starts can therefore lag by the time that
window takes to cross. A core that also reports other records the peer's KWIK layer wrote
(Acks, stream data) through :meth:`~Liveness.on_echo` removes that lag and still fails a
zombie (whose KWIK layer writes nothing), at the price of not failing a peer that writes data
but never echoes.
"""

from __future__ import annotations

import math
from enum import Enum

__all__ = ["Liveness", "LivenessAction"]

_SLACK = 1e-6
"""Deadlines within this many seconds of ``now`` are due together (one firing, one action),
so that float rounding cannot split one deadline into two firings."""


class LivenessAction(Enum):
    """What the transport must do when the liveness timer fires."""

    NOTHING = "nothing"
    """Nothing is due (an early or stale firing)."""
    HEARTBEAT = "heartbeat"
    """The heartbeat is due (every ``interval``): a KWIK Ping and a QUIC PING on the pinging
    side of a path, a QUIC PING on the other side."""
    PROBE = "probe"
    """The path is short of evidence: send a QUIC PING (which any QUIC peer acknowledges)."""
    FAIL = "fail"
    """The path is past its bound: fail it (see :attr:`Liveness.reason`)."""


def _check_positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number of seconds, not {value!r}")


class Liveness:
    """Liveness of one path (the rules are in the module docstring).

    Interface (times are seconds on the transport's monotonic clock):

    * ``Liveness(*, interval, miss_threshold, stall_timeout, pings, now)``
    * :meth:`on_datagram` (any datagram from the peer), :meth:`on_echo` (a KWIK echo of our
      Ping), :meth:`on_state` (our transport state, after every transmit and on changes);
    * :meth:`get_timer` (pure), :meth:`handle_timer` (returns a :class:`LivenessAction`);
    * :attr:`failed`, :attr:`reason` (set on FAIL), :attr:`probes_sent`, :attr:`busy`,
      :attr:`idle_bound`.
    """

    __slots__ = (
        "_blocked",
        "_busy_since",
        "_evidence",
        "_last_datagram",
        "_last_heartbeat",
        "_last_sent",
        "_pto",
        "_withholding",
        "failed",
        "interval",
        "miss_threshold",
        "pings",
        "probes_sent",
        "reason",
        "stall_timeout",
    )

    def __init__(
        self,
        *,
        interval: float,
        miss_threshold: int,
        stall_timeout: float | None,
        # The default only keeps a core that predates ``pings`` working (every datagram is
        # evidence, as on a server side); pass it explicitly.
        pings: bool,
        now: float,
    ) -> None:
        """``interval``: heartbeat period; ``miss_threshold`` (at least 2): the idle bound is
        ``interval * miss_threshold``; ``stall_timeout``: the optional busy bound (None: none);
        ``pings``: whether this side sends KWIK Pings (the client side of a path); ``now``:
        the creation time, which counts as evidence."""
        _check_positive("interval", interval)
        if isinstance(miss_threshold, bool) or not isinstance(miss_threshold, int):
            raise ValueError(f"miss_threshold must be an integer, not {miss_threshold!r}")
        if miss_threshold < 2:
            raise ValueError(
                f"miss_threshold must be at least 2, not {miss_threshold} (with 1, the answer "
                "to each heartbeat would be due at the very deadline it must beat)"
            )
        if stall_timeout is not None:
            _check_positive("stall_timeout", stall_timeout)
        self.interval = float(interval)
        self.miss_threshold = miss_threshold
        self.stall_timeout = None if stall_timeout is None else float(stall_timeout)
        self.pings = pings
        self._evidence = now
        self._last_datagram = now
        self._last_heartbeat = now
        self._last_sent = now  # the last heartbeat or probe
        self._busy_since: float | None = None
        self._pto = 0.0
        self._withholding = False
        self._blocked = False
        self.failed = False
        """True once :meth:`handle_timer` returned FAIL; the object is inert from then on."""
        self.reason = ""
        """Why the path failed (set with FAIL), e.g. ``"no echo for 16.0 s (peer's QUIC
        alive, KWIK layer silent)"`` or ``"peer silent for 16.0 s (idle)"``."""
        self.probes_sent = 0
        """PROBE actions returned so far (heartbeats not included)."""

    # --- properties ----------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """Whether bytes are in flight (as last reported by :meth:`on_state`)."""
        return self._busy_since is not None

    @property
    def idle_bound(self) -> float:
        """Seconds without evidence after which a path fails: ``interval * miss_threshold``."""
        return self.interval * self.miss_threshold

    # --- inputs --------------------------------------------------------------------------

    def on_datagram(self, now: float) -> None:
        """Any datagram from the peer arrived (the adapter calls this for every one)."""
        if self.failed:
            return
        if now > self._last_datagram:
            self._last_datagram = now
        if (not self.pings or self._withholding or self._blocked) and now > self._evidence:
            self._evidence = now

    def on_echo(self, now: float) -> None:
        """A KWIK echo of our Ping arrived (pinging side; see "Echoes behind data" in the
        module docstring for other records). It arrived in a datagram, so it counts as one."""
        if self.failed:
            return
        if now > self._evidence:
            self._evidence = now
        if now > self._last_datagram:
            self._last_datagram = now

    def on_state(
        self, now: float, *, in_flight: bool, pto: float, withholding: bool, blocked: bool
    ) -> bool:
        """The path's transport state, after every transmit and whenever it changed.

        ``in_flight``: ack-eliciting bytes are in flight (the path is busy); ``pto``: QUIC's
        probe timeout including its backoff (base PTO x 2**pto_count); ``withholding``: this
        side withholds flow-control credit from the peer (our reader is paused);
        ``blocked``: our records cannot leave because the peer withholds credit from us.

        Returns True when :meth:`get_timer` changed (re-arm the timer).
        """
        if self.failed:
            return False
        before = self.get_timer()
        if not in_flight:
            self._busy_since = None
        elif self._busy_since is None:
            self._busy_since = now
        if not self._pto_frozen(now):
            self._pto = pto
        self._withholding = withholding
        self._blocked = blocked
        return self.get_timer() != before

    # --- deadlines (pure) ----------------------------------------------------------------

    def _silent_since(self) -> float:
        """Start of the current silence of a busy path (no datagram since)."""
        assert self._busy_since is not None
        return max(self._last_datagram, self._busy_since)

    def _pto_frozen(self, now: float) -> bool:
        """Whether a busy path's silence has exceeded stall_timeout (its PTO is then kept)."""
        stall = self.stall_timeout
        return (
            stall is not None
            and self._busy_since is not None
            and now > self._silent_since() + stall
        )

    def _busy_bound(self) -> float | None:
        stall = self.stall_timeout
        if stall is None or self._busy_since is None:
            return None
        return max(stall, 3 * self._pto)

    def _idle_deadline(self) -> float:
        return self._evidence + self.idle_bound

    def _busy_deadline(self) -> float | None:
        bound = self._busy_bound()
        return None if bound is None else self._silent_since() + bound

    def _next_probe(self) -> float:
        # without evidence (nor any datagram) for interval: every interval / miss_threshold
        step = self.interval / self.miss_threshold
        quiet = max(self._evidence, self._last_datagram)
        probe = max(quiet + self.interval, self._last_sent + step)
        bound = self._busy_bound()
        if bound is not None:
            # a silent busy path: every third of its busy bound
            step = bound / 3
            probe = min(probe, max(self._silent_since() + step, self._last_sent + step))
        return probe

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (None once failed). Pure."""
        if self.failed:
            return None
        deadline = min(
            self._idle_deadline(), self._last_heartbeat + self.interval, self._next_probe()
        )
        busy = self._busy_deadline()
        return deadline if busy is None else min(deadline, busy)

    # --- timer ---------------------------------------------------------------------------

    def handle_timer(self, now: float) -> LivenessAction:
        """Advance to ``now`` and say what is due: FAIL (then :attr:`reason` says why),
        HEARTBEAT, PROBE, or NOTHING. At most one action per call; a HEARTBEAT also serves as
        the probe due at the same time."""
        if self.failed:
            return LivenessAction.NOTHING
        # busy means QUIC has ack-eliciting packets unacknowledged: data, or only our own probe
        kind = "packets unacknowledged" if self._busy_since is not None else "idle"
        due = now + _SLACK
        if due >= self._idle_deadline():
            self.failed = True
            no_evidence = now - self._evidence
            silent = now - self._last_datagram
            if not self.pings or silent >= no_evidence:  # nothing came after the evidence
                self.reason = f"peer silent for {no_evidence:.1f} s ({kind})"
            elif silent < self.interval:
                self.reason = (
                    f"no echo for {no_evidence:.1f} s (peer's QUIC alive, KWIK layer silent)"
                )
            else:
                self.reason = (
                    f"no echo for {no_evidence:.1f} s, peer silent for {silent:.1f} s ({kind})"
                )
            return LivenessAction.FAIL
        busy = self._busy_deadline()
        if busy is not None and due >= busy:
            self.failed = True
            self.reason = f"peer silent for {now - self._last_datagram:.1f} s ({kind})"
            return LivenessAction.FAIL
        if due >= self._last_heartbeat + self.interval:
            self._last_heartbeat = self._last_sent = now
            return LivenessAction.HEARTBEAT
        if due >= self._next_probe():
            self._last_sent = now
            self.probes_sent += 1
            return LivenessAction.PROBE
        return LivenessAction.NOTHING
