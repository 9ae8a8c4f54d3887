//! Configuration: defaults, then the TOML file, then the environment, then flags — checked once at start.
//!
//! The file is parsed with `toml_edit` rather than plain serde so that every problem can be reported
//! with its line and column, and so that `check-config` can list *every* error instead of the first.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_json::Value;
use toml_edit::{Document, Item, Table};

use crate::providers::{self, Provider};

/// A secret value: never printed by `Debug`, so a config dump cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One webhook source, built-in or declared in `[sources.NAME]`.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    /// How the source's webhooks are verified and read (`scheme = "…"`).
    pub provider: &'static dyn Provider,
    /// Environment variables the secret list is read from, first set wins.
    pub secret_env: Vec<String>,
    /// The secret list as resolved at load time (comma-separated, for rotation). `None` = disabled.
    pub secret: Option<Secret>,
    /// Dot path of the rate-limit identifier in the event (`payload.sender.login`); `None` = client IP.
    pub identifier_field: Option<String>,
    /// The URL the provider was given for this source (`public_url`), for providers that sign
    /// the URL (Square, Twilio): the router may sit behind a proxy that changes it.
    pub public_url: Option<String>,
    /// The token the operator gave the provider for its `GET` check of the endpoint, read from
    /// the provider's `verify_token_env` (Meta: `META_VERIFY_TOKEN`); `None` when it has none.
    pub verify_token: Option<Secret>,
    /// `retention_days` for this source's events, overriding the global one.
    pub retention_days: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A rule object declared in the config file (`[[agents]]`, …), kept as JSON until the rules
/// layer validates it, with the place it came from for error messages.
#[derive(Debug, Clone)]
pub struct Declared {
    pub value: Value,
    /// `file:line:column` of the table.
    pub location: String,
    /// Where each key of the table is, nested ones included (`conditions[1].operator`,
    /// `retry_policy.max_attempts`, `target_agents[2]`), so that a field error points at the
    /// offending key. Paths are stored in snake_case ([`location_path`]).
    pub key_locations: BTreeMap<String, String>,
}

impl Declared {
    /// The location to report for an error on `field` (a path such as `conditions[0].operator`):
    /// that key's, else the nearest enclosing key's that the file has, else the table's.
    pub fn location_of(&self, field: &str) -> &str {
        let mut path = location_path(field);
        loop {
            if let Some(at) = self.key_locations.get(&path) {
                return at;
            }
            match path.rfind(['.', '[']) {
                Some(cut) => path.truncate(cut),
                None => return &self.location,
            }
        }
    }
}

/// A field path in one spelling for looking up locations: errors name fields in camelCase
/// (`sourceFilters[0].caseSensitive`), the file may spell them in snake_case.
fn location_path(field: &str) -> String {
    crate::event::snake_case(field)
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `sqlite://PATH` or `postgres://…`; `None` = `DATA_DIR/event-router.db`.
    pub database_url: Option<String>,
    pub max_event_size: usize,
    pub default_retry_attempts: u32,
    pub default_retry_delay_ms: u64,
    pub max_queue_size: u64,
    pub rate_limit_window_ms: u64,
    pub default_rate_limit: u64,
    pub retention_days: u32,
    /// `dlq_retention_days` [`DLQ_RETENTION_DAYS`]: how long a dead letter is kept after it
    /// died (with its event); `None` = `retention_days`.
    pub dlq_retention_days: Option<u32>,
    pub log_level: String,
    pub log_format: LogFormat,
    /// `environment` [`ENVIRONMENT`]: a name for this deployment (`production`, `staging`, …),
    /// shown by `/health`.
    pub environment: Option<String>,
    pub sources: BTreeMap<String, SourceConfig>,
    pub agent_api_key: Option<Secret>,
    pub admin_api_key: Option<Secret>,
    pub agents: Vec<Declared>,
    pub filters: Vec<Declared>,
    pub routes: Vec<Declared>,
    pub rate_limits: Vec<Declared>,
    /// How often streams send a heartbeat.
    pub stream_heartbeat: std::time::Duration,
    /// Messages buffered per stream before a slow consumer is cut off.
    pub stream_buffer: usize,
    /// Bytes of delivery body the scheduler keeps in memory for queued deliveries
    /// (`delivery_memory_mb`); queued past it, a delivery's body is read from the store when
    /// its attempt starts.
    pub delivery_memory: usize,
    /// Group-commit batch ceiling: how many webhooks may share one transaction.
    pub commit_batch_max: usize,
    /// PostgreSQL: pooled connections per node.
    pub db_pool_size: usize,
    /// SQLite: free MiB on the data's filesystem below which new webhooks are refused (0: none).
    pub min_free_disk_mb: u64,
    /// Agents' circuit breaker defaults (`circuit_failure_threshold`, `circuit_cooldown_ms`,
    /// `circuit_max_cooldown_ms`, `agent_disable_after_hours`; an agent's own settings win).
    pub circuit_failure_threshold: u32,
    pub circuit_cooldown_ms: u64,
    pub circuit_max_cooldown_ms: u64,
    /// 0: agents are never disabled for failing.
    pub agent_disable_after_hours: u64,
    /// `operational_event_interval_ms`: at most one `router` event of a kind about one subject
    /// per this many ms.
    pub operational_event_interval_ms: u64,
    /// `ingest.signature_failures`: this many failed signatures of one source in one
    /// `alert_window_ms` (0: never).
    pub signature_failure_alert: u64,
    /// `ingest.slow`: the p95 processing time (ms) above which a window counts as slow; five
    /// slow windows in a row send the event.
    pub slow_ingest_alert_ms: u64,
    /// The window the `ingest.*` events count over (ms; a minute).
    pub alert_window_ms: u64,
    /// PostgreSQL: how long a node's heartbeat keeps its deliveries its own (ms); after that
    /// without a heartbeat, other nodes take them over.
    pub node_lease_ms: u64,
    /// PostgreSQL: this node's identity across restarts (`node_id` [`NODE_ID`]); `None` = the id
    /// generated once and kept in `DATA_DIR/node-id`.
    pub node_id: Option<String>,
    /// PostgreSQL: how long a node's lease of rate-limit quota lives in the store (ms); a node
    /// that dies holding one gives its unspent units back after this (`rate_lease_ms`
    /// [`RATE_LEASE_MS`]).
    pub rate_lease_ms: u64,
    /// The file the config came from, if any.
    pub config_file: Option<PathBuf>,
    /// PEM certificate chain and private key: serve HTTPS when both are set.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// PEM file of CA certificates trusted, besides the built-in roots, for deliveries.
    pub extra_ca_certs: Option<PathBuf>,
    /// Encrypt archived event and delivery bodies too (agent secrets always are).
    pub encrypt_payloads: bool,
    /// `ENCRYPTION_KEY` (32 bytes, base64); `None` = the key kept in the data dir.
    pub encryption_key: Option<Secret>,
    /// How long a dashboard sign-in lasts (absolute, from sign-in).
    pub dashboard_session_ttl: std::time::Duration,
    /// What a client connection may hold: deadlines and caps (`header_read_timeout_ms`,
    /// `body_read_timeout_ms`, `keep_alive_timeout_ms`, `max_header_size`, `max_connections`,
    /// `max_connections_per_ip`).
    pub connections: ConnectionLimits,
}

/// What one client connection may hold, so that slow or numerous clients cannot hold the door
/// open (see docs/operations.md "Connections").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From a connection's opening, or from the first byte of a later request, to the end of
    /// that request's head; past it the connection is closed.
    pub header_read_timeout: std::time::Duration,
    /// From the first read of a request body to its end; past it the request is answered `408`.
    pub body_read_timeout: std::time::Duration,
    /// How long a keep-alive connection may wait between requests.
    pub keep_alive_timeout: std::time::Duration,
    /// The largest request head (request line and headers), bytes.
    pub max_header_size: usize,
    /// Open connections (streams included) past which new ones are refused at once.
    pub max_connections: usize,
    /// The same per client address; 0: no per-address cap.
    pub max_connections_per_ip: usize,
}

/// Ten seconds for a request head: a provider sends it in one packet; a client that takes longer
/// is holding a connection open, not sending.
pub const DEFAULT_HEADER_READ_TIMEOUT_MS: u64 = 10_000;
/// Thirty seconds for a body: `max_event_size` (1 MiB) at 35 KB/s.
pub const DEFAULT_BODY_READ_TIMEOUT_MS: u64 = 30_000;
/// Seventy-five seconds between requests: longer than the 60 s idle timeout of common load
/// balancers, so that the balancer, not the router, closes an idle pooled connection (a router
/// closing first races the balancer's next request on it).
pub const DEFAULT_KEEP_ALIVE_TIMEOUT_MS: u64 = 75_000;
/// 64 KiB of request head: webhooks carry a few KB. (hyper's own default is 400 KiB; this also
/// bounds what each connection's read buffer can grow to.)
pub const DEFAULT_MAX_HEADER_SIZE: usize = 64 * 1024;
/// hyper's read buffer cannot be smaller.
const MIN_MAX_HEADER_SIZE: i64 = 8192;
/// The 10,000 idle connections measured in docs/performance.md; each costs a file descriptor,
/// so keep it below `ulimit -n`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// One client address may hold a fifth of them: enough for the 1,000-connection load run and
/// 1,000 stream subscribers from one host, not enough to starve everyone else.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 2_000;
const MAX_TIMEOUT_MS: i64 = 3_600_000;

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: std::time::Duration::from_millis(DEFAULT_HEADER_READ_TIMEOUT_MS),
            body_read_timeout: std::time::Duration::from_millis(DEFAULT_BODY_READ_TIMEOUT_MS),
            keep_alive_timeout: std::time::Duration::from_millis(DEFAULT_KEEP_ALIVE_TIMEOUT_MS),
            max_header_size: DEFAULT_MAX_HEADER_SIZE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
        }
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// Delivery bodies held in memory for queued deliveries: 16 MiB is about 2,500 queued 6 KB
/// webhooks ahead of the store, far more than the attempts in flight need.
pub const DEFAULT_DELIVERY_MEMORY_MB: usize = 16;

/// Free disk space kept back (SQLite): 64 MiB holds a full group commit of 1,024 6 KB webhooks
/// ten times over, and the outcomes of every delivery then in flight.
pub const DEFAULT_MIN_FREE_DISK_MB: u64 = 64;
/// The largest floor: 1 TiB.
const MAX_MIN_FREE_DISK_MB: i64 = 1 << 20;

/// A dashboard session lasts 12 hours: a working day, after which the admin key is asked again.
pub const DEFAULT_DASHBOARD_SESSION_TTL_SECS: u64 = 12 * 3600;
/// The longest session allowed: 30 days.
pub const MAX_DASHBOARD_SESSION_TTL_SECS: i64 = 30 * 86_400;

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            data_dir: PathBuf::from("./data"),
            database_url: None,
            max_event_size: 1024 * 1024,
            default_retry_attempts: 5,
            default_retry_delay_ms: 1000,
            max_queue_size: 100_000,
            rate_limit_window_ms: 60_000,
            default_rate_limit: 1000,
            retention_days: 30,
            dlq_retention_days: None,
            log_level: "info".into(),
            log_format: LogFormat::Text,
            environment: None,
            sources: builtin_sources(),
            agent_api_key: None,
            admin_api_key: None,
            agents: Vec::new(),
            filters: Vec::new(),
            routes: Vec::new(),
            rate_limits: Vec::new(),
            stream_heartbeat: std::time::Duration::from_secs(15),
            stream_buffer: 4096,
            delivery_memory: DEFAULT_DELIVERY_MEMORY_MB << 20,
            commit_batch_max: 1024,
            db_pool_size: crate::store::postgres::DEFAULT_POOL_SIZE,
            min_free_disk_mb: DEFAULT_MIN_FREE_DISK_MB,
            circuit_failure_threshold: 10,
            circuit_cooldown_ms: 5_000,
            circuit_max_cooldown_ms: 300_000,
            agent_disable_after_hours: 72,
            operational_event_interval_ms: 60_000,
            signature_failure_alert: 20,
            slow_ingest_alert_ms: 1_000,
            alert_window_ms: 60_000,
            node_lease_ms: crate::store::postgres::DEFAULT_LEASE_MS as u64,
            node_id: None,
            rate_lease_ms: crate::ratelimit::shared::DEFAULT_LEASE_MS,
            config_file: None,
            tls_cert: None,
            tls_key: None,
            extra_ca_certs: None,
            encrypt_payloads: false,
            encryption_key: None,
            dashboard_session_ttl: std::time::Duration::from_secs(
                DEFAULT_DASHBOARD_SESSION_TTL_SECS,
            ),
            connections: ConnectionLimits::default(),
        }
    }
}

/// One source per provider that comes with one (`github`, `linear`, `slack`, `internal`).
fn builtin_sources() -> BTreeMap<String, SourceConfig> {
    providers::PROVIDERS
        .iter()
        .filter_map(|&provider| {
            let b = provider.builtin()?;
            let source = SourceConfig {
                provider,
                secret_env: b.secret_env.iter().map(|s| s.to_string()).collect(),
                secret: None,
                identifier_field: b.identifier.map(str::to_string),
                public_url: None,
                verify_token: None,
                retention_days: None,
            };
            Some((b.source.to_string(), source))
        })
        .collect()
}

/// Values given on the command line (each also readable from its environment variable by clap).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
}

/// One problem found in the configuration, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `file:line:column`, `env VAR`, or `flag --x`.
    pub location: String,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.location, self.key, self.message)
    }
}

#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads the environment through a function so tests can supply their own.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

impl Config {
    /// Builds the configuration: defaults < file < environment < flags. Every problem is collected.
    pub fn load(overrides: &Overrides, env: Env<'_>) -> Result<Config, ConfigErrors> {
        let (cfg, errors) = Config::load_all(overrides, env);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// As [`Config::load`], but the configuration comes back beside its problems (each bad
    /// setting left at its default), so that the declared rules can be checked as well and
    /// every error reported in one run.
    pub fn load_all(overrides: &Overrides, env: Env<'_>) -> (Config, Vec<ConfigError>) {
        let mut cfg = Config::default();
        let mut errors = Vec::new();
        let file = overrides
            .config
            .clone()
            .or_else(|| env("EVENT_ROUTER_CONFIG").map(PathBuf::from));
        if let Some(path) = &file {
            match std::fs::read_to_string(path) {
                Ok(text) => cfg.apply_file(path, &text, &mut errors),
                Err(e) => errors.push(ConfigError {
                    location: path.display().to_string(),
                    key: "config".into(),
                    message: format!("cannot read: {e}"),
                }),
            }
            cfg.config_file = Some(path.clone());
        }
        cfg.apply_env(env, &mut errors);
        cfg.apply_overrides(overrides, &mut errors);
        cfg.resolve_secrets(env);
        cfg.check_security(&mut errors);
        (cfg, errors)
    }

    /// Parses a file on its own (for `check-config`); every error is returned.
    pub fn from_file_only(path: &Path) -> Result<Config, ConfigErrors> {
        let (cfg, errors) = Config::from_file_all(path);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// As [`Config::from_file_only`], the configuration beside its problems.
    pub fn from_file_all(path: &Path) -> (Config, Vec<ConfigError>) {
        let mut cfg = Config::default();
        let mut errors = Vec::new();
        match std::fs::read_to_string(path) {
            Ok(text) => cfg.apply_file(path, &text, &mut errors),
            Err(e) => errors.push(ConfigError {
                location: path.display().to_string(),
                key: "config".into(),
                message: format!("cannot read: {e}"),
            }),
        }
        cfg.config_file = Some(path.to_path_buf());
        cfg.check_security(&mut errors);
        (cfg, errors)
    }

    /// Where the embedded database lives when `database_url` is unset or `sqlite://`.
    /// What opening the store needs (`crate::store::open`).
    pub fn store_settings(&self) -> crate::store::Settings {
        crate::store::Settings {
            sqlite_path: self.sqlite_path(),
            database_url: self.database_url.clone(),
            data_dir: self.data_dir.clone(),
            encryption_key: self.encryption_key.as_ref().map(|k| k.0.clone()),
            encrypt_payloads: self.encrypt_payloads,
            commit_batch_max: self.commit_batch_max,
            db_pool_size: self.db_pool_size,
            min_free_disk_mb: self.min_free_disk_mb,
            node_lease_ms: self.node_lease_ms,
            node_id: self.node_id.clone(),
        }
    }

    pub fn sqlite_path(&self) -> Option<PathBuf> {
        match &self.database_url {
            None => Some(self.data_dir.join("event-router.db")),
            Some(url) => url.strip_prefix("sqlite://").map(PathBuf::from),
        }
    }

    fn apply_file(&mut self, path: &Path, text: &str, errors: &mut Vec<ConfigError>) {
        let file = path.display().to_string();
        let doc = match Document::parse(text) {
            Ok(d) => d,
            Err(e) => {
                let (location, message) = match e.span() {
                    Some(span) => (locate(&file, text, &span), e.message().trim().to_string()),
                    None => (file.clone(), e.to_string()),
                };
                errors.push(ConfigError {
                    location,
                    key: "(syntax)".into(),
                    message,
                });
                return;
            }
        };
        let ctx = FileCtx { file: &file, text };
        for (key, item) in doc.as_table().iter() {
            let at = ctx.at(item
                .span()
                .or_else(|| doc.as_table().key(key).and_then(|k| k.span())));
            let mut err = |message: String| {
                errors.push(ConfigError {
                    location: at.clone(),
                    key: key.to_string(),
                    message,
                })
            };
            match key {
                "listen" => match item.as_str().map(parse_listen) {
                    Some(Ok(a)) => self.listen = a,
                    Some(Err(m)) => err(m),
                    None => err(expected("a string such as \"127.0.0.1:8787\"", item)),
                },
                "data_dir" => match item.as_str() {
                    Some(s) => self.data_dir = PathBuf::from(s),
                    None => err(expected("a string", item)),
                },
                "database_url" => match item.as_str().map(check_database_url) {
                    Some(Ok(s)) => self.database_url = Some(s),
                    Some(Err(m)) => err(m),
                    None => err(expected("a string", item)),
                },
                "max_event_size" => match int_in(item, 1, 64 * 1024 * 1024) {
                    Ok(v) => self.max_event_size = v as usize,
                    Err(m) => err(m),
                },
                "default_retry_attempts" => match int_in(item, 1, 1000) {
                    Ok(v) => self.default_retry_attempts = v as u32,
                    Err(m) => err(m),
                },
                "default_retry_delay" => match int_in(item, 0, 86_400_000) {
                    Ok(v) => self.default_retry_delay_ms = v as u64,
                    Err(m) => err(m),
                },
                "max_queue_size" => match int_in(item, 1, i64::MAX) {
                    Ok(v) => self.max_queue_size = v as u64,
                    Err(m) => err(m),
                },
                "rate_limit_window" => match int_in(item, 1, 30 * 86_400_000) {
                    Ok(v) => self.rate_limit_window_ms = v as u64,
                    Err(m) => err(m),
                },
                "default_rate_limit" => match int_in(item, 1, i64::MAX) {
                    Ok(v) => self.default_rate_limit = v as u64,
                    Err(m) => err(m),
                },
                "retention_days" => match int_in(item, 1, 36_500) {
                    Ok(v) => self.retention_days = v as u32,
                    Err(m) => err(m),
                },
                "dlq_retention_days" => match int_in(item, 1, 36_500) {
                    Ok(v) => self.dlq_retention_days = Some(v as u32),
                    Err(m) => err(m),
                },
                "environment" => match item.as_str().map(check_environment) {
                    Some(Ok(e)) => self.environment = Some(e),
                    Some(Err(m)) => err(m),
                    None => err(expected("a string", item)),
                },
                "log_level" => match item.as_str() {
                    Some(s) => match check_log_level(s) {
                        Ok(()) => self.log_level = s.to_string(),
                        Err(m) => err(m),
                    },
                    None => err(expected("a string", item)),
                },
                "stream_heartbeat_ms" => match int_in(item, 100, 3_600_000) {
                    Ok(v) => self.stream_heartbeat = std::time::Duration::from_millis(v as u64),
                    Err(m) => err(m),
                },
                "dashboard_session_ttl_secs" => {
                    match int_in(item, 1, MAX_DASHBOARD_SESSION_TTL_SECS) {
                        Ok(v) => {
                            self.dashboard_session_ttl = std::time::Duration::from_secs(v as u64)
                        }
                        Err(m) => err(m),
                    }
                }
                "stream_buffer" => match int_in(item, 1, 1_000_000) {
                    Ok(v) => self.stream_buffer = v as usize,
                    Err(m) => err(m),
                },
                "delivery_memory_mb" => match int_in(item, 0, 65_536) {
                    Ok(v) => self.delivery_memory = (v as usize) << 20,
                    Err(m) => err(m),
                },
                "circuit_failure_threshold" => match int_in(item, 1, 1_000_000) {
                    Ok(v) => self.circuit_failure_threshold = v as u32,
                    Err(m) => err(m),
                },
                "circuit_cooldown_ms" => match int_in(item, 1, 86_400_000) {
                    Ok(v) => self.circuit_cooldown_ms = v as u64,
                    Err(m) => err(m),
                },
                "circuit_max_cooldown_ms" => match int_in(item, 1, 86_400_000) {
                    Ok(v) => self.circuit_max_cooldown_ms = v as u64,
                    Err(m) => err(m),
                },
                "agent_disable_after_hours" => match int_in(item, 0, 8_760) {
                    Ok(v) => self.agent_disable_after_hours = v as u64,
                    Err(m) => err(m),
                },
                "signature_failure_alert" => match int_in(item, 0, 1_000_000_000) {
                    Ok(v) => self.signature_failure_alert = v as u64,
                    Err(m) => err(m),
                },
                "slow_ingest_alert_ms" => match int_in(item, 0, 3_600_000) {
                    Ok(v) => self.slow_ingest_alert_ms = v as u64,
                    Err(m) => err(m),
                },
                "alert_window_ms" => match int_in(item, 100, 3_600_000) {
                    Ok(v) => self.alert_window_ms = v as u64,
                    Err(m) => err(m),
                },
                "operational_event_interval_ms" => match int_in(item, 0, 86_400_000) {
                    Ok(v) => self.operational_event_interval_ms = v as u64,
                    Err(m) => err(m),
                },
                "min_free_disk_mb" => match int_in(item, 0, MAX_MIN_FREE_DISK_MB) {
                    Ok(v) => self.min_free_disk_mb = v as u64,
                    Err(m) => err(m),
                },
                "db_pool_size" => match int_in(item, 1, 1000) {
                    Ok(v) => self.db_pool_size = v as usize,
                    Err(m) => err(m),
                },
                "node_lease_ms" => match int_in(item, 1000, 3_600_000) {
                    Ok(v) => self.node_lease_ms = v as u64,
                    Err(m) => err(m),
                },
                "rate_lease_ms" => match int_in(item, 100, 600_000) {
                    Ok(v) => self.rate_lease_ms = v as u64,
                    Err(m) => err(m),
                },
                "node_id" => match item.as_str().map(check_node_id) {
                    Some(Ok(id)) => self.node_id = Some(id),
                    Some(Err(m)) => err(m),
                    None => err(expected("a string", item)),
                },
                "header_read_timeout_ms"
                | "body_read_timeout_ms"
                | "keep_alive_timeout_ms"
                | "max_header_size"
                | "max_connections"
                | "max_connections_per_ip" => {
                    let (min, max) = connection_key_range(key);
                    match int_in(item, min, max) {
                        Ok(v) => self.connections.set(key, v as u64),
                        Err(m) => err(m),
                    }
                }
                "tls_cert" | "tls_key" | "extra_ca_certs" => match item.as_str() {
                    Some(p) if !p.is_empty() => {
                        let p = Some(PathBuf::from(p));
                        match key {
                            "tls_cert" => self.tls_cert = p,
                            "tls_key" => self.tls_key = p,
                            _ => self.extra_ca_certs = p,
                        }
                    }
                    _ => err(expected("a file path", item)),
                },
                "encrypt_payloads" => match item.as_bool() {
                    Some(b) => self.encrypt_payloads = b,
                    None => err(expected("true or false", item)),
                },
                "log_format" => match item.as_str().map(parse_log_format) {
                    Some(Ok(f)) => self.log_format = f,
                    Some(Err(m)) => err(m),
                    None => err(expected("\"text\" or \"json\"", item)),
                },
                "sources" => match item.as_table() {
                    Some(t) => self.apply_sources(&ctx, t, errors),
                    None => err(expected("a table of [sources.NAME] tables", item)),
                },
                "agents" | "filters" | "routes" | "rate_limits" => {
                    // The tables that are tables are kept (and checked) beside the errors of
                    // those that are not.
                    let (list, e) = declared_list(&ctx, key, item);
                    errors.extend(e);
                    match key {
                        "agents" => self.agents = list,
                        "filters" => self.filters = list,
                        "routes" => self.routes = list,
                        _ => self.rate_limits = list,
                    }
                }
                other => err(format!(
                    "unknown key \"{other}\" (known keys: {})",
                    KNOWN_KEYS.join(", ")
                )),
            }
        }
    }

    fn apply_sources(&mut self, ctx: &FileCtx<'_>, table: &Table, errors: &mut Vec<ConfigError>) {
        for (name, item) in table.iter() {
            let at = ctx.at(item.span());
            let key = format!("sources.{name}");
            let mut push = |key: String, at: String, message: String| {
                errors.push(ConfigError {
                    location: at,
                    key,
                    message,
                })
            };
            if !valid_source_name(name) {
                push(
                    key.clone(),
                    at.clone(),
                    "a source name is 1 to 64 characters of a-z, 0-9, '_' and '-'".into(),
                );
                continue;
            }
            if name == "router" {
                push(
                    key.clone(),
                    at.clone(),
                    "\"router\" is the source of the router's own operational events, not a webhook source".into(),
                );
                continue;
            }
            let Some(t) = item.as_table_like() else {
                push(key, at, expected("a table", item));
                continue;
            };
            let existing = self.sources.get(name).cloned();
            let mut provider = existing.as_ref().map(|s| s.provider);
            let mut secret_env = existing
                .as_ref()
                .map(|s| s.secret_env.clone())
                .unwrap_or_default();
            let mut identifier = existing.as_ref().and_then(|s| s.identifier_field.clone());
            let mut public_url = existing.as_ref().and_then(|s| s.public_url.clone());
            let mut retention_days = existing.as_ref().and_then(|s| s.retention_days);
            let mut recipe_scheme: Option<String> = None;
            let mut recipe = providers::recipe::RecipeSpec::default();
            let mut recipe_keys: Vec<String> = Vec::new();
            let mut ok = true;
            for (k, v) in t.iter() {
                let at = ctx.at(v.span());
                let field = format!("{key}.{k}");
                match k {
                    "scheme" => match v.as_str() {
                        Some(r) if providers::recipe::SCHEMES.contains(&r) => {
                            recipe_scheme = Some(r.to_string())
                        }
                        other => match other.and_then(providers::by_name) {
                            Some(p) => provider = Some(p),
                            None => {
                                ok = false;
                                let names: Vec<String> = providers::PROVIDERS
                                    .iter()
                                    .map(|p| p.name())
                                    .chain(providers::recipe::SCHEMES.iter().copied())
                                    .map(|n| format!("\"{n}\""))
                                    .collect();
                                push(field, at, format!("expected one of {}", names.join(", ")))
                            }
                        },
                    },
                    k if providers::recipe::RecipeSpec::KEYS.contains(&k) => {
                        recipe_keys.push(k.to_string());
                        let text = || match v.as_str() {
                            Some(s) => Ok(Some(s.to_string())),
                            None => Err(expected("a string", v)),
                        };
                        let set = match k {
                            "tolerance_secs" => match int_in(v, 1, 86_400) {
                                Ok(n) => {
                                    recipe.tolerance_secs = Some(n as u64);
                                    Ok(())
                                }
                                Err(m) => Err(m),
                            },
                            _ => text().map(|t| match k {
                                "header" => recipe.header = t,
                                "algorithm" => recipe.algorithm = t,
                                "encoding" => recipe.encoding = t,
                                "prefix" => recipe.prefix = t,
                                "signed" => recipe.signed = t,
                                "timestamp_header" => recipe.timestamp_header = t,
                                "id_header" => recipe.id_header = t,
                                "type_header" => recipe.type_header = t,
                                _ => recipe.type_path = t,
                            }),
                        };
                        if let Err(m) = set {
                            ok = false;
                            push(field, at, m);
                        }
                    }
                    "secret_env" => match v.as_str() {
                        Some(s) if valid_env_name(s) => secret_env = vec![s.to_string()],
                        _ => {
                            ok = false;
                            push(
                                field,
                                at,
                                "expected the name of an environment variable (A-Z, 0-9, _)".into(),
                            )
                        }
                    },
                    "identifier_field" => match v.as_str() {
                        Some(s) if valid_path(s) => identifier = Some(s.to_string()),
                        _ => {
                            ok = false;
                            push(
                                field,
                                at,
                                "expected a dot path such as \"payload.sender.login\"".into(),
                            )
                        }
                    },
                    "retention_days" => match int_in(v, 1, 36_500) {
                        Ok(n) => retention_days = Some(n as u32),
                        Err(m) => {
                            ok = false;
                            push(field, at, m)
                        }
                    },
                    "public_url" => match v.as_str().map(check_public_url) {
                        Some(Ok(u)) => public_url = Some(u),
                        Some(Err(m)) => {
                            ok = false;
                            push(field, at, m)
                        }
                        None => {
                            ok = false;
                            push(field, at, expected("a string", v))
                        }
                    },
                    other => {
                        ok = false;
                        push(
                            field,
                            at,
                            format!(
                                "unknown key \"{other}\" (known: scheme, secret_env, identifier_field, public_url, retention_days, and for scheme \"hmac\", \"token\" or \"basic\": {})",
                                providers::recipe::RecipeSpec::KEYS.join(", ")
                            ),
                        )
                    }
                }
            }
            match &recipe_scheme {
                Some(scheme) if ok => match providers::recipe::Recipe::build(scheme, &recipe) {
                    Ok(r) => provider = Some(r),
                    Err(m) => {
                        ok = false;
                        push(
                            format!("{key}.scheme"),
                            at.clone(),
                            format!("{scheme}: {m}"),
                        );
                    }
                },
                Some(_) => {}
                None => {
                    if let Some(k) = recipe_keys.first() {
                        ok = false;
                        push(
                            format!("{key}.{k}"),
                            at.clone(),
                            "only for scheme = \"hmac\", \"token\" or \"basic\"".into(),
                        );
                    }
                }
            }
            let Some(provider) = provider else {
                if !ok {
                    // The bad `scheme` value was already reported.
                    continue;
                }
                push(
                    format!("{key}.scheme"),
                    at,
                    format!("required for a new source ({})", providers::names_text()),
                );
                continue;
            };
            if ok {
                self.sources.insert(
                    name.to_string(),
                    SourceConfig {
                        provider,
                        secret_env,
                        secret: None,
                        identifier_field: identifier,
                        public_url,
                        verify_token: None,
                        retention_days,
                    },
                );
            }
        }
    }

    fn apply_env(&mut self, env: Env<'_>, errors: &mut Vec<ConfigError>) {
        let mut num = |name: &str, min: i64, max: i64| -> Option<i64> {
            let v = env(name)?;
            match v.trim().parse::<i64>() {
                Ok(n) if (min..=max).contains(&n) => Some(n),
                _ => {
                    errors.push(ConfigError {
                        location: format!("env {name}"),
                        key: name.to_string(),
                        message: format!("expected an integer from {min} to {max}"),
                    });
                    None
                }
            }
        };
        if let Some(v) = num("MAX_EVENT_SIZE", 1, 64 * 1024 * 1024) {
            self.max_event_size = v as usize;
        }
        if let Some(v) = num("DEFAULT_RETRY_ATTEMPTS", 1, 1000) {
            self.default_retry_attempts = v as u32;
        }
        if let Some(v) = num("DEFAULT_RETRY_DELAY", 0, 86_400_000) {
            self.default_retry_delay_ms = v as u64;
        }
        if let Some(v) = num("MAX_QUEUE_SIZE", 1, i64::MAX) {
            self.max_queue_size = v as u64;
        }
        if let Some(v) = num("RATE_LIMIT_WINDOW", 1, 30 * 86_400_000) {
            self.rate_limit_window_ms = v as u64;
        }
        if let Some(v) = num("DEFAULT_RATE_LIMIT", 1, i64::MAX) {
            self.default_rate_limit = v as u64;
        }
        if let Some(v) = num("RETENTION_DAYS", 1, 36_500) {
            self.retention_days = v as u32;
        }
        if let Some(v) = num("DLQ_RETENTION_DAYS", 1, 36_500) {
            self.dlq_retention_days = Some(v as u32);
        }
        if let Some(v) = num("STREAM_HEARTBEAT_MS", 100, 3_600_000) {
            self.stream_heartbeat = std::time::Duration::from_millis(v as u64);
        }
        if let Some(v) = num(
            "DASHBOARD_SESSION_TTL_SECS",
            1,
            MAX_DASHBOARD_SESSION_TTL_SECS,
        ) {
            self.dashboard_session_ttl = std::time::Duration::from_secs(v as u64);
        }
        if let Some(v) = num("MIN_FREE_DISK_MB", 0, MAX_MIN_FREE_DISK_MB) {
            self.min_free_disk_mb = v as u64;
        }
        if let Some(v) = num("DB_POOL_SIZE", 1, 1000) {
            self.db_pool_size = v as usize;
        }
        if let Some(v) = num("NODE_LEASE_MS", 1000, 3_600_000) {
            self.node_lease_ms = v as u64;
        }
        if let Some(v) = num("RATE_LEASE_MS", 100, 600_000) {
            self.rate_lease_ms = v as u64;
        }
        for key in CONNECTION_KEYS {
            let (min, max) = connection_key_range(key);
            if let Some(v) = num(&key.to_ascii_uppercase(), min, max) {
                self.connections.set(key, v as u64);
            }
        }
        let mut push = |name: &str, message: String| {
            errors.push(ConfigError {
                location: format!("env {name}"),
                key: name.to_string(),
                message,
            })
        };
        if let Some(v) = env("LISTEN") {
            match parse_listen(&v) {
                Ok(a) => self.listen = a,
                Err(m) => push("LISTEN", m),
            }
        }
        if let Some(v) = env("DATA_DIR") {
            self.data_dir = PathBuf::from(v);
        }
        if let Some(v) = env("DATABASE_URL") {
            match check_database_url(&v) {
                Ok(u) => self.database_url = Some(u),
                Err(m) => push("DATABASE_URL", m),
            }
        }
        if let Some(v) = env("NODE_ID") {
            match check_node_id(&v) {
                Ok(id) => self.node_id = Some(id),
                Err(m) => push("NODE_ID", m),
            }
        }
        if let Some(v) = env("ENVIRONMENT") {
            match check_environment(&v) {
                Ok(e) => self.environment = Some(e),
                Err(m) => push("ENVIRONMENT", m),
            }
        }
        if let Some(v) = env("LOG_LEVEL") {
            match check_log_level(&v) {
                Ok(()) => self.log_level = v,
                Err(m) => push("LOG_LEVEL", m),
            }
        }
        if let Some(v) = env("TLS_CERT") {
            self.tls_cert = Some(PathBuf::from(v));
        }
        if let Some(v) = env("TLS_KEY") {
            self.tls_key = Some(PathBuf::from(v));
        }
        if let Some(v) = env("EXTRA_CA_CERTS") {
            self.extra_ca_certs = Some(PathBuf::from(v));
        }
        if let Some(v) = env("ENCRYPT_PAYLOADS") {
            match v.trim() {
                "true" | "1" => self.encrypt_payloads = true,
                "false" | "0" => self.encrypt_payloads = false,
                _ => push("ENCRYPT_PAYLOADS", "expected true or false".into()),
            }
        }
        if let Some(v) = env("LOG_FORMAT") {
            match parse_log_format(&v) {
                Ok(f) => self.log_format = f,
                Err(m) => push("LOG_FORMAT", m),
            }
        }
    }

    fn apply_overrides(&mut self, o: &Overrides, errors: &mut Vec<ConfigError>) {
        if let Some(l) = &o.listen {
            match parse_listen(l) {
                Ok(a) => self.listen = a,
                Err(message) => errors.push(ConfigError {
                    location: "flag --listen".into(),
                    key: "listen".into(),
                    message,
                }),
            }
        }
        if let Some(d) = &o.data_dir {
            self.data_dir = d.clone();
        }
        if let Some(u) = &o.database_url {
            match check_database_url(u) {
                Ok(u) => self.database_url = Some(u),
                Err(message) => errors.push(ConfigError {
                    location: "flag --database-url".into(),
                    key: "database_url".into(),
                    message,
                }),
            }
        }
    }

    fn resolve_secrets(&mut self, env: Env<'_>) {
        for (name, source) in self.sources.iter_mut() {
            source.secret = source
                .secret_env
                .iter()
                .find_map(|name| env(name))
                .map(Secret);
            source.verify_token = source
                .provider
                .verify_token_env(name)
                .and_then(|var| env(&var))
                .map(Secret);
        }
        self.agent_api_key = env("AGENT_API_KEY").map(Secret);
        self.admin_api_key = env("ADMIN_API_KEY").map(Secret);
        self.encryption_key = env("ENCRYPTION_KEY").map(Secret);
    }

    /// Settings that only make sense together, and the encryption key's form.
    fn check_security(&self, errors: &mut Vec<ConfigError>) {
        let at = |key: &str| match &self.config_file {
            Some(f) => format!("{} or env {}", f.display(), key.to_ascii_uppercase()),
            None => format!("env {}", key.to_ascii_uppercase()),
        };
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => errors.push(ConfigError {
                location: at("tls_key"),
                key: "tls_key".into(),
                message: "tls_cert is set, so tls_key (the PEM private key) is required".into(),
            }),
            (None, Some(_)) => errors.push(ConfigError {
                location: at("tls_cert"),
                key: "tls_cert".into(),
                message: "tls_key is set, so tls_cert (the PEM certificate chain) is required"
                    .into(),
            }),
            _ => {}
        }
        if let Some(k) = &self.encryption_key
            && let Err(message) = crate::crypto::parse_key(&k.0)
        {
            errors.push(ConfigError {
                location: "env ENCRYPTION_KEY".into(),
                key: "ENCRYPTION_KEY".into(),
                message,
            });
        }
    }
}

/// A source's `public_url`: an absolute `http(s)://` URL, as the provider was given it.
fn check_public_url(s: &str) -> Result<String, String> {
    let ok = (s.starts_with("https://") || s.starts_with("http://"))
        && s.parse::<http::Uri>()
            .is_ok_and(|u| u.host().is_some_and(|h| !h.is_empty()));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "expected the absolute URL the provider was given, such as \"https://hooks.example.com/webhook/square\" (got {s:?})"
        ))
    }
}

/// A deployment's name: 1 to 64 characters of `a-z A-Z 0-9 . _ -`.
fn check_environment(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "expected a name such as \"production\" (1 to 64 of a-z A-Z 0-9 . _ -), got {s:?}"
        ))
    }
}

/// A node's name: 1 to 64 characters of `a-z A-Z 0-9 . _ -` (a UUID is one too).
fn check_node_id(s: &str) -> Result<String, String> {
    crate::store::postgres::check_node_name(s).map(str::to_string)
}

/// The connection keys, each also read from its name in capitals (`MAX_CONNECTIONS`).
const CONNECTION_KEYS: [&str; 6] = [
    "header_read_timeout_ms",
    "body_read_timeout_ms",
    "keep_alive_timeout_ms",
    "max_header_size",
    "max_connections",
    "max_connections_per_ip",
];

/// The values a connection key accepts.
fn connection_key_range(key: &str) -> (i64, i64) {
    match key {
        "max_header_size" => (MIN_MAX_HEADER_SIZE, 1 << 20),
        "max_connections" => (1, 10_000_000),
        "max_connections_per_ip" => (0, 10_000_000),
        _ => (100, MAX_TIMEOUT_MS),
    }
}

impl ConnectionLimits {
    /// Sets the value of connection key `key` (checked by `connection_key_range`).
    fn set(&mut self, key: &str, v: u64) {
        let ms = std::time::Duration::from_millis(v);
        match key {
            "header_read_timeout_ms" => self.header_read_timeout = ms,
            "body_read_timeout_ms" => self.body_read_timeout = ms,
            "keep_alive_timeout_ms" => self.keep_alive_timeout = ms,
            "max_header_size" => self.max_header_size = v as usize,
            "max_connections" => self.max_connections = v as usize,
            "max_connections_per_ip" => self.max_connections_per_ip = v as usize,
            _ => unreachable!("not a connection key: {key}"),
        }
    }
}

const KNOWN_KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "database_url",
    "max_event_size",
    "default_retry_attempts",
    "default_retry_delay",
    "max_queue_size",
    "rate_limit_window",
    "default_rate_limit",
    "retention_days",
    "dlq_retention_days",
    "log_level",
    "environment",
    "log_format",
    "tls_cert",
    "tls_key",
    "extra_ca_certs",
    "encrypt_payloads",
    "stream_heartbeat_ms",
    "stream_buffer",
    "delivery_memory_mb",
    "dashboard_session_ttl_secs",
    "db_pool_size",
    "min_free_disk_mb",
    "circuit_failure_threshold",
    "circuit_cooldown_ms",
    "circuit_max_cooldown_ms",
    "agent_disable_after_hours",
    "operational_event_interval_ms",
    "signature_failure_alert",
    "slow_ingest_alert_ms",
    "alert_window_ms",
    "node_lease_ms",
    "node_id",
    "rate_lease_ms",
    "header_read_timeout_ms",
    "body_read_timeout_ms",
    "keep_alive_timeout_ms",
    "max_header_size",
    "max_connections",
    "max_connections_per_ip",
    "sources",
    "agents",
    "filters",
    "routes",
    "rate_limits",
];

struct FileCtx<'a> {
    file: &'a str,
    text: &'a str,
}

impl FileCtx<'_> {
    fn at(&self, span: Option<Range<usize>>) -> String {
        match span {
            Some(s) => locate(self.file, self.text, &s),
            None => self.file.to_string(),
        }
    }
}

/// `file:line:column` (1-based) of a byte offset.
fn locate(file: &str, text: &str, span: &Range<usize>) -> String {
    let upto = &text.as_bytes()[..span.start.min(text.len())];
    let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
    let col = upto.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
    format!("{file}:{line}:{col}")
}

fn expected(what: &str, item: &Item) -> String {
    format!("expected {what}, found {}", item.type_name())
}

fn int_in(item: &Item, min: i64, max: i64) -> Result<i64, String> {
    match item.as_integer() {
        Some(v) if (min..=max).contains(&v) => Ok(v),
        Some(v) => Err(format!("{v} is out of range ({min} to {max})")),
        None => Err(expected("an integer", item)),
    }
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("\"{s}\" is not an address such as 127.0.0.1:8787 or [::]:8787"))
}

fn check_database_url(s: &str) -> Result<String, String> {
    if let Some(p) = s.strip_prefix("sqlite://") {
        if p.is_empty() {
            return Err("sqlite:// needs a file path, e.g. sqlite://./data/event-router.db".into());
        }
        Ok(s.to_string())
    } else if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        // Its options (sslmode, sslrootcert, port…) are checked now, not at the first connect.
        crate::store::postgres::tls::connect_options(s)?;
        Ok(s.to_string())
    } else {
        Err("expected sqlite://PATH or postgres://…".into())
    }
}

fn check_log_level(s: &str) -> Result<(), String> {
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| ())
        .map_err(|e| format!("not a log level or filter directive: {e}"))
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    match s {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected \"text\" or \"json\"".into()),
    }
}

pub fn valid_source_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn valid_env_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

fn valid_path(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(|seg| !seg.is_empty())
}

/// `[[agents]]` and friends: each table becomes JSON for the rules layer to validate.
fn declared_list(ctx: &FileCtx<'_>, key: &str, item: &Item) -> (Vec<Declared>, Vec<ConfigError>) {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    let push_one = |t: &dyn toml_edit::TableLike, span: Option<Range<usize>>| {
        let mut map = serde_json::Map::new();
        for (k, v) in t.iter() {
            map.insert(k.to_string(), item_to_json(v));
        }
        let mut key_locations = BTreeMap::new();
        table_locations(ctx, "", t, &mut key_locations);
        Declared {
            value: Value::Object(map),
            location: ctx.at(span),
            key_locations,
        }
    };
    if let Some(aot) = item.as_array_of_tables() {
        for t in aot.iter() {
            out.push(push_one(t, t.span()));
        }
    } else if let Some(arr) = item.as_array() {
        for v in arr.iter() {
            match v.as_inline_table() {
                Some(t) => out.push(push_one(t, v.span())),
                // Kept, so that the next ones keep their index; the rules layer says it is
                // not an object.
                None => out.push(Declared {
                    value: value_to_json(v),
                    location: ctx.at(v.span()),
                    key_locations: BTreeMap::new(),
                }),
            }
        }
    } else {
        errors.push(ConfigError {
            location: ctx.at(item.span()),
            key: key.to_string(),
            message: format!("expected an array of tables ([[{key}]])"),
        });
    }
    (out, errors)
}

/// Records where every key of `table` is, and every element of its arrays, under `prefix`.
fn table_locations(
    ctx: &FileCtx<'_>,
    prefix: &str,
    table: &dyn toml_edit::TableLike,
    out: &mut BTreeMap<String, String>,
) {
    for (k, v) in table.iter() {
        let key = location_path(k);
        let path = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        let span = table.key(k).and_then(|k| k.span()).or_else(|| v.span());
        out.insert(path.clone(), ctx.at(span));
        match v {
            Item::Value(v) => value_locations(ctx, &path, v, out),
            Item::Table(t) => table_locations(ctx, &path, t, out),
            Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    let at = format!("{path}[{i}]");
                    out.insert(at.clone(), ctx.at(t.span()));
                    table_locations(ctx, &at, t, out);
                }
            }
            Item::None => {}
        }
    }
}

fn value_locations(
    ctx: &FileCtx<'_>,
    path: &str,
    value: &toml_edit::Value,
    out: &mut BTreeMap<String, String>,
) {
    match value {
        toml_edit::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                let at = format!("{path}[{i}]");
                out.insert(at.clone(), ctx.at(v.span()));
                value_locations(ctx, &at, v, out);
            }
        }
        toml_edit::Value::InlineTable(t) => table_locations(ctx, path, t, out),
        _ => {}
    }
}

fn item_to_json(item: &Item) -> Value {
    match item {
        Item::None => Value::Null,
        Item::Value(v) => value_to_json(v),
        Item::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.to_string(), item_to_json(v)))
                .collect(),
        ),
        Item::ArrayOfTables(a) => Value::Array(
            a.iter()
                .map(|t| {
                    Value::Object(
                        t.iter()
                            .map(|(k, v)| (k.to_string(), item_to_json(v)))
                            .collect(),
                    )
                })
                .collect(),
        ),
    }
}

fn value_to_json(v: &toml_edit::Value) -> Value {
    use toml_edit::Value as V;
    match v {
        V::String(s) => Value::String(s.value().clone()),
        V::Integer(i) => Value::from(*i.value()),
        V::Float(f) => serde_json::Number::from_f64(*f.value())
            .map(Value::Number)
            .unwrap_or(Value::Null),
        V::Boolean(b) => Value::Bool(*b.value()),
        V::Datetime(d) => Value::String(d.value().to_string()),
        V::Array(a) => Value::Array(a.iter().map(value_to_json).collect()),
        V::InlineTable(t) => Value::Object(
            t.iter()
                .map(|(k, v)| (k.to_string(), value_to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn file_errors(text: &str) -> Vec<ConfigError> {
        let mut cfg = Config::default();
        let mut errors = Vec::new();
        cfg.apply_file(Path::new("c.toml"), text, &mut errors);
        errors
    }

    #[test]
    fn defaults_are_the_contract_defaults() {
        let c = Config::load(&Overrides::default(), &no_env).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8787");
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!(c.max_event_size, 1 << 20);
        assert_eq!(c.retention_days, 30);
        assert_eq!(
            c.sqlite_path().unwrap(),
            PathBuf::from("./data/event-router.db")
        );
        assert!(c.sources["github"].secret.is_none());
    }

    #[test]
    fn dashboard_session_ttl_from_file_and_env() {
        let c = Config::load(&Overrides::default(), &no_env).unwrap();
        assert_eq!(
            c.dashboard_session_ttl,
            std::time::Duration::from_secs(12 * 3600)
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "dashboard_session_ttl_secs = 600\n").unwrap();
        let o = Overrides {
            config: Some(path),
            ..Default::default()
        };
        let c = Config::load(&o, &no_env).unwrap();
        assert_eq!(c.dashboard_session_ttl, std::time::Duration::from_secs(600));
        let env = |k: &str| (k == "DASHBOARD_SESSION_TTL_SECS").then(|| "60".to_string());
        let c = Config::load(&o, &env).unwrap();
        assert_eq!(c.dashboard_session_ttl, std::time::Duration::from_secs(60));
        let errors = file_errors("dashboard_session_ttl_secs = 0\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "dashboard_session_ttl_secs");
        let env = |k: &str| (k == "DASHBOARD_SESSION_TTL_SECS").then(|| "forever".to_string());
        assert!(Config::load(&Overrides::default(), &env).is_err());
    }

    #[test]
    fn connection_limits_from_file_and_env() {
        let ms = std::time::Duration::from_millis;
        let c = Config::load(&Overrides::default(), &no_env).unwrap();
        assert_eq!(c.connections, ConnectionLimits::default());
        assert_eq!(c.connections.header_read_timeout, ms(10_000));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "header_read_timeout_ms = 500\nbody_read_timeout_ms = 600\nkeep_alive_timeout_ms = 700\n\
             max_header_size = 9000\nmax_connections = 50\nmax_connections_per_ip = 0\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(path),
            ..Default::default()
        };
        let c = Config::load(&o, &no_env).unwrap();
        let want = ConnectionLimits {
            header_read_timeout: ms(500),
            body_read_timeout: ms(600),
            keep_alive_timeout: ms(700),
            max_header_size: 9000,
            max_connections: 50,
            max_connections_per_ip: 0,
        };
        assert_eq!(c.connections, want);
        let env = |k: &str| (k == "MAX_CONNECTIONS_PER_IP").then(|| "7".to_string());
        let c = Config::load(&o, &env).unwrap();
        assert_eq!(c.connections.max_connections_per_ip, 7);
        assert_eq!(c.connections.max_connections, 50);
        let errors =
            file_errors("header_read_timeout_ms = 0\nmax_header_size = 100\nmax_connections = 0\n");
        let keys: Vec<_> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "header_read_timeout_ms",
                "max_header_size",
                "max_connections"
            ],
            "{errors:?}"
        );
        assert!(errors[1].location.starts_with("c.toml:2:"), "{errors:?}");
        let env = |k: &str| (k == "KEEP_ALIVE_TIMEOUT_MS").then(|| "soon".to_string());
        assert!(Config::load(&Overrides::default(), &env).is_err());
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:1000\"\nmax_event_size = 100\nretention_days = 7\n",
        )
        .unwrap();
        let env = |k: &str| match k {
            "LISTEN" => Some("127.0.0.1:2000".to_string()),
            "MAX_EVENT_SIZE" => Some("200".to_string()),
            "GITHUB_WEBHOOK_SECRET" => Some("a,b".to_string()),
            _ => None,
        };
        let o = Overrides {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:3000".into()),
            ..Default::default()
        };
        let c = Config::load(&o, &env).unwrap();
        assert_eq!(c.listen.port(), 3000);
        assert_eq!(c.max_event_size, 200);
        assert_eq!(c.retention_days, 7);
        assert_eq!(c.sources["github"].secret, Some(Secret("a,b".into())));
        let o = Overrides {
            config: Some(path),
            ..Default::default()
        };
        assert_eq!(Config::load(&o, &env).unwrap().listen.port(), 2000);
    }

    #[test]
    fn environment_comes_from_the_file_or_the_environment() {
        let mut cfg = Config::default();
        assert_eq!(cfg.environment, None);
        let mut errors = Vec::new();
        cfg.apply_file(
            Path::new("c.toml"),
            "environment = \"staging\"\n",
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(cfg.environment.as_deref(), Some("staging"));
        let env = |k: &str| (k == "ENVIRONMENT").then(|| "production".to_string());
        cfg.apply_env(&env, &mut errors);
        assert_eq!(cfg.environment.as_deref(), Some("production"));
        let errors = file_errors("environment = \"two words\"\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "environment");
        let env = |k: &str| (k == "ENVIRONMENT").then(|| String::from("x").repeat(65));
        assert!(Config::load(&Overrides::default(), &env).is_err());
    }

    #[test]
    fn node_id_comes_from_the_file_or_the_environment() {
        let mut cfg = Config::default();
        assert_eq!(cfg.node_id, None);
        let mut errors = Vec::new();
        cfg.apply_file(Path::new("c.toml"), "node_id = \"web-1\"\n", &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(cfg.node_id.as_deref(), Some("web-1"));
        let env = |k: &str| match k {
            "NODE_ID" => Some("web-2".to_string()),
            "RATE_LEASE_MS" => Some("500".to_string()),
            _ => None,
        };
        assert_eq!(cfg.rate_lease_ms, 10_000);
        cfg.apply_env(&env, &mut errors);
        assert_eq!(cfg.rate_lease_ms, 500);
        assert_eq!(cfg.node_id.as_deref(), Some("web-2"));
        assert_eq!(cfg.store_settings().node_id.as_deref(), Some("web-2"));
        let errors = file_errors("node_id = \"two words\"\n");
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].key, "node_id");
        let env = |k: &str| (k == "NODE_ID").then(|| String::from("x").repeat(65));
        let errors = Config::load(&Overrides::default(), &env).expect_err("too long");
        assert!(errors.0.iter().any(|e| e.key == "NODE_ID"), "{errors:?}");
    }

    #[test]
    fn every_error_has_file_line_and_key() {
        let errors = file_errors(
            "listen = 5\nmax_event_size = -1\nbogus = 1\n[sources.acme]\nscheme = \"nope\"\n[sources.other]\nidentifier_field = \"payload.x\"\n",
        );
        let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 5, "{shown:#?}");
        assert!(
            shown[0].starts_with("c.toml:1:10: listen: expected a string"),
            "{shown:#?}"
        );
        assert!(shown[1].starts_with("c.toml:2:18: max_event_size: -1 is out of range"));
        assert!(shown[2].starts_with("c.toml:3:9: bogus: unknown key"));
        assert!(
            shown
                .iter()
                .any(|s| s.starts_with("c.toml:5:10: sources.acme.scheme: expected one of")),
            "{shown:#?}"
        );
        assert!(
            shown
                .iter()
                .any(|s| s.contains("sources.other.scheme: required for a new source")),
            "{shown:#?}"
        );
    }

    #[test]
    fn syntax_error_points_at_line() {
        let errors = file_errors("listen = \"127.0.0.1:1\"\nmax_event_size = = 3\n");
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].location.starts_with("c.toml:2:"),
            "{:?}",
            errors[0]
        );
    }

    #[test]
    fn sources_can_be_declared_and_changed() {
        let mut cfg = Config::default();
        let mut errors = Vec::new();
        cfg.apply_file(
            Path::new("c.toml"),
            "[sources.acme]\nscheme = \"standard\"\nsecret_env = \"ACME_SECRET\"\nidentifier_field = \"payload.tenant\"\n[sources.github]\nidentifier_field = \"payload.repository.full_name\"\n",
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        cfg.resolve_secrets(&|k| (k == "ACME_SECRET").then(|| "whsec_abc".to_string()));
        let acme = &cfg.sources["acme"];
        assert_eq!(acme.provider.name(), "standard");
        assert_eq!(acme.secret, Some(Secret("whsec_abc".into())));
        assert_eq!(
            cfg.sources["github"].identifier_field.as_deref(),
            Some("payload.repository.full_name")
        );
        assert_eq!(cfg.sources["github"].provider.name(), "github");
    }

    #[test]
    fn recipes_and_public_urls_are_read_and_checked() {
        let mut cfg = Config::default();
        let mut errors = Vec::new();
        cfg.apply_file(
            Path::new("c.toml"),
            r#"[sources.acme]
scheme = "hmac"
secret_env = "ACME_SECRET"
header = "X-Acme-Signature"
algorithm = "sha512"
encoding = "base64"
prefix = "v1="
signed = "{timestamp}.{body}"
timestamp_header = "X-Acme-Timestamp"
tolerance_secs = 120
id_header = "X-Acme-Delivery"
type_path = "payload.event.kind"
public_url = "https://hooks.example.com/webhook/acme"

[sources.tok]
scheme = "token"
header = "X-Token"
type_header = "X-Kind"

[sources.basic]
scheme = "basic"
type_header = "X-Kind"
"#,
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        let acme = &cfg.sources["acme"];
        assert_eq!(acme.provider.name(), "hmac");
        assert_eq!(acme.provider.signature_headers(), &["x-acme-signature"]);
        assert_eq!(
            acme.provider.replay_window(),
            Some(std::time::Duration::from_secs(120))
        );
        assert_eq!(
            acme.public_url.as_deref(),
            Some("https://hooks.example.com/webhook/acme")
        );
        assert_eq!(cfg.sources["tok"].provider.name(), "token");
        assert_eq!(cfg.sources["basic"].provider.name(), "basic");

        let shown: Vec<String> = file_errors(
            "[sources.a]\nscheme = \"hmac\"\ntype_header = \"X\"\n\
             [sources.b]\nscheme = \"github\"\nheader = \"X\"\n\
             [sources.c]\nscheme = \"hmac\"\nheader = \"X\"\ntype_header = \"X\"\nsigned = \"{timestamp}\"\n\
             [sources.d]\nscheme = \"standard\"\npublic_url = \"/relative\"\n",
        )
        .iter()
        .map(|e| format!("{}: {}", e.key, e.message))
        .collect();
        assert_eq!(shown.len(), 4, "{shown:#?}");
        assert!(
            shown[0].starts_with("sources.a.scheme: hmac: header is required"),
            "{shown:#?}"
        );
        assert!(
            shown[1].starts_with("sources.b.header: only for scheme"),
            "{shown:#?}"
        );
        assert!(shown[2].contains("{body}"), "{shown:#?}");
        assert!(
            shown[3].starts_with("sources.d.public_url: expected the absolute URL"),
            "{shown:#?}"
        );
    }

    #[test]
    fn declared_rules_keep_locations() {
        let mut cfg = Config::default();
        let mut errors = Vec::new();
        cfg.apply_file(
            Path::new("c.toml"),
            "[[agents]]\nid = \"a\"\nname = \"A\"\nurl = \"http://x\"\n\n[[agents]]\nid = \"b\"\nheaders = { x = \"1\" }\n",
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(cfg.agents.len(), 2);
        assert_eq!(cfg.agents[0].value["url"], "http://x");
        assert_eq!(cfg.agents[1].value["headers"]["x"], "1");
        assert_eq!(cfg.agents[0].location_of("url"), "c.toml:4:1");
        assert_eq!(cfg.agents[1].location_of("headers.x"), "c.toml:8:13");
        // A field the file does not have points at the nearest enclosing key it has.
        assert_eq!(cfg.agents[1].location_of("headers.y"), "c.toml:8:1");
        assert_eq!(cfg.agents[1].location_of("timeoutMs"), "c.toml:6:1");
        cfg.apply_file(
            Path::new("c.toml"),
            "[[routes]]\nid = \"r\"\ntarget_agents = [\"x\"]\n",
            &mut errors,
        );
        assert_eq!(cfg.routes[0].location_of("targetAgents[0]"), "c.toml:3:18");
        cfg.apply_file(
            Path::new("c.toml"),
            "[[filters]]\nid = \"f\"\nconditions = [\n  { field = \"a\", operator = \"equals\", value = 1 },\n  { field = \"b\", operator = \"nope\", value = 1 },\n]\n",
            &mut errors,
        );
        let f = &cfg.filters[0];
        assert_eq!(f.location_of("conditions[1].operator"), "c.toml:5:18");
        assert_eq!(f.location_of("conditions[1]"), "c.toml:5:3");
        assert_eq!(f.location_of("conditions"), "c.toml:3:1");
        assert_eq!(f.location_of("caseSensitive"), "c.toml:1:1");
    }

    #[test]
    fn security_settings_layer_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "tls_cert = \"/etc/er/cert.pem\"\ntls_key = \"/etc/er/key.pem\"\nencrypt_payloads = true\nextra_ca_certs = \"/etc/er/ca.pem\"\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(path.clone()),
            ..Default::default()
        };
        let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let env = |k: &str| match k {
            "TLS_CERT" => Some("/run/cert.pem".to_string()),
            "ENCRYPT_PAYLOADS" => Some("false".to_string()),
            "ENCRYPTION_KEY" => Some(key.to_string()),
            _ => None,
        };
        let c = Config::load(&o, &env).unwrap();
        assert_eq!(c.tls_cert, Some(PathBuf::from("/run/cert.pem")));
        assert_eq!(c.tls_key, Some(PathBuf::from("/etc/er/key.pem")));
        assert_eq!(c.extra_ca_certs, Some(PathBuf::from("/etc/er/ca.pem")));
        assert!(!c.encrypt_payloads);
        assert!(!format!("{c:?}").contains(key));

        // A certificate without its key, a short key, a bad boolean: each reported.
        let env = |k: &str| match k {
            "TLS_CERT" => Some("/run/cert.pem".to_string()),
            "ENCRYPTION_KEY" => Some("c2hvcnQ=".to_string()),
            "ENCRYPT_PAYLOADS" => Some("maybe".to_string()),
            _ => None,
        };
        let errors = Config::load(&Overrides::default(), &env).unwrap_err().0;
        let shown: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert_eq!(errors.len(), 3, "{shown:#?}");
        assert!(shown.iter().any(|e| e.contains("tls_key")), "{shown:#?}");
        assert!(
            shown
                .iter()
                .any(|e| e.contains("ENCRYPTION_KEY") && e.contains("5 bytes")),
            "{shown:#?}"
        );
        assert!(!shown.iter().any(|e| e.contains("c2hvcnQ")), "{shown:#?}");
        assert!(shown.iter().any(|e| e.contains("ENCRYPT_PAYLOADS")));
        assert!(
            file_errors("encrypt_payloads = \"yes\"\n")[0]
                .message
                .contains("true or false")
        );
    }

    #[test]
    fn secrets_never_debug_print() {
        let s = Secret("hunter2".into());
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
