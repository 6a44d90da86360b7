"""Run the session-core fuzzers for a while: ``python -m tests.fuzz --minutes N``.

Alternates batches of the hostile-peer state machine (hypothesis, random seeds; its paths
with and without the credit extension) and of the honest multi-server scenario (seeded, each
seed in every mode: credit, v2, mixed), prints a progress line every ``--progress`` seconds and
a summary at the end. Exits 1 on the first invariant violation or unexpected exception, after
printing what reproduces it: the falsifying program (hypothesis prints it, with a
``@reproduce_failure`` blob) or the honest scenario's seed and mode (``--honest-seed S
--mode M`` replays it).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback

from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test

from .core import MODES, STATS, HostileCoreMachine, run_honest

#: Examples per hypothesis batch (a new random seed each batch).
_HOSTILE_BATCH = 40
#: Honest scenarios per batch.
_HONEST_BATCH = 10


def _hostile_batch(steps: int) -> None:
    run_state_machine_as_test(
        HostileCoreMachine,
        settings=settings(
            max_examples=_HOSTILE_BATCH,
            stateful_step_count=steps,
            deadline=None,
            database=None,
            derandomize=False,
            print_blob=True,
            suppress_health_check=list(HealthCheck),
        ),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--minutes", type=float, default=1.0, help="time budget (default 1)")
    parser.add_argument("--seed", type=int, default=None, help="first honest seed (random)")
    parser.add_argument("--steps", type=int, default=60, help="steps per hostile example")
    parser.add_argument("--progress", type=float, default=30.0, help="seconds between lines")
    parser.add_argument(
        "--only", choices=["hostile", "honest"], default=None, help="run one fuzzer only"
    )
    parser.add_argument("--honest-seed", type=int, default=None, help="replay one scenario")
    parser.add_argument(
        "--mode", choices=MODES, default=None, help="honest scenarios in this mode only"
    )
    args = parser.parse_args(argv)
    modes = [args.mode] if args.mode else list(MODES)

    if args.honest_seed is not None:
        for mode in modes:
            run_honest(args.honest_seed, mode)
            print(f"honest seed {args.honest_seed} ({mode}): ok ({STATS.line()})")
        return 0

    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    print(f"fuzzing the session core for {args.minutes:g} min; honest seeds from {seed}")
    start = time.monotonic()
    deadline = start + args.minutes * 60
    next_line = start + args.progress
    failure: str | None = None
    current, mode = seed, modes[0]
    turn = 0
    while time.monotonic() < deadline and failure is None:
        kind = args.only or ("hostile" if turn % 2 == 0 else "honest")
        turn += 1
        try:
            if kind == "hostile":
                _hostile_batch(args.steps)
            else:
                for _ in range(_HONEST_BATCH):
                    current = seed
                    seed += 1
                    for mode in modes:
                        run_honest(current, mode)
        except Exception:  # every failure is reported the same way, with its reproduction
            traceback.print_exc()
            failure = (
                "hostile machine: the falsifying program is printed above"
                if kind == "hostile"
                else "honest scenario: replay with python -m tests.fuzz "
                f"--honest-seed {current} --mode {mode}"
            )
        now = time.monotonic()
        if now >= next_line:
            print(f"[{now - start:7.1f}s] {STATS.line()}", flush=True)
            next_line = now + args.progress
    elapsed = time.monotonic() - start
    inputs = STATS.steps
    print(
        f"summary: {elapsed:.0f} s, {STATS.examples} examples ({STATS.honest_runs} honest "
        f"scenarios, {STATS.honest_bytes:,} stream bytes delivered and checked), {inputs:,} "
        f"inputs (steps), {STATS.records_in:,} records fed, {STATS.records_out:,} records "
        f"emitted and decoded, {STATS.checks:,} invariant checks, {STATS.violations:,} "
        f"protocol violations answered, {STATS.credited_frames:,} data frames checked against "
        f"credit, "
        f"crashes: {0 if failure is None else 1}"
    )
    if failure is not None:
        print(f"FAILED: {failure}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
