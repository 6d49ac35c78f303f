#!/usr/bin/env python3
"""pgbench, with the CPU time a PostgreSQL cluster spends on each timed run.

bench/run.sh puts a `pgbench` link to this file first on PATH while the
reference's run.sh runs, which calls pgbench by name. A timed run (one with
--log-prefix=.../NAME, the reference's bench_run) is wrapped: the cluster's
CPU (user + system, in clock ticks) is sampled just before pgbench starts and
again once its backends are gone, and written to $CPU_OUT/NAME.json. Every
other call (flush probes, --version) is pgbench itself.

The cluster's CPU: the postmaster of $CPU_PGDATA, its children alive (each
process's /proc/PID/stat utime + stime, all threads), and its children
reaped (the postmaster's cutime + cstime): a backend that exits during the
run still counts. pgbench, the load generator, is not a child: never counted.
Linux only; standard library only.

  CPU_REAL_PGBENCH=/usr/bin/pgbench CPU_PGDATA=... CPU_OUT=... pgbench ARGS...
"""
import json
import os
import subprocess
import sys
import time


def fields(pid):
    """/proc/PID/stat as a list indexed by field number (1-based), or None."""
    try:
        text = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    # The command (field 2) may hold spaces and parentheses: split after it.
    return [None, pid, None] + text[text.rindex(")") + 2:].split()


def children(parent):
    """(pid, stat fields) of the live children of `parent`."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            stat = fields(int(name))
            if stat and int(stat[4]) == parent:
                found.append((int(name), stat))
    return found


def cluster_ticks(postmaster):
    """CPU clock ticks so far of the postmaster, its live and reaped children."""
    own = fields(postmaster)
    live = sum(int(s[14]) + int(s[15]) for _, s in children(postmaster))
    return int(own[14]) + int(own[15]) + int(own[16]) + int(own[17]) + live


def new_children(postmaster, before):
    """Children of the postmaster started since `before` (pgbench's backends,
    over TCP or a Unix socket) that are not reaped yet."""
    return [pid for pid, _ in children(postmaster) if pid not in before]


def main(args):
    real = os.environ["CPU_REAL_PGBENCH"]
    prefix = [a.split("=", 1)[1] for a in args if a.startswith("--log-prefix=")]
    if not prefix or not os.environ.get("CPU_OUT"):
        os.execv(real, [real] + args)
    name = os.path.basename(prefix[-1])
    with open(os.path.join(os.environ["CPU_PGDATA"], "postmaster.pid")) as f:
        postmaster = int(f.readline())
    already = {pid for pid, _ in children(postmaster)}
    before = cluster_ticks(postmaster)
    rc = subprocess.call([real] + args)
    # Its backends exit as pgbench disconnects: wait until they are reaped,
    # so their CPU is in the postmaster's cutime/cstime (a backend gone but
    # not reaped yet would count nowhere).
    deadline = time.monotonic() + 5
    while new_children(postmaster, already) and time.monotonic() < deadline:
        time.sleep(0.02)
    after = cluster_ticks(postmaster)
    os.makedirs(os.environ["CPU_OUT"], exist_ok=True)
    with open(os.path.join(os.environ["CPU_OUT"], name + ".json"), "w") as f:
        json.dump({"cpu_ticks": after - before,
                   "clock_ticks_per_second": os.sysconf("SC_CLK_TCK")}, f)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
