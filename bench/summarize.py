#!/usr/bin/env python3
"""The table of bench/run.sh: medians over rounds and verdict/reference ratios.

  summarize.py RESULTS_DIR RESULTS_MD

Reads RESULTS_DIR/{reference-live,reference-idempotent,verdict-sqlite,
verdict-postgres}-rN.json, writes RESULTS_DIR/ends.md and replaces the part
of RESULTS_MD between the run.sh markers with it. Standard library only.
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
    paths = sorted(glob.glob(os.path.join(directory, f"{prefix}-r*.json")),
                   key=lambda p: int(re.search(r"-r(\d+)\.json$", p).group(1)))
    return [json.load(open(p)) for p in paths]


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, digits=0):
    return "–" if value is None else f"{value:,.{digits}f}"


def spread(values):
    return " / ".join(fmt(v) for v in values)


def main(directory, results_md):
    live = rounds(directory, "reference-live")
    idem = rounds(directory, "reference-idempotent")
    sqlite = rounds(directory, "verdict-sqlite")
    pg = rounds(directory, "verdict-postgres")
    machine = open(os.path.join(directory, "machine.txt")).read().strip()

    ref_tps = [r["tps"] for r in live]
    ref_idem = [r["tps"] for r in idem]

    def op(runs, name, key):
        return [r["operations"].get(name, {}).get(key) for r in runs]

    rows = []

    def row(what, values, p50s, p99s, against=None, goal=""):
        m = med(values)
        ratio = "" if against is None or m is None else f"**{m / med(against):.2f}×**"
        rows.append(f"| {what} | {fmt(m)} ({spread(values)}) | {fmt(med(p50s), 1)} | "
                    f"{fmt(med(p99s), 1)} | {ratio} | {goal} |")

    row("reference function, live → completed, 16 pgbench clients", ref_tps,
        [r["p50_ms"] for r in live], [r["p99_ms"] for r in live])
    row("verdict, SQLite: ends over HTTP, 64 connections", op(sqlite, "end", "per_second"),
        op(sqlite, "end", "p50_ms"), op(sqlite, "end", "p99_ms"), ref_tps,
        "≥ 3× and p99 ≤ 25 ms")
    row("verdict, PostgreSQL: ends over HTTP, 64 connections", op(pg, "end", "per_second"),
        op(pg, "end", "p50_ms"), op(pg, "end", "p99_ms"), ref_tps,
        "≥ 1.5× and p99 ≤ 25 ms")
    row("reference function, already ended (idempotent), 16 clients", ref_idem,
        [r["p50_ms"] for r in idem], [r["p99_ms"] for r in idem])
    row("verdict, SQLite: already-ended ends over HTTP, 64 connections",
        op(sqlite, "end_again", "per_second"), op(sqlite, "end_again", "p50_ms"),
        op(sqlite, "end_again", "p99_ms"), ref_idem, "≥ 20,000/s")
    row("verdict, PostgreSQL: already-ended ends over HTTP, 64 connections",
        op(pg, "end_again", "per_second"), op(pg, "end_again", "p50_ms"),
        op(pg, "end_again", "p99_ms"), ref_idem)

    errors = sum(r["operations"][name].get("errors", 0)
                 for r in sqlite + pg for name in r["operations"])
    completed = [r.get("outcomes", {}).get("completed", 0) for r in sqlite + pg]
    clean = all(r.get("verify_clean") for r in sqlite + pg)
    rss = [r["server_peak_rss_kib"] / 1024 for r in sqlite + pg]
    sessions = sqlite[0]["sessions"] if sqlite else 0

    text = f"""{BEGIN}
## Durable ends, side by side with the reference design (`bench/run.sh`)

Written by `bench/run.sh` (median of {len(live)} interleaved rounds; each
round's figure in brackets). Requests per second; latency in ms.

| what | per second, median (rounds) | p50 | p99 | verdict / reference | goal |
|---|---|---|---|---|---|
{chr(10).join(rows)}

- Each verdict round: {sessions:,} sessions created and joined by both
  parties, then all ended (`verdict simulate --ends-apart --mix together=100`),
  then all ended again (the idempotent path) from the same 64 connections;
  the load generator runs on the same 2 cores as the server (and PostgreSQL).
- Every end is acknowledged only after its commit is durable: SQLite in WAL
  with `synchronous=FULL`, PostgreSQL with its defaults (`fsync`,
  `synchronous_commit` on). Concurrent writes share one transaction and one
  commit (group commit), each in a savepoint of its own.
- Server peak RSS during the load: {fmt(max(rss) if rss else None)} MiB at most
  (goal ≤ 150 MB). Errors answered: {errors}. Sessions completed per
  round: {", ".join(str(c) for c in completed)}. `verdict verify` after every
  round: {"clean" if clean else "**not clean**"}.
- The reference is `../shared/bench/seed-baseline/run.sh` (its PL/pgSQL end
  function, pgbench, PostgreSQL 15, fsync on), one round of it per round here
  with `CLIENTS=16 MAIN_SECS=15 AUX_SECS=10 N_LIVE=60000`; its own checks
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
