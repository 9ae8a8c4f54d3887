//! Ingest stage: what the request is. A handshake is answered at once; an event gets its type,
//! action and delivery id from its provider, and is normalized into the event object.

use http::HeaderMap;

use super::error::IngestError;
use super::prepare::Prepared;
use super::source::Source;
use crate::event::{self, Classified, EventInput, Probed};
use crate::providers::{Decoded, Handshake};

/// The provider's handshake, if the request is one (Slack's `url_verification`).
pub fn handshake(
    source: &Source,
    headers: &HeaderMap,
    bytes: &[u8],
    probed: &Probed<'_>,
) -> Result<Option<Handshake>, IngestError> {
    Ok(source.provider.handshake(&Decoded {
        headers,
        bytes,
        fields: &probed.fields,
        payload: probed.payload.as_ref(),
    })?)
}

pub fn classify(
    source: &Source,
    headers: &HeaderMap,
    probed: &Probed<'_>,
) -> Result<Classified, IngestError> {
    Ok(source.provider.classify(headers, &probed.fields)?)
}

/// The API.md section 4 event. `next_id` gives its id and receipt time.
pub fn normalize(
    source: &Source,
    classified: Classified,
    probed: Probed<'_>,
    headers: &HeaderMap,
    client_ip: &str,
    received_bytes: usize,
    next_id: &mut dyn FnMut() -> (uuid::Uuid, i64),
) -> Prepared {
    let Probed {
        payload,
        fields,
        raw_json,
    } = probed;
    let payload_deferred = payload.is_none();
    let (head, event) = event::normalize(EventInput {
        id: next_id(),
        source: &source.name,
        classified,
        payload,
        fields: &fields,
        probe: &source.probe,
        headers,
        signature_headers: &source.hidden_headers,
        client_ip,
        received_bytes,
    });
    Prepared::Event {
        head,
        event,
        raw_json,
        payload_deferred,
    }
}
