//! The one place the program is wired together: the store, the rules, the scheduler, ingest,
//! streams and the cluster, the handles the edge gets, the listener, background upkeep, and
//! graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::analytics::Analytics;
use crate::cluster::Node;
use crate::config::{Config, Secret};
use crate::http::AppState;
use crate::http::admission::{Admission, AdmittingListener};
use crate::http::dashboard::Sessions;
use crate::http::state::Handles;
use crate::ingest::dedupe::RecentDeliveries;
use crate::ingest::{self, Ingest};
use crate::queue::policy::RetryPolicy;
use crate::queue::{self, QueueConfig};
use crate::ratelimit::shared::SharedLimiter;
use crate::ratelimit::{self, RateLimiter, SystemClock};
use crate::routing::{self, Rules};
use crate::rules::{self, RuleOptions};
use crate::store::{PutMode, RuleKind, Store, StoredRule};
use crate::stream::Hub;
use crate::stream::sequencer::Sequencer;
use crate::tls::{CertStore, TlsListener};

use crate::crypto::{random_token, write_private};

/// A running server: its address, and the handle to stop it.
pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    /// The served certificate, when serving HTTPS.
    tls: Option<Arc<CertStore>>,
    shutdown: CancellationToken,
    scheduler: queue::Running,
    serving: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Reads the TLS certificate and key files again (what SIGHUP does). Connections already
    /// open keep theirs; new handshakes get the new one. `Ok(false)` when not serving HTTPS.
    pub fn reload_tls(&self) -> Result<bool, crate::tls::TlsError> {
        match &self.tls {
            Some(certs) => certs.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// Stops accepting, lets in-flight requests and commits finish (at most `deadline`), then
    /// closes the store.
    pub async fn shutdown(self, deadline: Duration) {
        self.shutdown.cancel();
        let drain = async {
            let _ = self.serving.await;
            self.state.tasks.close();
            self.state.tasks.wait().await;
        };
        let started = std::time::Instant::now();
        if tokio::time::timeout(deadline, drain).await.is_err() {
            tracing::warn!("shutdown deadline passed with requests still running");
        }
        // In-flight delivery attempts finish (or are handed back as pending) within what is
        // left of the deadline; their outcomes are flushed before the store closes.
        // Keep a second for flushing outcomes and closing the store.
        self.scheduler
            .shutdown(
                deadline
                    .saturating_sub(started.elapsed())
                    .saturating_sub(Duration::from_secs(1)),
            )
            .await;
        crate::store::flush_analytics(self.state.store.as_ref(), &self.state.analytics).await;
        // The rate-limit units this node holds go back to the others now, not at expiry.
        if let Some(limits) = &self.state.ingest.shared_limits {
            limits.give_back_all().await;
        }
        // On a cluster, what is left unfinished goes to the other nodes now rather than after
        // this node's lease lapses.
        match self.state.store.release().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                deliveries = n,
                "handed unfinished deliveries to the other nodes"
            ),
            Err(e) => tracing::error!(error = %e, "handing back unfinished deliveries failed"),
        }
        self.state.store.close().await;
    }
}

/// Reads `ADMIN_API_KEY`, or the key generated on first start and kept in the data dir.
fn admin_key(config: &Config) -> anyhow::Result<Secret> {
    if let Some(k) = &config.admin_api_key {
        return Ok(k.clone());
    }
    let path = config.data_dir.join("admin.key");
    if let Ok(k) = std::fs::read_to_string(&path) {
        let k = k.trim().to_string();
        if !k.is_empty() {
            return Ok(Secret(k));
        }
    }
    let key = format!("er_admin_{}", random_token(24));
    write_private(&path, &key).with_context(|| format!("cannot write {}", path.display()))?;
    // Printed once, straight to stderr and not through the logger, so that log shipping never
    // carries it.
    eprintln!(
        "event-router: no ADMIN_API_KEY set; generated one and saved it to {}:\n\n    {key}\n",
        path.display()
    );
    Ok(Secret(key))
}

/// Starts serving on `listener` and returns at once.
pub async fn start(config: Config, listener: TcpListener) -> anyhow::Result<Server> {
    crate::crypto::create_private_dir(&config.data_dir)
        .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
    let sources = ingest::build_sources(&config.sources).map_err(anyhow::Error::msg)?;
    let admin_key = admin_key(&config)?;
    // TLS material and CA certificates are checked before anything starts, so a bad path is
    // reported at once and clearly.
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(CertStore::load(cert, key)?),
        _ => None,
    };
    let client = outbound_client(&config)?;
    let store = crate::store::open(&config.store_settings()).await?;
    let shutdown = CancellationToken::new();
    let rule_options = RuleOptions {
        circuit_breaker: crate::rules::model::CircuitBreaker {
            failure_threshold: Some(config.circuit_failure_threshold),
            failure_ratio: None,
            window_ms: Some(60_000),
            cooldown_ms: Some(config.circuit_cooldown_ms),
            max_cooldown_ms: Some(
                config
                    .circuit_max_cooldown_ms
                    .max(config.circuit_cooldown_ms),
            ),
            disable_after_ms: Some(config.agent_disable_after_hours * 3_600_000),
        },
        ..RuleOptions::default()
    };
    let default_policy = Arc::new(RetryPolicy::server_default(
        config.default_retry_attempts,
        config.default_retry_delay_ms,
    ));
    // Declared rules first, so the scheduler starts with every target it may need.
    apply_declared_rules(store.as_ref(), &config).await?;
    let compiled = routing::load(store.as_ref(), rule_options.clone()).await?;
    let targets = Arc::new(ArcSwap::new(compiled.targets.clone()));
    let analytics = Analytics::new();
    let hub = Arc::new(Hub::new(config.stream_buffer));
    let sequencer = Sequencer::new(hub.clone());
    let floor = {
        let sequencer = sequencer.clone();
        Arc::new(move || sequencer.floor()) as queue::Floor
    };
    let mut scheduler = queue::start(
        store.clone(),
        targets.clone(),
        QueueConfig {
            max_queue_size: config.max_queue_size,
            default_policy: default_policy.clone(),
            analytics: analytics.clone(),
            client,
            body_budget: config.delivery_memory,
            floor,
        },
        shutdown.clone(),
    )
    .await?;
    let queue = scheduler.queue.clone();
    let rules = Arc::new(Rules::new(
        compiled,
        targets,
        rule_options,
        default_policy,
        config.agent_api_key.clone(),
        store.clone(),
        queue.clone(),
    ));
    let limiter = Arc::new(RateLimiter::new(
        config.default_rate_limit,
        config.rate_limit_window_ms,
        Arc::new(SystemClock),
    ));
    // Several nodes decide on shared counters; one node in memory.
    let shared_limits = store.node_id().map(|_| {
        Arc::new(SharedLimiter::new(
            limiter.clone(),
            store.clone(),
            config.rate_lease_ms,
        ))
    });
    let tasks = TaskTracker::new();
    let ingest = Arc::new(Ingest {
        sources,
        max_event_size: config.max_event_size,
        store: store.clone(),
        rules: rules.clone(),
        dedupe: Arc::new(RecentDeliveries::new(100_000)),
        limiter: limiter.clone(),
        shared_limits: shared_limits.clone(),
        queue: queue.clone(),
        hub: hub.clone(),
        sequencer: sequencer.clone(),
        analytics: analytics.clone(),
        tasks: tasks.clone(),
    });
    apply_declared_rate_limits(store.as_ref(), &limiter, &config).await?;
    let node = Node {
        store: store.clone(),
        queue: queue.clone(),
        hub: hub.clone(),
        rules: rules.clone(),
        limiter: limiter.clone(),
        shared_limits,
        shutdown: shutdown.clone(),
    };
    let state = AppState(Arc::new(Handles {
        sessions: Sessions::new(config.dashboard_session_ttl).kept_in(store.clone()),
        config,
        admin_key,
        store,
        rules,
        ingest,
        limiter,
        queue,
        hub,
        sequencer,
        analytics,
        auth_throttle: Default::default(),
        started: Instant::now(),
        tasks,
        shutdown: shutdown.clone(),
    }));
    spawn_housekeeping(&state);
    if let Some(signals) = scheduler.signals.take() {
        spawn_operational(&state, signals);
    }
    crate::cluster::start(&node).await?;
    let addr = listener.local_addr()?;
    let router = crate::http::router(state.clone());
    let token = shutdown.clone();
    let limits = state.config.connections.clone();
    let admission = Admission::new(&limits);
    let serving = match &tls {
        None => {
            let listener = AdmittingListener::plain(listener, admission);
            tokio::spawn(crate::http::serve::serve(listener, router, limits, token))
        }
        Some(certs) => {
            let server_config = certs
                .server_config()
                .context("cannot build the TLS configuration")?;
            let admitted = AdmittingListener::before_tls(listener, admission);
            let listener = TlsListener::over(admitted, server_config, shutdown.clone())?;
            spawn_tls_reload_on_sighup(certs.clone(), shutdown.clone());
            tokio::spawn(crate::http::serve::serve(listener, router, limits, token))
        }
    };
    tracing::info!(
        %addr,
        tls = tls.is_some(),
        backend = state.store.backend(),
        "event-router listening"
    );
    Ok(Server {
        addr,
        state,
        tls,
        shutdown,
        scheduler,
        serving,
    })
}

/// The outbound delivery client, trusting `extra_ca_certs` besides the built-in roots.
fn outbound_client(config: &Config) -> anyhow::Result<crate::deliver::Client> {
    let extra = match &config.extra_ca_certs {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("extra_ca_certs: cannot read {}", path.display()))?,
        ),
        None => None,
    };
    crate::deliver::client(extra.as_deref()).map_err(|e| match &config.extra_ca_certs {
        Some(path) => anyhow::anyhow!("extra_ca_certs: {}: {e}", path.display()),
        None => anyhow::anyhow!("cannot build the HTTP client: {e}"),
    })
}

/// SIGHUP re-reads the certificate and key; a failed reload keeps the certificate in use.
fn spawn_tls_reload_on_sighup(certs: Arc<CertStore>, shutdown: CancellationToken) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; the TLS certificate will not be reloaded");
            return;
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                got = hup.recv() => {
                    if got.is_none() {
                        break;
                    }
                    match certs.reload() {
                        Ok(()) => tracing::info!("TLS certificate reloaded"),
                        Err(e) => tracing::error!(error = %e, "TLS certificate reload failed; keeping the current one"),
                    }
                }
            }
        }
    });
    #[cfg(not(unix))]
    let _ = (certs, shutdown);
}

/// Writes the config file's `[[agents]]`, `[[filters]]` and `[[routes]]` into the store, by id
/// (they were validated before start: `serve` runs the checks of `check-config` first).
async fn apply_declared_rules(store: &dyn Store, config: &Config) -> anyhow::Result<()> {
    let stored_agents = store.list_rules(RuleKind::Agent).await?;
    let mut agent_ids: Vec<String> = stored_agents.iter().map(|r| r.id.clone()).collect();
    for d in &config.agents {
        let agent = rules::agent_from_value(d.value.clone())
            .map_err(|e| anyhow::anyhow!("{}: agents: {e}", d.location_of(&e.field)))?;
        let existing = stored_agents.iter().find(|r| r.id == agent.id);
        let (agent, body) =
            crate::rules::stored::prepare_agent(agent, existing.map(|r| r.body.as_str()))
                .map_err(|e| anyhow::anyhow!("{}: agents: {e}", d.location_of(&e.field)))?;
        agent_ids.push(agent.id.clone());
        store
            .put_rule(
                RuleKind::Agent,
                StoredRule { id: agent.id, body },
                PutMode::Upsert,
            )
            .await?;
    }
    for d in &config.filters {
        let f = rules::filter_from_value(d.value.clone())
            .map_err(|e| anyhow::anyhow!("{}: filters: {e}", d.location_of(&e.field)))?;
        let body = serde_json::to_string(&f)?;
        store
            .put_rule(
                RuleKind::Filter,
                StoredRule { id: f.id, body },
                PutMode::Upsert,
            )
            .await?;
    }
    for d in &config.routes {
        let r = rules::route_from_value(d.value.clone(), &agent_ids)
            .map_err(|e| anyhow::anyhow!("{}: routes: {e}", d.location_of(&e.field)))?;
        let body = serde_json::to_string(&r)?;
        store
            .put_rule(
                RuleKind::Route,
                StoredRule { id: r.id, body },
                PutMode::Upsert,
            )
            .await?;
    }
    Ok(())
}

/// Writes the config file's declared rate limits into the store (by id), then loads them.
async fn apply_declared_rate_limits(
    store: &dyn Store,
    limiter: &RateLimiter,
    config: &Config,
) -> anyhow::Result<()> {
    for d in &config.rate_limits {
        let c = ratelimit::config_from_value(d.value.clone())
            .map_err(|e| anyhow::anyhow!("{}: rate_limits: {e}", d.location_of(&e.field)))?;
        let rule = StoredRule {
            id: ratelimit::rule_id(&c.source, &c.identifier),
            body: serde_json::to_string(&c)?,
        };
        store
            .put_rule(RuleKind::RateLimit, rule, PutMode::Upsert)
            .await?;
    }
    ratelimit::reload(limiter, store).await?;
    Ok(())
}

/// Background upkeep: forgetting idle rate-limit keys, flushing analytics, and purging what
/// is past its retention (`purge`).
/// Turns what the scheduler reports into `router` events (docs/operations.md, "Operational
/// events"), disables agents that fail for too long, and watches the queue's fill.
fn spawn_operational(
    state: &AppState,
    mut signals: tokio::sync::mpsc::UnboundedReceiver<queue::Signal>,
) {
    use crate::ingest::operational::{Limiter, Operational, emit};
    use serde_json::{Map, Value, json};
    let app = state.clone();
    let limiter = Arc::new(Limiter::new(app.config.operational_event_interval_ms));
    let obj = |v: Value| match v {
        Value::Object(m) => m,
        _ => Map::new(),
    };
    let send = |app: AppState, limiter: Arc<Limiter>, op: Operational| async move {
        let kind = op.kind;
        if let Err(e) = emit(&app.ingest, &limiter, op).await {
            tracing::warn!(kind, error = %e, "an operational event could not be stored");
        }
    };
    let (a, l) = (app.clone(), limiter.clone());
    tokio::spawn(async move {
        loop {
            let signal = tokio::select! {
                _ = a.shutdown.cancelled() => break,
                s = signals.recv() => match s { Some(s) => s, None => break },
            };
            // Every node's breaker follows one node's (PostgreSQL; nothing on SQLite).
            let shared = match &signal {
                queue::Signal::CircuitOpened { agent, health } => Some((
                    agent.clone(),
                    Some(health.next_probe_at.unwrap_or_else(crate::clock::now_ms)),
                )),
                queue::Signal::Recovered { agent, .. } => Some((agent.clone(), None)),
                _ => None,
            };
            if let Some((agent, until)) = shared
                && let Err(e) = a.store.announce_breaker(&agent, until).await
            {
                tracing::warn!(agent = %agent, error = %e, "telling the other nodes about a circuit breaker failed");
            }
            let op = match signal {
                queue::Signal::CircuitOpened { agent, health } => Operational {
                    kind: "agent.circuit_opened",
                    subject: agent.to_string(),
                    about_agent: Some(agent.to_string()),
                    payload: obj(json!({
                        "agentId": &*agent,
                        "consecutiveFailures": health.consecutive_failures,
                        "lastError": health.last_error,
                        "nextProbeAt": health.next_probe_at,
                    })),
                },
                queue::Signal::Recovered { agent, down_ms } => Operational {
                    kind: "agent.recovered",
                    subject: agent.to_string(),
                    about_agent: Some(agent.to_string()),
                    payload: obj(json!({"agentId": &*agent, "downMs": down_ms})),
                },
                queue::Signal::Disable {
                    agent,
                    failing_since,
                    last_error,
                } => {
                    match a.rules.set_agent_enabled(&agent, false).await {
                        Ok(true) => {}
                        Ok(false) => continue,
                        Err(e) => {
                            tracing::error!(agent = %agent, error = %e, "disabling a failing agent failed");
                            continue;
                        }
                    }
                    Operational {
                        kind: "agent.disabled",
                        subject: agent.to_string(),
                        about_agent: Some(agent.to_string()),
                        payload: obj(json!({
                            "agentId": &*agent,
                            "failingSince": failing_since,
                            "lastError": last_error,
                        })),
                    }
                }
                queue::Signal::DeadLettered {
                    agent,
                    event_id,
                    delivery_id,
                    source,
                    event_type,
                    attempts,
                    error,
                } => Operational {
                    kind: "delivery.dead_lettered",
                    subject: agent.to_string(),
                    about_agent: Some(agent.to_string()),
                    payload: obj(json!({
                        "agentId": &*agent,
                        "eventId": event_id,
                        "deliveryId": delivery_id,
                        "source": &*source,
                        "type": &*event_type,
                        "attempts": attempts,
                        "lastError": error,
                    })),
                },
            };
            send(a.clone(), l.clone(), op).await;
        }
    });
    // Ingest, once per `alert_window_ms`: `ingest.signature_failures` for each source with
    // `signature_failure_alert` failed signatures or more in the window, `ingest.slow` after five
    // windows in a row whose p95 processing time was over `slow_ingest_alert_ms`.
    let (a, l) = (app.clone(), limiter.clone());
    tokio::spawn(async move {
        let window = Duration::from_millis(a.config.alert_window_ms.max(100));
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + window, window);
        let mut slow_windows = 0u32;
        loop {
            tokio::select! {
                _ = a.shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let w = a.analytics.watch.take();
            let threshold = a.config.signature_failure_alert;
            let mut ops = Vec::new();
            if threshold > 0 {
                let mut failing: Vec<_> = w
                    .signature_failures
                    .into_iter()
                    .filter(|(_, n)| *n >= threshold)
                    .collect();
                failing.sort();
                for (source, n) in failing {
                    ops.push(Operational {
                        kind: "ingest.signature_failures",
                        subject: source.clone(),
                        about_agent: None,
                        payload: obj(json!({
                            "source": source,
                            "failures": n,
                            "windowMs": a.config.alert_window_ms,
                            "threshold": threshold,
                        })),
                    });
                }
            }
            let slow_ms = a.config.slow_ingest_alert_ms as f64;
            slow_windows = if w.events > 0 && w.p95_ms > slow_ms {
                slow_windows + 1
            } else {
                0
            };
            if slow_windows >= 5 {
                ops.push(Operational {
                    kind: "ingest.slow",
                    subject: "ingest".into(),
                    about_agent: None,
                    payload: obj(json!({
                        "p95ProcessingTime": w.p95_ms,
                        "thresholdMs": a.config.slow_ingest_alert_ms,
                        "windows": slow_windows,
                        "windowMs": a.config.alert_window_ms,
                    })),
                });
            }
            for op in ops {
                send(a.clone(), l.clone(), op).await;
            }
        }
    });
    // The queue's fill, once a second: `queue.filling` past 80 % of `max_queue_size`,
    // `queue.recovered` back under 60 % (the gap keeps a queue hovering at 80 % quiet).
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        let mut filling = false;
        loop {
            tokio::select! {
                _ = app.shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            let (unfinished, capacity) = (app.queue.unfinished(), app.queue.capacity().max(1));
            let ratio = unfinished as f64 / capacity as f64;
            let kind = if !filling && ratio >= 0.8 {
                filling = true;
                "queue.filling"
            } else if filling && ratio < 0.6 {
                filling = false;
                "queue.recovered"
            } else {
                continue;
            };
            let op = Operational {
                kind,
                subject: "queue".into(),
                about_agent: None,
                payload: obj(json!({
                    "unfinished": unfinished,
                    "maxQueueSize": capacity,
                    "ratio": (ratio * 1000.0).round() / 1000.0,
                })),
            };
            send(app.clone(), limiter.clone(), op).await;
        }
    });
}

/// Batches of a retention purge: small, so none holds the writer for long.
const PURGE_BATCH: usize = 500;

/// Deletes what is past its retention, in small batches with pauses between them so ingest's
/// commits go in between: each source with its own `retention_days` first, then every other
/// source by the global one, then dead letters past `dlq_retention_days` (an event with a
/// younger dead letter stays with it).
async fn purge(app: &AppState) {
    const DAY_MS: i64 = 86_400_000;
    let now = crate::clock::now_ms();
    let cfg = &app.config;
    let dlq_cutoff = now - cfg.dlq_retention_days.unwrap_or(cfg.retention_days) as i64 * DAY_MS;
    let own: Vec<(String, u32)> = cfg
        .sources
        .iter()
        .filter_map(|(name, s)| s.retention_days.map(|d| (name.clone(), d)))
        .collect();
    let mut scopes: Vec<crate::store::PurgeScope> = own
        .iter()
        .map(|(name, days)| crate::store::PurgeScope {
            cutoff: now - *days as i64 * DAY_MS,
            source: Some(name.clone()),
            except: Vec::new(),
            dlq_cutoff,
        })
        .collect();
    scopes.push(crate::store::PurgeScope {
        cutoff: now - cfg.retention_days as i64 * DAY_MS,
        source: None,
        except: own.into_iter().map(|(name, _)| name).collect(),
        dlq_cutoff,
    });
    let mut purged = false;
    for scope in scopes {
        let what = scope.source.clone().unwrap_or_else(|| "*".into());
        loop {
            match app.store.purge_events(scope.clone(), PURGE_BATCH).await {
                Ok(n) if n > 0 => {
                    purged = true;
                    tracing::info!(events = n, source = %what, "purged events past retention");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::error!(error = %e, "retention purge failed");
                    return;
                }
            }
        }
    }
    loop {
        match app.store.purge_dead(dlq_cutoff, PURGE_BATCH).await {
            Ok(n) if n > 0 => {
                purged = true;
                tracing::info!(
                    deliveries = n,
                    "purged dead letters past dlq_retention_days"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Ok(_) => break,
            Err(e) => {
                tracing::error!(error = %e, "dead-letter retention purge failed");
                return;
            }
        }
    }
    // Dead letters that held their ordering key may be gone with the purge: those keys move on
    // (several nodes see that in the store when they claim).
    if purged && app.store.node_id().is_none() {
        match app.store.held_keys().await {
            Ok(held) => app
                .queue
                .held_keys_now(held.into_iter().map(|h| h.delivery_id).collect()),
            Err(e) => tracing::warn!(error = %e, "reading the dead letters that hold keys failed"),
        }
    }
}

fn spawn_housekeeping(state: &AppState) {
    let flusher = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = flusher.shutdown.cancelled() => break,
                _ = tick.tick() => {
                    flusher.analytics.queue_sampled(flusher.queue.unfinished());
                    crate::store::flush_analytics(flusher.store.as_ref(), &flusher.analytics).await
                }
            }
        }
    });
    let purger = state.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        loop {
            tokio::select! {
                _ = purger.shutdown.cancelled() => break,
                _ = tick.tick() => {
                    purge(&purger).await;
                }
            }
        }
    });
    let state = state.clone();
    let token = state.shutdown.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {
                    let limiter_state = state.clone();
                    // Purging walks every shard; keep it off the async workers.
                    let _ = tokio::task::spawn_blocking(move || limiter_state.limiter.purge_idle()).await;
                    state.auth_throttle.purge_expired();
                    state.sessions.purge_expired().await;
                }
            }
        }
    });
}

/// Runs until SIGTERM or Ctrl-C, then shuts down within 10 s.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let server = start(config, listener).await?;
    wait_for_signal().await;
    tracing::info!("shutting down");
    server.shutdown(Duration::from_secs(9)).await;
    tracing::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = ctrl_c => {},
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
