#!/usr/bin/env python3
"""The tables of bench/run.sh: medians over rounds, CPU per end, and ratios.

  summarize.py RESULTS_DIR RESULTS_MD

Reads RESULTS_DIR/{reference-live,reference-idempotent,verdict-sqlite,
verdict-postgres}-rN.json (and verdict-{sqlite,postgres}-base-rN.json when
run.sh had a BASE build), writes RESULTS_DIR/ends.md and replaces the part
of RESULTS_MD between the run.sh markers with it. Ratios are taken within
each round (the systems of one round share its noise), then their median
is quoted. Standard library only.
"""
import glob
import json
import os
import re
import statistics
import sys

BEGIN = "<!-- bench/run.sh: begin -->"
END = "<!-- bench/run.sh: end -->"


def rounds(directory, prefix):
    """{round number: its report} for RESULTS_DIR/PREFIX-rN.json."""
    found = {}
    for path in glob.glob(os.path.join(directory, f"{prefix}-r*.json")):
        found[int(re.search(r"-r(\d+)\.json$", path).group(1))] = json.load(open(path))
    return dict(sorted(found.items()))


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=0):
    return "–" if value is None else f"{value:,.{digits}f}"


def spread(values, digits=0):
    return " / ".join(fmt(v, digits) for v in values)


def reference(runs):
    """Per round: ends/s, p50, p99, CPU µs per end of a reference run."""
    return {r: {"per_second": run["tps"], "p50": run["p50_ms"], "p99": run["p99_ms"],
                "cpu_us": cpu_us(run.get("cpu_ticks"), run, run.get("transactions"))}
            for r, run in runs.items()}


def verdict(runs, operation):
    """Per round: the same for one operation of verdict simulate's report."""
    out = {}
    for r, run in runs.items():
        stats = run["operations"].get(operation, {})
        ticks = (run.get("cpu_ticks") or {}).get(operation)
        out[r] = {"per_second": stats.get("per_second"), "p50": stats.get("p50_ms"),
                  "p99": stats.get("p99_ms"), "cpu_us": cpu_us(ticks, run, stats.get("count"))}
    return out


def cpu_us(ticks, run, ends):
    if ticks is None or not ends or not run.get("clock_ticks_per_second"):
        return None
    return ticks / run["clock_ticks_per_second"] * 1e6 / ends


def ratio(numerator, denominator, key):
    """Median over rounds of numerator[r][key] / denominator[r][key]: the
    cell's text, each round's ratio in brackets."""
    ratios = []
    for r in sorted(numerator):
        a = numerator[r].get(key)
        b = denominator.get(r, {}).get(key)
        if a is not None and b:
            ratios.append(a / b)
    if not ratios:
        return "–"
    each = f" ({spread(ratios, 2)})" if len(ratios) > 1 else ""
    return f"**{med(ratios):.2f}×**{each}"


def main(directory, results_md):
    live_runs = rounds(directory, "reference-live")
    live = reference(live_runs)
    idem = reference(rounds(directory, "reference-idempotent"))
    systems = {}  # (backend, build) → its runs
    for backend in ("sqlite", "postgres"):
        for build, suffix in (("", ""), ("base", "-base")):
            runs = rounds(directory, f"verdict-{backend}{suffix}")
            if runs:
                systems[backend, build] = runs
    has_base = any(build == "base" for _, build in systems)
    machine = open(os.path.join(directory, "machine.txt")).read().strip()
    name = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    goal = {("sqlite", "end"): "≥ 1.5× the reference, p99 ≤ 25 ms, ≤ 150 µs",
            ("postgres", "end"): "≥ 1.0× the reference, p99 ≤ 25 ms, CPU below the reference's",
            ("sqlite", "end_again"): "≥ 20,000/s"}

    def label(backend, build):
        return f"verdict{' BASE' if build else ''}, {name[backend]}"

    rows = []

    def row(what, per_round, goal_text=""):
        values = list(per_round.values())
        rates = [v["per_second"] for v in values]
        cpus = [v["cpu_us"] for v in values]
        rows.append(f"| {what} | {fmt(med(rates))} ({spread(rates)}) | "
                    f"{fmt(med([v['p50'] for v in values]), 1)} | "
                    f"{fmt(med([v['p99'] for v in values]), 1)} | "
                    f"{fmt(med(cpus))} ({spread(cpus)}) | {goal_text} |")

    measured = {}  # (backend, build, operation) → per round
    for operation in ("end", "end_again"):
        if operation == "end":
            row("reference function, live → completed, 16 pgbench clients", live)
        else:
            row("reference function, already ended (idempotent), 16 clients", idem)
        for (backend, build), runs in systems.items():
            per_round = verdict(runs, operation)
            measured[backend, build, operation] = per_round
            what = ("completed ends" if operation == "end" else "already-ended ends")
            row(f"{label(backend, build)}: {what} over HTTP, {next(iter(runs.values()))['concurrency']} connections",
                per_round, "" if build else goal.get((backend, operation), ""))

    columns = list(systems)
    ratio_rows = []

    def ratio_row(what, cells, goal_text=""):
        ratio_rows.append(f"| {what} | {' | '.join(cells)} | {goal_text} |")

    ratio_row("completed ends/s: verdict ÷ reference",
              [ratio(measured[b, v, "end"], live, "per_second") for b, v in columns],
              "≥ 1.5× on SQLite, ≥ 1.0× on PostgreSQL")
    ratio_row("ends/s: verdict completed ÷ verdict already-ended",
              [ratio(measured[b, v, "end"], measured[b, v, "end_again"], "per_second")
               for b, v in columns], "≥ 0.5×")
    ratio_row("CPU per completed end: verdict ÷ reference",
              [ratio(measured[b, v, "end"], live, "cpu_us") for b, v in columns],
              "< 1× on PostgreSQL")
    ratio_row("already-ended ends/s: verdict ÷ reference",
              [ratio(measured[b, v, "end_again"], idem, "per_second") for b, v in columns])
    ratio_row("CPU per already-ended end: verdict ÷ reference",
              [ratio(measured[b, v, "end_again"], idem, "cpu_us") for b, v in columns])
    ratio_header = (f"| ratio, median of the rounds' (each round's) | "
                    f"{' | '.join(label(b, v) for b, v in columns)} | goal |\n"
                    f"|---|{'---|' * len(columns)}---|")

    base_table = ""
    if has_base:
        backends = [b for b in name if (b, "") in systems and (b, "base") in systems]
        lines = [f"| this tree ÷ BASE, median of the rounds' (each round's) | "
                 f"{' | '.join(name[b] for b in backends)} |",
                 f"|---|{'---|' * len(backends)}"]
        for what, operation, key in (("completed ends/s", "end", "per_second"),
                                     ("completed ends, p99", "end", "p99"),
                                     ("CPU per completed end", "end", "cpu_us"),
                                     ("already-ended ends/s", "end_again", "per_second"),
                                     ("CPU per already-ended end", "end_again", "cpu_us")):
            cells = [ratio(measured[b, "", operation], measured[b, "base", operation], key)
                     for b in backends]
            lines.append(f"| {what} | {' | '.join(cells)} |")
        bases = sorted({run.get("server", "?") for (b, v), runs in systems.items() if v
                        for run in runs.values()})
        base_table = ("\nThis tree against BASE (`" + "`, `".join(bases) + "`), run in the same "
                      "rounds right after it on each backend; ratios within each round:\n\n"
                      + "\n".join(lines) + "\n")

    first = next(iter(systems.values()), {})
    first = next(iter(first.values()), {})
    sessions = first.get("sessions", 0)
    everyone = [run for runs in systems.values() for run in runs.values()]
    errors = sum(run["operations"][op].get("errors", 0)
                 for run in everyone for op in run["operations"])
    completed = [run.get("outcomes", {}).get("completed", 0) for run in everyone]
    clean = all(run.get("verify_clean") for run in everyone)
    rss = [run["server_peak_rss_kib"] / 1024 for run in everyone]
    secs = next(iter(live_runs.values()), {}).get("duration_s")
    # Ends are completions only if the sessions were joined ≥ 1 s before
    # (VERDICT_MIN_BILLABLE_SECONDS): too few SESSIONS for the end rate and
    # the last ones are cancelled instead, a lighter path.
    short = [f"{label(b, v)} round {r}: {run.get('outcomes', {}).get('completed', 0):,} "
             f"of {run['sessions']:,}" for (b, v), runs in systems.items()
             for r, run in runs.items()
             if run.get("outcomes", {}).get("completed", 0) < run["sessions"]]
    warning = ("" if not short else
               "\n**Not every end was a completion** (" + "; ".join(short) + "): the end "
               "phase was under a second, so the last sessions were ended less than the "
               "1 s minimum after their joins and cancelled. Those rows are not the completed-end "
               "path; run with more SESSIONS.\n")
    live = list(live.values())

    text = f"""{BEGIN}
## Durable ends, side by side with the reference design (`bench/run.sh`)

Written by `bench/run.sh` (median of {len(live)} interleaved rounds; each
round's figure in brackets). Ends per second; latency in ms; CPU in µs of
the server side's user + system time per end, over the end phase alone.

| what | per second, median (rounds) | p50 | p99 | CPU µs per end, median (rounds) | goal |
|---|---|---|---|---|---|
{chr(10).join(rows)}
{warning}
Ratios, taken within each round (the systems of a round share its noise):

{ratio_header}
{chr(10).join(ratio_rows)}
{base_table}
- Each verdict round: {sessions:,} sessions created and joined by both
  parties, then all ended (`verdict simulate --ends-apart --mix together=100`),
  then all ended again (the idempotent path) from the same connections;
  the load generator runs on the same 2 cores as the server (and PostgreSQL).
- Every end is acknowledged only after its commit is durable: SQLite in WAL
  with `synchronous=FULL`, PostgreSQL with its defaults (`fsync`,
  `synchronous_commit` on). Concurrent writes share one transaction and one
  commit (group commit); a group's ends are written a table at a time.
- CPU per end counts the server side only, never the load generator:
  verdict's process (all its threads), sampled by `verdict simulate
  --cpu-pids` as the end phase starts and ends; on PostgreSQL the cluster
  too (the postmaster, its live children, and its exited ones through its
  cutime/cstime); for the reference, its cluster around its pgbench run
  (`bench/pgbench-cpu.py`), connection set-up included. Clock ticks of
  1/`getconf CLK_TCK` s per process.
- Server peak RSS during the load: {fmt(max(rss) if rss else None)} MiB at most
  (goal ≤ 150 MB). Errors answered: {errors}. Sessions completed per
  run: {", ".join(str(c) for c in completed)}. `verdict verify` after every
  run: {"clean" if clean else "**not clean**"}.
- The reference is `../shared/bench/seed-baseline/run.sh` (its PL/pgSQL end
  function, pgbench, PostgreSQL 15, fsync on), one round of it per round here
  with `CLIENTS=16 MAIN_SECS={secs} AUX_SECS=10 N_LIVE=60000`; its own checks
  are in `bench/results/reference-checks-r*.txt`.

Machine and run:

```
{machine}
```
{END}"""
    open(os.path.join(directory, "ends.md"), "w").write(text + "\n")
    current = open(results_md).read() if os.path.exists(results_md) else "# Benchmarks\n"
    if BEGIN in current and END in current:
        head, rest = current.split(BEGIN, 1)
        current = head + text + rest.split(END, 1)[1]
    else:
        first_break = current.find("\n## ")
        if first_break < 0:
            current = current.rstrip("\n") + "\n\n" + text + "\n"
        else:
            current = current[:first_break + 1] + text + "\n\n" + current[first_break + 1:]
    open(results_md, "w").write(current)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
