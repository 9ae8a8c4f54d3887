#!/usr/bin/env python3
"""Replays the SQLite writer's work outside the router, to size changes to it before making them.

Usage: python3 docs/perf-sqlite-replica.py [VARIANT LETTERS...]   (N=20000 by default)

Same schema as src/store/sqlite.rs (every migration in its MIGRATIONS), WAL, synchronous=FULL,
v7-ordered ids, random delivery ids (as GitHub's X-GitHub-Delivery GUIDs are), ~7 KB event
bodies. Each transaction holds 128 event jobs (event + delivery INSERT) and one outcome job for
the previous 128 deliveries (attempt INSERT + delivery UPDATE), as the group commit does at
saturation. Prints CPU and wall time per event. Python's own overhead is included,
so compare variants, not absolute numbers.
"""
import json
import os
import random
import re
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = open(os.path.join(HERE, "..", "src", "store", "sqlite.rs")).read()
# Every migration, in order (the schema as a new database gets it).
MIGRATIONS = re.search(r'const MIGRATIONS: &\[&str\] = &\[(.*?)\n\];', SRC, re.S).group(1)
SCHEMA = "".join(re.findall(r'r#"(.*?)"#', MIGRATIONS, re.S))
PAYLOAD = json.load(open(os.path.join(HERE, "..", "examples", "github-pull_request.json")))
PAYLOAD["pull_request"]["body"] = "x" * 1000
N = int(os.environ.get("N", "20000"))
BATCH = 128


def event_body(i):
    return json.dumps({
        "id": str(uuid.uuid4()), "source": "github", "type": "pull_request", "action": "opened",
        "deliveryId": str(uuid.uuid4()), "timestamp": 1764170000123 + i, "payload": PAYLOAD,
        "metadata": {"identifier": f"bench-user-{i % 1000:04}", "clientIp": "127.0.0.1",
                     "receivedBytes": 6173, "headers": {"x-github-event": "pull_request"}},
    })


BODIES = [event_body(i) for i in range(64)]
_seq = [0]


def v7():
    _seq[0] += 1
    return (int(time.time() * 1000) << 80 | _seq[0] << 64 | random.getrandbits(64)).to_bytes(16, "big")


def run(savepoints=True, attempts_row=True, drop_idx=(), page_size=None, record=True,
        checkpoint_off=False):
    tmp = tempfile.mkdtemp(prefix="er-replica-")
    path = os.path.join(tmp, "db")
    c = sqlite3.connect(path, isolation_level=None)
    if page_size:
        c.execute(f"PRAGMA page_size={page_size}")
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("PRAGMA synchronous=FULL")
    if checkpoint_off:
        c.execute("PRAGMA wal_autocheckpoint=0")
    c.executescript(SCHEMA)
    for ix in drop_idx:
        c.execute(f"DROP INDEX {ix}")
    prev = []
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for start in range(0, N, BATCH):
        c.execute("BEGIN")
        cur = []
        for i in range(start, min(N, start + BATCH)):
            eid, did = v7(), v7()
            if savepoints:
                c.execute("SAVEPOINT job")
            c.execute("INSERT INTO events (id, source, type, action, delivery_id, timestamp, filtered, body)"
                      " VALUES (?,?,?,?,?,?,?,?) ON CONFLICT DO NOTHING",
                      (eid, "github", "pull_request", "opened", str(uuid.uuid4()), 1764170000123 + i, 0,
                       BODIES[i % 64]))
            c.execute("INSERT INTO deliveries (id, event_id, agent_id, route_id, priority, status, attempts,"
                      " next_attempt_at, last_error, body, retry_policy, created_at, updated_at)"
                      " VALUES (?,?,?,?,?,?,0,?,?,?,?,?,?)",
                      (did, eid, "bench-agent", "bench-route", 0, "pending", 0, None, None, None,
                       1764170000123, 1764170000123))
            if savepoints:
                c.execute("RELEASE job")
            cur.append(did)
        if record and prev:
            if savepoints:
                c.execute("SAVEPOINT job")
            for did in prev:
                if attempts_row:
                    c.execute("INSERT OR REPLACE INTO attempts (delivery_id, attempt, started_at,"
                              " duration_ms, status_code, error, response_body) VALUES (?,?,?,?,?,?,?)",
                              (did, 1, 1764170000200, 1, 200, None, None))
                c.execute("UPDATE deliveries SET status = ?2, attempts = MAX(attempts, ?3),"
                          " next_attempt_at = ?4, last_error = ?5, updated_at = ?6 WHERE id = ?1",
                          (did, "delivered", 1, None, None, 1764170000300))
            if savepoints:
                c.execute("RELEASE job")
        c.execute("COMMIT")
        prev = cur
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    c.close()
    shutil.rmtree(tmp, ignore_errors=True)
    return 1e6 * cpu / N, 1e6 * wall / N


VARIANTS = {
    "A": ("as now", {}),
    "B": ("without per-job SAVEPOINT", dict(savepoints=False)),
    "D": ("B + no attempts row for a first-attempt success", dict(savepoints=False, attempts_row=False)),
    "E": ("D + no deliveries_by_agent / deliveries_by_agent_event",
          dict(savepoints=False, attempts_row=False,
               drop_idx=("deliveries_by_agent", "deliveries_by_agent_event"))),
    "F": ("B + no events_by_source / events_by_type",
          dict(savepoints=False, drop_idx=("events_by_source", "events_by_type"))),
    "H": ("B + wal_autocheckpoint=0", dict(savepoints=False, checkpoint_off=True)),
    "J": ("D + page size 16 KiB + wal_autocheckpoint=0",
          dict(savepoints=False, attempts_row=False, page_size=16384, checkpoint_off=True)),
    "I": ("no outcome writes at all (ingest only)", dict(savepoints=False, record=False)),
}

if __name__ == "__main__":
    for key, (label, kw) in VARIANTS.items():
        if sys.argv[1:] and key not in sys.argv[1:]:
            continue
        cpu, wall = run(**kw)
        print(f"{key} {label:55s} cpu {cpu:6.1f} us/event  wall {wall:6.1f} us/event", flush=True)
