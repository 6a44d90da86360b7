"""Liveness, the sans-IO model of "is this path's peer alive?": every rule, with time as numbers.

Most tests drive a :class:`Liveness` through :class:`Sim`, a deterministic model of one path:
our heartbeats and probes cross a link with a fixed RTT and optional outages (every datagram
sent or arriving during one is lost), and a peer whose QUIC stack acknowledges (``quic``) and
whose KWIK layer echoes our Pings (``kwik``). A lost Ping or echo is resent, as QUIC's loss
recovery would, once one of our later packets gets through (one RTT later). QUIC's own PTO
retransmissions are not modelled, so recovery in the simulation is never faster than in life.
The simulator also checks the timer contract at every firing: ``get_timer()`` is pure, a
fresh deadline is a real one (the firing returns an action), and after it the next deadline
is strictly later (None after FAIL).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable

import pytest

from kwik import Config
from kwik.protocol.liveness import Liveness, LivenessAction

HEARTBEAT = LivenessAction.HEARTBEAT
PROBE = LivenessAction.PROBE
FAIL = LivenessAction.FAIL
NOTHING = LivenessAction.NOTHING

DEFAULTS = Config()
EPS = 1e-9


def make(
    *,
    pings: bool,
    interval: float = DEFAULTS.heartbeat_interval,
    miss_threshold: int = DEFAULTS.heartbeat_miss_threshold,
    stall_timeout: float | None = DEFAULTS.stall_timeout,
    now: float = 0.0,
) -> Liveness:
    return Liveness(
        interval=interval,
        miss_threshold=miss_threshold,
        stall_timeout=stall_timeout,
        pings=pings,
        now=now,
    )


def snapshot(lv: Liveness) -> dict[str, object]:
    return {name: getattr(lv, name) for name in Liveness.__slots__}


class Sim:
    """One path between us (``lv``) and a simulated peer; see the module docstring."""

    def __init__(
        self,
        lv: Liveness,
        *,
        rtt: float = 0.1,
        outages: tuple[tuple[float, float], ...] = (),
        quic_dies_at: float = math.inf,
        kwik_dies_at: float = math.inf,
        echo_delay: float = 0.0,
        peer_every: float | None = None,
        peer_phase: float = 0.0,
        in_flight: bool = False,
        pto: float = 0.1,
        start: float = 0.0,
    ) -> None:
        self.lv = lv
        self.rtt = rtt
        self.outages = outages
        self.quic_dies_at = quic_dies_at
        self.kwik_dies_at = min(kwik_dies_at, quic_dies_at)
        self.echo_delay = echo_delay
        self.now = start
        self.events: list[tuple[float, int, Callable[[float], None]]] = []
        self.seq = itertools.count()
        self.state = {"in_flight": in_flight, "pto": pto, "withholding": False, "blocked": False}
        self.actions: list[tuple[float, LivenessAction]] = []
        self.firings = 0
        self.last_datagram = start  # the last datagram of the peer that reached us
        self.last_echo = start  # the last echo we processed
        self.owed_ping = False  # our Ping was lost: our QUIC resends it
        self.owed_echo = False  # the peer's echo was lost: its QUIC resends it
        self.blocked_ping = False  # a Ping waiting for the peer's credit
        self.held_echoes = 0  # echoes that arrived while we withhold credit
        self.echoes: list[float] = []  # when we processed each echo
        self.datagrams = 0
        lv.on_state(start, **self.state)  # type: ignore[arg-type]
        if peer_every is not None:
            self._peer_sends(start + peer_phase, peer_every)

    # --- the link ------------------------------------------------------------------------

    def up(self, t: float) -> bool:
        return not any(a <= t < b for a, b in self.outages)

    def at(self, t: float, fn: Callable[[float], None]) -> None:
        heapq.heappush(self.events, (t, next(self.seq), fn))

    def set_state(self, t: float, **changes: object) -> None:
        """The adapter reports a change of the path's transport state at ``t``."""

        def apply(now: float) -> None:
            was_withholding = self.state["withholding"]
            was_blocked = self.state["blocked"]
            self.state.update(changes)  # type: ignore[arg-type]
            self.lv.on_state(now, **self.state)  # type: ignore[arg-type]
            if was_withholding and not self.state["withholding"]:
                for _ in range(self.held_echoes):  # our reader resumes: queued echoes are read
                    self._echo_processed(now)
                self.held_echoes = 0
            if was_blocked and not self.state["blocked"] and self.blocked_ping:
                self.blocked_ping = False
                self._transmit(now, ping=True)  # the Ping leaves with the peer's credit

        self.at(t, apply)

    def _transmit(self, t: float, *, ping: bool) -> None:
        """Our packet (a QUIC PING, plus a KWIK Ping when ``ping``) leaves at ``t``."""
        if ping and self.state["blocked"]:
            self.blocked_ping, ping = True, False
        arrive = t + self.rtt / 2
        if not (self.up(t) and self.up(arrive)):
            self.owed_ping = self.owed_ping or ping
            return
        if arrive >= self.quic_dies_at:
            return
        self.at(arrive, lambda u: self._peer_gets(u, ping))

    def _peer_gets(self, u: float, ping: bool) -> None:
        if self.owed_ping:  # our QUIC resends the lost Ping once this exchange is acknowledged
            self.owed_ping = False
            self._peer_echoes(u + self.rtt)
        if self.owed_echo:  # likewise the peer's QUIC resends its lost echo
            self.owed_echo = False
            self._reply(u + self.rtt, echo=True)
        if ping:
            self._peer_echoes(u)
        self._reply(u, echo=False)  # the peer's QUIC acknowledges

    def _peer_echoes(self, u: float) -> None:
        if self.lv.pings and u < self.kwik_dies_at:
            self._reply(u + self.echo_delay, echo=True)

    def _reply(self, u: float, *, echo: bool) -> None:
        arrive = u + self.rtt / 2
        if u >= self.quic_dies_at:
            return
        if not (self.up(u) and self.up(arrive)):
            self.owed_echo = self.owed_echo or echo
            return
        self.at(arrive, lambda now: self._we_get(now, echo))

    def _peer_sends(self, t: float, every: float) -> None:
        """The peer's own datagrams (its data, acks of our data, its heartbeats)."""

        def send(u: float) -> None:
            if u >= self.quic_dies_at:
                return
            self._reply(u, echo=False)
            self.at(u + every, send)

        self.at(t, send)

    def _we_get(self, now: float, echo: bool) -> None:
        self.datagrams += 1
        self.last_datagram = now
        self.lv.on_datagram(now)
        if echo:
            if self.state["withholding"]:
                self.held_echoes += 1
            else:
                self._echo_processed(now)

    def _echo_processed(self, now: float) -> None:
        self.last_echo = now
        self.echoes.append(now)
        self.lv.on_echo(now)

    # --- the run -------------------------------------------------------------------------

    def run(self, until: float) -> Sim:
        """Run until ``until`` or FAIL, checking the timer contract at every firing."""
        lv = self.lv
        while True:
            deadline = lv.get_timer()
            assert lv.get_timer() == deadline  # pure
            event = self.events[0][0] if self.events else math.inf
            timer = math.inf if deadline is None else deadline
            if min(timer, event) > until:
                self.now = until
                return self
            if event <= timer:
                t, _, fn = heapq.heappop(self.events)
                self.now = t
                fn(t)
                continue
            self.now = timer
            action = lv.handle_timer(timer)
            self.firings += 1
            assert action is not NOTHING, f"the timer fired at {timer} for nothing"
            following = lv.get_timer()
            if action is FAIL:
                assert following is None and lv.failed and lv.reason
            else:
                assert following is not None and following > timer
            self.actions.append((timer, action))
            if action is FAIL:
                return self
            self._transmit(timer, ping=action is HEARTBEAT and lv.pings)

    @property
    def failed_at(self) -> float | None:
        return self.actions[-1][0] if self.actions and self.actions[-1][1] is FAIL else None

    def count(self, action: LivenessAction) -> int:
        return sum(a is action for _, a in self.actions)


SIDES = [pytest.param(True, id="pinging"), pytest.param(False, id="server")]
LOADS = [pytest.param(False, id="idle"), pytest.param(True, id="busy")]


def path(pings: bool, busy: bool, **kw: object) -> dict[str, object]:
    """Sim arguments for a path of that side and load: a busy path hears the peer's data or
    acks every 20 ms and gets its echoes late (behind data); a server path hears the client's
    heartbeats."""
    args: dict[str, object] = {"in_flight": busy}
    if busy:
        args.update(peer_every=0.02, echo_delay=0.5)
    elif not pings:
        args.update(peer_every=DEFAULTS.heartbeat_interval, peer_phase=1.3)
    args.update(kw)
    return args


def worst_phases(pings: bool, busy: bool, first: float = 20.0) -> list[float]:
    """Outage starts to try: a sweep over one interval, plus just before an echo arrives (the
    latest evidence is then one interval old)."""
    interval = DEFAULTS.heartbeat_interval
    sweep = [first + i * 0.25 for i in range(int(interval / 0.25))]
    echo_at = 0.1 + (0.5 if busy else 0.0)  # rtt + echo delay after a heartbeat
    return sweep + [first + echo_at - 0.001, first + interval + echo_at - 0.001]


# --- the defaults and their figures ------------------------------------------------------------


def test_defaults_meet_the_required_bounds() -> None:
    """Default Config: dead within 20 s of the last datagram (the idle bound, 15 s, as issue 11
    required), and the worst-case silence a pinging path survives, (M - 1) * I - I / M, is
    well above 8 s."""
    interval, threshold = DEFAULTS.heartbeat_interval, DEFAULTS.heartbeat_miss_threshold
    assert (interval, threshold, DEFAULTS.stall_timeout) == (3.0, 5, None)
    lv = make(pings=True)
    assert lv.idle_bound == 15.0 < 20.0
    assert (threshold - 1) * interval - interval / threshold == pytest.approx(11.4)


@pytest.mark.parametrize("busy", LOADS)
@pytest.mark.parametrize("pings", SIDES)
def test_a_healthy_path_costs_heartbeats_only(pings: bool, busy: bool) -> None:
    """A peer that answers: never failed, one heartbeat per interval, no probe, and the timer
    fires exactly once per heartbeat."""
    sim = Sim(make(pings=pings), **path(pings, busy)).run(600.0)  # type: ignore[arg-type]
    assert sim.failed_at is None
    assert sim.count(HEARTBEAT) == 600 / DEFAULTS.heartbeat_interval
    assert sim.lv.probes_sent == 0 == sim.count(PROBE)
    assert sim.firings == sim.count(HEARTBEAT)


# --- outages shorter than the bound are survived, longer ones fail within it -------------------


@pytest.mark.parametrize("busy", LOADS)
@pytest.mark.parametrize("pings", SIDES)
def test_a_total_silence_of_8_s_never_fails_a_path(pings: bool, busy: bool) -> None:
    """With the default Config, an 8 s outage (both directions), whatever its phase relative
    to the heartbeats, idle or busy (upload and download both keep bytes in flight)."""
    for start in worst_phases(pings, busy):
        lv = make(pings=pings)
        sim = Sim(lv, **path(pings, busy, outages=((start, start + 8.0),)))  # type: ignore[arg-type]
        sim.run(start + 40.0)
        assert sim.failed_at is None, (start, lv.reason)
        assert sim.last_datagram > start + 8.0  # the silence did happen and end


@pytest.mark.parametrize("busy", LOADS)
@pytest.mark.parametrize("pings", SIDES)
def test_a_vanished_peer_fails_its_path_within_20_s(pings: bool, busy: bool) -> None:
    """The peer stops at any phase (frozen, killed, network gone): the path fails after at
    least 8 s and at most the idle bound (15 s) after the peer's last datagram."""
    for start in worst_phases(pings, busy):
        lv = make(pings=pings)
        sim = Sim(lv, **path(pings, busy, quic_dies_at=start))  # type: ignore[arg-type]
        sim.run(start + 60.0)
        assert sim.failed_at is not None, start
        silence = sim.failed_at - sim.last_datagram
        assert 8.0 < silence <= lv.idle_bound + EPS, (start, silence)
        assert "silent" in lv.reason


@pytest.mark.parametrize("pings", SIDES)
def test_an_outage_longer_than_the_bound_fails_within_the_bound(pings: bool) -> None:
    lv = make(pings=pings)
    sim = Sim(lv, **path(pings, False, outages=((30.0, 60.0),)))  # type: ignore[arg-type]
    sim.run(90.0)
    assert sim.failed_at is not None
    assert sim.failed_at <= sim.last_datagram + lv.idle_bound + EPS
    assert sim.failed_at < 30.0 + lv.idle_bound + EPS


@pytest.mark.parametrize(
    ("interval", "threshold"), [(4.0, 4), (1.0, 3), (5.0, 3), (0.2, 2), (2.0, 6)]
)
def test_the_survived_silence_is_the_documented_figure(interval: float, threshold: int) -> None:
    """Pinging side, the worst phase (the outage starts as an echo is due): an outage of
    (M - 1) * I - I / M minus a few RTTs is survived, one of (M - 1) * I + a little fails. This
    is the figure documented next to Config.heartbeat_miss_threshold."""
    rtt = 0.01 * interval
    start = 10 * interval + rtt - rtt / 10  # just before the echo of the 10th heartbeat
    survivable = (threshold - 1) * interval - interval / threshold - 3 * rtt
    fatal = (threshold - 1) * interval + 3 * rtt
    for outage, survives in ((survivable, True), (fatal, False)):
        lv = make(pings=True, interval=interval, miss_threshold=threshold)
        sim = Sim(lv, rtt=rtt, outages=((start, start + outage),))
        sim.run(start + outage + 4 * lv.idle_bound)
        assert (sim.failed_at is None) is survives, (outage, lv.reason)


# --- evidence: echoes on the pinging side, datagrams on the other ------------------------------


@pytest.mark.parametrize("busy", LOADS)
def test_a_zombie_peer_fails_within_the_idle_bound(busy: bool) -> None:
    """Its QUIC keeps acknowledging (and, busy, sending), its KWIK layer stops echoing at 30 s:
    the pinging side fails the path within the idle bound of the last echo, saying why. Its
    datagrams show packets flowing, so no probe is wasted on it."""
    lv = make(pings=True)
    sim = Sim(lv, **path(True, busy, kwik_dies_at=30.0))  # type: ignore[arg-type]
    sim.run(200.0)
    assert sim.failed_at is not None
    assert sim.failed_at == pytest.approx(sim.last_echo + lv.idle_bound)
    assert sim.last_datagram > sim.failed_at - 1.0  # its QUIC was alive to the end
    assert "no echo for 15.0 s" in lv.reason and "KWIK layer silent" in lv.reason
    assert lv.probes_sent == 0


@pytest.mark.parametrize("busy", LOADS)
def test_the_server_side_counts_any_datagram(busy: bool) -> None:
    """A server path gets no echoes (a Go client never answers its Ping): the client's
    datagrams (its heartbeats, data, acks) keep it alive for as long as they come."""
    lv = make(pings=False)
    sim = Sim(lv, **path(False, busy, kwik_dies_at=0.0))  # type: ignore[arg-type]
    sim.run(600.0)
    assert sim.failed_at is None and sim.last_echo == 0.0
    assert lv.probes_sent == 0


def test_the_pinging_side_does_not_count_datagrams_as_echoes() -> None:
    """The same datagrams, no echo: the pinging side fails at the idle bound exactly."""
    lv = make(pings=True)
    for t in range(1, 100):
        lv.on_datagram(float(t) / 10)
        assert lv.handle_timer(float(t) / 10) is not FAIL
    assert lv.get_timer() is not None
    while not lv.failed:
        now = lv.get_timer()
        assert now is not None
        lv.on_datagram(now)
        lv.handle_timer(now)
    assert now == pytest.approx(lv.idle_bound)


# --- withholding credit and being blocked ------------------------------------------------------


@pytest.mark.parametrize("busy", LOADS)
def test_probes_while_withholding_credit_keep_a_live_path(busy: bool) -> None:
    """Our reader pauses for 200 s (10 to 210): the peer's echoes wait, its QUIC answers our
    heartbeats' and probes' QUIC PINGs, and those datagrams are the evidence. When the reader
    resumes, the waiting echoes are read; the path never fails, then or later."""
    lv = make(pings=True)
    sim = Sim(lv, **path(True, busy))  # type: ignore[arg-type]
    sim.set_state(10.0, withholding=True)
    sim.set_state(210.0, withholding=False)
    sim.run(209.0)
    assert sim.failed_at is None
    assert sim.last_echo < 10.5 and sim.held_echoes > 0
    sim.run(400.0)
    assert sim.failed_at is None and sim.last_echo > 210.0


def test_a_withholding_period_that_ends_does_not_fail_the_path_at_once() -> None:
    """The echo clock resumes from the last datagram of the period: a peer whose KWIK layer
    died during it fails the path the idle bound after that datagram, not when the period
    ends, and datagrams before the period did not count."""
    lv = make(pings=True)
    lv.on_echo(1.0)
    lv.on_datagram(1.5)  # not evidence: echoes could arrive then
    lv.on_state(2.0, in_flight=False, pto=0.1, withholding=True, blocked=False)
    assert lv.get_timer() == 3.0  # the first heartbeat; evidence is still the echo at 1.0
    assert lv.handle_timer(3.0) is HEARTBEAT
    lv.on_datagram(3.1)  # the heartbeat's ACK: evidence while withholding
    for t in (8.0, 16.0, 30.0):
        lv.on_datagram(t)
    changed = lv.on_state(30.5, in_flight=False, pto=0.1, withholding=False, blocked=False)
    assert not changed  # the period's end moves no deadline
    assert lv.handle_timer(30.5) is not FAIL
    # no echo ever comes: failed the idle bound after the period's last datagram
    while not lv.failed:
        now = lv.get_timer()
        assert now is not None
        lv.handle_timer(now)
    assert now == 30.0 + lv.idle_bound


def test_the_idle_bound_applies_while_withholding_to_a_vanished_peer() -> None:
    lv = make(pings=True)
    sim = Sim(lv, quic_dies_at=50.0)
    sim.set_state(10.0, withholding=True)
    sim.run(200.0)
    assert sim.failed_at is not None
    assert sim.failed_at == pytest.approx(sim.last_datagram + lv.idle_bound)
    assert "peer silent for 15.0 s" in lv.reason


def test_probes_while_blocked_keep_a_live_path() -> None:
    """The peer withholds credit from us for 200 s: our Pings cannot leave, its QUIC answers
    our QUIC PINGs. When the credit comes, the waiting Ping leaves and its echo returns."""
    lv = make(pings=True)
    sim = Sim(lv)
    sim.set_state(10.0, blocked=True)
    sim.set_state(210.5, blocked=False)
    sim.run(209.0)
    assert sim.failed_at is None and sim.blocked_ping and sim.last_echo < 10.5
    sim.run(400.0)
    assert sim.failed_at is None
    assert [t for t in sim.echoes if 10.5 < t < 211.0] == pytest.approx([210.6])


def test_a_blocked_path_counts_only_datagrams_during_the_block() -> None:
    lv = make(pings=True)
    lv.on_datagram(2.0)
    assert lv.get_timer() == 3.0 and lv.handle_timer(3.0) is HEARTBEAT
    lv.on_state(3.0, in_flight=True, pto=0.1, withholding=False, blocked=True)
    lv.on_datagram(3.1)
    lv.on_state(3.2, in_flight=False, pto=0.1, withholding=False, blocked=False)
    lv.on_datagram(10.0)  # after the block: not evidence
    while not lv.failed:
        now = lv.get_timer()
        assert now is not None
        lv.handle_timer(now)
    assert now == pytest.approx(3.1 + lv.idle_bound)


# --- the schedule ------------------------------------------------------------------------------


@pytest.mark.parametrize("stall_timeout", [3.0, None])
def test_r3_20_a_short_heartbeat_keeps_a_live_path(stall_timeout: float | None) -> None:
    """r3-20 exactly: interval 0.2 s, threshold 2, a request leaves (busy), the peer
    acknowledges it, the path goes idle, and the peer answers every heartbeat and probe at
    once. The path must stay up (it used to fail at 0.61 s, before any probe)."""
    lv = make(pings=True, interval=0.2, miss_threshold=2, stall_timeout=stall_timeout)
    lv.on_state(0.0, in_flight=True, pto=0.01, withholding=False, blocked=False)
    first = lv.get_timer()
    assert first == pytest.approx(0.2) and lv.handle_timer(0.2) is HEARTBEAT
    lv.on_datagram(0.21)
    lv.on_echo(0.21)
    lv.on_state(0.21, in_flight=False, pto=0.01, withholding=False, blocked=False)
    actions = []
    while True:
        t = lv.get_timer()
        assert t is not None
        action = lv.handle_timer(t)
        actions.append(action)
        assert action is not FAIL, (t, lv.reason)
        if action in (HEARTBEAT, PROBE):
            lv.on_datagram(t + 0.001)  # the peer answers every probe at once
            if action is HEARTBEAT:
                lv.on_echo(t + 0.001)
        if t > 20:
            break
    assert actions.count(HEARTBEAT) >= 99 and PROBE not in actions


def test_busy_to_idle_with_a_pending_probe() -> None:
    """A busy probe is pending (stall_timeout 0.3 s: every 0.1 s of silence); when the path goes
    idle, the deadline returns to the idle schedule at once (on_state says so), and back."""
    lv = make(pings=False, interval=5.0, miss_threshold=3, stall_timeout=0.3)
    assert lv.get_timer() == 5.0
    assert lv.on_state(1.0, in_flight=True, pto=0.01, withholding=False, blocked=False)
    assert lv.busy and lv.get_timer() == pytest.approx(1.1)
    assert lv.handle_timer(1.1) is PROBE
    assert lv.get_timer() == pytest.approx(1.2)  # the next busy probe is pending
    assert lv.on_state(1.15, in_flight=False, pto=0.01, withholding=False, blocked=False)
    assert not lv.busy and lv.get_timer() == 5.0  # the heartbeat, not the stale busy step
    assert not lv.on_state(1.16, in_flight=False, pto=0.01, withholding=False, blocked=False)
    assert lv.on_state(2.0, in_flight=True, pto=0.01, withholding=False, blocked=False)
    assert lv.get_timer() == pytest.approx(2.1)  # silence counted from becoming busy


def test_a_heartbeat_sent_while_busy_leaves_no_busy_schedule_behind() -> None:
    """r3-20's mechanism with a busy step longer than the idle bound: after the heartbeat the
    path goes idle and its peer falls silent; probes must go out before the idle bound."""
    lv = make(pings=False, interval=0.2, miss_threshold=2, stall_timeout=3.0)
    lv.on_state(0.0, in_flight=True, pto=0.01, withholding=False, blocked=False)
    assert lv.handle_timer(0.2) is HEARTBEAT
    lv.on_datagram(0.21)
    lv.on_state(0.21, in_flight=False, pto=0.01, withholding=False, blocked=False)
    sent = []
    while not lv.failed:
        now = lv.get_timer()
        assert now is not None
        if lv.handle_timer(now) is not FAIL:
            sent.append(now)
    assert now == pytest.approx(0.21 + lv.idle_bound)
    assert [t for t in sent if t > 0.21] == pytest.approx([0.4, 0.5, 0.6])


@pytest.mark.parametrize(
    ("interval", "threshold"), [(4.0, 4), (1.0, 3), (5.0, 3), (0.2, 2), (2.0, 6)]
)
@pytest.mark.parametrize("pings", SIDES)
def test_a_path_without_evidence_is_probed_before_it_fails(
    pings: bool, interval: float, threshold: int
) -> None:
    """Once without evidence for an interval, the path is probed every interval / threshold:
    M * (M - 1) probes or heartbeats go out between then and the bound, so a live peer behind
    a lossy link has many chances to answer."""
    lv = make(pings=pings, interval=interval, miss_threshold=threshold)
    sim = Sim(lv, quic_dies_at=10 * interval + 0.3 * interval).run(100 * interval)
    assert sim.failed_at is not None
    evidence = sim.failed_at - lv.idle_bound
    late = [t for t, a in sim.actions if a is not FAIL and t >= evidence + interval - EPS]
    assert len(late) >= threshold * (threshold - 1)
    gaps = [b - a for a, b in itertools.pairwise(late)]
    assert max(gaps) <= interval / threshold + EPS


# --- the optional busy bound (stall_timeout) ---------------------------------------------------


def backoff_run(
    stall: float, base_pto: float, *, blackout: float | None, rtt: float = 0.01
) -> tuple[Liveness, float, float | None]:
    """A busy server path hears data until D = 1.0; then a blackout of ``blackout`` seconds
    (None: the peer is gone). QUIC backs off as RFC 9002 says: its k-th probe leaves at
    D + base * (2**k - 1), and the adapter reports the PTO with its backoff after each. Our
    own probes are stuck behind the full congestion window (they get no answer). Returns the
    model, D, and when the path failed (None: it did not within 60 s)."""
    # an idle bound well above the busy one, which it would otherwise cut short
    lv = make(pings=False, interval=max(4.0, 2 * (stall + base_pto)), stall_timeout=stall)
    lv.on_state(0.0, in_flight=True, pto=base_pto, withholding=False, blocked=False)
    d = 1.0
    t = 0.0
    while t < d:  # the transfer runs
        t = min(t + 0.01, d)
        lv.on_datagram(t)
        lv.on_state(t, in_flight=True, pto=base_pto, withholding=False, blocked=False)
        assert lv.handle_timer(t) is not FAIL
    quic_probes = [d + base_pto * (2**k - 1) for k in range(1, 30)]
    end = math.inf if blackout is None else d + blackout
    k = 0
    while True:
        timer = lv.get_timer()
        assert timer is not None
        if timer > 60.0 and quic_probes[k] > 60.0:
            return lv, d, None
        if quic_probes[k] <= timer:
            now = quic_probes[k]
            k += 1
            if now >= end:  # the link is back: the probe is answered, the silence is over
                lv.on_datagram(now + rtt)
                return lv, d, None
            lv.on_state(now, in_flight=True, pto=base_pto * 2**k, withholding=False, blocked=False)
            continue
        if lv.handle_timer(timer) is FAIL:
            return lv, d, timer


@pytest.mark.parametrize("base_pto", [0.01, 0.03, 0.1, 0.3, 1.0])
@pytest.mark.parametrize("stall", [1.0, 3.0, 10.0])
def test_stall_timeout_respects_quic_backoff(stall: float, base_pto: float) -> None:
    """Any blackout up to stall_timeout is survived (QUIC's first retransmission after it
    gets a full backed-off PTO to be answered), and a vanished peer is noticed between
    1.5 * (stall_timeout + base PTO) and 3 * (stall_timeout + base PTO) after its last
    datagram: the figures documented next to Config.stall_timeout."""
    for tenth in range(1, 11):
        lv, _, failed = backoff_run(stall, base_pto, blackout=stall * tenth / 10)
        assert failed is None, (tenth, lv.reason)
    lv, d, failed = backoff_run(stall, base_pto, blackout=None)
    assert failed is not None and "packets unacknowledged" in lv.reason
    assert 1.5 * (stall + base_pto) < failed - d <= 3 * (stall + base_pto) + EPS


def test_r3_6_a_3_5_s_outage_of_a_busy_path_with_stall_timeout_3() -> None:
    """r3-6 with stall_timeout=3 and a 30 ms base PTO: the outage ends at 3.5 s, QUIC's 7th
    retransmission (3.81 s) is answered, the path lives; a peer that is gone fails it at
    3 * 1.92 s = 5.76 s, not at 3 s in the middle of QUIC's backoff."""
    lv, _, failed = backoff_run(3.0, 0.03, blackout=3.5)
    assert failed is None
    lv, d, failed = backoff_run(3.0, 0.03, blackout=None)
    assert failed == pytest.approx(d + 5.76)
    assert lv.reason == "peer silent for 5.8 s (packets unacknowledged)"


def test_the_busy_pto_is_frozen_once_the_silence_reaches_stall_timeout() -> None:
    lv = make(pings=False, stall_timeout=3.0)
    lv.on_state(0.0, in_flight=True, pto=0.5, withholding=False, blocked=False)
    assert lv.on_state(2.9, in_flight=True, pto=1.5, withholding=False, blocked=False)
    assert lv.get_timer() is not None
    deadline = 0.0 + 3 * 1.5
    # silent for more than stall_timeout: QUIC's backoff no longer moves the bound
    assert not lv.on_state(3.01, in_flight=True, pto=3.0, withholding=False, blocked=False)
    while lv.get_timer() != deadline:  # probes until the deadline
        now = lv.get_timer()
        assert now is not None and now < deadline
        assert lv.handle_timer(now) in (PROBE, HEARTBEAT)
    assert lv.handle_timer(deadline) is FAIL
    # a datagram ends the silence: the PTO is followed again
    lv = make(pings=False, interval=10.0, stall_timeout=3.0)
    lv.on_state(0.0, in_flight=True, pto=0.5, withholding=False, blocked=False)
    lv.on_state(3.01, in_flight=True, pto=3.0, withholding=False, blocked=False)
    lv.on_datagram(3.5)
    assert lv.on_state(3.6, in_flight=True, pto=2.0, withholding=False, blocked=False)
    assert lv.get_timer() == pytest.approx(3.5 + 2.0)  # the first busy probe, a third of 6 s


@pytest.mark.parametrize("pings", SIDES)
def test_without_stall_timeout_a_busy_path_has_the_idle_bound(pings: bool) -> None:
    """The default: no separate busy bound. A busy path silent for 11 s (the old bound was 3)
    lives, and one whose peer is gone fails at the idle bound, however large QUIC's PTO."""
    for quic_dies_at, survives in ((None, True), (30.0, False)):
        lv = make(pings=pings)
        sim = Sim(
            lv,
            **path(  # type: ignore[arg-type]
                pings,
                True,
                outages=((30.0, 41.0),) if quic_dies_at is None else (),
                quic_dies_at=math.inf if quic_dies_at is None else quic_dies_at,
                pto=0.01,
            ),
        )
        sim.run(100.0)
        assert (sim.failed_at is None) is survives
        if not survives:
            evidence = sim.last_echo if pings else sim.last_datagram
            assert sim.failed_at is not None
            assert sim.failed_at == pytest.approx(evidence + lv.idle_bound)
            assert sim.failed_at <= sim.last_datagram + lv.idle_bound + EPS


def test_with_stall_timeout_an_idle_path_has_no_busy_bound() -> None:
    lv = make(pings=False, stall_timeout=1.0)
    lv.on_state(0.0, in_flight=False, pto=0.01, withholding=False, blocked=False)
    assert lv.get_timer() == DEFAULTS.heartbeat_interval
    lv.on_state(0.5, in_flight=True, pto=0.01, withholding=False, blocked=False)
    assert lv.get_timer() == pytest.approx(0.5 + 1.0 / 3)


# --- the timer contract ------------------------------------------------------------------------


def test_the_timer_fires_once_per_real_deadline_in_a_long_mixed_run() -> None:
    """900 s of everything: outages, a paused reader, a blocked writer, a busy phase, the
    KWIK layer hanging then the peer vanishing. Sim checks every firing; here the count: one
    firing per action, none for nothing."""
    lv = make(pings=True, stall_timeout=None)
    sim = Sim(
        lv,
        outages=((50.0, 58.0), (300.0, 309.0)),
        kwik_dies_at=700.0,
        quic_dies_at=800.0,
        peer_every=0.5,
    )
    sim.set_state(100.0, withholding=True)
    sim.set_state(180.0, withholding=False)
    sim.set_state(200.0, blocked=True, in_flight=True)
    sim.set_state(260.0, blocked=False)
    sim.set_state(400.0, in_flight=False)
    sim.run(900.0)
    assert sim.failed_at is not None and 700.0 < sim.failed_at <= 700.0 + lv.idle_bound
    assert sim.firings == len(sim.actions)
    assert sim.count(HEARTBEAT) == pytest.approx(sim.failed_at / lv.interval, abs=1)
    assert 0 < lv.probes_sent == sim.count(PROBE)
    assert "KWIK layer silent" in lv.reason


def test_a_lazy_adapter_gets_at_most_one_early_firing_per_stale_deadline() -> None:
    """An adapter that does not re-arm after datagrams: evidence only moved the deadline
    later, so the stale firing returns NOTHING and the next deadline is strictly later."""
    lv = make(pings=False)
    armed = lv.get_timer()
    assert armed == DEFAULTS.heartbeat_interval
    fired = []
    for step in range(1, 4001):  # datagrams every 0.1 s for 400 s, timer re-armed on firing
        now = step / 10
        lv.on_datagram(now)
        new = lv.get_timer()
        assert new is not None and new >= armed  # evidence never brings a deadline forward
        while armed is not None and armed <= now:
            action = lv.handle_timer(armed)
            fired.append(action)
            following = lv.get_timer()
            assert following is not None and following > armed
            armed = following
    assert fired.count(HEARTBEAT) == len(fired) == 400 // DEFAULTS.heartbeat_interval


def test_handle_timer_twice_at_the_same_time_acts_once() -> None:
    """A heartbeat and a probe due together: one HEARTBEAT (it carries the QUIC PING too),
    then NOTHING at the same instant; a late call does the most urgent thing only."""
    lv = make(pings=True)
    assert lv.handle_timer(10.0) is HEARTBEAT  # late: heartbeat and probe both due
    assert lv.handle_timer(10.0) is NOTHING
    timer = lv.get_timer()
    assert timer is not None and timer > 10.0
    assert lv.handle_timer(100.0) is FAIL
    assert lv.handle_timer(100.0) is NOTHING and lv.get_timer() is None


def test_get_timer_is_pure() -> None:
    lv = make(pings=True, stall_timeout=2.0)
    lv.on_state(1.0, in_flight=True, pto=0.2, withholding=True, blocked=False)
    lv.on_datagram(1.5)
    before = snapshot(lv)
    for _ in range(3):
        assert lv.get_timer() == lv.get_timer()
    assert snapshot(lv) == before


def test_a_failed_path_is_inert() -> None:
    lv = make(pings=False)
    assert lv.handle_timer(15.0) is FAIL
    assert lv.failed and lv.reason == "peer silent for 15.0 s (idle)"
    state = snapshot(lv)
    lv.on_datagram(17.0)
    lv.on_echo(17.0)
    assert not lv.on_state(17.0, in_flight=True, pto=1.0, withholding=True, blocked=True)
    assert lv.handle_timer(18.0) is NOTHING and lv.get_timer() is None
    assert snapshot(lv) == state


def test_an_echo_is_a_datagram_too() -> None:
    """An echo arrived in a datagram: it ends a busy path's silence even if the adapter
    reported it alone."""
    lv = make(pings=True, stall_timeout=1.0)
    lv.on_state(0.0, in_flight=True, pto=0.01, withholding=False, blocked=False)
    lv.on_echo(0.5)
    assert lv.get_timer() == pytest.approx(0.5 + 1.0 / 3)  # the busy probe, from the echo
    while not lv.failed:
        now = lv.get_timer()
        assert now is not None
        lv.handle_timer(now)
    assert now == pytest.approx(1.5) and "silent for 1.0 s" in lv.reason


def test_reasons_say_what_was_missing() -> None:
    busy = make(pings=False, stall_timeout=1.0)
    busy.on_state(0.0, in_flight=True, pto=0.01, withholding=False, blocked=False)
    while not busy.failed:
        now = busy.get_timer()
        assert now is not None
        busy.handle_timer(now)
    assert busy.reason == "peer silent for 1.0 s (packets unacknowledged)"
    zombie = make(pings=True)
    zombie.on_datagram(14.5)
    assert zombie.handle_timer(15.0) is FAIL
    assert zombie.reason == "no echo for 15.0 s (peer's QUIC alive, KWIK layer silent)"
    faded = make(pings=True)
    faded.on_datagram(5.0)
    assert faded.handle_timer(15.0) is FAIL
    assert faded.reason == "no echo for 15.0 s, peer silent for 10.0 s (idle)"
    silent = make(pings=True)
    assert silent.handle_timer(15.0) is FAIL
    assert silent.reason == "peer silent for 15.0 s (idle)"


# --- arguments and Config ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("heartbeat_miss_threshold", 1),
        ("heartbeat_miss_threshold", 0),
        ("heartbeat_miss_threshold", -3),
        ("heartbeat_miss_threshold", 2.5),
        ("heartbeat_miss_threshold", True),
        ("heartbeat_interval", 0.0),
        ("heartbeat_interval", -1.0),
        ("heartbeat_interval", math.nan),
        ("heartbeat_interval", math.inf),
        ("heartbeat_interval", 60.0),  # not shorter than idle_timeout
        ("stall_timeout", 0.0),
        ("stall_timeout", -2.0),
        ("stall_timeout", math.nan),
        ("stall_timeout", math.inf),
        ("stall_timeout", 15.0),  # not shorter than the idle bound it shortens (3 s x 5)
    ],
)
def test_config_rejects_liveness_values_that_cannot_work(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"Config.{field}"):
        Config(**{field: value})  # type: ignore[arg-type]


def test_config_accepts_working_liveness_values() -> None:
    Config(heartbeat_interval=0.5, heartbeat_miss_threshold=2, stall_timeout=0.5)
    Config(heartbeat_interval=59.0, heartbeat_miss_threshold=100, stall_timeout=None)
    Config(heartbeat_interval=1, stall_timeout=3)  # integers are seconds too
    Config(idle_timeout=5.0, heartbeat_interval=4.0)
    with pytest.raises(ValueError, match="Config.heartbeat_interval"):
        Config(idle_timeout=3.0)  # shorter than the default heartbeat


@pytest.mark.parametrize(
    "kwargs",
    [
        {"interval": 0.0},
        {"interval": math.nan},
        {"miss_threshold": 1},
        {"miss_threshold": 2.0},
        {"stall_timeout": 0.0},
        {"stall_timeout": -1.0},
    ],
)
def test_liveness_rejects_arguments_that_cannot_work(kwargs: dict[str, object]) -> None:
    args: dict[str, object] = {
        "interval": 1.0,
        "miss_threshold": 3,
        "stall_timeout": None,
        "pings": True,
        "now": 0.0,
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Liveness(**args)  # type: ignore[arg-type]
