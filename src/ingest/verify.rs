//! Ingest stage: the provider checks the request's signature and replay window (or, on
//! `internal`, an agent key) on the raw bytes.

use super::error::IngestError;
use super::source::Source;
use crate::event::Fields;
use crate::providers::Request;

/// Before anything is decoded.
pub fn verify(source: &Source, req: &Request<'_>) -> Result<(), IngestError> {
    Ok(source.provider.verify(req, source.secrets.as_ref())?)
}

/// What needs the decoded body: Linear's replay window may come from the payload.
pub fn verify_payload(
    source: &Source,
    req: &Request<'_>,
    fields: &Fields<'_>,
) -> Result<(), IngestError> {
    Ok(source.provider.verify_payload(req, fields)?)
}
