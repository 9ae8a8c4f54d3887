//! The state every handler gets: cheap handles to the domain, built once by `crate::server`.
//! `Clone` is one `Arc` bump; the logic lives in the domain modules the handles point to.

use std::ops::Deref;
use std::sync::Arc;
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::dashboard::Sessions;
use super::throttle::AuthThrottle;
use crate::analytics::Analytics;
use crate::config::{Config, Secret};
use crate::ingest::Ingest;
use crate::queue::Queue;
use crate::ratelimit::RateLimiter;
use crate::routing::Rules;
use crate::store::Store;
use crate::stream::Hub;
use crate::stream::sequencer::Sequencer;

#[derive(Clone)]
pub struct AppState(pub Arc<Handles>);

pub struct Handles {
    pub config: Config,
    pub admin_key: Secret,
    pub store: Arc<dyn Store>,
    pub rules: Arc<Rules>,
    pub ingest: Arc<Ingest>,
    pub limiter: Arc<RateLimiter>,
    pub queue: Queue,
    pub hub: Arc<Hub>,
    pub sequencer: Arc<Sequencer>,
    pub analytics: Arc<Analytics>,
    /// Failed admin / agent authentications per client address.
    pub auth_throttle: AuthThrottle,
    /// Dashboard sign-in sessions (in memory: per process).
    pub sessions: Sessions,
    pub started: Instant,
    /// Work that must finish before the process exits (commits handed off by handlers).
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
}

impl Deref for AppState {
    type Target = Handles;
    fn deref(&self) -> &Handles {
        &self.0
    }
}
