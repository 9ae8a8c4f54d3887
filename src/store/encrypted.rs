//! Encryption at rest as a layer over any `Store`: agents' signing secrets are always sealed,
//! archived event and delivery bodies too with `encrypt_payloads`. Reads open whatever is
//! sealed, so a store written before encryption was turned on still reads back.
//!
//! Why a decorator and not code in each backend: every backend then gets the same guarantee,
//! and the backends stay about storage only.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;
use uuid::Uuid;

use super::{
    AnalyticsStore, AttemptUpdate, AuditRecord, AuditStore, BacklogItem, CommitOutcome, DeadFilter,
    DeliveryRecord, DeliveryStore, DeliveryTally, EventQuery, EventRecord, EventStore,
    FinishedCounts, HeldKey, KeyClaim, KeyClaims, NewDelivery, NewEvent, PendingDelivery,
    PurgeScope, PutMode, PutOutcome, Result, RollupDelta, RuleKind, RuleStore, Store, StoreError,
    StoredRule, Supersession,
};
use crate::crypto::{Cipher, CryptoError};

/// The id under which the key check value is kept (rules of kind `meta`).
pub const KEY_CHECK_ID: &str = "encryption_key_check";

pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    cipher: Arc<Cipher>,
    payloads: bool,
}

fn corrupt(what: &str, e: CryptoError) -> StoreError {
    StoreError::Corrupt(format!("{what}: {e}"))
}

impl EncryptedStore {
    /// Wraps `inner`, first making sure the data in it was encrypted under this key (or that
    /// nothing was encrypted yet, in which case this key's check value is stored).
    pub async fn open(
        inner: Arc<dyn Store>,
        cipher: Arc<Cipher>,
        payloads: bool,
    ) -> std::result::Result<EncryptedStore, String> {
        let stored = inner
            .list_rules(RuleKind::Meta)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|r| r.id == KEY_CHECK_ID);
        match stored {
            Some(r) if cipher.matches_check(&r.body) => {}
            Some(_) => {
                return Err(
                    "the encryption key does not match the one this data was encrypted \
                            with (check ENCRYPTION_KEY, or DATA_DIR/encryption.key); refusing to \
                            start"
                        .into(),
                );
            }
            None => {
                let check = cipher.key_check().map_err(|e| e.to_string())?;
                inner
                    .put_rule(
                        RuleKind::Meta,
                        StoredRule {
                            id: KEY_CHECK_ID.into(),
                            body: check,
                        },
                        PutMode::Upsert,
                    )
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        let store = EncryptedStore {
            inner,
            cipher,
            payloads,
        };
        // Agents stored before encryption was in place get their secret sealed now.
        for rule in store
            .inner
            .list_rules(RuleKind::Agent)
            .await
            .map_err(|e| e.to_string())?
        {
            if !rule.body.contains(crate::crypto::PREFIX) {
                store
                    .put_rule(RuleKind::Agent, rule, PutMode::Upsert)
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(store)
    }

    fn seal_body(&self, body: Bytes) -> Result<Bytes> {
        if !self.payloads {
            return Ok(body);
        }
        self.cipher
            .seal(&body)
            .map(Bytes::from)
            .map_err(|e| corrupt("sealing a body", e))
    }

    fn open_body(&self, body: String) -> Result<String> {
        self.cipher
            .open_text(&body)
            .map_err(|e| corrupt("archived body", e))
    }

    /// The event as stored: its bodies sealed when payloads are encrypted.
    fn seal_event(&self, mut event: NewEvent) -> Result<NewEvent> {
        if self.payloads {
            event.body = self.seal_body(event.body)?;
            event.deliveries = event
                .deliveries
                .into_iter()
                .map(|d| self.seal_delivery(d))
                .collect::<Result<_>>()?;
            event.streamed = event
                .streamed
                .into_iter()
                .map(|(a, b)| Ok((a, b.map(|b| self.seal_body(b)).transpose()?)))
                .collect::<Result<_>>()?;
        }
        Ok(event)
    }

    fn seal_delivery(&self, mut d: NewDelivery) -> Result<NewDelivery> {
        d.body = d.body.map(|b| self.seal_body(b)).transpose()?;
        Ok(d)
    }

    /// A delivery record with the agent's answers opened. An answer that does not open is shown
    /// as stored: an agent may well answer text that happens to start like a sealed value.
    fn open_delivery(&self, mut d: DeliveryRecord) -> Result<DeliveryRecord> {
        for a in &mut d.attempt_log {
            if let Some(body) = a.response_body.take() {
                a.response_body = Some(self.cipher.open_text(&body).unwrap_or(body));
            }
        }
        Ok(d)
    }

    fn open_pending(&self, mut p: PendingDelivery) -> Result<PendingDelivery> {
        p.body = p.body.map(|b| self.open_body(b)).transpose()?;
        Ok(p)
    }

    /// Seals the `secret` field of an agent's stored JSON.
    fn seal_agent(&self, body: String) -> Result<String> {
        let mut v: Value =
            serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if let Some(Value::String(s)) = v.get_mut("secret")
            && !s.starts_with(crate::crypto::PREFIX)
        {
            *s = self
                .cipher
                .seal(s.as_bytes())
                .map_err(|e| corrupt("sealing an agent secret", e))?;
        }
        Ok(v.to_string())
    }

    fn open_agent(&self, body: String) -> Result<String> {
        let mut v: Value =
            serde_json::from_str(&body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if let Some(Value::String(s)) = v.get_mut("secret")
            && s.starts_with(crate::crypto::PREFIX)
        {
            *s = self
                .cipher
                .open_text(s)
                .map_err(|e| corrupt("agent secret", e))?;
            return Ok(v.to_string());
        }
        Ok(body)
    }
}

#[async_trait]
impl EventStore for EncryptedStore {
    async fn commit_event(&self, event: NewEvent) -> Result<CommitOutcome> {
        self.inner.commit_event(self.seal_event(event)?).await
    }

    async fn get_event(&self, id: Uuid) -> Result<Option<EventRecord>> {
        match self.inner.get_event(id).await? {
            Some(mut e) => {
                e.body = self.open_body(e.body)?;
                Ok(Some(e))
            }
            None => Ok(None),
        }
    }

    async fn list_events(&self, query: EventQuery) -> Result<Vec<EventRecord>> {
        self.inner
            .list_events(query)
            .await?
            .into_iter()
            .map(|mut e| {
                e.body = self.open_body(e.body)?;
                Ok(e)
            })
            .collect()
    }

    async fn event_deliveries(&self, id: Uuid) -> Result<Vec<DeliveryRecord>> {
        self.inner
            .event_deliveries(id)
            .await?
            .into_iter()
            .map(|d| self.open_delivery(d))
            .collect()
    }

    async fn delivery_tallies(&self, ids: Vec<Uuid>) -> Result<Vec<(Uuid, DeliveryTally)>> {
        self.inner.delivery_tallies(ids).await
    }

    async fn stream_backlog(
        &self,
        agent: Option<String>,
        after: Uuid,
        limit: usize,
    ) -> Result<Vec<BacklogItem>> {
        self.inner
            .stream_backlog(agent, after, limit)
            .await?
            .into_iter()
            .map(|mut b| {
                b.body = self.open_body(b.body)?;
                Ok(b)
            })
            .collect()
    }
    async fn erase_events(&self, ids: Vec<Uuid>, erased_at: i64) -> Result<Vec<Uuid>> {
        // The tombstone holds nothing secret; the sealed bodies are overwritten by it.
        self.inner.erase_events(ids, erased_at).await
    }
}

#[async_trait]
impl DeliveryStore for EncryptedStore {
    async fn record_attempts(&self, mut updates: Vec<AttemptUpdate>) -> Result<()> {
        // An agent's answer may repeat what it was sent: sealed as the payloads are.
        if self.payloads {
            for u in &mut updates {
                if let Some(body) = u.response_prefix.take() {
                    u.response_prefix = Some(
                        self.cipher
                            .seal(body.as_bytes())
                            .map_err(|e| corrupt("sealing an answer", e))?,
                    );
                }
            }
        }
        self.inner.record_attempts(updates).await
    }

    async fn unfinished_deliveries(&self, body_budget: usize) -> Result<Vec<PendingDelivery>> {
        self.inner
            .unfinished_deliveries(body_budget)
            .await?
            .into_iter()
            .map(|p| self.open_pending(p))
            .collect()
    }

    async fn delivery_bodies(&self, ids: Vec<Uuid>) -> Result<Vec<(Uuid, String)>> {
        // One body that does not open fails its own delivery's attempt, not the whole batch.
        Ok(self
            .inner
            .delivery_bodies(ids)
            .await?
            .into_iter()
            .filter_map(|(id, b)| match self.open_body(b) {
                Ok(b) => Some((id, b)),
                Err(e) => {
                    tracing::error!(delivery_id = %id, error = %e, "a delivery body does not open");
                    None
                }
            })
            .collect())
    }

    async fn dead_letters(
        &self,
        agent_id: Option<String>,
        source: Option<String>,
        limit: usize,
        before: Option<Uuid>,
    ) -> Result<Vec<DeliveryRecord>> {
        self.inner
            .dead_letters(agent_id, source, limit, before)
            .await?
            .into_iter()
            .map(|d| self.open_delivery(d))
            .collect()
    }

    async fn retry_dead(&self, id: Uuid) -> Result<Option<PendingDelivery>> {
        self.inner
            .retry_dead(id)
            .await?
            .map(|p| self.open_pending(p))
            .transpose()
    }

    async fn retry_dead_matching(&self, filter: DeadFilter) -> Result<Vec<PendingDelivery>> {
        self.inner
            .retry_dead_matching(filter)
            .await?
            .into_iter()
            .map(|p| self.open_pending(p))
            .collect()
    }

    async fn delete_dead(&self, id: Uuid) -> Result<bool> {
        self.inner.delete_dead(id).await
    }

    async fn add_deliveries(&self, event_id: Uuid, deliveries: Vec<NewDelivery>) -> Result<()> {
        let deliveries = deliveries
            .into_iter()
            .map(|d| self.seal_delivery(d))
            .collect::<Result<_>>()?;
        self.inner.add_deliveries(event_id, deliveries).await
    }

    async fn finished_counts(&self) -> Result<FinishedCounts> {
        self.inner.finished_counts().await
    }

    async fn supersede(&self, steps: Vec<Supersession>) -> Result<()> {
        self.inner.supersede(steps).await
    }

    async fn held_keys(&self) -> Result<Vec<HeldKey>> {
        self.inner.held_keys().await
    }

    async fn lease_deliveries(&self, leases: Vec<crate::store::LeaseWrite>) -> Result<Vec<Uuid>> {
        self.inner.lease_deliveries(leases).await
    }
}

#[async_trait]
impl AnalyticsStore for EncryptedStore {
    async fn add_rollups(&self, deltas: Vec<RollupDelta>) -> Result<()> {
        self.inner.add_rollups(deltas).await
    }
    async fn rollup_totals(&self, since: i64) -> Result<Vec<(String, String, i64)>> {
        self.inner.rollup_totals(since).await
    }
    async fn rollup_timeline(
        &self,
        since: i64,
        bucket_ms: i64,
        metrics: Vec<String>,
    ) -> Result<Vec<(i64, String, i64)>> {
        self.inner.rollup_timeline(since, bucket_ms, metrics).await
    }
    async fn unsettled_events(&self, since: i64) -> Result<(u64, u64)> {
        self.inner.unsettled_events(since).await
    }
}

#[async_trait]
impl AuditStore for EncryptedStore {
    async fn add_audit(&self, record: AuditRecord) -> Result<()> {
        self.inner.add_audit(record).await
    }
    async fn list_audit(&self, limit: usize, before: Option<i64>) -> Result<Vec<AuditRecord>> {
        self.inner.list_audit(limit, before).await
    }
    async fn purge_events(&self, scope: PurgeScope, batch: usize) -> Result<usize> {
        self.inner.purge_events(scope, batch).await
    }
    async fn purge_dead(&self, cutoff: i64, batch: usize) -> Result<usize> {
        self.inner.purge_dead(cutoff, batch).await
    }
}

#[async_trait]
impl RuleStore for EncryptedStore {
    async fn list_rules(&self, kind: RuleKind) -> Result<Vec<StoredRule>> {
        let rules = self.inner.list_rules(kind).await?;
        if kind != RuleKind::Agent {
            return Ok(rules);
        }
        rules
            .into_iter()
            .map(|mut r| {
                r.body = self.open_agent(r.body)?;
                Ok(r)
            })
            .collect()
    }

    async fn put_rule(
        &self,
        kind: RuleKind,
        mut rule: StoredRule,
        mode: PutMode,
    ) -> Result<PutOutcome> {
        if kind == RuleKind::Agent {
            rule.body = self.seal_agent(rule.body)?;
        }
        self.inner.put_rule(kind, rule, mode).await
    }

    async fn delete_rule(&self, kind: RuleKind, id: String) -> Result<bool> {
        self.inner.delete_rule(kind, id).await
    }
}

#[async_trait]
impl super::ClusterStore for EncryptedStore {
    fn node_id(&self) -> Option<Uuid> {
        self.inner.node_id()
    }
    async fn announce_breaker(&self, agent: &str, open_until: Option<i64>) -> Result<()> {
        self.inner.announce_breaker(agent, open_until).await
    }
    async fn heartbeat(&self, snapshot: String) -> Result<()> {
        self.inner.heartbeat(snapshot).await
    }
    async fn live_nodes(&self) -> Result<Vec<super::NodeInfo>> {
        self.inner.live_nodes().await
    }
    async fn claim_keys(&self, claims: Vec<KeyClaim>) -> Result<KeyClaims> {
        self.inner.claim_keys(claims).await
    }

    async fn take_over(&self, limit: usize) -> Result<Vec<PendingDelivery>> {
        self.inner
            .take_over(limit)
            .await?
            .into_iter()
            .map(|p| self.open_pending(p))
            .collect()
    }
    async fn ack_elsewhere(&self, agent: &str, ids: Vec<Uuid>) -> Result<Vec<Uuid>> {
        self.inner.ack_elsewhere(agent, ids).await
    }
    async fn take_pull(&self, agent: &str, limit: usize) -> Result<Vec<PendingDelivery>> {
        self.inner
            .take_pull(agent, limit)
            .await?
            .into_iter()
            .map(|p| self.open_pending(p))
            .collect()
    }
    async fn release(&self) -> Result<u64> {
        self.inner.release().await
    }
    async fn listen(&self) -> Result<Option<tokio::sync::mpsc::Receiver<super::Notice>>> {
        self.inner.listen().await
    }
    async fn remote_events(&self, ids: Vec<Uuid>) -> Result<Vec<super::RemoteEvent>> {
        self.inner
            .remote_events(ids)
            .await?
            .into_iter()
            .map(|mut e| {
                e.body = self.open_body(e.body)?;
                for (_, body) in &mut e.routed {
                    if let Some(b) = body.take() {
                        *body = Some(self.open_body(b)?);
                    }
                }
                Ok(e)
            })
            .collect()
    }
    fn keeps_sessions(&self) -> bool {
        self.inner.keeps_sessions()
    }
    async fn create_session(&self, hash: [u8; 32], ttl_ms: i64, max: usize) -> Result<i64> {
        self.inner.create_session(hash, ttl_ms, max).await
    }
    async fn session_expiry(&self, hash: [u8; 32]) -> Result<Option<i64>> {
        self.inner.session_expiry(hash).await
    }
    async fn end_session(&self, hash: [u8; 32]) -> Result<bool> {
        self.inner.end_session(hash).await
    }
    async fn purge_sessions(&self) -> Result<u64> {
        self.inner.purge_sessions().await
    }
    async fn acquire_rate_leases(
        &self,
        requests: Vec<super::LeaseRequest>,
    ) -> Result<Vec<super::LeaseGrant>> {
        self.inner.acquire_rate_leases(requests).await
    }
    async fn release_rate_leases(&self, leases: Vec<super::LeaseReturn>) -> Result<()> {
        self.inner.release_rate_leases(leases).await
    }
    async fn rate_limit_upkeep(&self) -> Result<()> {
        self.inner.rate_limit_upkeep().await
    }
}

#[async_trait]
impl Store for EncryptedStore {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn ping(&self) -> Result<()> {
        self.inner.ping().await
    }
    fn write_fault(&self) -> Option<String> {
        self.inner.write_fault()
    }
    async fn probe_write(&self) -> Result<()> {
        self.inner.probe_write().await
    }
    async fn commit_event_spending(
        &self,
        event: NewEvent,
        lease: Option<Uuid>,
    ) -> Result<CommitOutcome> {
        self.inner
            .commit_event_spending(self.seal_event(event)?, lease)
            .await
    }
    async fn close(&self) {
        self.inner.close().await
    }
    async fn rewrite_bodies(&self, rewrite: super::BodyRewrite) -> Result<u64> {
        self.inner.rewrite_bodies(rewrite).await
    }
}
