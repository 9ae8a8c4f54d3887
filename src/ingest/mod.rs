//! The way in: `POST /webhook/{source}` as a list of stages, each a function in a file named
//! for it — read, verify, decode and classify (`prepare`), dedupe, admit (rate limit), route,
//! commit, publish. The HTTP handler (`crate::http::webhook`) calls them in order; nothing here
//! knows HTTP beyond header maps.

pub mod admit;
pub mod classify;
pub mod commit;
pub mod decode;
pub mod dedupe;
pub mod error;
pub mod operational;
pub mod pipeline;
pub mod prepare;
pub mod publish;
pub mod read;
pub mod route;
pub mod source;
pub mod verify;

pub use error::IngestError;
pub use pipeline::Ingest;
pub use prepare::{Prepared, prepare};
pub use source::{Source, build_sources};
