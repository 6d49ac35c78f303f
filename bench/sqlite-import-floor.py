#!/usr/bin/env python3
"""What SQLite alone costs an import: the floor under `verdict import`.

    verdict generate --sessions 1000000 --seed 7 > history.ndjson
    VERDICT_DATABASE_URL=sqlite://empty.db verdict migrate
    sqlite3 empty.db 'PRAGMA wal_checkpoint(TRUNCATE)'
    bench/sqlite-import-floor.py history.ndjson empty.db [--drop INDEX]... [--rebuild]
        [--lines-per-tx N] [--checkpoint PAGES] [--cache-kib K]

Turns the history into the rows `verdict import` writes (a session, its
`created` and presence events, a payout, a settlement posting and three
ledger lines per paid session) in a staging database first, untimed. Then,
into a copy of the empty verdict database (WAL, synchronous FULL, the
importer's 64 MiB cache), it moves them with `INSERT ... SELECT` from the
staging rows, 5,000 lines at a time: no JSON, no driver, no binding, only
SQLite's own work (B-trees, indexes, WAL). Prints seconds per table and for
the commits, and lines per second. `--drop` removes an index first, to
price it; `--rebuild` creates the dropped indexes again after the load, in
a transaction of its own, timed. `--checkpoint 0` turns automatic
checkpoints off (the WAL then grows to the database's size). Uses Python's
sqlite3 module: the system's SQLite, not the one bundled into verdict.
"""
import argparse, json, os, shutil, sqlite3, time
from datetime import datetime

BATCH = 5000


def ms(text):
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def stage(history, path):
    if os.path.exists(path):
        return
    db = sqlite3.connect(path + ".tmp", isolation_level=None)
    db.execute("BEGIN")
    db.execute("CREATE TABLE s (b, id, kind, status, reason, customer_id, provider_id, created_at, ended_at, price_mode, price_amount_cents, currency)")
    db.execute("CREATE TABLE e (b, session_id, type, party, at)")
    db.execute("CREATE TABLE p (b, id, session_id, provider_id, amount_cents, state)")
    db.execute("CREATE TABLE l (b, posting_id, account, amount_cents)")
    posting = 0
    with open(history) as lines:
        for n, line in enumerate(lines):
            d, b = json.loads(line), n // BATCH
            db.execute("INSERT INTO s VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", (
                b, d["id"], d["kind"], d["status"], d.get("reason") or "completed",
                d["customer_id"], d["provider_id"], ms(d["created_at"]), ms(d["ended_at"]),
                d["price"]["mode"], d["price"]["amount_cents"], d["price"]["currency"]))
            db.execute("INSERT INTO e VALUES (?,?,?,?,?)", (b, d["id"], "created", None, ms(d["created_at"])))
            for event in d["events"]:
                db.execute("INSERT INTO e VALUES (?,?,?,?,?)", (b, d["id"], event["type"], event["party"], ms(event["at"])))
            for payout in d["payouts"]:
                posting += 1
                db.execute("INSERT INTO p VALUES (?,?,?,?,?,?)", (b, posting, d["id"], d["provider_id"], payout["amount_cents"], payout["state"]))
                for account, amount in ((f"customer:{d['customer_id']}:receivable", 5),
                                        (f"provider:{d['provider_id']}:payable", -3),
                                        ("platform:revenue", -2)):
                    db.execute("INSERT INTO l VALUES (?,?,?,?)", (b, posting, account, amount))
    for table in "sepl":
        db.execute(f"CREATE INDEX {table}_b ON {table} (b)")
    db.execute("COMMIT")
    db.close()
    os.rename(path + ".tmp", path)


STATEMENTS = [
    ("sessions", "INSERT INTO sessions (id, kind, status, reason, customer_id, provider_id, created_at, ended_at, billable_seconds, price_mode, price_amount_cents, currency, charged_cents, import_run) SELECT id, kind, status, reason, customer_id, provider_id, created_at, ended_at, 0, price_mode, price_amount_cents, currency, 0, 'run' FROM st.s WHERE b = ? ORDER BY rowid"),
    ("events", "INSERT INTO session_events (session_id, type, party, actor_role, actor_id, at) SELECT session_id, type, party, 'system', 'import', at FROM st.e WHERE b = ? ORDER BY rowid"),
    ("payouts", "INSERT INTO payouts (id, session_id, provider_id, amount_cents, currency, state, provider, created_at, updated_at, imported) SELECT 'po_' || session_id, session_id, provider_id, amount_cents, 'usd', state, 'manual', 0, 0, 1 FROM st.p WHERE b = ? ORDER BY rowid"),
    ("postings", "INSERT INTO ledger_postings (id, session_id, kind, currency, created_at) SELECT id, session_id, 'settlement', 'usd', 0 FROM st.p WHERE b = ? ORDER BY rowid"),
    ("lines", "INSERT INTO ledger_lines (posting_id, account, amount_cents) SELECT posting_id, account, amount_cents FROM st.l WHERE b = ? ORDER BY rowid"),
]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("history")
    parser.add_argument("empty_db")
    parser.add_argument("--drop", action="append", default=[])
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--lines-per-tx", type=int, default=BATCH)
    parser.add_argument("--checkpoint", type=int, default=1000)
    parser.add_argument("--cache-kib", type=int, default=65536)
    args = parser.parse_args()
    if args.lines_per_tx < BATCH or args.lines_per_tx % BATCH:
        parser.error(f"--lines-per-tx must be a multiple of {BATCH}")
    staged = args.history + ".staged.db"
    stage(args.history, staged)
    target = args.empty_db + ".floor.db"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(target + suffix):
            os.remove(target + suffix)
    shutil.copy(args.empty_db, target)
    db = sqlite3.connect(target, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(f"PRAGMA cache_size=-{args.cache_kib}")
    db.execute(f"PRAGMA wal_autocheckpoint={args.checkpoint}")
    db.execute("ATTACH ? AS st", (staged,))
    dropped = {}
    for index in args.drop:
        dropped[index] = db.execute("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?", (index,)).fetchone()[0]
        db.execute(f"DROP INDEX {index}")
    lines = db.execute("SELECT COUNT(*) FROM st.s").fetchone()[0]
    batches = (lines + BATCH - 1) // BATCH
    per_tx = max(1, args.lines_per_tx // BATCH)
    spent = {name: 0.0 for name, _ in STATEMENTS}
    spent["commit"] = 0.0
    start = time.perf_counter()
    for b in range(batches):
        if b % per_tx == 0:
            db.execute("BEGIN IMMEDIATE")
        for name, statement in STATEMENTS:
            t = time.perf_counter()
            db.execute(statement, (b,))
            spent[name] += time.perf_counter() - t
        if b % per_tx == per_tx - 1 or b == batches - 1:
            t = time.perf_counter()
            db.execute("COMMIT")
            spent["commit"] += time.perf_counter() - t
    if args.rebuild and dropped:
        t = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        for sql in dropped.values():
            db.execute(sql)
        db.execute("COMMIT")
        spent["rebuild"] = time.perf_counter() - t
    wall = time.perf_counter() - start
    print(f"SQLite {sqlite3.sqlite_version}:",
          " ".join(f"{name} {seconds:.2f}s" for name, seconds in spent.items()),
          f"| {lines} lines in {wall:.2f} s = {lines / wall:,.0f} lines/s",
          f"| dropped: {', '.join(args.drop) or 'none'}; {per_tx * BATCH} lines a transaction")
    db.close()
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(target + suffix):
            os.remove(target + suffix)


if __name__ == "__main__":
    main()
