#!/usr/bin/env python3
"""Runs every benchmark and lab measurement and rewrites BENCHMARKS.md (issue 9).

    python3 scripts/bench-report.py [--only NAME[,NAME]] [--output PATH] [--keep-going]
                                    [--fuzz-log FILE] [--soak-json FILE...] [--timeout S]
    python3 scripts/bench-report.py --list        the section names and their commands
    python3 scripts/bench-report.py --self-test   checks the parsers on sample output

`just bench [ARGS]` runs it. Each section is one subprocess with the exact command shown in the
report (plus the builds it needs, also shown). The script parses the lines each bench prints; a
line it cannot parse is marked "not parsed" in the table and shown as is, never fatal. Without
`--keep-going` the first failing section stops the run and the output file is left untouched;
with it, failures are recorded in the report and the exit status is 1 at the end.

Python 3.11, standard library only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
NOT_PARSED = "not parsed"
MB = 1_000_000

# ---------------------------------------------------------------------------------------------
# Numbers: parsing and formatting


_UNITS = {"ns": 1e-9, "µs": 1e-6, "μs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
DUR = r"\d+(?:\.\d+)?\s*(?:ns|µs|μs|us|ms|s)(?![A-Za-z])"
_DUR_RX = re.compile(r"(?P<num>\d+(?:\.\d+)?)\s*(?P<unit>ns|µs|μs|us|ms|s)(?![A-Za-z])")
_ANSI_RX = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def parse_dur(text: str | None) -> float | None:
    """Seconds from `24 ns`, `51.23µs`, `1.17 ms`, `2.5s` (Rust's Debug and our own formats)."""
    if text is None:
        return None
    m = _DUR_RX.search(text)
    if not m:
        return None
    return float(m["num"]) * _UNITS[m["unit"]]


def parse_num(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text.replace(",", "").strip())
    except ValueError:
        return None


def sig(x: float) -> str:
    """About three significant digits, thousands separated, never scientific."""
    ax = abs(x)
    if ax >= 100:
        return f"{x:,.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def fmt_dur(seconds: float | None) -> str:
    if seconds is None:
        return NOT_PARSED
    if seconds < 1e-6:
        return f"{sig(seconds * 1e9)} ns"
    if seconds < 1e-3:
        return f"{sig(seconds * 1e6)} µs"
    if seconds < 1:
        return f"{sig(seconds * 1e3)} ms"
    return f"{sig(seconds)} s"


def fmt_rate(x: float | None, unit: str) -> str:
    if x is None:
        return NOT_PARSED
    if x >= 1e6:
        return f"{x / 1e6:.1f} M {unit}"
    return f"{x:,.0f} {unit}"


def fmt_ratio(x: float | None) -> str:
    if x is None:
        return NOT_PARSED
    return f"{sig(x)}×"


def strip_ansi(text: str) -> str:
    return _ANSI_RX.sub("", text)


# ---------------------------------------------------------------------------------------------
# What a parser returns


@dataclass
class Target:
    """One target from an issue and what this run measured for it."""

    issue: str
    what: str
    measured: str
    met: bool | None  # None: not parsed / not measured


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    title: str = ""


@dataclass
class Report:
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    baselines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)  # output lines that matched no pattern
    missing: list[str] = field(default_factory=list)  # expected results not found
    values: dict[str, str] = field(default_factory=dict)  # for the published-numbers table
    # Cost curves to plot: name → points (size, value, value per unit).
    curves: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)

    def table(self, *headers: str, title: str = "") -> Table:
        t = Table(list(headers), title=title)
        self.tables.append(t)
        return t

    def not_parsed(self, table: Table, label: str) -> None:
        table.rows.append([label] + [NOT_PARSED] * (len(table.headers) - 1))
        self.missing.append(label)

    def target(self, issue: str, what: str, value: float | None, ok: Callable[[float], bool], shown: str) -> None:
        if value is None:
            self.targets.append(Target(issue, what, NOT_PARSED, None))
        else:
            self.targets.append(Target(issue, what, shown, bool(ok(value))))


class Scan:
    """The lines of a bench's output; each pattern claims the first unclaimed line it matches."""

    def __init__(self, text: str, candidate: str):
        self.lines = [strip_ansi(line).rstrip() for line in text.splitlines()]
        self.used: set[int] = set()
        self.candidate = re.compile(candidate)

    def find(self, pattern: str, consume: bool = True) -> re.Match[str] | None:
        rx = re.compile(pattern)
        for i, line in enumerate(self.lines):
            if i in self.used:
                continue
            m = rx.search(line)
            if m:
                if consume:
                    self.used.add(i)
                return m
        return None

    def find_all(self, pattern: str) -> list[re.Match[str]]:
        found = []
        while (m := self.find(pattern)) is not None:
            found.append(m)
        return found

    def leftovers(self) -> list[str]:
        return [line for i, line in enumerate(self.lines) if i not in self.used and self.candidate.search(line)]


# ---------------------------------------------------------------------------------------------
# Parsers, one per bench. Each reads the println! formats of its bench (see the bench source).


def parse_ipam(out: str) -> Report:
    r = Report()
    s = Scan(out, r"^ipam:")
    t = r.table("measurement", "result")
    issue = "#5 allocator"

    m = s.find(r"^ipam: /16 to exhaustion \((?P<n>[\d,]+) allocations\): (?P<total>.+?) \((?P<each>.+?) per allocation\)")
    if m:
        t.rows.append([f"{m['n']} allocations from a /16 to exhaustion", f"{m['total']} ({m['each']} each)"])
    else:
        r.not_parsed(t, "65,536 allocations from a /16 to exhaustion")

    m = s.find(r"^ipam: pool-full check on an exhausted /16: (?P<v>.+?)(?: \(target.*)?$")
    full = parse_dur(m["v"]) if m else None
    if m:
        t.rows.append(['"pool full" on an exhausted /16', m["v"]])
    else:
        r.not_parsed(t, '"pool full" on an exhausted /16')
    r.target(issue, '"pool full" on an exhausted /16 < 10 µs', full, lambda v: v < 10e-6, fmt_dur(full))

    m = s.find(r"^ipam: 100,000 allocations from a /64: (?P<t>.+?), available after: (?P<avail>\d+)")
    exact = None
    if m:
        avail = int(m["avail"])
        expected = 2**64 - 100_000
        exact = 1.0 if avail == expected else 0.0
        verdict = "exact" if exact else f"expected {expected}"
        t.rows.append(["100,000 allocations from a /64", f"{m['t']}; available after: {avail} ({verdict})"])
        r.values["ipam_64"] = f"exact: {avail:,} available after 100,000 of 2^64 taken"
    else:
        r.not_parsed(t, "100,000 allocations from a /64")
    r.target(issue, "/64 pool: exact accounting (2^64 − 100,000 available after 100,000)", exact,
             lambda v: v == 1.0, "exact" if exact else "wrong count")

    m = s.find(rf"^ipam: one allocation at 50,000 in use: tree (?P<tree>{DUR}) vs linear scan (?P<scan>{DUR}) = (?P<x>[\d.,]+)x")
    ratio = parse_num(m["x"]) if m else None
    if m:
        t.rows.append(["one allocation at 50,000 in use: coalesced-run tree vs Go-style linear scan",
                       f"{m['tree']} vs {m['scan']} = **{fmt_ratio(ratio)}**"])
        r.baselines.append(f"linear scan (what the Go PureLB does) at 50,000 in use: {m['scan']} per allocation "
                           f"vs {m['tree']} for the tree = {fmt_ratio(ratio)}")
        r.values["ipam_scan"] = f"{m['tree']} vs {m['scan']} for the linear scan at 50,000 in use ({fmt_ratio(ratio)})"
    else:
        r.not_parsed(t, "one allocation at 50,000 in use: tree vs linear scan")
    r.target(issue, "one allocation at 50,000 in use ≥ 100× faster than the linear scan", ratio,
             lambda v: v >= 100, fmt_ratio(ratio))

    m = s.find(r"^ipam: first 16,384 allocations of a /16: tree (?P<tree>.+?) vs linear scan (?P<scan>.+?) = (?P<x>[\d.,]+)x")
    if m:
        x = parse_num(m["x"])
        t.rows.append(["first 16,384 allocations of a /16: tree vs linear scan", f"{m['tree']} vs {m['scan']} = {fmt_ratio(x)}"])
        r.baselines.append(f"linear scan, first 16,384 allocations of a /16: {m['scan']} vs {m['tree']} = {fmt_ratio(x)}")
    else:
        r.not_parsed(t, "first 16,384 allocations of a /16: tree vs linear scan")
    if "TARGET MISSED" in out:
        r.notes.append("The bench printed `TARGET MISSED` and exits non-zero.")
    r.unparsed = s.leftovers()
    return r


_QUEUE_SUFFIX = ", prometheus recorder"


def parse_queue(out: str) -> Report:
    r = Report()
    s = Scan(out, r"^queue: .*items")
    m = s.find(r"^queue: (?P<cpus>\d+) CPUs, (?P<rt>.*)$")
    if m:
        r.notes.append(f"{m['cpus']} CPUs, {m['rt']}.")
    t = r.table("scenario", "no recorder", "Prometheus recorder")
    rows: dict[str, list[str]] = {}
    for m in s.find_all(r"^queue: (?P<scn>.+): (?P<n>\d+) items in (?P<ms>[\d.]+) ms = (?P<rate>[\d.]+) items/s$"):
        scn = m["scn"]
        col = 1
        if scn.endswith(_QUEUE_SUFFIX):
            scn, col = scn[: -len(_QUEUE_SUFFIX)], 2
        unit = "adds/s" if " adds of " in scn else "items/s"
        processed = re.search(r", (\d+) processed$", scn)
        if processed:
            scn = scn[: processed.start()]
        row = rows.setdefault(scn, [scn, NOT_PARSED, NOT_PARSED])
        row[col] = fmt_rate(parse_num(m["rate"]), unit)
        if processed:
            row[col] += f" ({int(processed[1]):,} processed)"
    if rows:
        t.rows.extend(rows.values())
        if any(NOT_PARSED in row for row in rows.values()):
            r.missing.append("a scenario printed without its counterpart")
    else:
        r.not_parsed(t, "every scenario")
    r.unparsed = s.leftovers()
    return r


def parse_endpoints(out: str) -> Report:
    r = Report()
    s = Scan(out, r"^(endpoints:|initial fill|incremental:|full rescan:|speed-up:)")
    t = r.table("measurement", "result")
    issue = "#4 core"
    m = s.find(r"^endpoints: (?P<what>.+)$")
    if m:
        r.notes.append(f"Setup: {m['what']}.")
    m = s.find(rf"^initial fill \((?P<what>.+?)\): (?P<d>{DUR})")
    if m:
        t.rows.append([f"initial fill ({m['what']})", fmt_dur(parse_dur(m["d"]))])
    m = s.find(rf"^incremental: (?P<what>.+?)\s+(?P<d>{DUR})/op\s+\((?P<how>.+)\)")
    inc = parse_dur(m["d"]) if m else None
    if m:
        t.rows.append([f"incremental: {m['what'].strip()} ({m['how']})", fmt_dur(inc)])
    else:
        r.not_parsed(t, "incremental: apply 1 slice + usable nodes")
    m = s.find(rf"^full rescan: (?P<what>.+?)\s+(?P<d>{DUR})/op\s+\((?P<how>.+)\)")
    rescan = parse_dur(m["d"]) if m else None
    if m:
        t.rows.append([f"full rescan: {m['what'].strip()}, same run ({m['how']})", fmt_dur(rescan)])
    else:
        r.not_parsed(t, "full rescan of all slices, same run")
    m = s.find(r"^speed-up: (?P<x>[\d.,]+)x")
    ratio = parse_num(m["x"]) if m else (rescan / inc if inc and rescan else None)
    if ratio is not None:
        t.rows.append(["ratio", f"**{fmt_ratio(ratio)}**"])
        if inc is not None and rescan is not None:
            r.baselines.append(f"full rescan: {fmt_dur(rescan)} vs incremental {fmt_dur(inc)} = {fmt_ratio(ratio)}")
        else:
            r.baselines.append(f"full rescan vs incremental, as the bench printed it: {fmt_ratio(ratio)}")
    else:
        r.not_parsed(t, "ratio")
    r.target(issue, "EndpointSlice index ≥ 20× faster than the full rescan at 10,000 endpoints", ratio,
             lambda v: v >= 20, fmt_ratio(ratio))
    if "MISMATCH" in out:
        r.notes.append("The incremental index and the rescan disagreed (`MISMATCH`).")
    r.unparsed = s.leftovers()
    return r


def parse_netlink(out: str) -> Report:
    r = Report()
    s = Scan(out, r"p50|addresses on a bridge")
    batches: list[str] = []
    ops: dict[str, dict[str, str]] = {}
    order: list[str] = []
    current = None
    op_rx = re.compile(r"^\s+(?P<what>\S.*?)\s+n=(?P<n>\d+)\s+p50\s+(?P<p50>[\d.]+) µs\s+p99\s+(?P<p99>[\d.]+) µs\s+max\s+(?P<max>[\d.]+) µs")
    batch_rx = re.compile(r"^(?P<label>\S.*?): (?P<count>\d+) addresses on a bridge$")
    for i, line in enumerate(s.lines):
        if m := batch_rx.match(line):
            current = f"{m['label']} ×{int(m['count']):,}"
            batches.append(current)
            s.used.add(i)
        elif (m := op_rx.match(line)) and current is not None:
            what = re.sub(r"\d+", "N", m["what"])
            if what not in ops:
                ops[what] = {}
                order.append(what)
            p50, p99 = float(m["p50"]) * 1e-6, float(m["p99"]) * 1e-6
            ops[what][current] = f"{fmt_dur(p50)} / {fmt_dur(p99)}"
            if what.startswith("add ") and current.startswith("IPv4"):
                r.values["netlink_add_v4"] = f"p50 {fmt_dur(p50)}, p99 {fmt_dur(p99)}"
            s.used.add(i)
    if "core::netlink against the kernel" in out:
        for i, line in enumerate(s.lines):
            if line.startswith("core::netlink against the kernel"):
                s.used.add(i)
    t = r.table("operation", *[f"{b} p50 / p99" for b in batches] or ["p50 / p99"])
    if not ops:
        r.not_parsed(t, "every operation")
    for what in order:
        t.rows.append([what] + [ops[what].get(b, NOT_PARSED) for b in batches])
    r.notes.append("No numeric target: these latencies are the floor for everything the agent does "
                   "(core issue); the agent lab bench uses the add p50 as part of its floor.")
    r.unparsed = s.leftovers()
    return r


def parse_apiserver(out: str) -> Report:
    r = Report()
    s = Scan(out, r"^apiserver:")
    t = r.table("measurement", "result")
    issue = "#3 test ground"
    m = s.find(rf"^apiserver: (?P<n>\d+) creates over HTTP: (?P<s>[\d.]+) s = (?P<rate>[\d.]+) req/s; latency p50 (?P<p50>{DUR}) p99 (?P<p99>{DUR})")
    if m:
        n = int(m["n"])
        t.rows.append([f"{n:,} creates, one client, a new connection per request",
                       f"{m['s']} s = {fmt_rate(parse_num(m['rate']), 'req/s')}; latency p50 "
                       f"{fmt_dur(parse_dur(m['p50']))}, p99 {fmt_dur(parse_dur(m['p99']))}"])
    else:
        r.not_parsed(t, "10,000 creates, one client")
    m = s.find(rf"^apiserver: list of (?P<n>\d+) objects: (?P<d>{DUR}) \((?P<kib>\d+) KiB\)")
    if m:
        t.rows.append([f"list of {int(m['n']):,} objects", f"{fmt_dur(parse_dur(m['d']))} ({int(m['kib']) / 1024:.1f} MiB)"])
    else:
        r.not_parsed(t, "list of 10,000 objects")
    m = s.find(rf"^apiserver: (?P<w>\d+) watchers x (?P<wr>\d+) writes = (?P<d>\d+) deliveries in (?P<s>[\d.]+) s; .*?p50 (?P<p50>{DUR}) p99 (?P<p99>{DUR})")
    delivered = None
    if m:
        w, wr, d = int(m["w"]), int(m["wr"]), int(m["d"])
        delivered = 1.0 if d == w * wr else 0.0
        t.rows.append([f"{w} watchers × {wr:,} writes = {d:,} deliveries",
                       f"{m['s']} s; fan-out latency (write sent → watcher received) p50 "
                       f"{fmt_dur(parse_dur(m['p50']))}, p99 {fmt_dur(parse_dur(m['p99']))}"])
        r.values["fanout"] = f"p50 {fmt_dur(parse_dur(m['p50']))}, p99 {fmt_dur(parse_dur(m['p99']))}"
    else:
        r.not_parsed(t, "100 watchers × 1,000 writes")
    r.target(issue, "10,000 objects and 100 concurrent watchers without trouble (every write delivered to every watcher)",
             delivered, lambda v: v == 1.0, "all delivered" if delivered else "deliveries missing")
    r.unparsed = s.leftovers()
    return r


def parse_allocator_burst(out: str) -> Report:
    """Per size: the median and spread of the runs (each in a fresh emulator): the raw write rate,
    the burst's rate and its ratio to the same run's raw rate, the restart adoption."""
    r = Report()
    s = Scan(out, r"^burst:")
    t = r.table("measurement", "median (min–max over the runs)")
    s.find_all(r"^burst: \d+ Services, run \d+: raw ")
    s.find_all(r"^burst: \d+ Services: restart: ")
    s.find_all(r"^burst: \d+ Services: the purelb allocator process \(release binary\) adopted them in ")
    raws = s.find_all(r"^burst: emulator raw write throughput at (?P<n>\d+) Services over (?P<runs>\d+) runs: "
                      r"median (?P<rate>[\d.]+) writes/s \(min (?P<min>[\d.]+), max (?P<max>[\d.]+)\)")
    if not raws:
        r.not_parsed(t, "emulator raw write throughput")
    for raw in raws:
        n = int(raw["n"])
        runs = raw["runs"]
        t.rows.append([f"{n:,} Services: emulator raw write throughput (one client, status patches), {runs} runs",
                       f"{fmt_rate(parse_num(raw['rate']), 'writes/s')} ({raw['min']}–{raw['max']})"])
        m = s.find(rf"^burst: allocator caches synced \(initial list of {n} Services\): median (?P<s>[\d.]+) s "
                   r"\(min (?P<min>[\d.]+), max (?P<max>[\d.]+)\)")
        if m:
            t.rows.append([f"{n:,} Services: allocator caches synced after start", f"{m['s']} s ({m['min']}–{m['max']} s)"])
        m = s.find(rf"^burst: allocator allocated {n} Services \((?P<dup>[^)]*)\) over \d+ runs: "
                   r"median (?P<rate>[\d.]+) Services/s \(min (?P<min>[\d.]+), max (?P<max>[\d.]+)\); "
                   r"ratio to the same run's raw write rate: median (?P<pct>[\d.]+)% \(min (?P<pmin>[\d.]+)%, "
                   r"max (?P<pmax>[\d.]+)%; target >= (?P<target>[\d.]+)%: \w+\); (?P<writes>[\d.]+) writes per Service")
        pct = parse_num(m["pct"]) if m else None
        if m:
            t.rows.append([f"{n:,} Services created at once, all allocated ({m['dup']})",
                           f"{fmt_rate(parse_num(m['rate']), 'Services/s')} ({m['min']}–{m['max']}) = "
                           f"**{m['pct']} %** of the same run's raw write rate ({m['pmin']}–{m['pmax']} %); "
                           f"{m['writes']} API writes per Service"])
            r.baselines.append(f"{n:,} Services: emulator raw write throughput {fmt_rate(parse_num(raw['rate']), 'writes/s')}; "
                               f"the allocator reached {m['pct']} % of it in Services/s (median of {runs} runs)")
        else:
            r.not_parsed(t, f"allocator burst of {n:,}")
        limit = 80 if n >= 50_000 else 50
        issue = "#20 scale" if n >= 50_000 else "#5 allocator"
        r.target(issue, f"burst of {n:,} Services ≥ {limit} % of the emulator's raw write throughput "
                 "(median of the runs), no duplicate address",
                 pct, lambda v, limit=limit: v >= limit, f"{sig(pct)} %" if pct is not None else NOT_PARSED)
        m = s.find(rf"^burst: restart adoption of {n} Services over \d+ runs: median (?P<s>[\d.]+) s "
                   r"\(min (?P<min>[\d.]+), max (?P<max>[\d.]+); target <= 10 s: \w+\); addresses changed: (?P<changed>\d+)")
        if m:
            t.rows.append([f"{n:,} Services: restart adoption (start → the newest Service has its address)",
                           f"{m['s']} s ({m['min']}–{m['max']} s); {m['changed']} addresses changed"])
            if n >= 50_000:
                worst, changed = float(m["max"]), int(m["changed"])
                r.target("#20 scale", f"allocator restart adoption of {n:,} Services ≤ 10 s (every run), zero addresses changed",
                         worst, lambda v, changed=changed: v <= 10 and changed == 0,
                         f"{m['max']} s (worst run), {changed} changed")
        else:
            r.not_parsed(t, f"restart adoption of {n:,}")
        m = s.find(rf"^burst: the purelb allocator process at {n} Services over \d+ runs: adoption median (?P<s>[\d.]+) s "
                   r"\(min (?P<min>[\d.]+), max (?P<max>[\d.]+)\); RSS median (?P<rss>[\d.]+) MiB \(min (?P<rmin>[\d.]+), "
                   r"max (?P<rmax>[\d.]+)\), peak median (?P<peak>[\d.]+) MiB \(min (?P<pmin>[\d.]+), max (?P<pmax>[\d.]+); "
                   r"the chart's limit \d+ MiB: \w+\); addresses changed: (?P<changed>\d+)")
        if m:
            t.rows.append([f"{n:,} Services: the `purelb allocator` process (release binary) started on them: adoption; "
                           "memory (the raw phase's Services of another class are in its cache too)",
                           f"{m['s']} s ({m['min']}–{m['max']} s); RSS {m['rss']} MiB ({m['rmin']}–{m['rmax']}), "
                           f"peak {m['peak']} MiB ({m['pmin']}–{m['pmax']}); {m['changed']} addresses changed"])
        else:
            r.not_parsed(t, f"the allocator process at {n:,}")
    r.unparsed = s.leftovers()
    return r


_SUMMARY = r"^agent-lab: (?P<what>.+): n=(?P<n>\d+) p50 (?P<p50>[\d.]+) ms p99 (?P<p99>[\d.]+) ms max (?P<max>[\d.]+) ms"


def _pcts(m: re.Match[str]) -> tuple[float, float, str]:
    p50, p99 = float(m["p50"]) / 1e3, float(m["p99"]) / 1e3
    return p50, p99, f"p50 {fmt_dur(p50)}, p99 {fmt_dur(p99)}, max {fmt_dur(float(m['max']) / 1e3)} (n={m['n']})"


def parse_agent_lab(out: str) -> Report:
    r = Report()
    s = Scan(out, r"^agent-lab:")
    t = r.table("measurement", "result")
    issue = "#6 agent"
    s.find(r"^agent-lab: purelb binary ")

    def summary(label: str, pattern: str) -> tuple[float | None, float | None]:
        m = s.find(_SUMMARY.replace("(?P<what>.+)", pattern))
        if not m:
            r.not_parsed(t, label)
            return None, None
        p50, p99, text = _pcts(m)
        t.rows.append([label, text])
        return p50, p99

    a50, a99 = summary("status write → address on the winner's interface", r"(?P<what>status write → address on the winner)")
    if a99 is not None:
        r.values["appear"] = f"p50 {fmt_dur(a50)}, p99 {fmt_dur(a99)} from the status write (allocator not included)"
    m = s.find(r"^agent-lab: (?P<k>\d+) of (?P<n>\d+) addresses appeared on a node other than the hash winner")
    if m:
        t.rows.append(["addresses that appeared on a node other than the hash winner", f"{m['k']} of {m['n']}"])
    g50, g99 = summary("Service deletion → address gone from every node", r"(?P<what>Service deletion → address gone from every node)")
    if g99 is not None:
        r.values["gone"] = f"p50 {fmt_dur(g50)}, p99 {fmt_dur(g99)}"
    summary("floor, part 1: emulator watch fan-out (status write → watcher over HTTP)", r"(?P<what>floor: emulator watch fan-out[^:]*)")
    m = s.find(r"^agent-lab: floor: netlink add p50 (?P<nl>[\d.]+) ms; floor = .*= (?P<floor>[\d.]+) ms")
    if m:
        t.rows.append(["floor, part 2: one netlink address add in a private namespace (p50)", fmt_dur(float(m["nl"]) / 1e3)])
        t.rows.append(["floor = fan-out p50 + netlink add p50", fmt_dur(float(m["floor"]) / 1e3)])
    else:
        r.not_parsed(t, "floor (fan-out p50 + netlink add p50)")
    m = s.find(r"^agent-lab: floor p99: netlink add p99 (?P<nl>[\d.]+) ms; floor p99 = .*= (?P<floor>[\d.]+) ms")
    if m:
        t.rows.append(["floor p99 = fan-out p99 + netlink add p99", f"{fmt_dur(float(m['floor']) / 1e3)} "
                       f"(netlink add p99 {fmt_dur(float(m['nl']) / 1e3)})"])
    else:
        r.not_parsed(t, "floor p99 (fan-out p99 + netlink add p99)")
    m = s.find(r"^agent-lab: ratio to the floor: address appears p99 (?P<a>[\d.]+)×, address gone p99 (?P<g>[\d.]+)×")
    if m:
        t.rows.append(["ratio to the floor (p99 / floor)", f"address appears **{m['a']}×**, address gone **{m['g']}×**"])
        r.baselines.append(f"the floor (emulator watch fan-out p50 + one netlink add p50): address appears "
                           f"p99 = {m['a']}× the floor, address gone p99 = {m['g']}× the floor")
    else:
        r.not_parsed(t, "ratio to the floor")
    r.target(issue, "status write → address on the winner's interface: p99 ≤ 100 ms (50 Services)", a99,
             lambda v: v <= 0.1, fmt_dur(a99))
    r.target(issue, "Service deletion → address gone from every node: p99 ≤ 100 ms (50 Services)", g99,
             lambda v: v <= 0.1, fmt_dur(g99))

    tail(s, r, t, "50")

    m = s.find(r"^agent-lab: idle agent API requests: (?P<total>[\d.]+)/min \((?P<why>[^)]*)\): (?P<map>.*)$")
    api_ok = None
    if m:
        counts = {k: float(v) for k, v in re.findall(r'"([^"]*)": ([\d.]+)', m["map"])}
        shown = ", ".join(f"{k} {v:g}/min" for k, v in counts.items()) or "none"
        t.rows.append([f"one idle agent's API requests ({m['why']})", f"{m['total']}/min: {shown}"])
        others = [k for k in counts if not re.fullmatch(r"(get|update|patch) leases", k)]
        api_ok = 0.0 if others else 1.0
        r.values["api"] = f"{m['total']} requests/min per idle agent ({m['why']}): {shown}"
        if others:
            r.notes.append("Idle requests other than Lease renewals: " + ", ".join(others) + ".")
    else:
        r.not_parsed(t, "one idle agent's API requests per minute")
    r.target(issue, "one idle agent's API requests: Lease renewals only", api_ok, lambda v: v == 1.0,
             m["total"] + "/min, " + ("renewals only" if api_ok else "not only renewals") if m else NOT_PARSED)

    f50, f99 = summary("SIGKILL of the holder → successor holds the address (2 s leases)", r"(?P<what>SIGKILL of the holder[^:]*)")
    if f99 is not None:
        r.values["failover"] = f"p50 {fmt_dur(f50)}, p99 {fmt_dur(f99)} with 2 s leases (SIGKILL of the holder)"
    s.find(r"^agent-lab: failover target ")
    r.target(issue, "SIGKILL of the holder → the successor holds the address ≤ 3 s (2 s leases)", f99,
             lambda v: v <= 3.0, f"p99 {fmt_dur(f99)}")

    m = s.find(r"^agent-lab: created (?P<n>\d+) Services with status and (?P<k>\d+) EndpointSlices \((?P<e>\d+) endpoints\) in (?P<s>[\d.]+) s")
    if m:
        t.rows.append([f"created {int(m['n']):,} Services with status and {int(m['k']):,} EndpointSlices "
                       f"({int(m['e']):,} endpoints)", f"{m['s']} s"])
    m = s.find(r"^agent-lab: tail at (?P<n>\d+) Services:", consume=False)
    big = m["n"] if m else "5000"
    summary(f"with {int(big):,} Services: status write → address on the winner's interface",
            rf"(?P<what>at {big} Services: status write → address on the winner)")
    summary(f"with {int(big):,} Services: Service deletion → address gone from every node",
            rf"(?P<what>at {big} Services: Service deletion → address gone from every node)")
    tail(s, r, t, big)
    m = s.find(r"^agent-lab: agent RSS with (?P<n>\d+) Services and (?P<e>\d+) endpoints cached: max (?P<max>[\d.]+) MiB over (?P<a>\d+) agents \(idle before: (?P<idle>[\d.]+) MiB\)")
    rss = parse_num(m["max"]) if m else None
    if m:
        t.rows.append([f"agent RSS with {int(m['n']):,} Services and {int(m['e']):,} endpoints cached",
                       f"max {m['max']} MiB over {m['a']} agents (idle before: {m['idle']} MiB)"])
        r.values["rss"] = f"{m['max']} MiB per agent with {int(m['n']):,} Services and {int(m['e']):,} endpoints cached"
    else:
        r.not_parsed(t, "agent RSS with 5,000 Services and 50,000 endpoints cached")
    r.target(issue, "agent RSS with 5,000 Services and 50,000 endpoints cached ≤ 64 MiB", rss, lambda v: v <= 64,
             f"{m['max']} MiB" if m else NOT_PARSED)
    m = s.find(r"^agent-lab: created (?P<n>\d+) Services with status and (?P<k>\d+) EndpointSlices \((?P<e>\d+) endpoints\) in (?P<s>[\d.]+) s")
    if m:
        t.rows.append([f"created {int(m['n']):,} Services with status and {int(m['k']):,} EndpointSlices "
                       f"({int(m['e']):,} endpoints)", f"{m['s']} s"])
    m = s.find(r"^agent-lab: agent RSS with (?P<n>\d+) Services and (?P<e>\d+) endpoints cached: max (?P<max>[\d.]+) MiB over (?P<a>\d+) agents; target")
    if m:
        t.rows.append([f"agent RSS with {int(m['n']):,} Services and {int(m['e']):,} endpoints cached",
                       f"max {m['max']} MiB over {m['a']} agents"])
    for w in s.find_all(r"^agent-lab: at (?P<n>\d+) Services: (?P<per>[\d.]+) decision passes per change over 3 agents, (?P<ms>[\d.]+) ms each on average \((?P<rest>[^)]*)\)"):
        t.rows.append([f"while measuring at {int(w['n']):,} Services: decision passes per change (3 agents), mean pass",
                       f"{w['per']} passes, {w['ms']} ms each ({w['rest']})"])
    r.target("#20 scale", "agent RSS at 50,000 Services / 500,000 endpoints ≤ 256 MiB",
             parse_num(m["max"]) if m and m["n"] == "50000" else None, lambda v: v <= 256,
             f"{m['max']} MiB" if m else "not measured (AGENT_LAB_LARGE=0)")
    parts = s.find_all(r"^agent-lab: tail parts (?P<at>at \d+ Services): (?P<part>[^:]+): n=(?P<n>\d+) p50 (?P<p50>-?[\d.]+) ms "
                       r"p99 (?P<p99>-?[\d.]+) ms max (?P<max>-?[\d.]+) ms")
    if parts:
        tp = r.table("where an appearance's time goes (per sample)", "p50", "p99", "max")
        for m in parts:
            tp.rows.append([f"{m['at']}: {m['part']} (n={m['n']})", f"{m['p50']} ms", f"{m['p99']} ms", f"{m['max']} ms"])
    curve = s.find_all(r"^agent-lab: cost curve: (?P<n>\d+) Services \((?P<e>\d+) endpoints\): agent RSS max (?P<max>[\d.]+) MiB, "
                       r"(?P<per>[\d.]+) bytes per Service above the idle agent \((?P<idle>[\d.]+) MiB\)")
    if curve:
        tc = r.table("Services cached (10 endpoints each)", "agent RSS (max of 3)", "bytes per Service above the idle agent")
        points = []
        for m in curve:
            tc.rows.append([f"{int(m['n']):,}", f"{m['max']} MiB", m["per"]])
            points.append((int(m["n"]), float(m["max"]), float(m["per"])))
        r.curves["agent_rss"] = points
    r.unparsed = s.leftovers()
    return r


def tail(s: "Scan", r: Report, t: "Table", n: str) -> None:
    """The scale issue's tail target: address appears p99 / the floor's p99 at `n` Services."""
    limit = 5.0 if n == "50" else 10.0
    m = s.find(rf"^agent-lab: tail at {n} Services: address appears p99 / floor p99 = (?P<x>[\d.]+)×")
    if m:
        t.rows.append([f"tail at {int(n):,} Services: address appears p99 / floor p99", f"**{m['x']}×**"])
    r.target("#20 scale", f"status write → NIC p99 / floor p99 ≤ {limit:g}× at {int(n):,} Services (≥ 1,000 samples)",
             float(m["x"]) if m else None, lambda v: v <= limit, f"{m['x']}×" if m else NOT_PARSED)


# `MEASURE <what>: <duration>` lines of the lab tests (e2e/tests/agent.rs) and the decide test.
# (regex on <what>, label, target text, limit in seconds or None)
_MEASURES: list[tuple[str, str, str, float | None]] = [
    (r"^Service applied -> address on the winner", "Service applied → address on the elected node (includes the allocator)", "", None),
    (r"^SIGKILL -> \S+ holds the address", "SIGKILL of the holder → successor holds the address (2 s leases)",
     "SIGKILL of the holder → the successor holds the address ≤ 3 s (2 s leases)", 3.0),
    (r"^SIGKILL -> page from", "SIGKILL of the holder → first page from the successor", "", None),
    (r"^SIGTERM -> agent exited", "SIGTERM → the old agent exited", "", None),
    (r"^handover gap", "SIGTERM with a request every 10 ms: gap between the last reply from the old node and the first from the new",
     "graceful handover gap ≤ 100 ms", 0.1),
    (r"^Service deleted -> address gone from every node", "Service deleted → remote address gone from every node", "", None),
    (r"^drift: address deleted -> back", "`ip addr del` of a held address → back", "drift: an owned address removed by someone else is back ≤ 1 s", 1.0),
    (r"^restart -> orphan removed", "agent restart → orphaned address removed", "orphan removed ≤ 2 s after the agent restarts", 2.0),
    (r"^endpoint not ready -> remote address withdrawn", "endpoint not ready → remote address withdrawn (settle time 1 s)", "", None),
    (r"^endpoint ready -> remote address announced", "endpoint ready → remote address announced", "", None),
    (r"^holder cut off -> successor holds", "holder cut off the API → successor holds the address", "", None),
    (r"^both nodes held the address for at most", "holder cut off the API: both nodes held the address for at most",
     "cut-off holder: two nodes answer for the address ≤ 1 s", 1.0),
    (r"^decide \d+ Services x \d+ members", "one decision pass over 5,000 Services × 50 members (release build, wall time of one thread)",
     "re-evaluating 5,000 Services after a membership change ≤ 100 ms CPU", 0.1),
]


def parse_measures(out: str, issue: str = "#6 agent") -> Report:
    r = Report()
    s = Scan(out, r"MEASURE ")
    t = r.table("measurement", "result")
    found: dict[int, list[tuple[float, str]]] = {}
    other: list[tuple[str, str]] = []
    for m in s.find_all(r"MEASURE (?P<what>.+)$"):
        text = m["what"]
        if h := re.match(r"^handover: (?P<n>\d+) requests, (?P<f>\d+) failed", text):
            found.setdefault(-1, []).append((float(h["f"]), f"{h['n']} requests, {h['f']} failed"))
            continue
        d = re.match(rf"^(?P<what>.+): (?P<d>{DUR})(?P<rest>.*)$", text)
        if not d:
            other.append((text, NOT_PARSED))
            r.missing.append(text)
            continue
        sec = parse_dur(d["d"])
        for i, (rx, *_rest) in enumerate(_MEASURES):
            if re.search(rx, d["what"]):
                found.setdefault(i, []).append((sec, fmt_dur(sec) + d["rest"].rstrip()))
                break
        else:
            other.append((d["what"], fmt_dur(sec)))
    for i, (rx, label, target, limit) in enumerate(_MEASURES):
        if i not in found:
            continue
        vals = found[i]
        t.rows.append([label, ", ".join(v[1] for v in vals)])
        worst = max(v[0] for v in vals)
        if target and limit is not None:
            shown = fmt_dur(worst) if len(vals) == 1 else f"worst {fmt_dur(worst)}"
            r.target(issue, target, worst, lambda v, lim=limit: v <= lim, shown)
        if rx.startswith("^handover gap"):
            r.values["handover"] = f"{fmt_dur(worst)} gap between the old and the new node (requests every 10 ms)"
        if rx.startswith("^SIGKILL -> \\S+ holds"):
            r.values.setdefault("failover", f"{fmt_dur(worst)} with 2 s leases (SIGKILL of the holder, one run)")
        if rx.startswith("^Service applied"):
            r.values["applied"] = f"{fmt_dur(worst)} from Service applied (includes the allocator)"
    if -1 in found:
        failed, text = found[-1][-1]
        t.rows.append(["SIGTERM handover: client requests", text])
        r.target(issue, "graceful handover: zero failed client requests", failed, lambda v: v == 0, text)
    for what, val in other:
        t.rows.append([what, val])
    if not t.rows:
        r.not_parsed(t, "MEASURE lines")
    tests = s.find(r"^test result: (?P<res>\w+)\. (?P<p>\d+) passed; (?P<f>\d+) failed; (?P<i>\d+) ignored")
    if tests:
        t.rows.append(["tests", f"{tests['res']}: {tests['p']} passed, {tests['f']} failed, {tests['i']} ignored"])
    r.unparsed = s.leftovers()
    return r


def parse_agent_tests(out: str) -> Report:
    r = parse_measures(out)
    expected = {"handover gap": "graceful handover gap", "handover: ": "handover request count"}
    for key, label in expected.items():
        if f"MEASURE {key}" not in out:
            r.missing.append(label)
            r.targets.append(Target("#6 agent", "graceful handover gap ≤ 100 ms" if "gap" in key
                                    else "graceful handover: zero failed client requests", NOT_PARSED, None))
    return r


def parse_bgp(out: str) -> Report:
    """BGP with BIRD and an FRR router (e2e/benches/bgp_lab.rs)."""
    r = Report()
    s = Scan(out, r"MEASURE bgp")
    t = r.table("measurement", "result")
    issue = "#17 BGP"
    for label, key in [("status seen → route with 3 next hops in the router's FIB", "status seen -> route with 3 next hops"),
                       ("Service deleted → route gone from the router's FIB", "Service deleted -> route gone")]:
        m = s.find(rf"MEASURE bgp {re.escape(key)}: n=(?P<n>\d+) p50 (?P<p50>{DUR}) p99 (?P<p99>{DUR}) max (?P<max>{DUR})$")
        if m:
            t.rows.append([label, f"n={m['n']}: p50 {fmt_dur(parse_dur(m['p50']))}, p99 {fmt_dur(parse_dur(m['p99']))}, "
                                  f"max {fmt_dur(parse_dur(m['max']))}"])
            if "status" in key:
                p99 = parse_dur(m["p99"])
                r.target(issue, "status write → route on the router within 1 s (p99)", p99, lambda v: v <= 1.0,
                         f"p99 {fmt_dur(p99)}")
        else:
            r.not_parsed(t, label)
    m = s.find(r"MEASURE bgp 300 connections over 3 next hops: (?P<d>\{.*\})$")
    if m:
        counts = [int(x) for x in re.findall(r": (\d+)", m["d"])]
        t.rows.append(["300 new connections from the client, by serving node", m["d"]])
        r.target(issue, "300 connections reach all 3 next hops", float(len(counts)), lambda v: v == 3, m["d"])
    else:
        r.not_parsed(t, "300 connections")
    runs = {}
    for label, key in [("bfd", "BFD 3 x 300 ms"), ("hold", "no BFD (hold time 9 s)"), ("fast", "BFD 3 x 100 ms")]:
        m = s.find(rf"MEASURE bgp node frozen -> route withdrawn, {re.escape(key)}: \[(?P<list>.*)\]$")
        if m:
            values = [parse_dur(x) for x in m["list"].split(",")]
            runs[label] = values
            t.rows.append([f"node frozen (BIRD, agent, server SIGSTOPped) → route withdrawn, {key}",
                           ", ".join(fmt_dur(v) for v in values)])
        else:
            r.not_parsed(t, key)
    m = s.find(rf"MEASURE bgp drain \(--drain-time=1s\): route left the FIB after (?P<r>{DUR}), address left the node after "
               rf"(?P<a>{DUR}), (?P<n>\d+) requests, (?P<f>\d+) failed$")
    if m:
        t.rows.append(["drain (cordon, SIGTERM; `--drain-time=1s`): route out of the FIB / address off the node",
                       f"{fmt_dur(parse_dur(m['r']))} / {fmt_dur(parse_dur(m['a']))}; {m['n']} new connections, {m['f']} failed"])
        r.target(issue, "drain: zero failed new connections, the route leaves before the address",
                 float(m["f"]) if parse_dur(m["r"]) < parse_dur(m["a"]) else 1.0, lambda v: v == 0,
                 f"{m['f']} failed; route {fmt_dur(parse_dur(m['r']))} before address {fmt_dur(parse_dur(m['a']))}")
    else:
        r.not_parsed(t, "drain")
    if "bfd" in runs:
        worst = max(runs["bfd"])
        r.target(issue, "node crash → route withdrawn ≤ 1.5 s with BFD 3 × 300 ms", worst, lambda v: v <= 1.5,
                 f"max {fmt_dur(worst)}")
    if "bfd" in runs and "hold" in runs:
        ratio = (sum(runs["hold"]) / len(runs["hold"])) / (sum(runs["bfd"]) / len(runs["bfd"]))
        r.baselines.append(f"the same crash without BFD (hold time 9 s): mean {fmt_dur(sum(runs['hold']) / len(runs['hold']))} "
                           f"vs {fmt_dur(sum(runs['bfd']) / len(runs['bfd']))} with BFD = {fmt_ratio(ratio)} faster")
    r.unparsed = s.leftovers()
    return r


def parse_upgrades(out: str) -> Report:
    """The correctness runs of issue 16: an agent rolled in place, a cordoned node, a paused and a
    late-writing allocator leader (`MEASURE` lines of e2e/tests/agent.rs and allocator_lab.rs)."""
    r = Report()
    s = Scan(out, r"MEASURE ")
    t = r.table("measurement", "result")
    issue = "#16 correctness"
    m = s.find(r"MEASURE in place: (?P<n>\d+) short requests \((?P<f>\d+) failed\), long-lived connection "
               r"(?P<ln>\d+) requests \((?P<lf>\d+) failed\), holders (?P<h>.+)$")
    if m:
        moves = m["h"].count("[") - 2  # [[n1]] has no move
        t.rows.append(["agent rolled in place (SIGTERM, new process on the node): short requests", f"{m['n']}, {m['f']} failed"])
        t.rows.append(["agent rolled in place: one long-lived connection, a request every 50 ms", f"{m['ln']} requests, {m['lf']} failed"])
        t.rows.append(["agent rolled in place: holders of the address over time", m["h"]])
        r.target(issue, "agent rolled in place: zero address moves", float(moves), lambda v: v == 0, f"{moves} moves")
        r.target(issue, "agent rolled in place: zero failed requests, the long-lived connection kept",
                 float(int(m["f"]) + int(m["lf"])), lambda v: v == 0, f"{int(m['f']) + int(m['lf'])} failed")
    else:
        r.not_parsed(t, "MEASURE in place")
        r.targets.append(Target(issue, "agent rolled in place: zero address moves", NOT_PARSED, None))
    m = s.find(r"MEASURE cordoned: (?P<n>\d+) short requests \((?P<f>\d+) failed\), single holders (?P<h>.+)$")
    if m:
        t.rows.append(["cordoned node, then its agent rolled: short requests", f"{m['n']}, {m['f']} failed"])
        t.rows.append(["cordoned node: holders of the address over time", m["h"]])
        r.target(issue, "cordoned node: the address moves once, zero failed requests", float(m["f"]),
                 lambda v: v == 0, f"{m['f']} failed, holders {m['h']}")
    else:
        r.not_parsed(t, "MEASURE cordoned")
    for label, rx in [("allocator leader frozen (SIGSTOP) past its lease during 40 creations",
                       r"MEASURE paused leader: 40 Services, (?P<d>\d+) duplicate addresses, (?P<c>\d+) changed addresses"),
                      ("allocator leader's writes applied 3 s late (after it gave up) during 40 creations",
                       r"MEASURE late writes: 40 Services \(3 deleted\), (?P<w>\d+) late writes, (?P<d>\d+) duplicate addresses, "
                       r"(?P<c>\d+) changed addresses")]:
        m = s.find(rx)
        if m:
            text = f"{m['d']} duplicate, {m['c']} changed addresses"
            t.rows.append([label, text + (f" ({m['w']} late writes)" if "w" in m.groupdict() else "")])
            r.target(issue, f"{label}: zero duplicate or changed addresses", float(int(m["d"]) + int(m["c"])),
                     lambda v: v == 0, text)
        else:
            r.not_parsed(t, label)
            r.targets.append(Target(issue, f"{label}: zero duplicate or changed addresses", NOT_PARSED, None))
    for label, rx in [("agent rolled in place: SIGTERM → the old agent exited", r"MEASURE in place: SIGTERM -> old agent exited"),
                      ("cordoned node: SIGTERM of its agent → exited", r"MEASURE rollout: SIGTERM -> old agent exited")]:
        m = s.find(rx + rf" \(.*\): (?P<d>{DUR})$")
        if m:
            t.rows.append([label, fmt_dur(parse_dur(m["d"]))])
    m = s.find(r"MEASURE paused leader: frozen for (?P<d>\S+)")
    if m:
        t.rows.append(["leader frozen for", m["d"]])
    r.unparsed = s.leftovers()
    return r


def parse_decide(out: str) -> Report:
    r = parse_measures(out)
    if not any(t.what.startswith("re-evaluating") for t in r.targets):
        r.missing.append("decision pass over 5,000 Services")
        r.targets.append(Target("#6 agent", "re-evaluating 5,000 Services after a membership change ≤ 100 ms CPU", NOT_PARSED, None))
    r.notes.append("The test times one call of the decision function on one thread in a release build; "
                   "that wall time is the CPU time of the pass.")
    for tgt in r.targets:
        if tgt.what.startswith("re-evaluating") and tgt.measured != NOT_PARSED:
            r.values["decide"] = tgt.measured
    return r


def parse_lab(out: str) -> Report:
    r = Report()
    s = Scan(out, r"^measured:")
    t = r.table("measurement", "result")
    m = s.find(rf"^measured: up --nodes (?P<n>\d+) (?P<up>{DUR}), down (?P<down>{DUR}), total (?P<total>{DUR})(?: \(kubectl checks (?P<k>{DUR})\))?")
    total = parse_dur(m["total"]) if m else None
    if m:
        t.rows.append([f"`purelb-lab up --nodes {m['n']}` then `down` (CLI)",
                       f"up {fmt_dur(parse_dur(m['up']))}, down {fmt_dur(parse_dur(m['down']))}, total {fmt_dur(total)}"])
        if m["k"]:
            t.rows.append(["kubectl checks in between (not counted)", fmt_dur(parse_dur(m["k"]))])
    else:
        r.not_parsed(t, "up --nodes 3 then down")
    r.target("#3 test ground", "`purelb-lab up --nodes 3` then `down` < 15 s", total, lambda v: v < 15, fmt_dur(total))
    tests = s.find(r"^test result: (?P<res>\w+)\. (?P<p>\d+) passed; (?P<f>\d+) failed")
    if tests:
        t.rows.append(["tests", f"{tests['res']}: {tests['p']} passed, {tests['f']} failed"])
    r.unparsed = s.leftovers()
    return r


def elf_has_symtab(path: Path) -> bool | None:
    """Whether an ELF64 little-endian file still has a .symtab section (None: cannot tell)."""
    try:
        data = path.read_bytes()
        if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
            return None
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
        str_off, = struct.unpack_from("<Q", data, shoff + shstrndx * shentsize + 0x18)
        for i in range(shnum):
            name_off, sh_type = struct.unpack_from("<II", data, shoff + i * shentsize)
            if sh_type == 2:  # SHT_SYMTAB
                return True
            end = data.index(b"\0", str_off + name_off)
            if data[str_off + name_off:end] == b".symtab":
                return True
        return False
    except (OSError, ValueError, struct.error, IndexError):
        return None


def parse_binary(out: str) -> Report:
    r = Report()
    s = Scan(out, r"^\d+$")
    t = r.table("measurement", "result")
    m = s.find(r"^(?P<bytes>\d+)$")
    size = int(m["bytes"]) if m else None
    if m:
        t.rows.append(["`target/release/purelb` size", f"{size:,} bytes ({size / 2**20:.1f} MiB)"])
        r.values["binary"] = f"{size / 2**20:.1f} MiB release binary (`purelb`, every component)"
    else:
        r.not_parsed(t, "`target/release/purelb` size")
    m = s.find(r"^symtab: (?P<v>\w+)$")
    if m:
        t.rows.append(["symbols", {"no": "stripped (no .symtab)", "yes": "NOT stripped (.symtab present)"}.get(m["v"], "unknown")])
    r.target("#7 packaging", "stripped release binary ≤ 25 MB", size, lambda v: v <= 25 * MB,
             f"{size / MB:.1f} MB" if size is not None else NOT_PARSED)
    r.unparsed = s.leftovers()
    return r


_SCALE_ROW = re.compile(
    r"^(?P<lease>[\d.]+) s / (?P<renew>[\d.]+) s\s+(?P<nodes>\d+)\s+(?P<services>\d+)\s+(?P<renewals>[\d.]+)\s+"
    r"(?P<lapsed>\d+)\s+(?P<events>[\d.]+)\s+(?P<passes>[\d.]+)\s+(?P<cpu>[\d.]+)\s+(?P<per_event>[\d.]+)\s+"
    r"(?P<rss>[\d.]+)\s+(?P<api>[\d.]+)[ \t]*(?P<failover>[\d,]*)[ \t]*(?P<restart>[\d,]*)$", re.M)


def _ms_list(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def parse_scale(out: str) -> Report:
    r = Report()
    issue = "#20 scale"
    t = r.table("leases (lease / renew)", "nodes", "Services", "renewals/s (model N/R)", "simulated Leases lapsed",
                "Lease events/s per agent", "decision passes/s per agent", "agent CPU (% of a core, busiest)",
                "agent CPU per event", "agent RSS (max of 3)", "emulator CPU", "SIGKILL failover", "restart → ready")
    rows = list(_SCALE_ROW.finditer(out))
    if not rows:
        r.not_parsed(t, "the scale table")
    max_passes = None
    cpu_6_2 = None
    failover_2_1 = None
    rss_50k = None
    for m in rows:
        lease, renew, nodes = float(m["lease"]), float(m["renew"]), int(m["nodes"])
        failover, restart = _ms_list(m["failover"]), _ms_list(m["restart"])
        t.rows.append([f"{m['lease']} s / {m['renew']} s", f"{nodes:,}", f"{int(m['services']):,}",
                       f"{m['renewals']} ({sig(nodes / renew)})", m["lapsed"], m["events"], m["passes"],
                       f"{m['cpu']} %", f"{m['per_event']} µs", f"{m['rss']} MiB", f"{m['api']} %",
                       ", ".join(f"{x:.0f} ms" for x in failover) or "none",
                       ", ".join(f"{x:.0f} ms" for x in restart) or "none"])
        r.curves.setdefault(f"leases-{m['lease']}s-{m['renew']}s", []).append(
            (nodes, float(m["cpu"]), float(m["per_event"])))
        max_passes = max(max_passes or 0.0, float(m["passes"]))
        if nodes >= 1000 and (lease, renew) == (6.0, 2.0):
            cpu_6_2 = float(m["cpu"])
        if nodes >= 1000 and (lease, renew) == (2.0, 1.0):
            # A failover that never completed is missing from the list: it counts as missed.
            failover_2_1 = max(failover) / 1e3 if len(failover) >= 2 else float("inf")
        if int(m["services"]) >= 50_000:
            rss_50k = max(rss_50k or 0.0, float(m["rss"]))
    r.target(issue, "idle agent CPU at 1,000 nodes, 6 s / 2 s leases ≤ 5 % of one core", cpu_6_2,
             lambda v: v <= 5.0, f"{cpu_6_2} %" if cpu_6_2 is not None else NOT_PARSED)
    r.target(issue, "decision passes caused by renewals that change nothing: 0", max_passes,
             lambda v: v == 0.0, f"{max_passes} per second at most" if max_passes is not None else NOT_PARSED)
    r.target(issue, "crash failover at 1,000 nodes (2 s leases renewed every 1 s) ≤ lease + 1 s", failover_2_1,
             lambda v: v <= 3.0, fmt_dur(failover_2_1) if failover_2_1 != float("inf") else "a failover not taken over")
    if rss_50k is not None:
        r.target(issue, "agent RSS at 50,000 Services / 500,000 endpoints after membership churn (simulator) ≤ 256 MiB",
                 rss_50k, lambda v: v <= 256.0, f"{rss_50k} MiB (max over every point and agent)")
    if rows:
        r.baselines.append("the load model (docs/scale.md): every agent receives N/R Lease events per second; "
                           "the renewals/s column shows the model next to what the simulator did")
    return r


# ---------------------------------------------------------------------------------------------
# The benches


@dataclass
class Bench:
    name: str
    title: str
    issue: str
    command: list[str]
    parse: Callable[[str], Report]
    about: str
    baseline: str = ""  # what the same-run baseline is; "" = none
    prepare: list[list[str]] = field(default_factory=list)
    needs_root: bool = False
    after: Callable[[], str] | None = None  # extra output lines computed after the command


CARGO_RELEASE_BINS = ["cargo", "build", "--locked", "--release", "-p", "purelb", "--bin", "purelb",
                      "-p", "purelb-e2e", "--bin", "purelb-lab"]
CARGO_DEBUG_PURELB = ["cargo", "build", "--locked", "-p", "purelb", "--bin", "purelb"]


def _binary_after() -> str:
    has = elf_has_symtab(ROOT / "target" / "release" / "purelb")
    return "symtab: " + {True: "yes", False: "no", None: "unknown"}[has]


BENCHES: list[Bench] = [
    Bench("ipam", "Allocation structure vs linear scan", "#5 allocator",
          ["cargo", "bench", "--locked", "-p", "purelb", "--bench", "ipam"], parse_ipam,
          "Pure arithmetic: allocate a /16 to exhaustion, 100,000 from a /64, \"pool full\" on an exhausted "
          "/16, and one allocation at 50,000 in use against a reference linear scan (what the Go PureLB does).",
          baseline="the linear scan"),
    Bench("allocator_burst", "Allocator burst", "#5 allocator",
          ["cargo", "bench", "--locked", "-p", "purelb-e2e", "--bench", "allocator_burst"], parse_allocator_burst,
          "The real allocator controller over HTTP against the API emulator on loopback, at 5,000 and 50,000 "
          "Services (`BURST=5000,50000`), 5 runs each (`BURST_RUNS`), each run in a fresh emulator with its own "
          "raw-rate measurement; medians and spreads are reported. Completion is read from the emulator's request "
          "counter, then its store (observing costs the server almost nothing); no duplicate address is asserted. "
          "Then the allocator is stopped, one more Service created and a new allocator started: the adoption time "
          "is until that newest Service has its address, and every other address is compared before and after.",
          baseline="the emulator's raw write throughput", prepare=[CARGO_RELEASE_BINS]),
    Bench("agent_lab", "Node agent in the lab", "#6 agent",
          ["cargo", "bench", "--locked", "-p", "purelb-e2e", "--bench", "agent_lab"], parse_agent_lab,
          "3 nodes, real `purelb agent` processes (release build) in network namespaces, real kernel addresses, "
          "`--lease-duration=2s --renew-interval=500ms`; times come from `ip -ts monitor address` in each node. "
          "The bench writes Service status itself, as the allocator would.",
          baseline="the floor (emulator watch fan-out + one netlink add)",
          prepare=[CARGO_RELEASE_BINS], needs_root=True),
    Bench("scale", "Scale: simulated nodes around real agents", "#20 scale",
          ["./target/release/purelb-lab", "scale", "--nodes", "10,100,1000", "--leases", "6/2,2/1",
           "--services", "50000", "--window", "15", "--failovers", "2"], parse_scale,
          "`purelb-lab scale` (e2e/src/lab/scale.rs): the emulator holds N simulated Nodes whose node Leases one "
          "task renews with the agent's own renewal code (same fields and cadence), subnets spread over "
          "198.51.100.0/24, 203.0.113.0/24 and 32 IPv6 /64s, and 50,000 Services with ten endpoints each on them; "
          "three real `purelb agent` processes (release build) run on 192.0.2.0/24, which no simulated node has. "
          "Per point, after the agents settled: a 15 s window in which only renewals flow (CPU from "
          "/proc/PID/stat, events and passes from the agents' `purelb_watch_events_total{watch=\"leases\"}` and "
          "`purelb_decision_passes_total`), then SIGKILL of the holder of a real address until another real agent "
          "holds it.",
          baseline="the load model (N/R events per agent)",
          prepare=[CARGO_RELEASE_BINS], needs_root=True),
    Bench("agent_tests", "Node agent lab tests", "#6 agent",
          ["cargo", "test", "--locked", "-p", "purelb-e2e", "--test", "agent", "--", "--nocapture", "--test-threads=1"],
          parse_agent_tests,
          "The agent's lab tests (3 nodes, real `purelb` processes, debug build, 2 s leases), one run per "
          "test; the numbers are the `MEASURE` lines they print.",
          prepare=[CARGO_DEBUG_PURELB], needs_root=True),
    Bench("upgrades", "Upgrades and stale leaders", "#16 correctness",
          ["cargo", "nextest", "run", "--locked", "-p", "purelb-e2e", "--no-capture", "-E",
           "test(/an_agent_rolled_in_place|on_a_cordoned_node|a_paused_leader_resumes|late_writes_of_a_deposed/)"],
          parse_upgrades,
          "Lab runs (3 nodes, real `purelb` processes, debug build, 2 s leases; two allocator replicas for the "
          "leader runs). The agent tests keep a client busy with a new request every 20 ms and one kept-open "
          "connection; the leader runs watch every Service's address for duplicates and changes.",
          prepare=[CARGO_DEBUG_PURELB], needs_root=True),
    Bench("bgp", "BGP with BIRD 2 and an FRR router", "#17 BGP",
          ["cargo", "bench", "--locked", "--profile", "dev", "-p", "purelb-e2e", "--bench", "bgp_lab"], parse_bgp,
          "3 nodes with BIRD 2 managed by real `purelb agent` processes (debug build, 2 s leases), FRR on the "
          "router (one session per node, BFD 3 × 300 ms, ECMP, `fib_multipath_hash_policy=1`), the real "
          "allocator; the router's kernel FIB and the API are polled every 5 ms. Drain (0 failed requests, the "
          "route leaves the FIB before the address leaves the node) is asserted by `e2e/tests/bgp.rs`.",
          baseline="the same crash without BFD (BGP hold time 9 s)",
          prepare=[CARGO_DEBUG_PURELB], needs_root=True),
    Bench("decide", "Decision pass over 5,000 Services", "#6 agent",
          ["cargo", "test", "--locked", "--release", "-p", "purelb", "--lib", "five_thousand_services_are_decided_quickly",
           "--", "--nocapture"], parse_decide,
          "The agent's decision function over 5,000 Services (half local, half remote) with 50 members."),
    Bench("queue", "Work queue", "#4 core",
          ["cargo", "bench", "--locked", "-p", "purelb", "--bench", "queue"], parse_queue,
          "200,000 items per scenario on a 2-thread tokio runtime, once without and once with the Prometheus "
          "recorder. No numeric target (the core issue asks for items/s)."),
    Bench("endpoints", "EndpointSlice index", "#4 core",
          ["cargo", "bench", "--locked", "-p", "purelb", "--bench", "endpoints"], parse_endpoints,
          "One Service, 100 slices × 100 endpoints = 10,000 endpoints over 50 nodes; median of 7 rounds.",
          baseline="the full rescan"),
    Bench("netlink", "Netlink address manager", "#4 core",
          ["cargo", "bench", "--locked", "-p", "purelb", "--bench", "netlink"], parse_netlink,
          "As root, in a private network namespace, on one bridge. The IPv4 documentation ranges hold 768 "
          "addresses, so IPv4 uses 768 /32s and IPv6 1,000 /128s.", needs_root=True),
    Bench("apiserver", "API emulator", "#3 test ground",
          ["cargo", "bench", "--locked", "-p", "purelb-e2e", "--bench", "apiserver"], parse_apiserver,
          "HTTP on loopback, a new connection per request."),
    Bench("lab", "Lab up and down", "#3 test ground",
          ["cargo", "test", "--locked", "-p", "purelb-e2e", "--test", "lab",
           "up_and_down_take_under_15_seconds_and_leave_nothing", "--", "--nocapture"], parse_lab,
          "`purelb-lab up --nodes 3` then `down` through the CLI, as the lab test does it.", needs_root=True),
    Bench("binary", "Binary size", "#7 packaging",
          ["stat", "-c", "%s", "target/release/purelb"], parse_binary,
          "The release binary (symbols stripped by the release profile); the script checks the ELF for a "
          "`.symtab` section.", prepare=[CARGO_RELEASE_BINS], after=_binary_after),
]
BY_NAME = {b.name: b for b in BENCHES}

# ---------------------------------------------------------------------------------------------
# Running


@dataclass
class Result:
    bench: Bench
    status: str  # ok | failed | timeout | skipped
    exit_code: int | None
    seconds: float
    output: str
    report: Report
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


_BUILD_NOISE = re.compile(r"^\s*(Compiling|Downloading|Downloaded|Blocking|Updating|Locking|Adding|Checking) ")


class Runner:
    def __init__(self, timeout: float, echo: bool):
        self.timeout = timeout
        self.echo = echo
        self.prepared: dict[tuple[str, ...], tuple[int, str]] = {}

    def run(self, cmd: list[str], timeout: float) -> tuple[int | None, str, bool]:
        """Runs `cmd` in ROOT in its own process group; returns (exit code, output, timed out)."""
        env = dict(os.environ, CARGO_TERM_COLOR="never")
        lines: list[str] = []
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, text=True,
                                encoding="utf-8", errors="replace", bufsize=1)

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                if self.echo:
                    sys.stderr.write("  | " + line)
                    sys.stderr.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            for sig_ in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(proc.pid, sig_)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=20)
                    break
                except subprocess.TimeoutExpired:
                    continue
        except KeyboardInterrupt:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            raise
        reader.join(timeout=10)
        return proc.returncode, "".join(lines), timed_out

    def bench(self, b: Bench) -> Result:
        started = time.monotonic()
        log: list[str] = []
        if b.needs_root and os.geteuid() != 0:
            msg = f"needs root (network namespaces); running as uid {os.geteuid()}"
            return Result(b, "skipped", None, 0.0, "", b.parse(""), msg)
        for cmd in b.prepare:
            key = tuple(cmd)
            if key not in self.prepared:
                log_line(f"{b.name}: $ {shlex.join(cmd)}")
                code, out, timed_out = self.run(cmd, self.timeout)
                self.prepared[key] = (-1 if timed_out else (code if code is not None else -1), out)
            code, out = self.prepared[key]
            log.append(f"$ {shlex.join(cmd)}\n{out}")
            if code != 0:
                text = "\n".join(log)
                return Result(b, "failed", code, time.monotonic() - started, text, b.parse(""),
                              f"`{shlex.join(cmd)}` failed (exit {code})")
        log_line(f"{b.name}: $ {shlex.join(b.command)}")
        code, out, timed_out = self.run(b.command, self.timeout)
        if b.after is not None and code == 0:
            out += b.after() + "\n"
        log.append(f"$ {shlex.join(b.command)}\n{out}")
        seconds = time.monotonic() - started
        report = b.parse(out)
        text = "\n".join(log)
        if timed_out:
            return Result(b, "timeout", code, seconds, text, report, f"timed out after {self.timeout:.0f} s")
        if code != 0:
            return Result(b, "failed", code, seconds, text, report, f"exit status {code}")
        return Result(b, "ok", code, seconds, text, report)


def log_line(text: str) -> None:
    sys.stderr.write(f"bench-report: {text}\n")
    sys.stderr.flush()


# ---------------------------------------------------------------------------------------------
# Fuzz log and soak JSON


FUZZ_TARGETS = ["address_range", "annotations", "lease_annotations", "arp_na"]
FUZZ_SECONDS = 600


def parse_fuzz_log(text: str) -> Report:
    """Output of `bash scripts/fuzz.sh 600` (stdout and stderr)."""
    r = Report()
    t = r.table("target", "asked", "runs", "time", "runs/s", "peak RSS", "crash")
    per: dict[str, dict[str, Any]] = {}
    current = None
    all_ok_line = None
    for raw in text.splitlines():
        line = strip_ansi(raw).strip()
        if m := re.match(r"^fuzz: (?P<t>\S+) for (?P<s>\d+)s$", line):
            current = m["t"]
            per[current] = {"asked": int(m["s"]), "crash": []}
        elif m := re.match(r"^fuzz: all targets ran (?P<s>\d+)s without a crash", line):
            all_ok_line = int(m["s"])
        elif m := re.match(r"^fuzz: (?P<t>\S+) crashed", line):
            per.setdefault(m["t"], {"asked": None, "crash": []})["crash"].append(line)
        elif current is None:
            continue
        elif m := re.match(r"^Done (?P<runs>\d+) runs in (?P<s>\d+) second", line):
            per[current]["runs"], per[current]["secs"] = int(m["runs"]), int(m["s"])
        elif m := re.match(r"^stat::number_of_executed_units:\s*(?P<n>\d+)", line):
            per[current].setdefault("runs", int(m["n"]))
        elif m := re.match(r"^stat::peak_rss_mb:\s*(?P<n>\d+)", line):
            per[current]["rss"] = int(m["n"])
        elif re.search(r"panicked|SUMMARY|ERROR|deadly signal|crash-", line):
            per[current]["crash"].append(line)
    for name in FUZZ_TARGETS + [n for n in per if n not in FUZZ_TARGETS]:
        d = per.get(name)
        if d is None:
            r.not_parsed(t, f"`{name}` (not in the log)")
            r.targets.append(Target("#9 soak", f"fuzz target `{name}` ran 10 minutes without a crash", "not in the log", None))
            continue
        runs, secs = d.get("runs"), d.get("secs")
        rate = f"{runs / secs:,.0f}" if runs and secs else "—"
        crash = "; ".join(d["crash"])[:200] if d["crash"] else "none"
        t.rows.append([f"`{name}`", f"{d['asked']} s" if d["asked"] else "—", f"{runs:,}" if runs is not None else NOT_PARSED,
                       f"{secs} s" if secs is not None else NOT_PARSED, rate,
                       f"{d['rss']} MB" if "rss" in d else "—", crash])
        if secs is None:
            r.missing.append(f"`Done N runs in S second(s)` for {name}")
            r.targets.append(Target("#9 soak", f"fuzz target `{name}` ran 10 minutes without a crash", NOT_PARSED, None))
        else:
            r.targets.append(Target("#9 soak", f"fuzz target `{name}` ran 10 minutes without a crash",
                                    f"{runs:,} runs in {secs} s, " + ("no crash" if not d["crash"] else "CRASHED"),
                                    secs >= FUZZ_SECONDS and not d["crash"]))
    if all_ok_line is not None:
        r.notes.append(f"The script finished with `fuzz: all targets ran {all_ok_line}s without a crash`.")
    else:
        r.notes.append("The log has no final `fuzz: all targets ran ...s without a crash` line.")
    return r


_SOAK_FIRST = ["seed", "passed", "duration_s", "elapsed_s", "nodes", "build", "invariants", "violations",
               "actions", "action_failures", "convergence", "superseded", "requests", "errors"]
_SOAK_LAST = ["timeline"]
_MAX_ROWS = 25


def _cell(v: Any, limit: int = 160) -> str:
    if isinstance(v, bool) or v is None:
        text = json.dumps(v)
    elif isinstance(v, float):
        text = f"{v:g}"
    elif isinstance(v, (dict, list)):
        text = json.dumps(v, separators=(", ", ": "), ensure_ascii=False)
    else:
        text = str(v)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return md_escape(text)


def render_soak(data: Any, source: str) -> tuple[list[str], Report]:
    """Renders one `purelb-lab soak --json` report without relying on its schema: known top-level
    keys first, then every other key; scalars in a table, objects and lists as tables."""
    r = Report()
    md: list[str] = []
    if not isinstance(data, dict):
        md.append(f"`{source}` is not a JSON object:\n\n{fence(json.dumps(data)[:2000])}")
        r.missing.append("soak report object")
        return md, r
    keys = [k for k in _SOAK_FIRST if k in data] + [k for k in data if k not in _SOAK_FIRST + _SOAK_LAST] + \
        [k for k in _SOAK_LAST if k in data]
    scalars = [(k, data[k]) for k in keys if not isinstance(data[k], (dict, list))]
    if scalars:
        md += ["| key | value |", "|---|---|"] + [f"| {md_escape(k)} | {_cell(v)} |" for k, v in scalars]
        md.append("")
    for k in keys:
        v = data[k]
        if not isinstance(v, (dict, list)):
            continue
        title = f"**{md_escape(k)}**" + (f" ({len(v)} entries)" if isinstance(v, list) else "")
        if isinstance(v, list) and len(v) > 10:
            md += ["<details>", f"<summary>{title}</summary>", ""] + _render_value(v) + ["", "</details>", ""]
        else:
            md += [title, ""] + _render_value(v) + [""]
    # Targets (issue 9 acceptance), read tolerantly.
    violations = _count_violations(data)
    outside = _dig(data, ["requests", "outside"])
    if outside is None:
        outside = _dig(data, ["requests", "failed"])
    seed = data.get("seed", "?")
    r.targets.append(Target("#9 soak", f"soak seed {seed}: zero invariant violations",
                            NOT_PARSED if violations is None else str(violations),
                            None if violations is None else violations == 0))
    r.targets.append(Target("#9 soak", f"soak seed {seed}: zero failed client requests outside the allowed windows",
                            NOT_PARSED if not isinstance(outside, (int, float)) else str(outside),
                            None if not isinstance(outside, (int, float)) else outside == 0))
    return md, r


def _render_value(v: Any) -> list[str]:
    if isinstance(v, dict):
        if v and all(isinstance(x, dict) for x in v.values()):
            cols: list[str] = []
            for x in v.values():
                cols += [c for c in x if c not in cols]
            out = ["| | " + " | ".join(md_escape(c) for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
            for name, x in list(v.items())[:_MAX_ROWS]:
                out.append(f"| {md_escape(str(name))} | " + " | ".join(_cell(x.get(c, "")) for c in cols) + " |")
            if len(v) > _MAX_ROWS:
                out.append(f"| … {len(v) - _MAX_ROWS} more | " + " | " * len(cols))
            return out
        if not v:
            return ["(empty)"]
        return ["| key | value |", "|---|---|"] + [f"| {md_escape(str(k))} | {_cell(x)} |" for k, x in v.items()]
    if isinstance(v, list):
        if not v:
            return ["(none)"]
        if all(isinstance(x, dict) for x in v):
            cols = []
            for x in v:
                cols += [c for c in x if c not in cols]
            out = ["| " + " | ".join(md_escape(c) for c in cols) + " |", "|---" * len(cols) + "|"]
            for x in v[:_MAX_ROWS]:
                out.append("| " + " | ".join(_cell(x.get(c, "")) for c in cols) + " |")
            if len(v) > _MAX_ROWS:
                out.append(f"\n… and {len(v) - _MAX_ROWS} more (see the JSON file).")
            return out
        return ["- " + _cell(x, 300) for x in v[:_MAX_ROWS]] + ([f"- … and {len(v) - _MAX_ROWS} more"] if len(v) > _MAX_ROWS else [])
    return [_cell(v)]


def _dig(data: Any, path: list[str]) -> Any:
    for p in path:
        if not isinstance(data, dict) or p not in data:
            return None
        data = data[p]
    return data


def _count_violations(data: dict[str, Any]) -> int | None:
    inv = data.get("invariants")
    if isinstance(inv, list) and inv and all(isinstance(x, dict) and isinstance(x.get("violations"), int) for x in inv):
        return sum(x["violations"] for x in inv)
    if isinstance(inv, dict) and inv and all(isinstance(x, int) for x in inv.values()):
        return sum(inv.values())
    v = data.get("violations")
    if isinstance(v, list):
        return len(v)
    if isinstance(v, int):
        return v
    if isinstance(v, dict) and all(isinstance(x, int) for x in v.values()):
        return sum(v.values())
    return None


# ---------------------------------------------------------------------------------------------
# Published numbers (quoted from ../shared/research/peers.md and upstream-purelb.md)

# (project, what, their number, source as the research files name it, key of our value)
PUBLISHED: list[tuple[str, str, str, str, str]] = [
    ("Go PureLB", "allocation of the lowest free address",
     "linear walk from the first address of the first range, testing each (no timing published)",
     "upstream `localpool.go` `AssignNext` (upstream-purelb.md §3.3)", "ipam_scan"),
    ("Go PureLB", "IPv6 /64 pool size", "wraps to 0 (larger ranges report 2^64−1)",
     "upstream `iprange.go` `Size` (upstream-purelb.md §3.3)", "ipam_64"),
    ("Go PureLB", "Service create → address on some node's interface (e2e B1, local pool)",
     "363–1114 ms over 8 older runs; 675–690 ms quoted at HEAD; ceiling 5 s",
     "upstream `test/e2e/timing/*.csv`, `test_timing.py` (upstream-purelb.md §8.3)", "appear"),
    ("Go PureLB", "Service delete → address gone from every node (e2e B3, includes one SSH sweep)",
     "1066–1982 ms over 8 older runs; 398 ms avg in the 2026-03-12 run; ~1450 ms quoted at HEAD; ceiling 5 s",
     "upstream `test/e2e/timing/*.csv`, `test_timing.py` (upstream-purelb.md §8.3)", "gone"),
    ("Go PureLB", "announcer's node tainted NoExecute, agent pod deleted with grace 0 → address on another node (e2e E3)",
     "2266–3217 ms over 8 older runs; 2.21–6.72 s over 14 trials at HEAD, one 11.89 s outlier; ceiling 30 s",
     "upstream `test_timing.py`, `test/e2e/timing/*.csv` (upstream-purelb.md §8.3)", "failover,handover"),
    ("Go PureLB", "abrupt failover (node or agent dies)",
     "≈10–15 s with the shipped 10 s leases (from the code, not measured by their suite); plan target < 15 s",
     "upstream `docs/SUBNET_AWARE_ELECTION_PLAN.md` \"Failover SLA\" (upstream-purelb.md §4.6)", "failover"),
    ("Go PureLB", "graceful shutdown handover",
     "~2.2–2.4 s (e2e E3); the old node keeps serving ~2 s, peers take over ~0.28 s after the Lease is deleted",
     "upstream e2e E3 and `cmd/lbnodeagent/main.go` (upstream-purelb.md §4.6, §4.8)", "handover"),
    ("MetalLB", "L2 failover, vendor claim", "\"within a few seconds\"; file a bug if more than about 10 s",
     "metallb `website/content/concepts/layer2.md`", "failover"),
    ("MetalLB", "L2 failover, measured by users", "~35–45 s (v0.8.3); ~5 min; 15–18 min; ≥ 15 s from another subnet",
     "metallb/metallb#524; #733, #767, #298; #1147; #2009", "failover"),
    ("MetalLB", "failover bound in CI", "none: failover `Eventually` 2 min, no latency bound",
     "metallb `e2etest/l2tests/speaker_failover.go`", ""),
    ("MetalLB", "footprint", "none published; chart example 100m/100Mi (commented); leak ~1 GiB/h reported",
     "metallb chart `values.yaml`; metallb/metallb#1581", "rss"),
    ("kube-vip", "ARP failover, vendor claim", "\"average… around ~3 seconds\"", "kube-vip `troubleshooting/arp.md`", "failover"),
    ("kube-vip", "Lease defaults; user tuning", "15 s / 10 s / 2 s; 15 s → ~5 s with 5/3/1",
     "kube-vip `installation/flags.md`; rwlove/home-ops#13727", ""),
    ("kube-vip", "failover window in CI", "lease 5/3/1; 20 s control-plane window; 60 s service connect window",
     "kube-vip `testing/e2e`", ""),
    ("kube-vip", "API load", "lease GET \"multiple times per second\" per Service; throttling waits 7–24 s",
     "kube-vip/kube-vip#1425, #563", "api"),
    ("kube-vip", "footprint", "none published; chart example 100m/128Mi (commented)", "kube-vip/helm-charts `values.yaml`", "rss"),
    ("Cilium", "L2 failover, docs", "10–20 s with the default lease; 2–4 s with 3 s / 1 s / 200 ms",
     "cilium `Documentation/network/l2-announcements.rst`", "failover"),
    ("Cilium", "API load, docs", "QPS = services ÷ renewDeadline; 65 Services at 2 s = 32.5 QPS; default client limit 5 QPS / burst 10",
     "cilium `l2-announcements.rst`", "api"),
    ("Cilium", "failure reports", "address dead \"for hours\" after a ~1 min LAN bounce; L2 stops 1–10 min after the single control plane dies",
     "cilium/cilium#48626; #40735", ""),
    ("OpenELB", "failover / footprint", "none published (VIP mode: ≤ 255 VRRP instances per network)",
     "openelb `docs/Concepts/vip-mode.md`", ""),
    ("LoxiLB", "HA failover claim", "\"sub-second\" with BFD; \"hitless\" with conntrack sync",
     "loxilb.io blogs; loxilbdocs `ha-deploy.md`", ""),
    ("k3s ServiceLB", "failover", "none (multiple node IPs in status)", "k3s `servicelb.go`", ""),
    ("all peers", "image size / RSS", "no maintainer-published figures for any peer", "peers.md \"Published numbers\"", "binary,rss"),
]

def published_section(values: dict[str, str]) -> list[str]:
    md = [
        "## Published numbers of the Go PureLB and its peers",
        "",
        "**Read this before comparing.** Their numbers come from their documentation, code, issue threads "
        "and e2e result files, measured (or only claimed) on real clusters with real switches, kube-proxy "
        "and API servers; they are quoted from `../shared/research/peers.md` and "
        "`../shared/research/upstream-purelb.md` with the source each names. Ours are from *this* run, in "
        "the network-namespace lab and the API emulator on this one machine (see the sections above), and "
        "their definitions differ (for example, ours start at the Service status write, the Go PureLB's B1 "
        "at the Service create). They sit side by side for orientation, not as a like-for-like comparison.",
        "",
        "| project | what | their number (real clusters, their sources) | source | ours (this run, lab on this machine) |",
        "|---|---|---|---|---|",
    ]
    for project, what, number, source, key in PUBLISHED:
        keys = [k for k in key.split(",") if k]
        if key == "appear" and "applied" in values:
            keys.append("applied")
        found = [values[k] for k in keys if k in values]
        ours = "; ".join(found) if found else ("not measured in this run" if keys else "—")
        md.append(f"| {project} | {md_escape(what)} | {md_escape(number)} | {md_escape(source)} | {md_escape(ours)} |")
    md.append("")
    return md


# ---------------------------------------------------------------------------------------------
# Markdown


def md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def fence(text: str, lang: str = "text") -> str:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def render_table(t: Table) -> list[str]:
    out = []
    if t.title:
        out += [t.title, ""]
    out.append("| " + " | ".join(md_escape(h) for h in t.headers) + " |")
    out.append("|" + "---|" * len(t.headers))
    for row in t.rows:
        cells = row + [""] * (len(t.headers) - len(row))
        out.append("| " + " | ".join(md_escape(c) for c in cells) + " |")
    return out + [""]


def met_text(met: bool | None) -> str:
    return {True: "met", False: "**NOT MET**", None: "unknown"}[met]


def clean_output(text: str) -> tuple[str, int]:
    kept, dropped = [], 0
    for line in strip_ansi(text).splitlines():
        if _BUILD_NOISE.match(line):
            dropped += 1
        else:
            kept.append(line)
    return "\n".join(kept), dropped


def render_section(res: Result) -> list[str]:
    b, r = res.bench, res.report
    md = [f"## {b.title} (issue {b.issue})", ""]
    cmds = [shlex.join(c) for c in b.prepare] + [shlex.join(b.command)]
    md.append("Command: " + " && ".join(f"`{c}`" for c in cmds) + f" (`--only {b.name}`)")
    md.append("")
    md.append(b.about)
    md.append("")
    status = {"ok": f"ran in {res.seconds:.0f} s (including any build)", "failed": f"**FAILED**: {res.error}",
              "timeout": f"**FAILED**: {res.error}", "skipped": f"**NOT RUN**: {res.error}"}[res.status]
    md.append(f"Status: {status}.")
    md.append("")
    if res.status != "skipped":
        for t in r.tables:
            md += render_table(t)
        md += render_curves(b.name, r.curves)
    if r.targets:
        md += render_table(Table(["target", "measured", "met"],
                                 [[tg.what, tg.measured, met_text(tg.met)] for tg in r.targets], title="Targets:"))
    if r.baselines:
        md += ["Baseline, measured in the same run: " + "; ".join(r.baselines) + ".", ""]
    elif b.baseline:
        md += [f"Baseline ({b.baseline}): not parsed from this run.", ""]
    for note in r.notes:
        md += [note, ""]
    if res.status != "skipped" and (r.missing or r.unparsed):
        md.append("Some results were **not parsed**" + (f" ({'; '.join(r.missing)})" if r.missing else "")
                  + "; the lines that matched no pattern are shown as printed:")
        md.append("")
        md.append(fence("\n".join(r.unparsed) if r.unparsed else "(no candidate lines; see the full output below)"))
        md.append("")
    if res.output:
        out, dropped = clean_output(res.output)
        summary = "Full output" + (f" ({dropped} cargo build lines left out)" if dropped else "")
        md += ["<details>", f"<summary>{summary}</summary>", "", fence(out), "", "</details>", ""]
    return md


# What each curve shows: (title, x label, y label, per-unit label).
CURVE_LABELS = {
    "agent_rss": ("Agent memory by Services cached (10 endpoints each)", "Services", "agent RSS (MiB, max of 3)",
                  "bytes per Service above the idle agent"),
}
# Where the plots go (next to BENCHMARKS.md; set by main from --output).
PLOT_DIR: list[Path] = [ROOT / "docs" / "bench"]


def curve_labels(name: str) -> tuple[str, str, str, str]:
    if name in CURVE_LABELS:
        return CURVE_LABELS[name]
    if name.startswith("leases-"):
        leases = name.removeprefix("leases-").replace("-", " / ")
        return (f"Idle agent CPU by nodes ({leases} leases)", "nodes", "agent CPU (% of one core, busiest)",
                "CPU µs per Lease event")
    return (name, "size", "value", "per unit")


def render_curves(bench: str, curves: dict[str, list[tuple[float, float, float]]]) -> list[str]:
    """Draws each cost curve (total and per unit against size, log x) as a PNG in PLOT_DIR and
    links it; without matplotlib (`pip install matplotlib`) says so instead."""
    md: list[str] = []
    for name, points in curves.items():
        if len(points) < 2:
            continue
        title, xl, yl, per = curve_labels(name)
        path = PLOT_DIR[0] / f"{bench}-{name.replace('/', '-')}.png"
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            md += [f"Plot `{path.name}` not drawn: matplotlib is not installed (`pip install matplotlib`).", ""]
            continue
        points = sorted(points)
        xs = [p[0] for p in points]
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
        a.plot(xs, [p[1] for p in points], marker="o")
        a.set_xscale("log")
        a.set_xlabel(xl)
        a.set_ylabel(yl)
        a.grid(True, which="both", alpha=0.3)
        b.plot(xs, [p[2] for p in points], marker="o", color="tab:orange")
        b.set_xscale("log")
        b.set_ylim(bottom=0)
        b.set_xlabel(xl)
        b.set_ylabel(per)
        b.grid(True, which="both", alpha=0.3)
        fig.suptitle(title)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90)
        plt.close(fig)
        rel = os.path.relpath(path, PLOT_DIR[1] if len(PLOT_DIR) > 1 else ROOT)
        md += [f"![{title}]({rel})", ""]
    return md


@dataclass
class Machine:
    cpu: str
    cpus: int
    ram: str
    kernel: str
    rust: str
    date: str
    commit: str


def machine_info() -> Machine:
    cpu, cpus = "unknown CPU", os.cpu_count() or 0
    try:
        text = Path("/proc/cpuinfo").read_text()
        names = re.findall(r"^model name\s*:\s*(.+)$", text, re.M)
        cpu = names[0].strip() if names else cpu
        cpus = len(re.findall(r"^processor\s*:", text, re.M)) or cpus
    except OSError:
        pass
    ram = "unknown RAM"
    try:
        m = re.search(r"^MemTotal:\s*(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        if m:
            ram = f"{int(m[1]) / 2**20:.1f} GiB RAM"
    except OSError:
        pass
    u = platform.uname()
    kernel = f"{u.system} {u.release} ({u.machine})"
    rust = _capture(["rustc", "--version"]) or "rustc unknown"
    commit = _capture(["git", "rev-parse", "--short", "HEAD"]) or "unknown"
    dirty = _capture(["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no"])
    if dirty:
        commit += "+dirty"
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return Machine(cpu, cpus, ram, kernel, rust, date, commit)


def _capture(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def previous_section(path: Any, heading: str) -> list[str]:
    """The body of the section of the existing report at `path` whose heading starts with
    `heading` (without its heading and any earlier carry-over note), or [] when there is none or
    it holds no measurement."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, TypeError):
        return []
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    if start is None:
        return []
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    body = lines[start + 1:end]
    while body and (not body[0].strip() or body[0].startswith("**Carried over from the previous report**")
                    or body[0].startswith("`--fuzz-log fuzz.log` to measure")):
        body = body[1:]
    while body and not body[-1].strip():
        body = body[:-1]
    if not body or any("Not included in this run" in line for line in body):
        return []
    return body


def render(results: list[Result], machine: Machine, args: argparse.Namespace, fuzz: list[tuple[str, str]],
           soaks: list[tuple[str, Any]], took: float) -> str:
    md = [
        "# Benchmarks",
        "",
        "This file is generated: `just bench` runs `python3 scripts/bench-report.py`, which runs every "
        "benchmark and lab measurement below as a subprocess with the command shown, parses what it prints "
        "and rewrites this file (edit the script, not this file). Every ratio compares two numbers measured "
        "in the same run of the same command. Numbers from the lab and the emulator are network-namespace "
        "and loopback measurements on this machine, not real clusters. Fuzzing and soak results are "
        "included from the files given with `--fuzz-log` and `--soak-json`.",
        "",
        "| | |",
        "|---|---|",
        f"| Machine | {md_escape(machine.cpu)}, {machine.cpus} CPUs, {machine.ram}, {md_escape(machine.kernel)} |",
        f"| Toolchain | {md_escape(machine.rust)} |",
        f"| Date | {machine.date} |",
        f"| Commit | `{machine.commit}` |",
        f"| Sections | {'only ' + ', '.join(r.bench.name for r in results) if args.only else 'all'}"
        f"{'; fuzz log ' + ', '.join(f'`{p}`' for p, _ in fuzz) if fuzz else ''}"
        f"{'; soak ' + ', '.join(f'`{p}`' for p, _ in soaks) if soaks else ''} |",
        f"| Took | {took / 60:.1f} min |",
        "",
    ]
    failed = [r for r in results if not r.ok]
    if failed:
        md += ["**Failed or not run:** " + ", ".join(f"`{r.bench.name}` ({r.error})" for r in failed) + ".", ""]

    # Extra sections first, so their targets are in the summary.
    extra: list[str] = []
    targets: list[tuple[str, Target]] = []
    for res in results:
        targets += [(res.bench.title, t) for t in res.report.targets]
    if fuzz:
        extra += ["## Fuzzing (issue #9 soak)", ""]
        for path, text in fuzz:
            rep = parse_fuzz_log(text)
            extra += [f"From `{path}` (output of `bash scripts/fuzz.sh {FUZZ_SECONDS}`; "
                      "each target runs coverage-guided libFuzzer without sanitizers).", ""]
            for t in rep.tables:
                extra += render_table(t)
            extra += render_table(Table(["target", "measured", "met"],
                                        [[t.what, t.measured, met_text(t.met)] for t in rep.targets], title="Targets:"))
            extra += [n + "\n" for n in rep.notes]
            targets += [("Fuzzing", t) for t in rep.targets]
    elif not args.only:
        previous = previous_section(args.output or ROOT / "BENCHMARKS.md", "## Fuzzing")
        if previous:
            extra += ["## Fuzzing (issue #9 soak)", "",
                      "**Carried over from the previous report** (the fuzzers were not run by this run; "
                      f"run `bash scripts/fuzz.sh {FUZZ_SECONDS} 2>&1 | tee fuzz.log` and pass "
                      "`--fuzz-log fuzz.log` to measure them again):", ""]
            extra += previous + [""]
        else:
            extra += ["## Fuzzing (issue #9 soak)", "",
                      f"Not included in this run: run `bash scripts/fuzz.sh {FUZZ_SECONDS} 2>&1 | tee fuzz.log` "
                      "and pass `--fuzz-log fuzz.log`.", ""]
    if soaks:
        extra += ["## Chaos soak (issue #9 soak)", ""]
        extra += ["Each subsection renders one `purelb-lab soak --json-file` report (`just soak` / "
                  "`scripts/soak.sh` write them under `target/soak/`).", ""]
        long_ok: set[Any] = set()
        for path, data in soaks:
            seed = data.get("seed", "?") if isinstance(data, dict) else "?"
            extra += [f"### Soak, seed {seed} (`{path}`)", ""]
            body, rep = render_soak(data, path)
            extra += body
            extra += render_table(Table(["target", "measured", "met"],
                                        [[t.what, t.measured, met_text(t.met)] for t in rep.targets], title="Targets:"))
            targets += [("Chaos soak", t) for t in rep.targets]
            dur = data.get("duration_s", data.get("duration")) if isinstance(data, dict) else None
            if isinstance(dur, (int, float)) and dur >= 1800 and all(t.met for t in rep.targets):
                long_ok.add(seed)
        targets.append(("Chaos soak", Target("#9 soak", "30-minute soaks with three different seeds: zero violations, "
                                             "zero failed requests outside the windows",
                                             f"{len(long_ok)} seed(s) passed 30 min", len(long_ok) >= 3)))
    elif not args.only:
        extra += ["## Chaos soak (issue #9 soak)", "",
                  "Not included in this run: run `just soak 1800 SEED` three times and pass the JSON reports "
                  "with `--soak-json target/soak/*.json`.", ""]

    if targets:
        md += ["## Targets at a glance", "",
               "| issue | target | measured | met | section |", "|---|---|---|---|---|"]
        for section, t in targets:
            md.append(f"| {t.issue} | {md_escape(t.what)} | {md_escape(t.measured)} | {met_text(t.met)} | {section} |")
        md.append("")
    for res in results:
        md += render_section(res)
    md += extra
    values: dict[str, str] = {}
    for res in results:
        for k, v in res.report.values.items():
            values.setdefault(k, v)
    md += published_section(values)
    return "\n".join(md).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------
# Self-test: sample output for every parser, from the println! formats and the numbers of the
# hand-written report this script replaced.

SAMPLES = {
    "scale": """scale: 2 s / 1 s: 50000 Services with 10 endpoints each
leases        nodes services renewals/s  lapsed   events/s  passes/s    cpu %   µs/event  rss MiB api cpu %    failover ms     restart ms
6 s / 2 s        13    50002          5       0        6.6      0.00     0.47      635.4    183.5       0.7      5484,4345      3651,3655
6 s / 2 s      1003    50002        500       0      504.0      0.00     2.67       49.8    208.3       7.5      5088,5213      5155,5750
2 s / 1 s      1003    50002       1000       3     1008.3      0.00     4.00       38.1    216.6      11.9           1224      4550,3862
(idle window 15 s per point; cpu % is of one core; lapsed: simulated Leases renewed more than a lease late in the window, a real membership change)
""",
    "ipam": """\
ipam: /16 to exhaustion (65,536 allocations): 1.6 ms (24 ns per allocation)
ipam: pool-full check on an exhausted /16: 4 ns (target < 10 µs)
ipam: 100,000 allocations from a /64: 2.6 ms, available after: 18446744073709451616
ipam: one allocation at 50,000 in use: tree 56 ns vs linear scan 1.17 ms = 20978x faster (target >= 100x)
ipam: first 16,384 allocations of a /16: tree 0.37 ms vs linear scan 2488 ms = 6814x
""",
    "queue": """\
queue: 2 CPUs, tokio runtime with 2 worker threads
queue: add 200000 keys then get+done them, one task: 200000 items in 41.6 ms = 4807692 items/s
queue: 1 producer + 1 worker, distinct keys: 200000 items in 44.4 ms = 4504504 items/s
queue: 1 producer + 4 workers, distinct keys: 200000 items in 58.8 ms = 3401360 items/s
queue: 1 producer + 1 worker, 200000 adds of 100 keys, 1234 processed: 200000 items in 20.2 ms = 9900990 items/s
queue: 1 producer + 4 workers, add_after 0-9 ms, distinct keys: 200000 items in 153.8 ms = 1300390 items/s
queue: add 200000 keys then get+done them, one task, prometheus recorder: 200000 items in 44.4 ms = 4504504 items/s
queue: 1 producer + 1 worker, distinct keys, prometheus recorder: 200000 items in 55.5 ms = 3603603 items/s
queue: 1 producer + 4 workers, distinct keys, prometheus recorder: 200000 items in 52.6 ms = 3802281 items/s
queue: 1 producer + 1 worker, 200000 adds of 100 keys, 101 processed, prometheus recorder: 200000 items in 3.0 ms = 66666667 items/s
queue: 1 producer + 4 workers, add_after 0-9 ms, distinct keys, prometheus recorder: 200000 items in 105.3 ms = 1899335 items/s
""",
    "endpoints": """\
endpoints: 1 Service, 100 slices x 100 endpoints = 10000 endpoints, 50 nodes
initial fill (replace_all of 100 slices): 12.35ms
incremental: apply 1 slice + usable nodes     51.02µs/op  (median of 7 rounds x 2000 ops)
full rescan: all 100 slices                  3.17ms/op  (median of 7 rounds x 40 ops)
speed-up: 62.1x (required >= 20x)
""",
    "netlink": """\
core::netlink against the kernel (private network namespace)
IPv4 /32: 768 addresses on a bridge
  add (new address, one request)               n=768   p50     24.0 µs   p99     62.0 µs   max    301.2 µs
  list snapshot (768 addresses + links)        n=20    p50    620.0 µs   p99   1350.0 µs   max   1350.0 µs
  replace (ours: EEXIST, dump link, replace)   n=768   p50    653.0 µs   p99    957.0 µs   max   1200.0 µs
  delete by interface + address (lookup, dump) n=768   p50    341.0 µs   p99    663.0 µs   max    900.0 µs
  delete listed in a snapshot (one request)    n=768   p50     47.0 µs   p99     87.0 µs   max    120.0 µs
IPv6 /128: 1000 addresses on a bridge
  add (new address, one request)               n=1000  p50    300.0 µs   p99    565.0 µs   max    700.0 µs
  list snapshot (1000 addresses + links)       n=20    p50    720.0 µs   p99   1370.0 µs   max   1370.0 µs
  replace (ours: EEXIST, dump link, replace)   n=1000  p50   1192.0 µs   p99   1609.0 µs   max   2000.0 µs
  delete by interface + address (lookup, dump) n=1000  p50    412.0 µs   p99    888.0 µs   max    999.0 µs
  delete listed in a snapshot (one request)    n=1000  p50    107.0 µs   p99    244.0 µs   max    300.0 µs
""",
    "apiserver": """\
apiserver: 10000 creates over HTTP: 1.88 s = 5314 req/s; latency p50 185.123µs p99 299.456µs
apiserver: list of 10000 objects: 192.345678ms (2355 KiB)
apiserver: 100 watchers x 1000 writes = 100000 deliveries in 1.18 s; fan-out latency (write sent -> watcher received) p50 1.912345ms p99 5.2ms
""",
    "allocator_burst": """\
burst: 5000 Services, run 1: raw 5600 writes/s; allocator: caches synced after 0.26 s, 5000 Services (no duplicates) in 3.06 s = 1636 Services/s = 29% of raw; 3.00 writes per Service, 0 of them answered 409 Conflict
burst: 5000 Services: restart: the new allocator adopted 5000 Services in 0.91 s (start → the newest Service has its address); 0 addresses changed
burst: emulator raw write throughput at 5000 Services over 1 runs: median 5600 writes/s (min 5600, max 5600)
burst: allocator caches synced (initial list of 5000 Services): median 0.26 s (min 0.26, max 0.26)
burst: allocator allocated 5000 Services (no duplicates) over 1 runs: median 1636 Services/s (min 1636, max 1636); ratio to the same run's raw write rate: median 29% (min 29%, max 29%; target >= 50%: MISSED); 3.00 writes per Service (max 3.00)
burst: 5000 Services: the purelb allocator process (release binary) adopted them in 0.27 s; RSS 67.1 MiB, peak 67.1 MiB; 0 addresses changed
burst: restart adoption of 5000 Services over 1 runs: median 0.91 s (min 0.91, max 0.91; target <= 10 s: met); addresses changed: 0 (target 0: met)
burst: the purelb allocator process at 5000 Services over 1 runs: adoption median 0.27 s (min 0.27, max 0.27); RSS median 67.1 MiB (min 67.1, max 67.1), peak median 67.1 MiB (min 67.1, max 67.1; the chart's limit 512 MiB: fits); addresses changed: 0
burst: 50000 Services, run 1: raw 5000 writes/s; allocator: caches synced after 2.6 s, 50000 Services (no duplicates) in 12.5 s = 4000 Services/s = 80% of raw; 3.00 writes per Service, 0 of them answered 409 Conflict
burst: 50000 Services: restart: the new allocator adopted 50000 Services in 7.50 s (start → the newest Service has its address); 0 addresses changed
burst: emulator raw write throughput at 50000 Services over 1 runs: median 5000 writes/s (min 5000, max 5000)
burst: allocator caches synced (initial list of 50000 Services): median 2.60 s (min 2.60, max 2.60)
burst: allocator allocated 50000 Services (no duplicates) over 1 runs: median 4000 Services/s (min 4000, max 4000); ratio to the same run's raw write rate: median 80% (min 80%, max 80%; target >= 80%: met); 3.00 writes per Service (max 3.00)
burst: 50000 Services: the purelb allocator process (release binary) adopted them in 3.12 s; RSS 374.1 MiB, peak 375.3 MiB; 0 addresses changed
burst: restart adoption of 50000 Services over 1 runs: median 7.50 s (min 7.50, max 7.50; target <= 10 s: met); addresses changed: 0 (target 0: met)
burst: the purelb allocator process at 50000 Services over 1 runs: adoption median 3.12 s (min 3.12, max 3.12); RSS median 374.1 MiB (min 374.1, max 374.1), peak median 375.3 MiB (min 375.3, max 375.3; the chart's limit 512 MiB: fits); addresses changed: 0
""",
    "agent_lab": """\
agent-lab: purelb binary /work/main/target/release/purelb
agent-lab: tail parts at 50 Services: status write → a watcher sees it (fan-out under the same load): n=50 p50 1.10 ms p99 3.20 ms max 4.00 ms
agent-lab: tail parts at 50 Services: status write → the winner logs the kernel's ack of the add: n=50 p50 2.00 ms p99 5.00 ms max 6.00 ms
agent-lab: tail parts at 50 Services: the winner's log line → ip monitor's time: n=50 p50 -0.02 ms p99 9.00 ms max 12.00 ms
agent-lab: status write → address on the winner: n=50 p50 41.2 ms p99 62.0 ms max 70.1 ms
agent-lab: at 50 Services: 4.1 decision passes per change over 3 agents, 0.61 ms each on average (8200 passes, 5.0 s of work for 2000 changes)
agent-lab: 0 of 50 addresses appeared on a node other than the hash winner
agent-lab: Service deletion → address gone from every node: n=50 p50 30.1 ms p99 38.0 ms max 40.0 ms
agent-lab: floor: emulator watch fan-out (status write → watcher): n=50 p50 2.1 ms p99 4.0 ms max 5.0 ms
agent-lab: floor: netlink add p50 0.030 ms; floor = fan-out p50 + netlink add p50 = 2.13 ms
agent-lab: floor p99: netlink add p99 0.075 ms; floor p99 = fan-out p99 + netlink add p99 = 4.08 ms
agent-lab: ratio to the floor: address appears p99 29.1×, address gone p99 17.8× (targets: p99 ≤ 100 ms each: met / met)
agent-lab: tail at 50 Services: address appears p99 / floor p99 = 15.2× (target ≤ 5×: MISSED)
agent-lab: idle agent API requests: 240/min (renew interval 500 ms in this lab): {"get leases": 120.0, "update leases": 120.0}
agent-lab: SIGKILL of the holder → successor holds the address (2 s leases): n=3 p50 2010.0 ms p99 2070.0 ms max 2070.0 ms
agent-lab: failover target ≤ 3 s: met
agent-lab: cost curve: 1000 Services (10000 endpoints): agent RSS max 14.0 MiB, 4194 bytes per Service above the idle agent (10.0 MiB)
agent-lab: created 5000 Services with status and 5000 EndpointSlices (50000 endpoints) in 12.3 s
agent-lab: at 5000 Services: status write → address on the winner: n=1000 p50 3.1 ms p99 20.0 ms max 30.0 ms
agent-lab: at 5000 Services: Service deletion → address gone from every node: n=1000 p50 3.0 ms p99 19.0 ms max 25.0 ms
agent-lab: tail at 5000 Services: address appears p99 / floor p99 = 4.9× (target ≤ 10×: met)
agent-lab: cost curve: 5000 Services (50000 endpoints): agent RSS max 30.1 MiB, 4214 bytes per Service above the idle agent (10.0 MiB)
agent-lab: agent RSS with 5000 Services and 50000 endpoints cached: max 30.1 MiB over 3 agents (idle before: 10.0 MiB); target ≤ 64 MiB: met
agent-lab: created 50000 Services with status and 50000 EndpointSlices (500000 endpoints) in 120.3 s
agent-lab: cost curve: 50000 Services (500000 endpoints): agent RSS max 140.5 MiB, 2736 bytes per Service above the idle agent (10.0 MiB)
agent-lab: agent RSS with 50000 Services and 500000 endpoints cached: max 140.5 MiB over 3 agents; target ≤ 256 MiB: met
""",
    "agent_tests": """\
running 8 tests
MEASURE Service applied -> address on the winner n2: 35.2ms
MEASURE SIGKILL -> n3 holds the address: 2.003s
MEASURE SIGKILL -> page from n3: 2.01s
MEASURE Service deleted -> address gone from every node: 27.5ms
MEASURE drift: address deleted -> back: 70.1ms
MEASURE restart -> orphan removed: 68.3ms
MEASURE SIGTERM -> agent exited (ExitStatus(unix_wait_status(0))): 1.2s
MEASURE handover gap (last reply from n1 -> first from n2): 12.4ms
MEASURE handover: 180 requests, 0 failed
MEASURE endpoint not ready -> remote address withdrawn: 1.03s
MEASURE endpoint ready -> remote address announced: 40ms
MEASURE holder cut off -> successor holds: 2.2s
MEASURE both nodes held the address for at most: 6.1ms
MEASURE something new: 5ms
test result: ok. 8 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 60.01s
""",
    "upgrades": """\
MEASURE in place: SIGTERM -> old agent exited (Exited { code: Some(0), signal: None, not_built: false }): 61.2ms
MEASURE in place: 71 short requests (0 failed), long-lived connection 34 requests (0 failed), holders [["n1"]]
MEASURE rollout: SIGTERM -> old agent exited (Exited { code: Some(0), signal: None, not_built: false }): 40.2ms
MEASURE cordoned: 163 short requests (0 failed), single holders [["n1"], ["n3"]]
MEASURE paused leader: frozen for 5.001s
MEASURE paused leader: 40 Services, 0 duplicate addresses, 0 changed addresses
MEASURE late writes: 40 Services (3 deleted), 52 late writes, 0 duplicate addresses, 0 changed addresses
""",
    "bgp": """\
MEASURE bgp status seen -> route with 3 next hops: n=30 p50 66.884981ms p99 86.084061ms max 86.084061ms
MEASURE bgp Service deleted -> route gone: n=30 p50 74.959364ms p99 87.777516ms max 87.777516ms
MEASURE bgp 300 connections over 3 next hops: {"n1": 96, "n2": 96, "n3": 108}
MEASURE bgp node frozen -> route withdrawn, BFD 3 x 300 ms: [831.057257ms, 960.051525ms, 922.835725ms]
MEASURE bgp node frozen -> route withdrawn, no BFD (hold time 9 s): [6.984999659s, 9.018080284s, 9.017974339s]
MEASURE bgp node frozen -> route withdrawn, BFD 3 x 100 ms: [336.79974ms, 330.987912ms, 346.023661ms]
MEASURE bgp drain (--drain-time=1s): route left the FIB after 90.313089ms, address left the node after 1.047139592s, 144 requests, 0 failed
""",
    "decide": """\
running 1 test
MEASURE decide 5000 Services x 50 members: 17.2ms (2500 wanted)
test agent::decide::tests::five_thousand_services_are_decided_quickly ... ok
test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 999 filtered out; finished in 0.20s
""",
    "lab": """\
measured: up --nodes 3 270.5ms, down 20.1ms, total 290.6ms (kubectl checks 1.1s)
test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 9 filtered out; finished in 2.00s
""",
    "binary": "13271520\nsymtab: no\n",
}

FUZZ_SAMPLE = """\
   Compiling purelb v0.1.0
fuzz: address_range for 600s
Done 12345678 runs in 601 second(s)
stat::number_of_executed_units: 12345678
stat::peak_rss_mb:              85
fuzz: annotations for 600s
Done 2345678 runs in 600 second(s)
stat::number_of_executed_units: 2345678
stat::peak_rss_mb:              60
fuzz: lease_annotations for 600s
Done 345678 runs in 600 second(s)
fuzz: arp_na for 600s
Done 45678 runs in 600 second(s)
fuzz: all targets ran 600s without a crash
"""

SOAK_SAMPLE = {
    "seed": 42, "duration_s": 1800.0, "elapsed_s": 1850.2, "nodes": 4, "build": "release", "passed": True,
    "bounds": {"sample_period_ms": 50, "converge_ms": 5000, "agent_args": ["--lease-duration=2s"]},
    "invariants": [{"number": 1, "invariant": "SingleHolder", "promise": "a local address | one node", "violations": 0},
                   {"number": 2, "invariant": "Announced", "promise": "announced", "violations": 0}],
    "violations": [],
    "actions": {"create": 120, "sigkill agent": 14},
    "convergence": {"announce local": {"count": 100, "p50_ms": 40.0, "p90_ms": 80.0, "p99_ms": 120.0, "max_ms": 300.0}},
    "requests": {"sent": 100000, "ok": 99990, "failed": 10, "outside": 0, "allowed": {"handover": 10}, "notable": []},
    "errors": [],
    "timeline": [{"t_s": float(i), "action": "create", "detail": f"s{i}"} for i in range(40)],
}


def self_test() -> int:
    failures: list[str] = []

    def check(cond: bool, what: str) -> None:
        if not cond:
            failures.append(what)

    def target(rep: Report, prefix: str) -> Target | None:
        return next((t for t in rep.targets if t.what.startswith(prefix)), None)

    check(abs((parse_dur("51.23µs") or 0) - 51.23e-6) < 1e-15, "parse_dur µs")
    check(abs((parse_dur("1.17 ms") or 0) - 1.17e-3) < 1e-12, "parse_dur ms")
    check(parse_dur("2.5s") == 2.5 and abs((parse_dur("24 ns") or 0) - 24e-9) < 1e-18, "parse_dur s/ns")
    check(fmt_dur(0.00317) == "3.17 ms" and fmt_dur(51e-6) == "51.0 µs" and fmt_dur(2.07) == "2.07 s", "fmt_dur")

    plots = tempfile.mkdtemp(prefix="bench-report-self-test-")
    PLOT_DIR[:] = [Path(plots), Path(plots)]
    reports = {name: BY_NAME[name].parse(text) for name, text in SAMPLES.items()}
    for name, rep in reports.items():
        check(not rep.missing, f"{name}: missing {rep.missing}")
        check(name == "agent_tests" or not rep.unparsed, f"{name}: unparsed {rep.unparsed}")
        md = render_section(Result(BY_NAME[name], "ok", 0, 1.0, SAMPLES[name], rep))
        check(NOT_PARSED not in "\n".join(md) or name == "agent_tests", f"{name}: 'not parsed' in the section")

    r = reports["ipam"]
    check(target(r, "one allocation").met is True and "20,978×" in target(r, "one allocation").measured, "ipam ratio")
    check(target(r, '"pool full"').met is True, "ipam pool full")
    check(target(r, "/64").met is True, "ipam /64 exact")
    check(len(r.baselines) == 2, "ipam baselines")
    r = reports["upgrades"]
    check(target(r, "agent rolled in place: zero address moves").met is True, "upgrades: in place moves")
    check(target(r, "cordoned node").met is True, "upgrades: cordoned")
    check(all(t.met is True for t in r.targets) and len(r.targets) == 5, f"upgrades targets {r.targets}")
    r = reports["bgp"]
    check(all(t.met is True for t in r.targets) and len(r.targets) == 4, f"bgp targets {r.targets}")
    check(len(r.baselines) == 1 and "9.22×" in r.baselines[0], f"bgp baseline {r.baselines}")
    check(any("3 x 100 ms" in row[0] and "331 ms" in row[1] for row in r.tables[0].rows), f"bgp 100 ms row {r.tables[0].rows}")
    r = reports["queue"]
    check(len(r.tables[0].rows) == 5 and r.tables[0].rows[0][1] == "4.8 M items/s", f"queue rows {r.tables[0].rows[:1]}")
    check(any("adds/s" in row[2] and "66.7 M" in row[2] for row in r.tables[0].rows), "queue de-dup adds/s")
    r = reports["endpoints"]
    check(target(r, "EndpointSlice").met is True and target(r, "EndpointSlice").measured == "62.1×", "endpoints ratio")
    r = reports["netlink"]
    check(len(r.tables[0].rows) == 5 and r.tables[0].headers[1].startswith("IPv4 /32 ×768"), f"netlink table {r.tables[0].headers}")
    check(r.tables[0].rows[0][2] == "300 µs / 565 µs", f"netlink ipv6 add {r.tables[0].rows[0]}")
    check(r.tables[0].rows[1][0] == "list snapshot (N addresses + links)", "netlink list row merged")
    r = reports["apiserver"]
    check(target(r, "10,000 objects").met is True and "p50 1.91 ms" in r.tables[0].rows[2][1], "apiserver")
    r = reports["agent_lab"]
    check(len(r.curves.get("agent_rss", [])) == 3 and r.curves["agent_rss"][2] == (50000, 140.5, 2736.0), "agent RSS curve")
    check(any(t.headers[0].startswith("where an appearance") and len(t.rows) == 3 for t in r.tables), "tail parts")
    md = "\n".join(render_curves("agent_lab", r.curves))
    check("agent_lab-agent_rss.png" in md, "the RSS curve is drawn or said not to be")
    r = reports["scale"]
    check(len(r.tables[0].rows) == 3 and r.tables[0].rows[2][4] == "3", f"scale rows {r.tables[0].rows}")
    check(r.tables[0].rows[0][11] == "5484 ms, 4345 ms" and r.tables[0].rows[0][12] == "3651 ms, 3655 ms",
          f"scale failover and restart columns {r.tables[0].rows[0]}")
    check(target(r, "idle agent CPU").met is True and target(r, "decision passes").met is True, "scale cpu/passes")
    check(target(r, "crash failover").met is False, "a failover not taken over is a missed target")
    check(target(r, "agent RSS at 50,000").met is True and target(r, "agent RSS at 50,000").measured.startswith("216.6"),
          "scale RSS target")
    r = reports["allocator_burst"]
    check(target(r, "burst of 5,000").met is False and target(r, "burst of 5,000").measured == "29.0 %", "burst target not met")
    check(target(r, "burst of 50,000").met is True and target(r, "burst of 50,000").issue == "#20 scale", "burst 50k target")
    check(target(r, "allocator restart adoption of 50,000").met is True, "adoption target")
    check(r.baselines and "5,600 writes/s" in r.baselines[0], "burst baseline")
    r = reports["agent_lab"]
    check(target(r, "status write").met is True and target(r, "status write").measured == "62.0 ms", "agent_lab appear")
    check(target(r, "SIGKILL").met is True and target(r, "agent RSS").met is True, "agent_lab failover/rss")
    check(target(r, "one idle agent").met is True, "agent_lab idle api")
    check(r.baselines and "29.1×" in r.baselines[0], "agent_lab floor ratio")
    tail50, tail5k, rss50k = (next((x for x in r.targets if key in x.what), None)
                              for key in ("× at 50 Services", "× at 5,000 Services", "50,000 Services / 500,000"))
    check(tail50 is not None and tail50.met is False and tail50.measured == "15.2×", "agent_lab tail 50")
    check(tail5k is not None and tail5k.met is True, "agent_lab tail 5000")
    check(rss50k is not None and rss50k.met is True and rss50k.measured == "140.5 MiB", "agent_lab 50k rss")
    check(not r.unparsed, f"agent_lab leftovers {r.unparsed}")
    r = reports["agent_tests"]
    check(target(r, "graceful handover gap").met is True, "agent tests handover gap")
    check(target(r, "graceful handover: zero").met is True, "agent tests zero failed")
    check(target(r, "drift").met is True and target(r, "orphan").met is True, "agent tests drift/orphan")
    check(target(r, "cut-off").met is True, "agent tests cut-off overlap")
    check(any(row[0] == "something new" for row in r.tables[0].rows), "agent tests unknown MEASURE kept")
    r = reports["decide"]
    check(target(r, "re-evaluating").met is True and target(r, "re-evaluating").measured == "17.2 ms", "decide")
    r = reports["lab"]
    check(target(r, "`purelb-lab up").met is True, "lab up/down")
    r = reports["binary"]
    check(target(r, "stripped").met is True and "12.7 MiB" in r.tables[0].rows[0][1], "binary size")

    # Tolerance: a changed format gives "not parsed", the raw line, and no exception.
    r = parse_ipam("ipam: pool-full check went sideways\nipam: one allocation at 50,000 in use: tree 5 ns vs scan ???\n")
    check(target(r, '"pool full"').met is None and target(r, '"pool full"').measured == NOT_PARSED, "tolerant target")
    check(len(r.unparsed) == 2 and r.missing, "tolerant leftovers")
    md = "\n".join(render_section(Result(BY_NAME["ipam"], "failed", 1, 1.0, "garbage", r, "exit status 1")))
    check("not parsed" in md and "**FAILED**" in md and "<details>" in md, "tolerant render")
    for name, bench in BY_NAME.items():
        try:
            bench.parse("")
            bench.parse("\x1b[31mrandom\x1b[0m text: 12 ms\n" * 3)
        except Exception as e:  # noqa: BLE001 - the point of the test
            failures.append(f"{name} parser raised {e!r} on junk")

    r = parse_fuzz_log(FUZZ_SAMPLE)
    check(len(r.targets) == 4 and all(t.met for t in r.targets), f"fuzz targets {r.targets}")
    r = parse_fuzz_log("fuzz: address_range for 30s\nDone 100 runs in 30 second(s)\n")
    check(r.targets[0].met is False and all(t.met is None for t in r.targets[1:]), "fuzz short run / missing targets")
    r = parse_fuzz_log("fuzz: arp_na for 600s\nthread 'main' panicked at src/x.rs\nDone 5 runs in 600 second(s)\n")
    check(target(r, "fuzz target `arp_na`").met is False, "fuzz crash")

    body, rep = render_soak(SOAK_SAMPLE, "soak.json")
    text = "\n".join(body)
    check(all(t.met is True for t in rep.targets), f"soak targets {rep.targets}")
    check("SingleHolder" in text and "p99_ms" in text and "sigkill agent" in text and "… and 15 more" in text, "soak render")
    check("a local address \\| one node" in text, "soak escapes pipes")
    _, rep = render_soak({"seed": 1, "violations": [{"invariant": "x"}], "requests": {"sent": 5, "failed": 2}}, "s.json")
    check(rep.targets[0].met is False and rep.targets[1].met is False, "soak failing targets")
    _, rep = render_soak(["not", "an", "object"], "bad.json")
    check(not rep.targets, "soak junk")

    args = argparse.Namespace(only=None)
    machine = Machine("AMD EPYC", 2, "23.5 GiB RAM", "Linux 6.18 (x86_64)", "rustc 1.95.0", "2026-11-26 10:00 UTC", "abc1234+dirty")
    results = [Result(BY_NAME[n], "ok", 0, 1.0, SAMPLES[n], reports[n]) for n in SAMPLES]
    results.append(Result(BY_NAME["netlink"], "skipped", None, 0.0, "", parse_netlink(""), "needs root"))
    doc = render(results, machine, args, [("fuzz.log", FUZZ_SAMPLE)], [("soak.json", SOAK_SAMPLE)], 600.0)
    for needle in ["# Benchmarks", "## Targets at a glance", "## Published numbers of the Go PureLB and its peers",
                   "`abc1234+dirty`", "10–20 s with the default lease", "**NOT MET**", "**NOT RUN**: needs root",
                   "## Fuzzing", "### Soak, seed 42", "p50 2.01 s, p99 2.07 s with 2 s leases"]:
        check(needle in doc, f"report lacks {needle!r}")
    check(doc.count("<details>") == doc.count("</details>"), "details balanced")
    for line in doc.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = re.split(r"(?<!\\)\|", line)
            check(len(cells) >= 3, f"table line {line[:60]!r}")

    shutil.rmtree(plots, ignore_errors=True)
    if failures:
        for f in failures:
            print(f"self-test FAILED: {f}")
        return 1
    print(f"self-test: ok ({len(SAMPLES)} bench parsers, fuzz log, soak JSON, report rendering)")
    return 0


# ---------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="sections: " + ", ".join(BY_NAME))
    p.add_argument("--only", help="comma-separated sections to run (see --list)")
    p.add_argument("--output", help="report path (default: BENCHMARKS.md at the repository root)")
    p.add_argument("--keep-going", action="store_true", help="record failing sections in the report and exit 1 at the end")
    p.add_argument("--fuzz-log", action="append", default=[], metavar="FILE", help="output of `bash scripts/fuzz.sh 600` to include")
    p.add_argument("--soak-json", action="extend", nargs="+", default=[], metavar="FILE",
                   help="`purelb-lab soak --json-file` reports to include")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per command before it is killed (default 3600)")
    p.add_argument("--quiet", action="store_true", help="do not echo the benches' output while they run")
    p.add_argument("--list", action="store_true", help="print the sections and their commands, then exit")
    p.add_argument("--self-test", action="store_true", help="check the parsers on sample output, then exit")
    args = p.parse_args(argv)

    if args.self_test:
        return self_test()
    if args.list:
        for b in BENCHES:
            cmds = [shlex.join(c) for c in b.prepare] + [shlex.join(b.command)]
            print(f"{b.name:16} {b.issue:15} {' && '.join(cmds)}{'  (root)' if b.needs_root else ''}")
        return 0

    selected = BENCHES
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in BY_NAME]
        if unknown:
            p.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(BY_NAME)}")
        selected = [b for b in BENCHES if b.name in names]

    fuzz, soaks = [], []
    for path in args.fuzz_log:
        try:
            fuzz.append((path, Path(path).read_text(errors="replace")))
        except OSError as e:
            p.error(f"--fuzz-log {path}: {e}")
    for path in args.soak_json:
        try:
            soaks.append((path, json.loads(Path(path).read_text())))
        except (OSError, json.JSONDecodeError) as e:
            p.error(f"--soak-json {path}: {e}")

    output = Path(args.output).resolve() if args.output else ROOT / "BENCHMARKS.md"
    plots = ROOT / "docs" / "bench" if output == ROOT / "BENCHMARKS.md" else output.parent / f"{output.stem}-plots"
    PLOT_DIR[:] = [plots, output.parent]
    machine = machine_info()
    runner = Runner(args.timeout, echo=not args.quiet)
    started = time.monotonic()
    results: list[Result] = []
    for b in selected:
        res = runner.bench(b)
        results.append(res)
        log_line(f"{b.name}: {res.status}" + (f" ({res.error})" if res.error else "") + f", {res.seconds:.0f} s")
        if not res.ok and not args.keep_going:
            log_line(f"stopping: `{b.name}` {res.status}; {output} left unchanged (rerun with --keep-going to record failures)")
            return 1
    doc = render(results, machine, args, fuzz, soaks, time.monotonic() - started)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=output.parent, prefix=".bench-report-", suffix=".md", delete=False) as tmp:
        tmp.write(doc)
    os.replace(tmp.name, output)
    log_line(f"wrote {output}")

    missed = [(r.bench.name, t) for r in results for t in r.report.targets if t.met is False]
    unknown_t = [(r.bench.name, t) for r in results for t in r.report.targets if t.met is None and r.ok]
    for name, t in missed:
        log_line(f"target NOT MET ({name}): {t.what}: {t.measured}")
    for name, t in unknown_t:
        log_line(f"target not parsed ({name}): {t.what}")
    failed = [r for r in results if not r.ok]
    if failed:
        log_line("failed: " + ", ".join(f"{r.bench.name} ({r.error})" for r in failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
