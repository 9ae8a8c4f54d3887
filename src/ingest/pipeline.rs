//! The handles the ingest stages work with, and the small stages that need several of them:
//! find the source, and prepare (verify, decode, classify) with an id from the stream sequencer.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;
use tokio_util::task::TaskTracker;

use super::dedupe::RecentDeliveries;
use super::{IngestError, Prepared, Source, prepare};
use crate::analytics::Analytics;
use crate::clock::now_ms;
use crate::providers::RequestLine;
use crate::queue::Queue;
use crate::ratelimit::RateLimiter;
use crate::ratelimit::shared::SharedLimiter;
use crate::routing::Rules;
use crate::store::Store;
use crate::stream::Hub;
use crate::stream::sequencer::{Pending, Sequencer};

/// Everything ingest reads or writes; built once by the server, shared by every request.
pub struct Ingest {
    pub sources: HashMap<String, Arc<Source>>,
    pub max_event_size: usize,
    pub store: Arc<dyn Store>,
    pub rules: Arc<Rules>,
    pub dedupe: Arc<RecentDeliveries>,
    pub limiter: Arc<RateLimiter>,
    /// The rate limits shared with the other nodes (`None` on a single node).
    pub shared_limits: Option<Arc<SharedLimiter>>,
    pub queue: Queue,
    pub hub: Arc<Hub>,
    pub sequencer: Arc<Sequencer>,
    pub analytics: Arc<Analytics>,
    /// Commits handed off by requests: the server waits for them before it exits.
    pub tasks: TaskTracker,
}

impl Ingest {
    /// Stage: the source a request names, if it is known and enabled. A source is enabled when
    /// it has a secret; `internal` also when any agent key exists.
    pub fn source(&self, name: &str) -> Result<Arc<Source>, IngestError> {
        let source = self
            .sources
            .get(name)
            .ok_or_else(|| IngestError::UnknownSource(printable(name)))?;
        let enabled = source.secrets.is_some()
            || (source.name == crate::providers::standard::INTERNAL && self.rules.has_agent_keys());
        if !enabled {
            return Err(IngestError::SourceNotConfigured(source.name.clone()));
        }
        Ok(source.clone())
    }

    /// A handshake its provider answers from the headers alone, before any secret is looked at
    /// (Asana's `X-Hook-Secret`, which is how the secret is handed over): on a known source,
    /// configured or not. Nothing is stored; the log says a handshake came, never its value.
    pub fn unsigned_handshake(
        &self,
        name: &str,
        headers: &HeaderMap,
    ) -> Option<crate::providers::Handshake> {
        let source = self.sources.get(name)?;
        let answer = source.provider.unsigned_handshake(headers)?;
        tracing::info!(
            source = %source.name,
            configured = source.secrets.is_some(),
            "unsigned handshake answered (nothing stored; the secret it carries is not logged)"
        );
        Some(answer)
    }

    /// Whether `name` is a configured source (for counting refusals per source).
    pub fn knows(&self, name: &str) -> bool {
        self.sources.contains_key(name)
    }

    /// Stages verify, decode and classify (`prepare`), with the event's id taken from the
    /// stream sequencer, which publishes events in id order. The returned `Pending` holds the
    /// id's place until the event is published or dropped. `agent_key` checks an
    /// `Authorization` header on `internal`.
    pub fn prepare(
        &self,
        source: &Source,
        line: RequestLine<'_>,
        headers: &HeaderMap,
        bytes: &[u8],
        client_ip: &str,
        agent_key: &dyn Fn(&[u8]) -> bool,
    ) -> Result<(Prepared, Option<Pending>), IngestError> {
        let mut pending = None;
        let mut next_id = || {
            let (p, ts) = self.sequencer.next_id();
            let id = p.id();
            pending = Some(p);
            (id, ts)
        };
        let prepared = prepare(
            source,
            line,
            headers,
            bytes,
            client_ip,
            now_ms(),
            agent_key,
            &mut next_id,
        )?;
        Ok((prepared, pending))
    }
}

/// A source name echoed in an error: cut short, with control and formatting characters escaped
/// so the message cannot be made to look like another name.
fn printable(s: &str) -> String {
    s.chars()
        .take(64)
        .flat_map(|c| {
            if c.is_control() || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
                c.escape_unicode().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}
