"""The scenarios: what each one runs, with which sizes, and how its figures are derived.

Each scenario runs its variants (kwik, aioquic, and kwik options) interleaved, one sample of each
per repetition, so that drift in the machine's load hits all of them alike. A sample is one
fresh set of processes (:func:`benchmarks.harness.run_sample`). Every figure is reported as the
median of its samples with the spread (min, max) and the samples themselves.

A scenario returns a dict: ``status`` (``ok``, ``skipped`` or ``error``), ``reason`` unless ok,
``params``, ``rows`` (what the table shows: for each row the kwik and aioquic figures and their
ratio, kwik / aioquic), ``samples`` (every sample's value, machine load and raw result) and
``errors`` (samples that failed).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import harness, netns
from .common import MIB, QuicSettings, summarize

__all__ = ["SCENARIOS", "Suite"]


@dataclass
class Suite:
    """Settings of one benchmark run, shared by every scenario."""

    quick: bool
    loop: str
    repeat: int
    settings: QuicSettings
    workdir: Path
    quiet_budget: float = 0.0
    #: directory receiving one cProfile file per worker process (``--profile``)
    profile_dir: Path | None = None
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr, flush=True)
    cert_hosts: Sequence[str] = ("localhost", "127.0.0.1")
    _certs: dict[tuple[str, ...], tuple[str, str]] = field(default_factory=dict)

    def certificate(self, hosts: Sequence[str] | None = None) -> tuple[str, str]:
        """Paths of a self-signed certificate and key (made with kwik) naming ``hosts``."""
        import kwik

        names = tuple(hosts or self.cert_hosts)
        if names not in self._certs:
            cert_pem, key_pem = kwik.generate_self_signed_cert(list(names))
            index = len(self._certs)
            cert, key = self.workdir / f"cert{index}.pem", self.workdir / f"key{index}.pem"
            cert.write_bytes(cert_pem)
            key.write_bytes(key_pem)
            self._certs[names] = (str(cert), str(key))
        return self._certs[names]

    def reps(self, full: int | None = None) -> int:
        """Repetitions: 1 in quick mode, else ``--repeat`` (or ``full`` when larger)."""
        if self.quick:
            return 1
        return max(self.repeat, full or 0)

    def wait_quiet(self) -> float | None:
        """Before a sample, wait (within the run's budget) for other processes to calm down."""
        if self.quiet_budget <= 0:
            return None
        start = time.monotonic()
        load = harness.wait_for_quiet(min(5.0, self.quiet_budget))
        self.quiet_budget -= time.monotonic() - start
        return load


@dataclass
class Variant:
    """One system and configuration measured in a scenario."""

    key: str
    system: str
    task: str
    params: dict[str, Any]
    loop: str
    worker_pool: bool = True
    #: ``(host, command prefix)`` of each server; default: one server on loopback
    servers: Sequence[tuple[str, Sequence[str]]] = (("127.0.0.1", ()),)
    cert_hosts: Sequence[str] | None = None


def _timeout(size: int) -> float:
    return 60.0 + size / 0.5e6  # never slower than 0.5 MB/s


def _run_variants(
    suite: Suite,
    name: str,
    variants: Sequence[Variant],
    reps: int,
    extract: Callable[[dict[str, Any]], dict[str, float]],
    size: int = 0,
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Run every variant ``reps`` times, interleaved; return samples by variant and errors."""
    samples: dict[str, list[dict[str, Any]]] = {v.key: [] for v in variants}
    errors: list[str] = []
    for rep in range(reps):
        for variant in variants:
            cert, key = suite.certificate(variant.cert_hosts)
            servers = [
                harness.ServerSpec(
                    {
                        "role": "server",
                        "system": variant.system,
                        "loop": variant.loop,
                        "host": host,
                        "quic": suite.settings.to_dict(),
                        "worker_pool": variant.worker_pool,
                        "cert": cert,
                        "key": key,
                    },
                    prefix,
                )
                for host, prefix in variant.servers
            ]
            client = {
                "role": "client",
                "system": variant.system,
                "loop": variant.loop,
                "quic": suite.settings.to_dict(),
                "worker_pool": variant.worker_pool,
                "cert": cert,
                "task": variant.task,
                "params": variant.params,
            }
            quiet = suite.wait_quiet()
            label = f"{name}: {variant.key} {rep + 1}/{reps}"
            profile = None
            if suite.profile_dir is not None:
                stem = suite.profile_dir / f"{name}-{variant.key}-{rep + 1}"
                profile = f"{stem}-client.prof"
                for i, server in enumerate(servers):
                    server.profile = f"{stem}-server{i + 1}.prof"
            try:
                sample = harness.run_sample(servers, client, _timeout(size), profile)
            except harness.HarnessError as exc:
                errors.append(f"{variant.key} #{rep + 1}: {exc}")
                suite.log(f"{label}: FAILED {str(exc).splitlines()[0]}")
                continue
            values = extract(sample.result)
            values.update(_cpu_cost(sample))
            samples[variant.key].append(
                {
                    "values": values,
                    "foreign_cores": sample.foreign_cores,
                    "client_cpu_seconds": sample.client_cpu,
                    "server_cpu_seconds": sample.server_cpu,
                    "load_before": quiet,
                    "wall_seconds": round(sample.wall_seconds, 3),
                    "result": sample.result,
                }
            )
            shown = ", ".join(f"{k}={v:.4g}" for k, v in values.items())
            suite.log(f"{label}: {shown} (other load {sample.foreign_cores} cores)")
    return samples, errors


def _cpu_cost(sample: harness.Sample) -> dict[str, float]:
    """CPU cost of the measured work, client and server together: milliseconds per MiB moved,
    or microseconds per round trip. Unlike MB/s, it barely depends on other load."""
    result = sample.result
    if "cpu_seconds" in result and result.get("bytes"):
        cpu = result["cpu_seconds"] + sample.server_cpu
        return {"cpu_ms_per_mib": cpu * 1000 / (result["bytes"] / MIB)}
    if "cpu_us_per_round_trip" in result:
        # the server's share includes its warm-up rounds and the handshake: a small bias,
        # the same for both systems
        server = sample.server_cpu * 1e6 / result["count"]
        return {"cpu_us_per_rt": result["cpu_us_per_round_trip"] + server}
    return {}


def _values(samples: list[dict[str, Any]], metric: str) -> list[float]:
    return [s["values"][metric] for s in samples if metric in s["values"]]


def _row(
    what: str,
    unit: str,
    kwik: list[float],
    aioquic: list[float],
    target: dict[str, Any] | None = None,
    higher_is_better: bool = True,
) -> dict[str, Any]:
    """A table row: kwik and aioquic summaries, and kwik / aioquic of their medians."""
    k, a = summarize(kwik, unit), summarize(aioquic, unit)
    ratio = k["median"] / a["median"] if k["median"] is not None and a["median"] else None
    row: dict[str, Any] = {
        "what": what,
        "unit": unit,
        "higher_is_better": higher_is_better,
        "kwik": k,
        "aioquic": a,
        "ratio": ratio,
    }
    if target is not None:
        row["target"] = _judge(target, k["median"], ratio)
    return row


def _judge(target: dict[str, Any], kwik: float | None, ratio: float | None) -> dict[str, Any]:
    """Evaluate a target ``{"on": "ratio"|"kwik", "op": ">="|"<=", "value": x}``."""
    subject = ratio if target["on"] == "ratio" else kwik
    met = None
    if subject is not None:
        met = subject >= target["value"] if target["op"] == ">=" else subject <= target["value"]
    return {**target, "measured": subject, "met": met}


def _pairwise(a: list[float], b: list[float]) -> list[float]:
    """Per-repetition ratios a[i] / b[i] (the repetitions ran back to back)."""
    return [x / y for x, y in zip(a, b, strict=False) if y]


def _result(
    params: dict[str, Any],
    rows: list[dict[str, Any]],
    samples: dict[str, list[dict[str, Any]]],
    errors: list[str],
    **extra: Any,
) -> dict[str, Any]:
    missing = [
        r["what"]
        for r in rows
        if not r.get("derived") and (r["kwik"]["n"] == 0 or r["aioquic"]["n"] == 0)
    ]
    status = "error" if missing else "ok"
    result: dict[str, Any] = {"status": status}
    if missing:
        result["reason"] = f"no successful sample for: {', '.join(missing)}"
    notes: list[str] = list(extra.pop("notes", []))
    loads = [s["foreign_cores"] for runs in samples.values() for s in runs]
    busy = [x for x in loads if x is not None and x > BUSY_CORES]
    if busy:
        notes.append(
            f"{len(busy)} of {len(loads)} runs shared the machine with other processes "
            f"using more than {BUSY_CORES} cores (up to {max(busy):.2f})"
        )
    result.update(
        params=params,
        rows=rows,
        samples=samples,
        errors=errors,
        notes=notes,
        max_foreign_cores=max((x for x in loads if x is not None), default=None),
        **extra,
    )
    return result


def _collapsed(samples: dict[str, list[dict[str, Any]]], metric: str = "mbps") -> list[str]:
    """Notes on variants some of whose runs fell below a third of their best run."""
    notes = []
    for key, runs in samples.items():
        values = _values(runs, metric)
        if len(values) < 2:
            continue
        low = [v for v in values if v < max(values) / 3]
        if low:
            shown = ", ".join(f"{v:.2f}" for v in low)
            notes.append(
                f"{key}: {len(low)} of {len(values)} runs collapsed below a third of the best "
                f"run ({shown} vs {max(values):.2f} {metric})"
            )
    return notes


#: Other processes' load (cores) above which a run is flagged in the notes.
BUSY_CORES = 0.3


def _mbps(result: dict[str, Any]) -> dict[str, float]:
    return {"mbps": result["mbps"]}


# --- scenarios ----------------------------------------------------------------------------------


def _throughput(suite: Suite, name: str, task: str, what: str, **params: Any) -> dict[str, Any]:
    size = params.get("size", 0) * params.get("count", 1)
    variants = [Variant(system, system, task, params, suite.loop) for system in ("kwik", "aioquic")]
    samples, errors = _run_variants(suite, name, variants, suite.reps(), _mbps, size)
    rows = [
        _row(
            what,
            "MB/s",
            _values(samples["kwik"], "mbps"),
            _values(samples["aioquic"], "mbps"),
            {"on": "ratio", "op": ">=", "value": 0.9},
        ),
        _row(
            "CPU ms per MiB, client + server",
            "ms",
            _values(samples["kwik"], "cpu_ms_per_mib"),
            _values(samples["aioquic"], "cpu_ms_per_mib"),
            higher_is_better=False,
        ),
    ]
    return _result({**params, "loop": suite.loop}, rows, samples, errors)


def bulk(suite: Suite) -> dict[str, Any]:
    """One stream, client to server."""
    size = (4 if suite.quick else 64) * MIB
    what = f"one stream, {size // MIB} MiB client to server, MB/s"
    return _throughput(suite, "bulk", "upload", what, size=size)


def bulk_down(suite: Suite) -> dict[str, Any]:
    """One stream, server to client."""
    size = (4 if suite.quick else 64) * MIB
    what = f"one stream, {size // MIB} MiB server to client, MB/s"
    return _throughput(suite, "bulk-down", "download", what, size=size)


def streams(suite: Suite) -> dict[str, Any]:
    """16 concurrent streams, client to server."""
    size = (256 * 1024) if suite.quick else 4 * MIB
    count = 16
    what = f"{count} concurrent streams, {size / MIB:g} MiB each, aggregate MB/s"
    return _throughput(suite, "streams", "streams", what, count=count, size=size)


def rtt(suite: Suite) -> dict[str, Any]:
    """20-byte ping-pong on one stream."""
    params = {"count": 200, "warmup": 20} if suite.quick else {"count": 2000, "warmup": 100}
    variants = [Variant(s, s, "rtt", params, suite.loop) for s in ("kwik", "aioquic")]
    samples, errors = _run_variants(
        suite,
        "rtt",
        variants,
        suite.reps(5),
        lambda r: {"p50_us": r["p50_us"], "p99_us": r["p99_us"]},
    )
    rows = [
        _row(
            f"20-byte ping-pong, p{p} µs ({params['count']} round trips per run)",
            "µs",
            _values(samples["kwik"], f"p{p}_us"),
            _values(samples["aioquic"], f"p{p}_us"),
            {"on": "ratio", "op": "<=", "value": 1.3} if p == 50 else None,
            higher_is_better=False,
        )
        for p in (50, 99)
    ]
    rows.append(
        _row(
            "CPU µs per round trip, client + server",
            "µs",
            _values(samples["kwik"], "cpu_us_per_rt"),
            _values(samples["aioquic"], "cpu_us_per_rt"),
            higher_is_better=False,
        )
    )
    return _result({**params, "loop": suite.loop}, rows, samples, errors)


def sessions(suite: Suite) -> dict[str, Any]:
    """Concurrent session establishment."""
    count = 20 if suite.quick else 50
    params = {"count": count}
    variants = [Variant(s, s, "sessions", params, suite.loop) for s in ("kwik", "aioquic")]
    samples, errors = _run_variants(
        suite, "sessions", variants, suite.reps(5), lambda r: {"seconds": r["seconds"]}
    )
    row = _row(
        f"{count} concurrent sessions established, s",
        "s",
        _values(samples["kwik"], "seconds"),
        _values(samples["aioquic"], "seconds"),
        {"on": "ratio", "op": "<=", "value": 1.2},
        higher_is_better=False,
    )
    return _result({**params, "loop": suite.loop}, [row], samples, errors)


def pool(suite: Suite) -> dict[str, Any]:
    """kwik with the global worker pool vs records processed inline; allocations per MiB."""
    import kwik

    size = (4 if suite.quick else 32) * MIB
    alloc_size = (1 if suite.quick else 8) * MIB
    reps = suite.reps()
    speed = [
        Variant("kwik-pool", "kwik", "upload", {"size": size}, suite.loop, worker_pool=True),
        Variant("kwik-inline", "kwik", "upload", {"size": size}, suite.loop, worker_pool=False),
        Variant("aioquic", "aioquic", "upload", {"size": size}, suite.loop),
    ]
    samples, errors = _run_variants(suite, "pool", speed, reps, _mbps, size)

    def per_mib(result: dict[str, Any]) -> dict[str, float]:
        alloc = result["server"]["alloc"]
        return {
            "allocated_per_mib": alloc["allocated_bytes"] / (alloc_size / MIB),
            "peak_bytes": alloc["peak_bytes"],
        }

    # allocations are metered on asyncio: one datagram per loop iteration (see alloc.py)
    alloc_params = {"size": alloc_size, "alloc": True}
    metered = [
        Variant("alloc-kwik-pool", "kwik", "upload", alloc_params, "asyncio", worker_pool=True),
        Variant("alloc-kwik-inline", "kwik", "upload", alloc_params, "asyncio", worker_pool=False),
        Variant("alloc-aioquic", "aioquic", "upload", alloc_params, "asyncio"),
    ]
    alloc_samples, alloc_errors = _run_variants(suite, "pool", metered, reps, per_mib, alloc_size)
    samples.update(alloc_samples)
    errors.extend(alloc_errors)

    mb = {k: _values(samples[k], "mbps") for k in ("kwik-pool", "kwik-inline", "aioquic")}
    al = {
        k: [v / 1e6 for v in _values(samples[f"alloc-{k}"], "allocated_per_mib")]
        for k in ("kwik-pool", "kwik-inline", "aioquic")
    }
    rows = [
        _row(
            f"upload {size // MIB} MiB, MB/s, worker_pool=True",
            "MB/s",
            mb["kwik-pool"],
            mb["aioquic"],
        ),
        _row(
            f"upload {size // MIB} MiB, MB/s, worker_pool=False (inline)",
            "MB/s",
            mb["kwik-inline"],
            mb["aioquic"],
        ),
        _row(
            "MB allocated per MiB received (tracemalloc, receiver), worker_pool=True",
            "MB/MiB",
            al["kwik-pool"],
            al["aioquic"],
            higher_is_better=False,
        ),
        _row(
            "MB allocated per MiB received (tracemalloc, receiver), worker_pool=False",
            "MB/MiB",
            al["kwik-inline"],
            al["aioquic"],
            higher_is_better=False,
        ),
        _derived(
            "kwik pool / inline, MB/s (ratio only)",
            _pairwise(mb["kwik-pool"], mb["kwik-inline"]),
        ),
        _derived(
            "kwik pool / inline, MB allocated per MiB (ratio only)",
            _pairwise(al["kwik-pool"], al["kwik-inline"]),
            higher_is_better=False,
        ),
    ]
    available = hasattr(kwik, "get_global_worker_pool")
    stats = [
        s["result"]["server"].get("pool")
        for s in samples["kwik-pool"]
        if isinstance(s["result"].get("server"), dict)
    ]
    pool_info: dict[str, Any] = {
        "available": available,
        "receiver_stats": stats[-1] if stats else None,
    }
    if not available:
        pool_info["note"] = (
            "kwik.get_global_worker_pool does not exist in this kwik: worker_pool=True and "
            "False run the same code"
        )
    params = {"size": size, "alloc_size": alloc_size, "loop": suite.loop, "alloc_loop": "asyncio"}
    return _result(params, rows, samples, errors, pool=pool_info)


def _derived(what: str, values: list[float], higher_is_better: bool = True) -> dict[str, Any]:
    """A row holding one kwik-only ratio (in the ratio column), with its per-rep spread."""
    summary = summarize(values, "x")
    return {
        "what": what,
        "unit": "x",
        "derived": True,
        "higher_is_better": higher_is_better,
        "kwik": None,
        "aioquic": None,
        "ratio": summary["median"],
        "ratio_spread": summary,
    }


def loop(suite: Suite) -> dict[str, Any]:
    """kwik bulk on asyncio and on uvloop, raw aioquic alike."""
    size = (2 if suite.quick else 32) * MIB
    params = {"size": size}
    variants = [
        Variant(f"{system}-{loop_name}", system, "upload", params, loop_name)
        for loop_name in ("asyncio", "uvloop")
        for system in ("kwik", "aioquic")
    ]
    samples, errors = _run_variants(suite, "loop", variants, suite.reps(), _mbps, size)
    v = {key: _values(s, "mbps") for key, s in samples.items()}
    rows = [
        _row(
            f"upload {size // MIB} MiB on {name}, MB/s",
            "MB/s",
            v[f"kwik-{name}"],
            v[f"aioquic-{name}"],
        )
        for name in ("asyncio", "uvloop")
    ]
    gains = _row(
        "uvloop / asyncio, each system (x)",
        "x",
        _pairwise(v["kwik-uvloop"], v["kwik-asyncio"]),
        _pairwise(v["aioquic-uvloop"], v["aioquic-asyncio"]),
    )
    gains["derived"] = True
    rows.append(gains)
    return _result(params, rows, samples, errors, notes=_collapsed(samples))


def multipath(suite: Suite) -> dict[str, Any]:
    """Two servers behind tbf-shaped veths: one path vs primary + relay."""
    if suite.quick:
        return {"status": "skipped", "reason": "skipped in --quick mode (needs ~2 minutes)"}
    reason = netns.unavailable_reason()
    if reason is not None:
        return {"status": "skipped", "reason": reason}
    size = 16 * MIB
    try:
        testbed = netns.Testbed(paths=2)
        with testbed:
            hosts = [testbed.server_host(0), testbed.server_host(1)]
            servers = [(hosts[0], testbed.prefix(0)), (hosts[1], testbed.prefix(1))]
            suite.log(f"multipath: namespaces {testbed.namespaces}, servers {hosts}")
            variants = [
                Variant(
                    f"{system}-{mode}",
                    system,
                    "multipath",
                    {"size": size, "mode": mode},
                    suite.loop,
                    servers=servers if mode == "dual" else servers[:1],
                    cert_hosts=hosts,
                )
                for mode in ("single", "dual")
                for system in ("kwik", "aioquic")
            ]
            samples, errors = _run_variants(suite, "multipath", variants, suite.reps(), _mbps, size)
            qdiscs = testbed.qdisc_stats()
    except netns.TestbedError as exc:
        return {"status": "skipped", "reason": f"could not build the namespaces: {exc}"}
    v = {key: _values(s, "mbps") for key, s in samples.items()}
    rows = [
        _row(
            f"download {size // MIB} MiB, 1 path (primary alone), MB/s",
            "MB/s",
            v["kwik-single"],
            v["aioquic-single"],
        ),
        _row(
            f"download {size // MIB} MiB, 2 servers (primary + relay), MB/s",
            "MB/s",
            v["kwik-dual"],
            v["aioquic-dual"],
        ),
    ]
    gain = _row(
        "2 servers / 1 path, each system (x)",
        "x",
        _pairwise(v["kwik-dual"], v["kwik-single"]),
        _pairwise(v["aioquic-dual"], v["aioquic-single"]),
        {"on": "kwik", "op": ">=", "value": 1.8},
    )
    gain["derived"] = True
    rows.append(gain)
    params = {
        "size": size,
        "loop": suite.loop,
        "shaping": "tbf rate 20mbit burst 32kbit latency 50ms on each server-side veth",
        "aioquic_dual": "two raw connections to the two servers, half of the bytes from each",
        "kwik_dual": "primary adds the relay, then SPLIT: each server writes its half "
        "(set_write_offset) of one logical stream",
    }
    return _result(params, rows, samples, errors, qdisc_stats=qdiscs)


#: Every scenario, in table order.
SCENARIOS: dict[str, Callable[[Suite], dict[str, Any]]] = {
    "bulk": bulk,
    "bulk-down": bulk_down,
    "streams": streams,
    "rtt": rtt,
    "sessions": sessions,
    "pool": pool,
    "loop": loop,
    "multipath": multipath,
}
