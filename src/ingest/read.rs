//! Stage: read the body, refusing early on a declared length over the limit and never reading
//! more than one chunk past it.

use bytes::Bytes;
use http::{HeaderMap, header};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};

use super::IngestError;

pub async fn read_body<B>(body: B, headers: &HeaderMap, max: usize) -> Result<Bytes, IngestError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max as u64
    {
        return Err(IngestError::PayloadTooLarge { max });
    }
    match Limited::new(body, max).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => {
            // The limit is reported as a boxed LengthLimitError, possibly inside the body's own
            // error: walk the chain.
            let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&*e);
            while let Some(s) = src {
                if s.is::<LengthLimitError>() {
                    return Err(IngestError::PayloadTooLarge { max });
                }
                src = s.source();
            }
            Err(IngestError::UnreadableBody)
        }
    }
}
