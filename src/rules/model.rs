//! Wire models of filters, routes and agents (API.md sections 5 and 8).
//!
//! Field names are camelCase on the wire; snake_case aliases are accepted
//! because the TOML config file may use either spelling. Unknown fields are
//! rejected so that a typo (`caseSensitve`) is reported instead of silently
//! ignored. Defaults follow API.md.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;

/// Default server-side agent delivery timeout (API.md section 5).
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
/// Default number of in-flight deliveries per agent (API.md section 5).
pub const DEFAULT_MAX_CONCURRENCY: u32 = 16;

fn default_true() -> bool {
    true
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

fn default_max_concurrency() -> u32 {
    DEFAULT_MAX_CONCURRENCY
}

/// A global filter, or one of a route's `sourceFilters`.
///
/// Inside a route `id` and `name` may be omitted; [`crate::rules::parse_route`]
/// fills them in (`<route id>.sourceFilters.<index>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventFilter {
    #[serde(default)]
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Scope: the event's `source`; absent = any source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Scope: the event's `type`; absent = any type.
    #[serde(default, alias = "event_type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    /// All must hold (AND). Empty = the filter matches every event in scope.
    #[serde(default)]
    pub conditions: Vec<FilterCondition>,
    pub action: FilterAction,
    /// Required when `action` is `transform`, refused otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transformation: Option<EventTransformation>,
    /// Larger = earlier.
    #[serde(default)]
    pub priority: i64,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

/// One condition of a filter: `field operator value`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FilterCondition {
    /// Dot path into the event object (`payload.pull_request.draft`).
    pub field: String,
    pub operator: Operator,
    /// `exists`: a boolean; `in`: an array; `gt`/`lt`: a number or a string;
    /// `regex`: a string pattern; `equals`/`contains`: any JSON value.
    pub value: Value,
    /// Applies to string comparisons only.
    #[serde(default = "default_true", alias = "case_sensitive")]
    pub case_sensitive: bool,
    /// Inverts the final result (also for a missing field).
    #[serde(default)]
    pub negate: bool,
}

/// Comparison operator of a [`FilterCondition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operator {
    Equals,
    Contains,
    Regex,
    Exists,
    Gt,
    Lt,
    In,
}

impl Operator {
    pub const ALL: [Operator; 7] = [
        Operator::Equals,
        Operator::Contains,
        Operator::Regex,
        Operator::Exists,
        Operator::Gt,
        Operator::Lt,
        Operator::In,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Operator::Equals => "equals",
            Operator::Contains => "contains",
            Operator::Regex => "regex",
            Operator::Exists => "exists",
            Operator::Gt => "gt",
            Operator::Lt => "lt",
            Operator::In => "in",
        }
    }
}

/// What a matching filter does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FilterAction {
    Include,
    Exclude,
    Transform,
}

impl FilterAction {
    pub const ALL: [FilterAction; 3] = [
        FilterAction::Include,
        FilterAction::Exclude,
        FilterAction::Transform,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FilterAction::Include => "include",
            FilterAction::Exclude => "exclude",
            FilterAction::Transform => "transform",
        }
    }
}

/// Kind of transformation program. Only jq exists today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransformationType {
    Jq,
}

impl TransformationType {
    pub const ALL: [TransformationType; 1] = [TransformationType::Jq];

    pub fn as_str(self) -> &'static str {
        match self {
            TransformationType::Jq => "jq",
        }
    }
}

/// A jq program run on the event object (API.md section 5, Transformations).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventTransformation {
    #[serde(rename = "type")]
    pub kind: TransformationType,
    pub expression: String,
}

impl EventTransformation {
    pub fn jq(expression: impl Into<String>) -> Self {
        EventTransformation {
            kind: TransformationType::Jq,
            expression: expression.into(),
        }
    }
}

/// Routes processed events to agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventRoute {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Empty = every processed event.
    #[serde(default, alias = "source_filters")]
    pub source_filters: Vec<EventFilter>,
    #[serde(alias = "target_agents")]
    pub target_agents: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transformation: Option<EventTransformation>,
    /// Queue priority of this route's deliveries; larger first.
    #[serde(default)]
    pub priority: i64,
    /// `None` = the server's default policy.
    #[serde(
        default,
        alias = "retry_policy",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_policy: Option<RetryPolicy>,
    /// Deliveries with the same key value go to each agent one at a time, in event-id order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering: Option<RouteOrdering>,
    /// A delivery waits a window; a newer event with the same key value supersedes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coalesce: Option<RouteCoalesce>,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

/// A route's `ordering` (docs/delivery.md, "Ordered and coalesced delivery").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteOrdering {
    /// A dot path into the event, as in filter conditions.
    pub key: String,
    #[serde(default, alias = "on_dead")]
    pub on_dead: OnDead,
}

/// What a key does after one of its deliveries is dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDead {
    /// The key moves on.
    #[default]
    Skip,
    /// The key's later deliveries wait until the dead letter is retried and delivered, or
    /// deleted.
    Hold,
}

/// A route's `coalesce`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteCoalesce {
    /// A dot path into the event, as in filter conditions.
    pub key: String,
    /// How long a delivery waits for a newer event of its key (ms).
    #[serde(alias = "window_ms")]
    pub window_ms: u64,
    /// The longest a burst delays its delivery, from its first superseded event (ms).
    #[serde(alias = "max_wait_ms")]
    pub max_wait_ms: u64,
}

/// How failed deliveries of a route are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total attempts, the first included.
    #[serde(alias = "max_attempts")]
    pub max_attempts: u32,
    #[serde(alias = "backoff_strategy")]
    pub backoff_strategy: BackoffStrategy,
    /// Milliseconds.
    #[serde(alias = "base_delay")]
    pub base_delay: u64,
    /// Milliseconds.
    #[serde(alias = "max_delay")]
    pub max_delay: u64,
    /// Full jitter within the computed delay.
    #[serde(default)]
    pub jitter: bool,
}

/// Growth of the delay between attempts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackoffStrategy {
    Linear,
    Exponential,
    Fixed,
}

impl BackoffStrategy {
    pub const ALL: [BackoffStrategy; 3] = [
        BackoffStrategy::Linear,
        BackoffStrategy::Exponential,
        BackoffStrategy::Fixed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BackoffStrategy::Linear => "linear",
            BackoffStrategy::Exponential => "exponential",
            BackoffStrategy::Fixed => "fixed",
        }
    }
}

/// A consumer of events: pushed to `url`, or streamed.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Agent {
    pub id: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Push deliveries here; absent = stream only (or pull, with `mode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// How deliveries reach the agent: pushed to `url`, or leased to consumers that poll
    /// (docs/consumers.md). Absent: push when there is a `url`, else stream only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<AgentMode>,
    /// Standard Webhooks signing secret; the server generates one if absent.
    /// Returned to the admin (agents need it to verify signatures).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Write-only: this agent's own stream/post key. Never serialized.
    #[serde(default, alias = "api_key", skip_serializing)]
    pub api_key: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_timeout_ms", alias = "timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "default_max_concurrency", alias = "max_concurrency")]
    pub max_concurrency: u32,
    /// Outbound pacing; deliveries wait, nothing is dropped.
    #[serde(default, alias = "rate_limit", skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<AgentRateLimit>,
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Circuit breaker settings; unset ones take the server's defaults.
    #[serde(
        default,
        alias = "circuit_breaker",
        skip_serializing_if = "Option::is_none"
    )]
    pub circuit_breaker: Option<CircuitBreaker>,
}

/// An agent's circuit breaker (docs/delivery.md "Agent health"): open after
/// `failureThreshold` consecutive failed attempts, or when at least `failureRatio` of the
/// attempts of the last `windowMs` failed (with at least 10 of them); while open no attempt
/// is made; after a cooldown (from `cooldownMs`, doubling after each failed probe up to
/// `maxCooldownMs`, never shorter than the agent's `Retry-After`) one probe attempt decides.
/// `disableAfterMs`: an agent failing without a success that long is disabled (0: never).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    #[serde(
        default,
        alias = "failure_threshold",
        skip_serializing_if = "Option::is_none"
    )]
    pub failure_threshold: Option<u32>,
    #[serde(
        default,
        alias = "failure_ratio",
        skip_serializing_if = "Option::is_none"
    )]
    pub failure_ratio: Option<f64>,
    #[serde(default, alias = "window_ms", skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    #[serde(
        default,
        alias = "cooldown_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub cooldown_ms: Option<u64>,
    #[serde(
        default,
        alias = "max_cooldown_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub max_cooldown_ms: Option<u64>,
    #[serde(
        default,
        alias = "disable_after_ms",
        skip_serializing_if = "Option::is_none"
    )]
    pub disable_after_ms: Option<u64>,
}

// Hand-written so that the secret and the API key never reach a log line
// through `{:?}`.
impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("description", &self.description)
            .field("url", &self.url)
            .field("mode", &self.mode)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("timeout_ms", &self.timeout_ms)
            .field("max_concurrency", &self.max_concurrency)
            .field("rate_limit", &self.rate_limit)
            .field("enabled", &self.enabled)
            .finish()
    }
}

/// How an agent's deliveries reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentMode {
    /// Posted to the agent's `url`.
    Push,
    /// Leased to the agent's consumers (`GET /agents/{id}/deliveries`).
    Pull,
}

impl Agent {
    /// The agent's deliveries are leased to consumers rather than posted.
    pub fn is_pull(&self) -> bool {
        self.mode == Some(AgentMode::Pull)
    }
}

/// `limit` deliveries per `window` milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AgentRateLimit {
    pub limit: u32,
    /// Milliseconds.
    pub window: u64,
}

// The string enums below have hand-written serde impls so that a bad value is
// reported the way the admin API promises: `unknown operator "startsWith"
// (expected one of equals, contains, ...)`, not serde's generic wording.
macro_rules! string_enum {
    ($ty:ident, $what:literal) => {
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl de::Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        write!(f, "a string, one of {}", $ty::expected())
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$ty, E> {
                        $ty::ALL
                            .into_iter()
                            .find(|x| x.as_str() == v)
                            .ok_or_else(|| {
                                E::custom(format_args!(
                                    concat!("unknown ", $what, " {:?} (expected {})"),
                                    v,
                                    $ty::expected()
                                ))
                            })
                    }
                }
                d.deserialize_str(V)
            }
        }

        impl $ty {
            fn expected() -> String {
                let names: Vec<&str> = $ty::ALL.iter().map(|x| x.as_str()).collect();
                if names.len() == 1 {
                    names[0].to_owned()
                } else {
                    format!("one of {}", names.join(", "))
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(Operator, "operator");
string_enum!(FilterAction, "action");
string_enum!(TransformationType, "transformation type");
string_enum!(BackoffStrategy, "backoff strategy");
