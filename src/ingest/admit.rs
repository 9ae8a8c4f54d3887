//! Stage: admit the event under its source's inbound rate limit, keyed by `source:identifier`
//! (the identifier path's value, else the client address).

use serde_json::Value;

use super::IngestError;
use crate::cluster::ClusterHits;
use crate::ratelimit::{Decision, RateLimiter};

/// The limiter's decision for an allowed event (its headers go on the answer), or
/// `RateLimited`.
pub fn admit(
    limiter: &RateLimiter,
    cluster_hits: Option<&ClusterHits>,
    source: &str,
    event: &Value,
    client_ip: &str,
) -> Result<Decision, IngestError> {
    let identifier = event
        .get("metadata")
        .and_then(|m| m.get("identifier"))
        .and_then(Value::as_str)
        .unwrap_or(client_ip);
    let decision = limiter.check(source, identifier);
    if !decision.allowed {
        return Err(IngestError::RateLimited {
            source_name: source.to_string(),
            identifier: identifier.to_string(),
            headers: decision.headers().collect(),
        });
    }
    if let Some(hits) = cluster_hits {
        hits.record(source, identifier);
    }
    Ok(decision)
}
