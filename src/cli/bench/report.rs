//! What a run measured: the report `--json` prints, and its human-readable form.

use std::collections::BTreeMap;

use serde::Serialize;

use super::DeliverVia;

/// Everything measured, as `--json` prints it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// `in-process` or the router's URL.
    pub router: String,
    pub machine: Machine,
    pub settings: Settings,
    /// The same client and payloads against an endpoint that only reads the body.
    pub baseline: Option<Phase>,
    pub ingest: Phase,
    /// Router acks per second ÷ baseline answers per second.
    pub ratio_to_baseline: Option<f64>,
    pub end_to_end: EndToEnd,
    /// The drain of a held backlog (`--backlog` only).
    pub backlog: Option<Backlog>,
    /// Resident memory (in-process router only).
    pub rss: Option<Rss>,
    /// `--deliver pull`: what the consumers did (`ingest` and `endToEnd` above are the pull
    /// run's).
    pub pull: Option<Pull>,
    /// `--deliver pull`: the push run of the same load, made first in the same invocation (on
    /// a router of its own when in process).
    pub push: Option<PushRun>,
}

/// `--deliver pull`: the push run it is compared with.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushRun {
    pub ingest: Phase,
    pub ratio_to_baseline: Option<f64>,
    pub end_to_end: EndToEnd,
    pub rss: Option<Rss>,
}

/// `--deliver pull`: the consumers' side. An event counts as delivered (`endToEnd`) once its
/// ack is confirmed; its end-to-end latency runs from the webhook's send to the poll answer
/// that carried it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pull {
    pub consumers: u32,
    /// `max` of each poll.
    pub batch: u32,
    /// `waitMs` of each poll (long-poll).
    pub wait_ms: u64,
    pub polls: u64,
    /// Polls answered with no items.
    pub empty_polls: u64,
    /// Polls that failed (transport error or a status other than 200).
    pub poll_errors: u64,
    /// Deliveries the polls handed out, redeliveries included.
    pub leased: u64,
    /// Leased ÷ polls that carried items.
    pub mean_batch: f64,
    /// Ids the router confirmed as acked.
    pub acked: u64,
    /// Ids the router answered as `expired` to an ack (the lease had run out).
    pub ack_expired: u64,
    /// Ack requests that failed (their leases run out and are leased again).
    pub ack_errors: u64,
    /// Acked events ÷ (last ack confirmed − first send).
    pub acked_per_second: f64,
    /// From sending an ack to its answer.
    pub ack_latency_ms: Latency,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_mb: u64,
    /// 1-minute load average when the run started and when it ended: above `cpus`, other work
    /// competed for the CPU and the figures are pessimistic.
    pub load_average: [f64; 2],
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Settings {
    pub events: Option<u64>,
    pub duration_secs: Option<f64>,
    pub concurrency: usize,
    pub rate: Option<f64>,
    pub identifiers: usize,
    pub payload_bytes_mean: usize,
    pub agent_concurrency: u32,
    /// `--backlog`: deliveries were held until every webhook was sent.
    pub backlog: bool,
    /// `http` (push deliveries), `sse` (one live stream) or `pull` (consumers).
    pub deliver: DeliverVia,
    /// `--ordering-keys`: deliveries ordered per key over this many keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ordering_keys: Option<u64>,
    /// `--payload-condition`: the route's filter reads the payload.
    pub payload_condition: bool,
    /// `--routes`: routes in all.
    pub routes: u32,
}

/// One load phase (the baseline, or ingest into the router).
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Phase {
    /// Requests the plan called for (`None`: as many as fit in the duration).
    pub planned: Option<u64>,
    /// Requests that got an answer or failed.
    pub sent: u64,
    /// 2xx answers.
    pub accepted: u64,
    /// 2xx answers marked `duplicate` (none expected: delivery ids are unique).
    pub duplicates: u64,
    pub elapsed_secs: f64,
    /// Accepted per second over the phase.
    pub per_second: f64,
    /// Requests per second offered.
    pub offered_per_second: f64,
    /// Of accepted requests, from (scheduled) send to the whole answer read.
    pub ack_latency_ms: Latency,
    /// By kind: `http_<status>`, `connect`, `timeout`, `request`, `body`, `bad_answer`.
    pub errors: BTreeMap<String, u64>,
    /// CPU time of the whole process over the phase (client, servers, router).
    pub process_cpu_secs: Option<f64>,
    /// CPU time of the SQLite writer thread (in-process router).
    pub writer_cpu_secs: Option<f64>,
}

#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndToEnd {
    /// Acknowledged events that reached the receiver.
    pub delivered: u64,
    /// Acknowledged events that did not reach it within the drain timeout.
    pub lost: u64,
    /// Deliveries of an event already received (at-least-once redeliveries).
    pub duplicates: u64,
    /// Deliveries of events this run never saw acknowledged (e.g. its request failed late).
    pub unacknowledged: u64,
    /// Delivered ÷ (last delivery − first send).
    pub per_second: f64,
    /// Delivered before the last webhook was answered.
    pub delivered_during_send: u64,
    /// From the end of sending until the last acknowledged event arrived (or the timeout).
    pub drain_secs: f64,
    /// From send (scheduled) to arrival at the receiver.
    pub latency_ms: Latency,
    /// `--deliver sse`: times the stream ended early (e.g. cut off as a slow consumer) and was
    /// resumed from the last event received.
    pub stream_reconnects: Option<u64>,
}

/// `--backlog`: how fast the router empties a queue of deliveries to one agent.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Backlog {
    /// Deliveries waiting in the router when the receiver was released (acknowledged events).
    pub queued: u64,
    /// Of those, attempts the receiver was holding open at the release.
    pub held_in_flight: u64,
    /// Delivered from the release until the last acknowledged event arrived.
    pub delivered: u64,
    /// From the release to the last arrival (or the drain timeout).
    pub drain_secs: f64,
    /// `delivered ÷ drain_secs`: the delivery engine's throughput to one local agent.
    pub drain_per_second: f64,
    /// CPU time of this whole process over the drain (the in-process router and the receiver;
    /// with `--router`, the tool alone).
    pub process_cpu_secs: Option<f64>,
    /// CPU time of the SQLite writer thread over the drain (in-process router).
    pub writer_cpu_secs: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Rss {
    /// Highest process RSS sampled (every 100 ms) from router start to the end of the drain.
    pub peak_mb: f64,
    /// Process RSS just before the router started: the tool, its payloads and receiver.
    pub before_router_mb: f64,
    /// What the tool's own per-event records occupy by the end (ack and arrival logs).
    pub tool_records_mb: f64,
    /// `peak − before − records`: the router's share, roughly.
    pub router_estimate_mb: f64,
}

/// `cpu … s for the process… (… µs per <unit>)`, with the SQLite writer's share when known;
/// seconds to `decimals` places.
fn cpu_line(
    cpu: f64,
    writer: Option<f64>,
    decimals: usize,
    during: &str,
    count: u64,
    unit: &str,
) -> String {
    format!(
        "cpu {cpu:.decimals$} s for the process{during} ({:.0} µs per {unit}){}",
        cpu * 1e6 / (count.max(1) as f64),
        writer
            .map(|w| format!(", of which SQLite writer {w:.decimals$} s"))
            .unwrap_or_default()
    )
}

/// The human-readable report.
pub fn render(r: &Report) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "machine:   {} × {}, {} MiB; load average {:.1} → {:.1}; router {}",
        r.machine.cpus,
        r.machine.cpu_model,
        r.machine.memory_mb,
        r.machine.load_average[0],
        r.machine.load_average[1],
        r.router
    );
    if r.machine.load_average[0] > r.machine.cpus as f64 {
        let _ = writeln!(
            out,
            "           (other work was competing for the CPU: treat the figures as pessimistic)"
        );
    }
    if let Some(b) = &r.baseline {
        let _ = writeln!(
            out,
            "baseline:  {:.0}/s bare HTTP ({} in {:.1} s); ack {}; errors {}",
            b.per_second,
            b.accepted,
            b.elapsed_secs,
            lat(&b.ack_latency_ms),
            errors(&b.errors)
        );
    }
    if let Some(p) = &r.push {
        let _ = writeln!(out, "push deliveries (measured first, same load):");
        phase_lines(&mut out, &p.ingest, p.ratio_to_baseline, &p.end_to_end);
        if let Some(m) = &p.rss {
            rss_line(&mut out, m);
        }
    }
    if let Some(p) = &r.pull {
        let _ = writeln!(
            out,
            "pull consumers ({} × max {}, waitMs {}):",
            p.consumers, p.batch, p.wait_ms
        );
    }
    phase_lines(&mut out, &r.ingest, r.ratio_to_baseline, &r.end_to_end);
    if let Some(p) = &r.pull {
        let _ = writeln!(
            out,
            "acked:     {:.0}/s ({} acked, {} leased, {} ack expired, {} ack errors); {} polls, {} empty, {} failed, mean batch {:.1}",
            p.acked_per_second,
            p.acked,
            p.leased,
            p.ack_expired,
            p.ack_errors,
            p.polls,
            p.empty_polls,
            p.poll_errors,
            p.mean_batch
        );
        let _ = writeln!(out, "           ack request {}", lat(&p.ack_latency_ms));
        if let Some(push) = &r.push {
            let _ = writeln!(
                out,
                "pull ÷ push: {:.2} (acked/s {:.0} ÷ delivered/s {:.0}); end-to-end p99 {:.2} ms ÷ {:.2} ms",
                p.acked_per_second / push.end_to_end.per_second.max(f64::MIN_POSITIVE),
                p.acked_per_second,
                push.end_to_end.per_second,
                r.end_to_end.latency_ms.p99,
                push.end_to_end.latency_ms.p99
            );
        }
    }
    if let Some(b) = &r.backlog {
        let _ = writeln!(
            out,
            "backlog:   {:.0} deliveries/s draining {} queued ({} held in flight) in {:.2} s; {} delivered",
            b.drain_per_second, b.queued, b.held_in_flight, b.drain_secs, b.delivered
        );
        if let Some(cpu) = b.process_cpu_secs {
            let line = cpu_line(
                cpu,
                b.writer_cpu_secs,
                2,
                " during the drain",
                b.delivered,
                "delivery",
            );
            let _ = writeln!(out, "           {line}");
        }
    }
    if let Some(m) = &r.rss {
        rss_line(&mut out, m);
    }
    out
}

fn lat(l: &Latency) -> String {
    format!(
        "p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        l.p50, l.p95, l.p99, l.max
    )
}

fn errors(e: &BTreeMap<String, u64>) -> String {
    if e.is_empty() {
        "none".to_string()
    } else {
        e.iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn rss_line(out: &mut String, m: &Rss) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "rss:       peak {:.0} MiB (before the router {:.0} MiB, tool records {:.0} MiB) → router ≈ {:.0} MiB",
        m.peak_mb, m.before_router_mb, m.tool_records_mb, m.router_estimate_mb
    );
}

/// The `ingest:` and `delivered:` lines of one run.
fn phase_lines(out: &mut String, i: &Phase, ratio: Option<f64>, e: &EndToEnd) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "ingest:    {:.0}/s accepted ({} of {} in {:.1} s, offered {:.0}/s){}",
        i.per_second,
        i.accepted,
        i.sent,
        i.elapsed_secs,
        i.offered_per_second,
        ratio
            .map(|x| format!("; {:.1}% of the baseline", x * 100.0))
            .unwrap_or_default()
    );
    if let Some(p) = i.planned.filter(|&p| p > i.sent) {
        let _ = writeln!(
            out,
            "           {} of {p} planned webhooks not sent: the router fell behind the offered rate",
            p - i.sent
        );
    }
    let _ = writeln!(out, "           ack {}", lat(&i.ack_latency_ms));
    let _ = writeln!(out, "           errors {}", errors(&i.errors));
    if let Some(cpu) = i.process_cpu_secs {
        let line = cpu_line(cpu, i.writer_cpu_secs, 1, "", i.sent, "webhook");
        let _ = writeln!(out, "           {line}");
    }
    let _ = writeln!(
        out,
        "delivered: {:.0}/s ({} delivered, {} during sending, drained {:.2} s after); lost {}; duplicates {}; unacknowledged {}",
        e.per_second,
        e.delivered,
        e.delivered_during_send,
        e.drain_secs,
        e.lost,
        e.duplicates,
        e.unacknowledged
    );
    if let Some(n) = e.stream_reconnects {
        let _ = writeln!(
            out,
            "           over one SSE stream; reopened {n} times (resumed with Last-Event-ID)"
        );
    }
    let _ = writeln!(out, "           end to end {}", lat(&e.latency_ms));
}
