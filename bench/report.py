"""The benchmark's figures and targets: samples in, ratios per repetition, medians, PASS/FAIL.

Pure functions (no processes, no clock), so the arithmetic and the verdicts are tested on
fixed inputs (tests/bench/test_bench_report.py).

Every target is a ratio of two figures measured in the same repetition of one run, the two
parties run one right after the other under the same load: absolute times move with the
machine (a busier or slower machine scales both sides), ratios much less. A target is judged
on the median over the repetitions, and every repetition is printed.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from dataclasses import dataclass

from bench.loadgen import Summary


@dataclass(frozen=True)
class Sample:
    """One load run against one target: `phase` names the comparison it belongs to."""

    phase: str
    target: str
    concurrency: int
    repetition: int  # 1-based
    summary: Summary
    # The target process's CPU per stream, net of what it burns idle (None: not measured).
    cpu_ms_per_stream: float | None = None
    # The whole machine's busy CPU per stream during the run (every party: backend, upstream
    # simulators, Postgres, Redis, the load generator, and anything else running).
    machine_cpu_ms_per_stream: float | None = None
    # Streams/s while the load was steady (see `steady_rate`); None: the whole run's rate.
    steady_throughput: float | None = None
    # CPU ms per stream of the other parties (load generator, simulator, Postgres, Redis).
    party_cpu_ms_per_stream: dict[str, float] | None = None

    @property
    def throughput(self) -> float:
        if self.steady_throughput is not None:
            return self.steady_throughput
        s = self.summary
        return s.streams / s.wall_seconds if s.wall_seconds > 0 else 0.0


def steady_rate(ended_ns: Iterable[int], trim: float = 0.1) -> float | None:
    """Streams completed per second between the first and the last `trim` of completions:
    the rate at saturation without the ramp-up (first starts spread out) and the tail (fewer
    streams left in flight than clients), which weigh more the faster the target is, so would
    bias a comparison of a fast target with a slow one."""
    ends = sorted(ended_ns)
    cut = int(len(ends) * trim)
    first, last = cut, len(ends) - 1 - cut
    if last - first < 10 or ends[last] <= ends[first]:
        return None
    return (last - first) / ((ends[last] - ends[first]) / 1e9)


def median(values: Iterable[float | None]) -> float | None:
    """The median, or None when any value is unknown (a repetition that measured nothing
    must not be dropped silently) or there is none."""
    listed = list(values)
    if not listed or any(v is None for v in listed):
        return None
    return float(statistics.median(v for v in listed if v is not None))


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def added(through: float | None, direct: float | None) -> float | None:
    return None if through is None or direct is None else through - direct


@dataclass(frozen=True)
class Check:
    """One target: a value per repetition, judged on their median against `limit`."""

    name: str
    per_repetition: tuple[float | None, ...]
    limit: float
    at_most: bool = True  # the median must be <= limit (else >= limit)
    errors: int = 0  # failed streams in the samples it is computed from: any fails it
    skipped: str | None = None  # why it was not measured (then it neither passes nor fails)
    detail: str = ""

    @property
    def median(self) -> float | None:
        return median(self.per_repetition)

    @property
    def passed(self) -> bool | None:
        if self.skipped is not None:
            return None
        value = self.median
        if value is None or self.errors:
            return False
        return value <= self.limit if self.at_most else value >= self.limit

    def render(self) -> str:
        if self.skipped is not None:
            return f"  {self.name}: SKIPPED ({self.skipped})"
        listed = ", ".join(_num(v) for v in self.per_repetition) or "-"
        op = "<=" if self.at_most else ">="
        errors = f"; {self.errors} failed streams" if self.errors else ""
        verdict = "PASS" if self.passed else "FAIL"
        line = (
            f"  {self.name}: per repetition {listed}; median {_num(self.median)} "
            f"(target {op} {self.limit:g}{errors}): {verdict}"
        )
        return line + (f"\n      {self.detail}" if self.detail else "")


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def by_repetition(
    samples: Iterable[Sample], phase: str, target: str, concurrency: int | None = None
) -> dict[int, Sample]:
    return {
        s.repetition: s
        for s in samples
        if s.phase == phase
        and s.target == target
        and (concurrency is None or s.concurrency == concurrency)
    }


def _paired(
    samples: list[Sample], phase: str, targets: tuple[str, ...], concurrency: int | None
) -> list[tuple[Sample, ...]]:
    """The repetitions in which every one of `targets` was measured, in order."""
    columns = [by_repetition(samples, phase, t, concurrency) for t in targets]
    reps = sorted(set.intersection(*(set(c) for c in columns))) if columns else []
    return [tuple(c[r] for c in columns) for r in reps]


def cpu_ratio_check(
    samples: list[Sample],
    *,
    name: str,
    phase: str,
    numerator: str,
    denominator: str,
    limit: float,
    concurrency: int | None = None,
    numerator_phase: str | None = None,
) -> Check:
    """CPU per stream of one target divided by another's, repetition by repetition."""
    num = by_repetition(samples, numerator_phase or phase, numerator, concurrency)
    den = by_repetition(samples, phase, denominator, concurrency)
    reps = sorted(set(num) & set(den))
    if not reps:
        return Check(name, (), limit, skipped=f"no repetition measured both {numerator} and "
                     f"{denominator}")  # fmt: skip
    values = tuple(ratio(num[r].cpu_ms_per_stream, den[r].cpu_ms_per_stream) for r in reps)
    errors = sum(num[r].summary.errors + den[r].summary.errors for r in reps)
    detail = (
        f"CPU ms per stream, {numerator}: "
        + ", ".join(_num(num[r].cpu_ms_per_stream) for r in reps)
        + f"; {denominator}: "
        + ", ".join(_num(den[r].cpu_ms_per_stream) for r in reps)
    )
    return Check(name, values, limit, errors=errors, detail=detail)


def added_ttfe_ratio_check(
    samples: list[Sample],
    *,
    name: str,
    phase: str,
    concurrency: int,
    ours: str,
    peer: str,
    direct: str,
    limit: float,
    skipped: str | None = None,
) -> Check:
    """(ours - direct) / (peer - direct) of the median time to first event, per repetition:
    each target's added time over reading the upstream straight."""
    if skipped is not None:
        return Check(name, (), limit, skipped=skipped)
    rows = _paired(samples, phase, (ours, peer, direct), concurrency)
    if not rows:
        return Check(name, (), limit, skipped=f"no repetition measured {ours}, {peer} and "
                     f"{direct}")  # fmt: skip
    values, ours_added, peer_added = [], [], []
    for o, p, d in rows:
        a = added(o.summary.ttfe_p50_ms, d.summary.ttfe_p50_ms)
        b = added(p.summary.ttfe_p50_ms, d.summary.ttfe_p50_ms)
        ours_added.append(a)
        peer_added.append(b)
        values.append(ratio(a, b))
    errors = sum(o.summary.errors + p.summary.errors for o, p, _ in rows)
    detail = (
        f"added time to first event p50 (ms), {ours}: "
        + ", ".join(_signed(v) for v in ours_added)
        + f"; {peer}: "
        + ", ".join(_signed(v) for v in peer_added)
    )
    return Check(name, tuple(values), limit, errors=errors, detail=detail)


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.2f}"


def scaling_ceiling(single: Sample, cores: int) -> float | None:
    """The most that `cores` workers can gain over one when every party shares the cores: one
    worker is bound by its own core (1 / backend CPU per turn), all of them by the machine
    (cores / every party's CPU per turn), so the ratio is at most cores * backend / all."""
    backend, machine = single.cpu_ms_per_stream, single.machine_cpu_ms_per_stream
    if backend is None or machine is None or machine <= 0:
        return None
    return min(float(cores), cores * backend / machine)


def throughput_ratio_check(
    samples: list[Sample], *, name: str, phase: str, numerator: str, denominator: str,
    limit: float, cores: int | None = None,
) -> Check:  # fmt: skip
    rows = _paired(samples, phase, (numerator, denominator), None)
    if not rows:
        return Check(name, (), limit, at_most=False, skipped="not measured")
    values = tuple(ratio(n.throughput, d.throughput) for n, d in rows)
    errors = sum(n.summary.errors + d.summary.errors for n, d in rows)
    detail = (
        f"streams/s, {numerator}: "
        + ", ".join(f"{n.throughput:.0f}" for n, _ in rows)
        + f"; {denominator}: "
        + ", ".join(f"{d.throughput:.0f}" for _, d in rows)
    )
    if cores is not None:
        ceilings = [scaling_ceiling(d, cores) for _, d in rows]
        detail += (
            f"; the most {cores} cores allow with these CPU shares (cores x one worker's CPU "
            f"per turn / the machine's): " + ", ".join(_num(c) for c in ceilings)
        )
    return Check(name, values, limit, at_most=False, errors=errors, detail=detail)


def zero_errors_check(samples: list[Sample], *, name: str, phase: str, target: str) -> Check:
    """Failed streams per repetition; passes when there is none in any."""
    reps = by_repetition(samples, phase, target)
    if not reps:
        return Check(name, (), 0, skipped="not measured")
    values = tuple(float(reps[r].summary.errors) for r in sorted(reps))
    streams = sum(s.summary.streams for s in reps.values())
    errors = int(sum(values))
    return Check(name, values, 0, errors=errors, detail=f"{errors} failed of {streams} streams")


def render_checks(checks: list[Check]) -> str:
    lines = ["Targets (each a median over the repetitions; every repetition listed):"]
    lines += [c.render() for c in checks]
    failed = [c.name for c in checks if c.passed is False]
    skipped = [c.name for c in checks if c.passed is None]
    lines.append(
        f"  => {len(checks) - len(failed) - len(skipped)} PASS, {len(failed)} FAIL, "
        f"{len(skipped)} SKIPPED"
    )
    return "\n".join(lines)


def render_samples(samples: list[Sample], phase: str, direct: str | None = None) -> str:
    """One row per run of a phase, in the order they ran; `added` against the `direct` target
    of the same repetition and concurrency."""
    rows = [s for s in samples if s.phase == phase]
    directs = {(s.repetition, s.concurrency): s for s in rows if s.target == direct}
    out = [
        f"  {'rep':>3} {'C':>5} {'target':<14}{'streams':>8}{'errors':>7}{'TTFE p50':>10}"
        f"{'p99':>9}{'added p50':>11}{'CPU/stream':>12}{'all CPU':>10}{'streams/s':>11}"
    ]
    for s in rows:
        d = directs.get((s.repetition, s.concurrency))
        add = (
            added(s.summary.ttfe_p50_ms, d.summary.ttfe_p50_ms)
            if d is not None and s is not d
            else None
        )
        cpu = "-" if s.cpu_ms_per_stream is None else f"{s.cpu_ms_per_stream:.2f} ms"
        machine = _num(s.machine_cpu_ms_per_stream)
        out.append(
            f"  {s.repetition:>3} {s.concurrency:>5} {s.target:<14}{s.summary.streams:>8}"
            f"{s.summary.errors:>7}{_num(s.summary.ttfe_p50_ms):>10}"
            f"{_num(s.summary.ttfe_p99_ms):>9}{_signed(add):>11}{cpu:>12}{machine:>10}"
            f"{s.throughput:>11.0f}"
        )
        for kind, count in s.summary.error_kinds.items():
            out.append(f"        {s.target} error x{count}: {kind}")
    return "\n".join(out)
