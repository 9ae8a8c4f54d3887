//! Black-box tests: each starts the real server on 127.0.0.1:0 with a temp data dir and talks to
//! it over HTTP with real clients.

mod support;

mod receiver;
mod signed;
mod stream_client;

mod agent_health;
mod analytics;
mod archive;
mod bench_tool;
mod browser;
mod cli;
mod cluster;
mod consumer_examples;
mod consumers;
mod crash;
mod dashboard;
mod delivery;
mod delivery_crash;
mod delivery_dlq;
mod delivery_queue;
mod envelope;
mod erasure;
mod fuzz_regressions;
mod handshakes_pb;
mod handshakes_pc;
mod handshakes_pd;
mod ingest;
mod ingest_errors;
mod inspect;
mod ordering;
mod otel_tracing;
mod providers;
mod rate_limits;
mod rules;
mod rules_admin;
mod rules_routing;
mod security;
mod slow_clients;
mod storage_faults;
mod streaming;
