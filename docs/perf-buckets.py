#!/usr/bin/env python3
"""Buckets a `perf record -g --call-graph dwarf` profile of the router by pipeline stage.

Usage: python3 docs/perf-buckets.py [--inline] perf.data

With --inline, inlined frames count too (slower). Without it, the outbound connections' hyper
tasks of the delivery client cannot be told from the server's (their non-inlined frames are
the same generic `Dispatcher`), and both land in "HTTP server"; a profile of a `bench
--backlog` drain, where the server is idle, needs --inline.

Each sample goes to the first rule (in order) whose pattern matches any frame of its stack,
restricted to a thread name when the rule names one. The cross-cutting counters below the
table may count a sample several times. See docs/performance.md for how the profile is taken.
"""
import collections
import subprocess
import sys

RULES = [
    ("delivery: Standard Webhooks signing", None, ["StandardSigner::sign"]),
    ("writer: event+delivery INSERTs (CommitEventJob::apply)", "sqlite-writer", ["CommitEventJob"]),
    ("writer: attempt outcome writes (record_attempts FnJob)", "sqlite-writer", ["FnJob"]),
    ("writer: COMMIT (WAL frames, fsync, checkpoint)", "sqlite-writer",
     ["sqlite3VdbeHalt", "sqlite3WalCheckpoint", "walCheckpoint", "sqlite3PagerCommitPhaseOne",
      "sqlite3BtreeCommit"]),
    ("writer: SAVEPOINT/RELEASE + other", "sqlite-writer", [""]),
    ("ingest: JSON parse to Value (decode_body)", None,
     ["event::decode_body", "parse_json_object", "materialize_payload"]),
    ("ingest: JSON probe (validate, read fields)", None,
     ["probe_json_object", "event::Skip", "event::NodeSeed"]),
    ("ingest: drop Value trees", None,
     ["drop_in_place<serde_json::value::Value>",
      "drop_in_place<alloc::collections::btree::map::IntoIter<alloc::string::String,serde_json::value::Value>>"]),
    ("ingest: HMAC verify", None, ["verify_github", "hmac::verify"]),
    ("ingest: serialize_event", None, ["serialize_event"]),
    ("ingest: normalize/classify", None, ["event::normalize", "event::classify"]),
    ("ingest: route plan", None, ["routing::plan"]),
    ("ingest: read body", None, ["read_body", "to_bytes", "Collect"]),
    ("ingest: commit hand-off/dedupe/queue", None,
     ["commit_event", "dedupe::", "Queue::enqueue", "publish_event"]),
    ("ingest: handler other", None, ["event_router::ingest::ingest", "event_router::ingest::webhook"]),
    ("delivery: attempt and its connection (hyper client)", None,
     ["deliver::attempt", "deliver::request", "reqwest::", "hyper::client", "hyper_util::client",
      "hyper::proto::h1::role::Client", "MaybeHttpsStream"]),
    ("scheduler/recorder tasks", None, ["queue::Dispatcher", "record_loop", "queue::start"]),
    ("HTTP server (hyper h1, axum routing, TraceLayer)", None,
     ["hyper::proto::h1", "axum::", "tower_http", "hyper::server"]),
    ("tokio runtime / scheduling / epoll", None, ["tokio::runtime", "mio::", "epoll"]),
]

CROSS = [
    ("SQLite sub-journal (per-job SAVEPOINT)",
     ["subjournalPage", "sqlite3OpenTempDatabase", "pagerOpenSavepoint"]),
    ("SQLite WAL checkpoint in the writer", ["walCheckpoint"]),
    ("fsync/fdatasync", ["fsync", "fdatasync", "unixSync"]),
    ("WAL frame writes", ["pagerWalFrames"]),
    ("mimalloc malloc/free (all callers)",
     ["mi_free", "_mi_page_malloc", "_mi_malloc", "mi_theap", "_mi_page_free_collect"]),
    ("kernel TCP send/recv", ["tcp_sendmsg", "tcp_recvmsg"]),
]


def samples(path, inline=False):
    """Yields (thread name, [frame symbols, leaf first]) for each sample."""
    cmd = ["perf", "script", "-i", path, "-F", "comm,ip,sym"] + ([] if inline else ["--no-inline"])
    proc = subprocess.Popen(cmd,
                            stdout=subprocess.PIPE, text=True, errors="replace")
    comm, frames = None, []
    for line in proc.stdout:
        if not line.strip():
            if comm is not None:
                yield comm, frames
            comm, frames = None, []
        elif not line.startswith((" ", "\t")):
            if comm is not None:
                yield comm, frames
            comm, frames = line.split()[0], []
        else:
            parts = line.strip().split(None, 1)
            frames.append(parts[1] if len(parts) > 1 else "")
    if comm is not None:
        yield comm, frames


def main(path, inline=False):
    buckets, cross, total = collections.Counter(), collections.Counter(), 0
    for comm, frames in samples(path, inline):
        total += 1
        for name, pats in CROSS:
            if any(p in f for f in frames for p in pats):
                cross[name] += 1
        for name, thread, pats in RULES:
            if thread and comm != thread:
                continue
            if any(p in f for f in frames for p in pats):
                buckets[name] += 1
                break
        else:
            buckets["other (kernel, allocator, unattributed)"] += 1
    if not total:
        sys.exit("no samples")
    for name, n in buckets.most_common():
        print(f"{100 * n / total:6.1f}%  {name}")
    print(f"{total} samples; cross-cutting (a sample may count in several):")
    for name, _ in CROSS:
        print(f"{100 * cross[name] / total:6.1f}%  {name}")


if __name__ == "__main__":
    args = sys.argv[1:]
    main([a for a in args if a != "--inline"][0], "--inline" in args)
