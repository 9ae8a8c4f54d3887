//! event-router: a self-hosted webhook event router.
//!
//! Webhooks come in at `/webhook/{source}`, are verified, normalized, filtered and routed, are
//! committed durably before they are answered, and then reach agents over HTTP or live streams.
#![forbid(unsafe_code)]

pub mod analytics;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod crypto;
pub mod deliver;
pub mod event;
pub mod http;
pub mod ingest;
pub mod providers;
pub mod queue;
pub mod ratelimit;
pub mod routing;
pub mod rules;
pub mod server;
pub mod store;
pub mod stream;
pub mod telemetry;
pub mod tls;

pub use server::{Server, run, start};

/// The ingest path allocates many small JSON nodes per webhook; mimalloc's thread-local free
/// lists make that markedly cheaper than glibc malloc (measured in benches/ingest.rs). Not in fuzz
/// builds (`cargo fuzz` sets `--cfg fuzzing`): there the fuzz crate installs an allocator that
/// refuses huge single allocations, and the sanitizers see every allocation.
#[cfg(not(fuzzing))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
pub use config::Config;
