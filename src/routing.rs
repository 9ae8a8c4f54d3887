//! The glue between the rules engine and delivery: loading the stored rules into a compiled
//! `RuleSet`, the delivery targets and the agent-key index; and turning one event's evaluation
//! into delivery rows to commit and jobs for the scheduler.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use uuid::Uuid;

use crate::config::Secret;
use crate::crypto::hash_api_key;
use crate::deliver::{AgentTarget, BreakerPolicy, Pacing};
use crate::event::EventHeader;
use crate::providers::standard::StandardSigner;
use crate::queue::policy::RetryPolicy;
use crate::queue::{Job, Keys, Queue, Targets};
use crate::rules::model::{Agent, CircuitBreaker, EventFilter, EventRoute};
use crate::rules::stored::{API_KEY_HASH, parse_stored};
use crate::rules::{PlannedBody, RuleOptions, RuleSet};
use crate::store::{DeliveryStatus, NewDelivery, RuleKind, Sequencing, Store, StoreError};
use crate::stream::StreamItem;

/// Everything compiled from the stored rules, swapped as one.
pub struct Compiled {
    pub rules: Arc<RuleSet>,
    pub targets: Arc<Targets>,
    /// API-key hash -> agent id.
    pub agent_keys: HashMap<String, Arc<str>>,
}

/// The live rules: what is compiled now, and how a change is made (serialized, rebuilt from the
/// store, swapped whole). Agent keys are checked here too, since the index of agents' own keys
/// is compiled with the rules.
pub struct Rules {
    compiled: ArcSwap<Compiled>,
    /// The targets the scheduler reads (the same `Arc` as in `compiled`).
    targets: Arc<ArcSwap<Targets>>,
    /// Serializes admin changes so each rebuild sees the previous one.
    changes: tokio::sync::Mutex<()>,
    options: RuleOptions,
    default_policy: Arc<RetryPolicy>,
    /// `AGENT_API_KEY`: a key that opens every agent's streams.
    shared_agent_key: Option<Secret>,
    store: Arc<dyn Store>,
    queue: Queue,
}

impl Rules {
    pub fn new(
        compiled: Compiled,
        targets: Arc<ArcSwap<Targets>>,
        options: RuleOptions,
        default_policy: Arc<RetryPolicy>,
        shared_agent_key: Option<Secret>,
        store: Arc<dyn Store>,
        queue: Queue,
    ) -> Rules {
        Rules {
            compiled: ArcSwap::new(Arc::new(compiled)),
            targets,
            changes: tokio::sync::Mutex::new(()),
            options,
            default_policy,
            shared_agent_key,
            store,
            queue,
        }
    }

    /// The rules in force now (a cheap guard; hold it only briefly).
    pub fn current(&self) -> Guard<Arc<Compiled>> {
        self.compiled.load()
    }

    /// The rules in force now, owned (for work that outlives a borrow, such as a blocking task).
    pub fn current_full(&self) -> Arc<Compiled> {
        self.compiled.load_full()
    }

    /// The retry policy of routes that set none.
    pub fn default_policy(&self) -> &Arc<RetryPolicy> {
        &self.default_policy
    }

    /// Filters and routes an event against the current rule set.
    pub fn plan(&self, head: &EventHeader, event: &mut Value, body: &Bytes) -> Plan {
        self.plan_with(&self.compiled.load(), head, event, body)
    }

    /// Filters and routes an event against `compiled` (a rule set the caller already consulted,
    /// such as ingest deciding whether the event needs its payload parsed).
    pub fn plan_with(
        &self,
        compiled: &Compiled,
        head: &EventHeader,
        event: &mut Value,
        body: &Bytes,
    ) -> Plan {
        plan(
            &compiled.rules,
            &compiled.targets,
            head,
            event,
            body,
            &self.default_policy,
        )
    }

    /// Held while a change to the stored rules is written and reloaded.
    pub async fn lock_changes(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.changes.lock().await
    }

    /// Rebuilds rules, targets and the agent-key index from the store and swaps them in.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let compiled = load(self.store.as_ref(), self.options.clone()).await?;
        self.targets.store(compiled.targets.clone());
        self.compiled.store(Arc::new(compiled));
        self.queue.targets_changed();
        Ok(())
    }

    /// Enables or disables a stored agent (the auto-disable of agent health) and reloads;
    /// `false` if there is no such agent.
    pub async fn set_agent_enabled(&self, id: &str, enabled: bool) -> Result<bool, StoreError> {
        let _guard = self.lock_changes().await;
        let Some(rule) = self
            .store
            .list_rules(RuleKind::Agent)
            .await?
            .into_iter()
            .find(|r| r.id == id)
        else {
            return Ok(false);
        };
        let mut body: Value = parse_stored(&rule.body)
            .map_err(|e| StoreError::Corrupt(format!("agent {id}: {e}")))?;
        if let Value::Object(m) = &mut body {
            m.insert("enabled".into(), Value::Bool(enabled));
        }
        self.store
            .put_rule(
                RuleKind::Agent,
                crate::store::StoredRule {
                    id: rule.id,
                    body: body.to_string(),
                },
                crate::store::PutMode::Upsert,
            )
            .await?;
        self.reload().await?;
        Ok(true)
    }

    /// The ids of the stored agents (what a route may target).
    pub async fn agent_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .store
            .list_rules(RuleKind::Agent)
            .await?
            .into_iter()
            .map(|r| r.id)
            .collect())
    }

    /// Which agent a key belongs to: `Some(None)` for the shared `AGENT_API_KEY` (any agent),
    /// `Some(Some(id))` for an agent's own key, `None` for no agent key at all.
    pub fn agent_for_key(&self, key: &[u8]) -> Option<Option<Arc<str>>> {
        if self
            .shared_agent_key
            .as_ref()
            .is_some_and(|k| crate::crypto::ct_eq(key, k.0.as_bytes()))
        {
            return Some(None);
        }
        // Agents' own keys are looked up by their SHA-256: the index holds no key, and a hash
        // lookup reveals nothing usable about a key's bytes.
        self.compiled
            .load()
            .agent_keys
            .get(&hash_api_key(key))
            .map(|id| Some(id.clone()))
    }

    /// Whether any agent key exists (the shared one or an agent's own).
    pub fn has_agent_keys(&self) -> bool {
        self.shared_agent_key.is_some() || !self.compiled.load().agent_keys.is_empty()
    }
}

/// Reads filters, routes and agents from the store and compiles them. A stored object that no
/// longer parses is logged and skipped rather than taking the whole router down.
pub async fn load(store: &dyn Store, opts: RuleOptions) -> Result<Compiled, StoreError> {
    let breaker_defaults = opts.circuit_breaker;
    let mut filters: Vec<EventFilter> = Vec::new();
    for r in store.list_rules(RuleKind::Filter).await? {
        match parse_stored(&r.body) {
            Ok(f) => filters.push(f),
            Err(e) => tracing::error!(id = %r.id, error = %e, "stored filter is invalid; skipped"),
        }
    }
    let mut agents: Vec<Agent> = Vec::new();
    let mut agent_keys = HashMap::new();
    for r in store.list_rules(RuleKind::Agent).await? {
        match parse_stored::<Agent>(&r.body) {
            Ok(a) => {
                if let Some(h) = serde_json::from_str::<Value>(&r.body).ok().and_then(|v| {
                    v.get(API_KEY_HASH)
                        .and_then(Value::as_str)
                        .map(str::to_string)
                }) {
                    agent_keys.insert(h, Arc::from(a.id.as_str()));
                }
                agents.push(a)
            }
            Err(e) => tracing::error!(id = %r.id, error = %e, "stored agent is invalid; skipped"),
        }
    }
    let mut routes: Vec<EventRoute> = Vec::new();
    for r in store.list_rules(RuleKind::Route).await? {
        match parse_stored(&r.body) {
            Ok(x) => routes.push(x),
            Err(e) => tracing::error!(id = %r.id, error = %e, "stored route is invalid; skipped"),
        }
    }
    let rules = match RuleSet::build(&filters, &routes, &agents, opts.clone()) {
        Ok(r) => r,
        Err(e) => {
            // Validation on the way in makes this unreachable in practice; if stored data is
            // inconsistent anyway, route nothing rather than route wrongly.
            tracing::error!(error = %e, "the stored rules do not compile; no routes active");
            RuleSet::build(&filters, &[], &agents, opts).unwrap_or_else(|_| RuleSet::empty())
        }
    };
    let targets: Targets = agents
        .iter()
        .filter_map(|a| match target(a, &breaker_defaults) {
            Ok(t) => t.map(|t| (Arc::from(a.id.as_str()), Arc::new(t))),
            Err(e) => {
                tracing::error!(agent = %a.id, error = %e, "agent cannot be delivered to");
                None
            }
        })
        .collect();
    Ok(Compiled {
        rules: Arc::new(rules),
        targets: Arc::new(targets),
        agent_keys,
    })
}

/// The delivery target of an agent with a `url`; `None` for stream-only agents. `defaults`:
/// the server's circuit breaker settings, under the agent's own.
pub fn target(a: &Agent, defaults: &CircuitBreaker) -> Result<Option<AgentTarget>, String> {
    if a.is_pull() {
        let secret = a.secret.as_deref().ok_or("no signing secret")?;
        return Ok(Some(AgentTarget {
            id: Arc::from(a.id.as_str()),
            uri: http::Uri::from_static("/"),
            signer: StandardSigner::from_secret(secret).map_err(|e| format!("secret: {e}"))?,
            headers: HeaderMap::new(),
            timeout: Duration::from_millis(a.timeout_ms.max(1)),
            max_concurrency: usize::MAX,
            pacing: None,
            enabled: a.enabled,
            breaker: breaker_policy(a.circuit_breaker.as_ref(), defaults),
            pull: true,
        }));
    }
    let Some(url) = &a.url else {
        return Ok(None);
    };
    let url: reqwest::Url = url.parse().map_err(|e| format!("url: {e}"))?;
    // The parsed form (normalised, percent-encoded) is what requests go to.
    let (uri, authorization) = crate::deliver::request_target(&url)?;
    let secret = a.secret.as_deref().ok_or("no signing secret")?;
    let signer = StandardSigner::from_secret(secret).map_err(|e| format!("secret: {e}"))?;
    let mut headers = HeaderMap::new();
    for (k, v) in &a.headers {
        let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header {k}: {e}"))?;
        let value = HeaderValue::from_str(v).map_err(|e| format!("header {k}: {e}"))?;
        headers.insert(name, value);
    }
    Ok(Some(AgentTarget {
        id: Arc::from(a.id.as_str()),
        uri,
        signer,
        headers: crate::deliver::header_template(headers, authorization),
        timeout: Duration::from_millis(a.timeout_ms.max(1)),
        max_concurrency: a.max_concurrency.max(1) as usize,
        pacing: a.rate_limit.map(|r| Pacing {
            limit: r.limit.max(1),
            window_ms: r.window.max(1),
        }),
        enabled: a.enabled,
        breaker: breaker_policy(a.circuit_breaker.as_ref(), defaults),
        pull: false,
    }))
}

/// An agent's breaker settings over the server's defaults.
fn breaker_policy(own: Option<&CircuitBreaker>, defaults: &CircuitBreaker) -> BreakerPolicy {
    let base = BreakerPolicy::default();
    let pick = |f: fn(&CircuitBreaker) -> Option<u64>, fallback: u64| {
        own.and_then(f).or_else(|| f(defaults)).unwrap_or(fallback)
    };
    let disable = pick(|c| c.disable_after_ms, base.disable_after_ms.unwrap_or(0));
    BreakerPolicy {
        failure_threshold: own
            .and_then(|c| c.failure_threshold)
            .or(defaults.failure_threshold)
            .unwrap_or(base.failure_threshold)
            .max(1),
        failure_ratio: own.and_then(|c| c.failure_ratio).or(defaults.failure_ratio),
        window_ms: pick(|c| c.window_ms, base.window_ms).max(1),
        cooldown_ms: pick(|c| c.cooldown_ms, base.cooldown_ms).max(1),
        max_cooldown_ms: pick(|c| c.max_cooldown_ms, base.max_cooldown_ms).max(1),
        disable_after_ms: (disable > 0).then_some(disable),
    }
}

/// The text an ordering or coalescing key's value is compared by: a string as is, anything else
/// as its JSON text; `None` when the path is missing or null. Read from the event, or from its
/// text (`as_is`, the same event serialized) when the payload was left unparsed.
fn key_value(path: &crate::rules::FieldPath, event: &Value, as_is: &[u8]) -> Option<String> {
    let raw;
    let v = match path.get(event) {
        Some(v) if !v.is_null() => v,
        _ => {
            raw = path.get_raw(as_is)?;
            &raw
        }
    };
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// What routing decided for one event.
pub struct Plan {
    pub processed: bool,
    /// At least one agent will receive the event (push or stream).
    pub routed: bool,
    /// Rows committed with the event.
    pub deliveries: Vec<NewDelivery>,
    /// Stream-only agents reached (their rows keep stream resume possible).
    pub streamed: Vec<(String, Option<Bytes>)>,
    /// The push deliveries, for the scheduler once committed.
    pub jobs: Vec<Job>,
    /// What each routed agent's streams receive, published once committed.
    pub streams: Vec<StreamItem>,
    /// The processed event for the admin firehose (`None` when filtered out).
    pub firehose_body: Option<Bytes>,
}

/// Evaluates the rules on an event and builds its deliveries. `event_body` is the archived
/// event (before any transformation); `default_policy` applies to routes without one.
pub fn plan(
    rules: &RuleSet,
    targets: &Targets,
    head: &EventHeader,
    event: &mut Value,
    event_body: &Bytes,
    default_policy: &Arc<RetryPolicy>,
) -> Plan {
    let eval = rules.evaluate(event);
    for fe in &eval.filter_errors {
        tracing::warn!(event_id = %head.id, filter = %fe.filter_id, error = %fe.error, "transform filter failed; skipped");
    }
    // Global transforms rewrite the event in place; deliveries of the event "as is" then carry
    // the rewritten body, while the archive keeps the event as received.
    let as_is: Bytes = if eval.globally_transformed {
        Bytes::from(event.to_string())
    } else {
        event_body.clone()
    };
    let mut plan = Plan {
        processed: eval.processed,
        routed: eval.routed(),
        deliveries: Vec::with_capacity(eval.deliveries.len()),
        streamed: Vec::new(),
        jobs: Vec::with_capacity(eval.deliveries.len()),
        streams: Vec::with_capacity(eval.deliveries.len()),
        firehose_body: eval.processed.then(|| as_is.clone()),
    };
    if eval.deliveries.is_empty() {
        return plan;
    }
    let source: Arc<str> = Arc::from(head.source.as_str());
    let event_type: Arc<str> = Arc::from(head.event_type.as_str());
    let now = crate::clock::now_ms();
    for pd in eval.deliveries {
        // (what to send, what to store if it differs from the archive, its JSON view)
        let (body, stored, view, error) = match pd.body {
            PlannedBody::Event => {
                let stored = eval.globally_transformed.then(|| as_is.clone());
                (Some(as_is.clone()), stored, None, None)
            }
            PlannedBody::Transformed(v) => {
                let b = Bytes::from(v.to_string());
                (Some(b.clone()), Some(b), Some(Arc::new(v)), None)
            }
            PlannedBody::Failed(err) => (
                None,
                None,
                None,
                Some(format!("transformation failed: {err}")),
            ),
        };
        if let Some(body) = &body {
            plan.streams.push(StreamItem {
                agent_id: pd.agent_id.clone(),
                body: body.clone(),
                view,
            });
        }
        if !targets.contains_key(&pd.agent_id) {
            // Stream-only agent: nothing to push; the row lets its streams resume.
            match error {
                None => plan.streamed.push((pd.agent_id.to_string(), stored)),
                Some(e) => {
                    tracing::warn!(event_id = %head.id, agent = %pd.agent_id, error = %e, "stream transformation failed")
                }
            }
            continue;
        }
        let id = Uuid::now_v7();
        let sequencing = match &pd.keys {
            None => Sequencing::default(),
            Some(keys) => {
                let ordering = keys
                    .ordering
                    .as_ref()
                    .and_then(|(p, hold)| Some((key_value(p, event, &as_is)?, *hold)));
                let coalesce = keys
                    .coalesce
                    .as_ref()
                    .and_then(|(p, w, m)| Some((key_value(p, event, &as_is)?, *w, *m)));
                Sequencing {
                    ordering_hold: ordering.as_ref().is_some_and(|(_, hold)| *hold),
                    ordering_key: ordering.map(|(k, _)| k),
                    coalesce_window_ms: coalesce.as_ref().map_or(0, |c| c.1),
                    coalesce_max_wait_ms: coalesce.as_ref().map_or(0, |c| c.2),
                    coalesce_key: coalesce.map(|c| c.0),
                }
            }
        };
        // A coalesced delivery waits its window for a newer event of its key.
        let due = now
            + sequencing
                .coalesce_key
                .as_ref()
                .map_or(0, |_| sequencing.coalesce_window_ms as i64);
        let keys = Keys::of(&sequencing);
        plan.deliveries.push(NewDelivery {
            id,
            agent_id: pd.agent_id.to_string(),
            route_id: pd.route_id.to_string(),
            priority: pd.priority,
            status: if error.is_some() {
                DeliveryStatus::Dead
            } else {
                DeliveryStatus::Pending
            },
            body: stored,
            retry_policy: pd
                .retry
                .as_ref()
                .and_then(|p| serde_json::to_string(p).ok()),
            next_attempt_at: due,
            last_error: error,
            trace_context: None,
            sequencing,
        });
        if let Some(body) = body {
            plan.jobs.push(Job {
                delivery_id: id,
                event_id: head.id,
                agent_id: pd.agent_id.clone(),
                route_id: pd.route_id.clone(),
                priority: pd.priority,
                attempts: 0,
                retry_base: 0,
                policy: pd
                    .retry
                    .map(Arc::new)
                    .unwrap_or_else(|| default_policy.clone()),
                source: source.clone(),
                event_type: event_type.clone(),
                body: Some(body),
                due_at: due,
                created_at: now,
                trace_context: None,
                keys,
                superseded: None,
            });
        }
    }
    plan
}
