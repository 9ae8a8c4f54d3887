//! The pure part of ingest: verify, decode, classify and normalize, with no I/O (also what the
//! ingest benchmark and the `ingest_prepare` fuzz target run).

use http::HeaderMap;
use serde_json::Value;

use super::error::IngestError;
use super::source::Source;
use super::{classify, decode, verify};
use crate::event::EventHeader;
use crate::providers::{Handshake, Request, RequestLine};

/// What the pure part of ingest makes of a request.
pub enum Prepared {
    /// A provider's handshake (Slack `url_verification`): answer it, store nothing.
    Handshake(Handshake),
    Event {
        head: EventHeader,
        event: Value,
        /// The payload is the body's JSON text as received (so it can be stored verbatim).
        raw_json: bool,
        /// The event's `payload` is still `null`: the body's JSON text was validated and probed
        /// but not parsed into a tree. `event::materialize_payload` fills it in when a rule or a
        /// stream needs it; `event::serialize_event` splices the text in regardless.
        payload_deferred: bool,
    },
}

/// Everything between reading the body and dedupe. `agent_key` checks an `Authorization`
/// header (`internal`); `next_id` gives the event's id and receipt time.
// The request's parts as the handler has them, and the two callbacks: bundling them into a
// struct only for this call would not make it clearer.
#[allow(clippy::too_many_arguments)]
pub fn prepare(
    source: &Source,
    line: RequestLine<'_>,
    headers: &HeaderMap,
    bytes: &[u8],
    client_ip: &str,
    now_ms: i64,
    agent_key: &dyn Fn(&[u8]) -> bool,
    next_id: &mut dyn FnMut() -> (uuid::Uuid, i64),
) -> Result<Prepared, IngestError> {
    let req = Request {
        source: &source.name,
        line,
        public_url: source.public_url.as_deref(),
        headers,
        body: bytes,
        now_ms,
        agent_key,
    };
    verify::verify(source, &req)?;
    let probed = decode::decode(source, headers, bytes)?;
    if let Some(answer) = classify::handshake(source, headers, bytes, &probed)? {
        return Ok(Prepared::Handshake(answer));
    }
    verify::verify_payload(source, &req, &probed.fields)?;
    let classified = classify::classify(source, headers, &probed)?;
    Ok(classify::normalize(
        source,
        classified,
        probed,
        headers,
        client_ip,
        bytes.len(),
        next_id,
    ))
}
