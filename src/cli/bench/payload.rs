//! The webhooks the tool sends: signed GitHub `pull_request` bodies, one per sender, made before
//! the clock starts.

use bytes::Bytes;
use http::HeaderValue;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::providers::github;

/// The payload every generated webhook is derived from.
const PULL_REQUEST_EXAMPLE: &str = include_str!("../../../examples/github-pull_request.json");

/// One signed webhook body, ready to send.
#[derive(Clone)]
pub(super) struct Payload {
    pub(super) body: Bytes,
    pub(super) signature: HeaderValue,
    pub(super) event: HeaderValue,
}

/// The bodies, one per sender, signed once.
pub(super) struct PayloadPool {
    pub(super) items: Vec<Payload>,
    /// Makes this run's delivery ids distinct from any earlier run's (a router dedupes them).
    nonce: u64,
}

impl PayloadPool {
    pub(super) fn build(
        count: usize,
        target_bytes: usize,
        secret: &[u8],
        keys: Option<u64>,
    ) -> anyhow::Result<PayloadPool> {
        const ACTIONS: [&str; 6] = [
            "opened",
            "synchronize",
            "edited",
            "reopened",
            "ready_for_review",
            "closed",
        ];
        let template: Value = serde_json::from_str(PULL_REQUEST_EXAMPLE)?;
        let mut items = Vec::with_capacity(count);
        for i in 0..count {
            let mut p = template.clone();
            let login = format!("bench-user-{i:04}");
            // With ordering keys, the pull request numbers repeat every `keys` senders.
            let number = 1000 + keys.map_or(i as u64, |k| i as u64 % k);
            p["action"] = json!(ACTIONS[i % ACTIONS.len()]);
            p["number"] = json!(number);
            p["sender"]["login"] = json!(login);
            p["sender"]["id"] = json!(100_000 + i as u64);
            let pr = &mut p["pull_request"];
            pr["number"] = json!(number);
            pr["id"] = json!(9_000_000 + i as u64);
            pr["title"] = json!(format!("Change {number}: {}", words(i as u64, 40)));
            pr["user"]["login"] = json!(login);
            pr["additions"] = json!((i * 7) % 500);
            pr["deletions"] = json!((i * 3) % 200);
            pr["body"] = json!("");
            let bare_len = serde_json::to_vec(&p)?.len();
            p["pull_request"]["body"] =
                Value::String(words(i as u64, target_bytes.saturating_sub(bare_len)));
            let body = serde_json::to_vec(&p)?;
            let signature = HeaderValue::from_str(&github::sign(secret, &body))?;
            items.push(Payload {
                body: Bytes::from(body),
                signature,
                event: HeaderValue::from_static("pull_request"),
            });
        }
        Ok(PayloadPool {
            items,
            nonce: rand::random(),
        })
    }

    pub(super) fn mean_bytes(&self) -> usize {
        let total: usize = self.items.iter().map(|p| p.body.len()).sum();
        total / self.items.len().max(1)
    }

    /// The same bodies under delivery ids of their own: a second run of one invocation
    /// (`--deliver pull` after its push run) on the same router must not be taken for
    /// duplicates of the first.
    pub(super) fn with_fresh_ids(&self) -> PayloadPool {
        PayloadPool {
            items: self.items.clone(),
            nonce: rand::random(),
        }
    }

    /// A GitHub-style delivery id (a UUID string), unique within this run and across runs.
    pub(super) fn delivery_id(&self, i: u64) -> HeaderValue {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let s = Uuid::from_u64_pair(self.nonce, i)
            .hyphenated()
            .encode_lower(&mut buf);
        HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
    }
}

/// Deterministic prose of about `len` bytes (ASCII, so its JSON length is its length).
fn words(seed: u64, len: usize) -> String {
    const WORDS: [&str; 24] = [
        "retry",
        "backoff",
        "delivery",
        "worker",
        "queue",
        "agent",
        "route",
        "filter",
        "commit",
        "latency",
        "webhook",
        "payload",
        "signature",
        "cursor",
        "archive",
        "replay",
        "stream",
        "pacing",
        "jitter",
        "lease",
        "batch",
        "timeout",
        "window",
        "schema",
    ];
    let mut out = String::with_capacity(len + 16);
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    while out.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let w = WORDS[(x >> 33) as usize % WORDS.len()];
        if !out.is_empty() {
            out.push(if (x >> 20).is_multiple_of(11) {
                '\n'
            } else {
                ' '
            });
        }
        out.push_str(w);
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_signed_sized_and_spread_over_senders() {
        let pool = PayloadPool::build(10, 6144, b"s", None).unwrap();
        assert_eq!(pool.items.len(), 10);
        let mut logins = std::collections::HashSet::new();
        for p in &pool.items {
            assert!((6000..6300).contains(&p.body.len()), "{}", p.body.len());
            assert_eq!(
                p.signature.to_str().unwrap(),
                github::sign(b"s", &p.body).as_str()
            );
            let v: Value = serde_json::from_slice(&p.body).unwrap();
            logins.insert(v["sender"]["login"].as_str().unwrap().to_string());
        }
        assert_eq!(logins.len(), 10);
        assert_ne!(pool.delivery_id(1), pool.delivery_id(2));
    }
}
