//! Why a webhook was not taken, in the domain's words. The edge (`crate::http::error`) turns
//! each into the contract's status, code and message.

use crate::event::BodyError;
use crate::providers::VerifyError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// No such source (the name is already made printable).
    #[error("Unknown source: {0}")]
    UnknownSource(String),
    #[error("Source {0} has no secret configured")]
    SourceNotConfigured(String),
    #[error("The body is larger than the limit of {max} bytes")]
    PayloadTooLarge { max: usize },
    #[error("The request body could not be read")]
    UnreadableBody,
    /// The body is not what the provider sends (the reason is for the sender).
    #[error("{0}")]
    InvalidBody(String),
    #[error("Invalid webhook signature")]
    InvalidSignature,
    #[error("Webhook timestamp is outside the allowed window")]
    StaleTimestamp,
    /// A signature scheme with a replay window, and no timestamp anywhere (`0`: where one is
    /// expected). Code `invalid_signature`, with a message that says what is missing.
    #[error("Invalid webhook signature: the timestamp is missing ({0})")]
    MissingTimestamp(&'static str),
    /// Over the source's inbound limit; `headers` are the `X-RateLimit-*` and `Retry-After`
    /// values to answer with.
    #[error("Rate limit exceeded for {source_name}:{identifier}")]
    RateLimited {
        source_name: String,
        identifier: String,
        headers: Vec<(&'static str, String)>,
    },
    #[error("The delivery queue is full; retry later")]
    QueueFull,
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Something broke on our side: `context` says where; logged, never shown.
    #[error("{context}: {detail}")]
    Internal {
        context: &'static str,
        detail: String,
    },
}

impl IngestError {
    /// The contract's error code, for counting refusals by kind.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::UnknownSource(_) => "unknown_source",
            IngestError::SourceNotConfigured(_) => "source_not_configured",
            IngestError::PayloadTooLarge { .. } => "payload_too_large",
            IngestError::UnreadableBody | IngestError::InvalidBody(_) => "invalid_body",
            IngestError::InvalidSignature | IngestError::MissingTimestamp(_) => "invalid_signature",
            IngestError::StaleTimestamp => "stale_timestamp",
            IngestError::RateLimited { .. } => "rate_limited",
            IngestError::QueueFull => "queue_full",
            IngestError::Store(StoreError::Closed) => "shutting_down",
            IngestError::Store(StoreError::Unavailable(_)) => "storage_unavailable",
            IngestError::Store(_) | IngestError::Internal { .. } => "internal_error",
        }
    }
}

impl From<VerifyError> for IngestError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::InvalidSignature => IngestError::InvalidSignature,
            VerifyError::StaleTimestamp => IngestError::StaleTimestamp,
            VerifyError::MissingTimestamp(expected) => IngestError::MissingTimestamp(expected),
        }
    }
}

impl From<BodyError> for IngestError {
    fn from(e: BodyError) -> Self {
        IngestError::InvalidBody(e.0)
    }
}
