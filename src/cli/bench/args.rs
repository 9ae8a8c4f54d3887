//! The command line of `event-router bench`.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Serialize;

/// Options of `event-router bench`.
#[derive(clap::Parser, Debug, Clone)]
#[command(name = "bench")]
pub struct BenchArgs {
    /// Webhooks to send [default: 10000, unless --duration is given].
    #[arg(short = 'n', long = "events", conflicts_with = "duration")]
    pub events: Option<u64>,
    /// Send for this many seconds instead of a fixed number.
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Requests in flight (closed loop). With --rate: the most in flight, i.e. the pool size.
    #[arg(short = 'c', long, default_value_t = 128)]
    pub concurrency: usize,
    /// Offer this many webhooks per second (open loop) instead of sending as answers come back.
    /// Latency is then measured from each request's scheduled time, so a client that falls
    /// behind shows as latency, not as a lower rate.
    #[arg(long, value_name = "PER_SEC")]
    pub rate: Option<f64>,
    /// Measure the bare-HTTP ceiling first (the default).
    #[arg(long, overrides_with = "no_baseline")]
    pub baseline: bool,
    /// Skip the bare-HTTP baseline.
    #[arg(long, overrides_with = "baseline")]
    pub no_baseline: bool,
    /// How long the baseline runs (closed loop at --concurrency).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub baseline_secs: f64,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Target an existing router at this base URL instead of starting one in process. Several
    /// nodes of one cluster: comma-separated URLs; webhooks go round-robin to each, the agent
    /// and route are created on the first.
    #[arg(long, value_name = "URL[,URL…]")]
    pub router: Option<String>,
    /// The router's admin key (with --router).
    #[arg(long, env = "ADMIN_API_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// The router's GitHub webhook secret (with --router).
    #[arg(long, env = "GITHUB_WEBHOOK_SECRET", hide_env_values = true)]
    pub github_secret: Option<String>,
    /// Distinct `sender.login` values, i.e. rate-limit identifiers (and distinct bodies).
    #[arg(long, default_value_t = 1000)]
    pub identifiers: usize,
    /// Approximate size of each webhook body.
    #[arg(long, value_name = "BYTES", default_value_t = 6144)]
    pub payload_bytes: usize,
    /// `maxConcurrency` of the receiver agent.
    #[arg(long, default_value_t = 256)]
    pub agent_concurrency: u32,
    /// How long to wait after sending for acknowledged events still to be delivered.
    #[arg(long, value_name = "SECS", default_value_t = 60.0)]
    pub drain_timeout: f64,
    /// Data dir of the in-process router [default: a fresh temporary dir, removed afterwards].
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Where the receiver agent listens (the router must be able to reach it).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub receiver_listen: SocketAddr,
    /// Measure the delivery engine alone: the receiver holds every delivery unanswered while
    /// the webhooks are sent (the agent's `maxConcurrency` attempts in flight, the rest queued in
    /// the router), then answers them all at once and times the drain of the backlog.
    #[arg(long)]
    pub backlog: bool,
    /// How the receiver gets its events: `http` push deliveries to a receiver agent with a
    /// `url`; `sse`, one live Server-Sent Events stream of a stream-only agent (resumed with
    /// `Last-Event-ID` if the router cuts it off as a slow consumer); or `pull`, `--consumers`
    /// consumers leasing a pull agent's deliveries and acking them in batches, measured after a
    /// push run of the same load in the same invocation, for comparison.
    #[arg(long, value_enum, default_value_t = DeliverVia::Http, conflicts_with = "backlog")]
    pub deliver: DeliverVia,
    /// `--deliver pull`: consumers polling the pull agent at once (one consumer group).
    #[arg(long, value_name = "K", default_value_t = 4,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub consumers: u32,
    /// `--deliver pull`: the most deliveries one poll leases (`max`, 1–500).
    #[arg(long, value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..=500))]
    pub pull_batch: u32,
    /// Deliver in order per key: the route gets `ordering` on `payload.pull_request.number`,
    /// and the webhooks spread over this many pull request numbers (docs/delivery.md,
    /// "Ordered and coalesced delivery").
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
    pub ordering_keys: Option<u64>,
    /// The route gets an include filter whose condition reads the payload
    /// (`payload.pull_request.number gt 0`, true of every webhook sent), so that routing
    /// looks into each event's payload.
    #[arg(long)]
    pub payload_condition: bool,
    /// Routes in all: the bench route and N−1 more, for the same agent and evaluated before it
    /// (higher priority), each with a payload condition that no webhook meets
    /// (`payload.pull_request.title equals "no such title <i>"`).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub routes: u32,
}

/// `--deliver`: how the events reach the tool.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliverVia {
    /// Push deliveries (signed HTTP POSTs) to the tool's receiver agent.
    Http,
    /// One SSE stream (`GET /stream/sse`) of a stream-only agent.
    Sse,
    /// Consumers long-polling a pull agent (`GET /agents/{id}/deliveries`) and acking each
    /// batch; a push run of the same load goes first, for comparison.
    Pull,
}

impl BenchArgs {
    pub(super) fn baseline_enabled(&self) -> bool {
        !self.no_baseline
    }
}
