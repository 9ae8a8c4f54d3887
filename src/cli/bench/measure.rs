//! The measured run against the router: the bench's agent and route set up through the admin
//! API, the load, the drain of every acknowledged event, and what arrived compared with what
//! was acknowledged (with `--deliver pull`: what the consumers acked).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use http::StatusCode;
use indicatif::ProgressBar;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::load::{LoadPlan, bar_style, drive, latency, new_histogram};
use super::payload::PayloadPool;
use super::pull::Consumers;
use super::receiver::{Receiver, subscribe_sse};
use super::report::{Backlog, EndToEnd, Phase, Pull};
use super::system::{process_cpu_secs, rss_bytes, sample_rss, thread_cpu_secs};
use super::{BenchArgs, DeliverVia};

/// What `measure_router` found.
pub(super) struct Measured {
    pub(super) ingest: Phase,
    pub(super) end_to_end: EndToEnd,
    pub(super) backlog: Option<Backlog>,
    pub(super) peak_rss: Option<u64>,
    /// Bytes of the tool's own per-event records.
    pub(super) records: u64,
    /// `--deliver pull`: the consumers' figures.
    pub(super) pull: Option<Pull>,
}

/// How long an agent may hold an attempt in `--backlog` mode: longer than any run, so no held
/// attempt times out (and is retried later) while the backlog builds.
const BACKLOG_AGENT_TIMEOUT_MS: u64 = 3_600_000;

/// Configures the agent and route, sends, waits for the deliveries, and compares.
#[allow(clippy::too_many_arguments)]
pub(super) async fn measure_router(
    args: &BenchArgs,
    router_url: &str,
    admin_key: &str,
    pool: &Arc<PayloadPool>,
    plan: &LoadPlan,
    receiver: &Receiver,
    epoch: Instant,
    in_process: bool,
    progress: bool,
) -> anyhow::Result<Measured> {
    let admin = Admin {
        client: reqwest::Client::new(),
        base: router_url
            .split(',')
            .next()
            .unwrap_or(router_url)
            .trim()
            .trim_end_matches('/')
            .to_string(),
        key: admin_key.to_string(),
    };
    let tag = Uuid::new_v4().simple().to_string();
    let agent_id = format!("bench-agent-{}", &tag[..12]);
    let route_id = format!("bench-route-{}", &tag[..12]);
    let mut agent = json!({
        "id": agent_id,
        "name": "bench receiver",
        "maxConcurrency": args.agent_concurrency,
        "timeoutMs": if args.backlog { BACKLOG_AGENT_TIMEOUT_MS } else { 10_000 },
        "enabled": true,
    });
    if let Some(addr) = receiver.addr {
        agent["url"] = json!(format!("http://{addr}/deliveries"));
    }
    // `--deliver sse`: the agent's own key opens its stream (the admin key opens only `*`);
    // `--deliver pull`: the consumers poll with it.
    let stream_key = format!("bench-stream-{}", crate::crypto::random_token(16));
    if matches!(args.deliver, DeliverVia::Sse | DeliverVia::Pull) {
        agent["apiKey"] = json!(stream_key);
    }
    if args.deliver == DeliverVia::Pull {
        // Consumers take deliveries at their own pace: no timeout, concurrency or pacing.
        agent["mode"] = json!("pull");
        if let Some(a) = agent.as_object_mut() {
            a.remove("timeoutMs");
            a.remove("maxConcurrency");
        }
    }
    admin.create("/admin/agents", agent).await?;
    let mut route = json!({
        "id": route_id,
        "name": "bench route",
        "sourceFilters": [],
        "targetAgents": [agent_id],
        "priority": 0,
        "enabled": true,
    });
    if args.ordering_keys.is_some() {
        route["ordering"] = json!({ "key": "payload.pull_request.number" });
    }
    if args.payload_condition {
        route["sourceFilters"] = json!([{
            "action": "include",
            "conditions": [{"field": "payload.pull_request.number", "operator": "gt", "value": 0}],
        }]);
    }
    admin.create("/admin/routes", route).await?;
    let extra_routes: Vec<String> = (1..args.routes)
        .map(|i| format!("{route_id}-never-{i:05}"))
        .collect();
    for (i, id) in extra_routes.iter().enumerate() {
        admin
            .create(
                "/admin/routes",
                json!({
                    "id": id,
                    "name": "bench route that never matches",
                    "sourceFilters": [{
                        "action": "include",
                        "conditions": [{"field": "payload.pull_request.title", "operator": "equals",
                                        "value": format!("no such title {i}")}],
                    }],
                    "targetAgents": [agent_id],
                    "priority": 1,
                    "enabled": true,
                }),
            )
            .await?;
    }

    // `--deliver sse`: the stream is open (so every event from now on reaches it live) before
    // the first webhook is sent.
    let reconnects = Arc::new(AtomicU64::new(0));
    if args.deliver == DeliverVia::Sse {
        let url = format!(
            "{}/stream/sse?agentId={agent_id}",
            admin.base.trim_end_matches('/')
        );
        let (opened, is_open) = tokio::sync::oneshot::channel();
        tokio::spawn(subscribe_sse(
            receiver.state.clone(),
            url,
            stream_key.clone(),
            receiver.stop.clone(),
            reconnects.clone(),
            opened,
        ));
        let failed = match tokio::time::timeout(Duration::from_secs(10), is_open).await {
            Ok(Ok(Ok(()))) => None,
            Ok(Ok(Err(e))) => Some(format!("opening the SSE stream: {e}")),
            _ => Some("the SSE stream did not open within 10 s".to_string()),
        };
        if let Some(failed) = failed {
            if args.router.is_some() {
                admin
                    .remove_bench(&route_id, &extra_routes, &agent_id)
                    .await;
            }
            bail!(failed);
        }
    }

    // `--deliver pull`: the consumers are polling before the first webhook is sent, spread
    // round robin over the nodes of `--router`.
    let nodes: Vec<String> = router_url
        .split(',')
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .collect();
    let consumers = match args.deliver {
        DeliverVia::Pull => match Consumers::start(
            args.consumers,
            args.pull_batch,
            &nodes,
            &agent_id,
            &stream_key,
            receiver.state.clone(),
            receiver.stop.child_token(),
        ) {
            Ok(c) => Some(c),
            Err(e) => {
                if args.router.is_some() {
                    admin
                        .remove_bench(&route_id, &extra_routes, &agent_id)
                        .await;
                }
                return Err(e);
            }
        },
        _ => None,
    };

    let sampling = CancellationToken::new();
    let peak_rss = Arc::new(AtomicU64::new(rss_bytes().unwrap_or(0)));
    let sampler = tokio::spawn(sample_rss(peak_rss.clone(), sampling.clone()));

    let urls = router_url
        .split(',')
        .map(|u| format!("{}/webhook/github", u.trim().trim_end_matches('/')).parse())
        .collect::<Result<Vec<reqwest::Url>, _>>()?;
    let cpu_before = process_cpu_secs();
    let writer_before = in_process
        .then(|| thread_cpu_secs("sqlite-writer"))
        .flatten();
    let load = drive(&urls, pool, plan, epoch, true, progress.then_some("ingest")).await;
    let sent_until = epoch.elapsed();
    let mut load = match load {
        Ok(l) => l,
        Err(e) => {
            sampling.cancel();
            if let Some(c) = consumers {
                c.finish(0).await;
            }
            return Err(e);
        }
    };
    load.phase.process_cpu_secs = cpu_before.zip(process_cpu_secs()).map(|(a, b)| b - a);
    load.phase.writer_cpu_secs = writer_before
        .zip(thread_cpu_secs("sqlite-writer"))
        .map(|(a, b)| b - a);

    // Stragglers: every acknowledged event must arrive.
    let accepted_ids = load.acks.len() as u64;
    // `--backlog`: every acknowledged event is now queued in the router, and the first
    // `maxConcurrency` of them are being held by the receiver. Release them and time the drain.
    let release = if args.backlog {
        let in_flight = accepted_ids.min(u64::from(args.agent_concurrency));
        let settle = Instant::now() + Duration::from_secs(10);
        while receiver.held() < in_flight && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let held = receiver.held();
        let cpu = process_cpu_secs();
        let writer = in_process
            .then(|| thread_cpu_secs("sqlite-writer"))
            .flatten();
        let at = epoch.elapsed();
        receiver.release();
        Some((at, held, cpu, writer))
    } else {
        None
    };
    let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain_timeout.max(0.0));
    let spinner = progress.then(|| {
        let pb = ProgressBar::new(accepted_ids);
        pb.set_style(bar_style("drain"));
        pb
    });
    let acked: HashMap<[u8; 16], u64> = load.acks.iter().copied().collect();
    let mut missing;
    loop {
        let received = receiver.unique.load(Ordering::Acquire);
        if let Some(pb) = &spinner {
            pb.set_position(received.min(accepted_ids));
        }
        if received >= accepted_ids {
            missing = receiver.missing(&acked);
            if missing == 0 {
                break;
            }
        }
        if Instant::now() >= drain_deadline {
            missing = receiver.missing(&acked);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drained_at = epoch.elapsed();
    let drain_cpu = release.as_ref().map(|_| {
        (
            process_cpu_secs(),
            in_process
                .then(|| thread_cpu_secs("sqlite-writer"))
                .flatten(),
        )
    });
    if let Some(pb) = spinner {
        pb.finish_and_clear();
    }
    sampling.cancel();
    let _ = sampler.await;
    let pull = match consumers {
        Some(c) => Some(c.finish(load.first_send_us).await),
        None => None,
    };

    let arrivals = receiver.snapshot();
    let mut e2e = new_histogram();
    let mut delivered = 0u64;
    let mut during_send = 0u64;
    let mut last_arrival = 0u64;
    for (id, sent_at) in &load.acks {
        if let Some(&arrived) = arrivals.get(id) {
            delivered += 1;
            e2e.saturating_record(arrived.saturating_sub(*sent_at).max(1));
            last_arrival = last_arrival.max(arrived);
            if arrived <= sent_until.as_micros() as u64 {
                during_send += 1;
            }
        }
    }
    let unacknowledged = arrivals
        .keys()
        .filter(|id| !acked.contains_key(*id))
        .count() as u64;
    let first_send = load.first_send_us;
    let span = last_arrival.saturating_sub(first_send) as f64 / 1e6;
    let drain_secs = if missing == 0 {
        (Duration::from_micros(last_arrival).saturating_sub(sent_until)).as_secs_f64()
    } else {
        (drained_at - sent_until).as_secs_f64()
    };
    let end_to_end = EndToEnd {
        delivered,
        lost: missing,
        duplicates: receiver.duplicates.load(Ordering::Acquire),
        unacknowledged,
        per_second: if span > 0.0 {
            delivered as f64 / span
        } else {
            0.0
        },
        delivered_during_send: during_send,
        drain_secs,
        latency_ms: latency(&e2e),
        stream_reconnects: (args.deliver == DeliverVia::Sse)
            .then(|| reconnects.load(Ordering::Acquire)),
    };
    let backlog = release.map(|(at, held, cpu, writer)| {
        let (cpu_after, writer_after) = drain_cpu.unwrap_or((None, None));
        let until = if missing == 0 {
            Duration::from_micros(last_arrival)
        } else {
            drained_at
        };
        let drain_secs = until.saturating_sub(at).as_secs_f64();
        Backlog {
            queued: accepted_ids,
            held_in_flight: held,
            delivered,
            drain_secs,
            drain_per_second: if drain_secs > 0.0 {
                delivered as f64 / drain_secs
            } else {
                0.0
            },
            process_cpu_secs: cpu.zip(cpu_after).map(|(a, b)| b - a),
            writer_cpu_secs: writer.zip(writer_after).map(|(a, b)| b - a),
        }
    });
    // What the tool held while RSS was sampled: the ack log, its index, the receiver's maps.
    let entry = std::mem::size_of::<([u8; 16], u64)>();
    let records = (load.acks.capacity() * entry
        + (receiver.capacity() + acked.capacity()) * (entry + 1)) as u64;

    if args.router.is_some() {
        admin
            .remove_bench(&route_id, &extra_routes, &agent_id)
            .await;
    }
    let peak = Some(peak_rss.load(Ordering::Acquire)).filter(|&p| p > 0);
    Ok(Measured {
        ingest: load.phase,
        end_to_end,
        backlog,
        peak_rss: peak,
        records,
        pull,
    })
}

/// The admin API, for setting up and removing the bench's agent and route.
struct Admin {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Admin {
    async fn create(&self, path: &str, body: Value) -> anyhow::Result<()> {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("POST {}{path}", self.base))?;
        let status = resp.status();
        if status != StatusCode::CREATED {
            let text = resp.text().await.unwrap_or_default();
            bail!("POST {path} answered {status}: {text}");
        }
        Ok(())
    }

    /// Leaves an external router as the run found it (its archive keeps the events).
    async fn remove_bench(&self, route_id: &str, extra_routes: &[String], agent_id: &str) {
        self.delete(&format!("/admin/routes/{route_id}")).await;
        for id in extra_routes {
            self.delete(&format!("/admin/routes/{id}")).await;
        }
        self.delete(&format!("/admin/agents/{agent_id}")).await;
    }

    async fn delete(&self, path: &str) {
        let _ = self
            .client
            .delete(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .send()
            .await;
    }
}
