//! Ingest stage: the body's encoding, validated, and the payload fields its provider reads,
//! probed without building the JSON tree where possible.

use http::HeaderMap;

use super::error::IngestError;
use super::source::Source;
use crate::event::{self, Probed};

pub fn decode<'a>(
    source: &Source,
    headers: &HeaderMap,
    bytes: &'a [u8],
) -> Result<Probed<'a>, IngestError> {
    let kind = event::body_kind(headers)?;
    Ok(event::probe_body_as(
        kind,
        bytes,
        &source.probe,
        source.provider.form_body(),
        source.provider.json_body(),
    )?)
}
