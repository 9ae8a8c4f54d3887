//! Stage: admit the event under its source's inbound rate limit, keyed by `source:identifier`
//! (the identifier path's value, else the client address).

use std::sync::Arc;

use serde_json::Value;

use super::IngestError;
use crate::ratelimit::RateLimiter;
use crate::ratelimit::shared::{Admission, SharedLimiter};

/// The decision for an allowed event (its headers go on the answer) and, on a cluster, the
/// lease that paid for it; or `RateLimited`. One node decides in memory; several decide on their
/// shared counters (`shared`), which costs a store round trip only when this node holds no
/// units of the key.
/// The rate-limit identifier of an event: its identifier path's value (`metadata.identifier`),
/// else the client address.
pub fn identifier<'a>(event: &'a Value, client_ip: &'a str) -> &'a str {
    event
        .get("metadata")
        .and_then(|m| m.get("identifier"))
        .and_then(Value::as_str)
        .unwrap_or(client_ip)
}

pub async fn admit(
    limiter: &RateLimiter,
    shared: Option<&Arc<SharedLimiter>>,
    source: &str,
    event: &Value,
    client_ip: &str,
) -> Result<Admission, IngestError> {
    let identifier = identifier(event, client_ip);
    let admission = match shared {
        Some(shared) => shared.admit(source, identifier).await?,
        None => Admission {
            decision: limiter.check(source, identifier),
            lease: None,
        },
    };
    if !admission.decision.allowed {
        return Err(IngestError::RateLimited {
            source_name: source.to_string(),
            identifier: identifier.to_string(),
            headers: admission.decision.headers().collect(),
        });
    }
    Ok(admission)
}
