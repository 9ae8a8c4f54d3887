//! Parsing and validation of filters, routes and agents, with errors that
//! name the field and the problem (API.md section 7, admin validation).
//!
//! `parse_*` read JSON bytes (admin API bodies), `*_from_value` read a
//! `serde_json::Value` (the config loader converts TOML to one). Both
//! deserialize with the field path tracked, fill in defaults, then validate
//! and return the first problem. `check_*` return every problem of an
//! already-deserialized object (for `check-config`).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::hash::BuildHasher;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::condition::Condition;
use super::model::{
    Agent, AgentMode, CircuitBreaker, EventFilter, EventRoute, EventTransformation, FilterAction,
    RetryPolicy,
};
use super::path::FieldPath;
use super::transform;

/// A problem with one field of a filter, route or agent.
///
/// `field` is a path into the submitted object (`conditions[1].operator`,
/// `sourceFilters[0].conditions[0].value`, `targetAgents[2]`); it is empty
/// when the body as a whole is at fault (not JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    pub field: String,
    pub message: String,
    /// Line and column (1-based) in the JSON body, for a syntax error or a value of the wrong
    /// type in a body read from bytes; `None` for problems of meaning (a bad regex).
    pub position: Option<(usize, usize)>,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            message: message.into(),
            position: None,
        }
    }

    fn at(mut self, e: &serde_json::Error) -> Self {
        if e.line() > 0 {
            // serde_json counts column 0 for the end of the body just after a line break.
            self.position = Some((e.line(), e.column().max(1)));
        }
        self
    }

    /// Moves the error under `prefix`: `value` under `conditions[1]` is
    /// `conditions[1].value`.
    pub fn under(mut self, prefix: &str) -> Self {
        self.field = join_field(prefix, &self.field);
        self
    }
}

fn join_field(prefix: &str, field: &str) -> String {
    if prefix.is_empty() {
        field.to_owned()
    } else if field.is_empty() {
        prefix.to_owned()
    } else if field.starts_with('[') {
        format!("{prefix}{field}")
    } else {
        format!("{prefix}.{field}")
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

impl std::error::Error for ValidationError {}

/// Longest id accepted (ids appear in URLs, logs and metrics labels).
pub const MAX_ID_LEN: usize = 128;
/// Upper bound of `maxAttempts`.
pub const MAX_RETRY_ATTEMPTS: u32 = 100;
/// Upper bound of `maxDelay` (7 days, in ms): beyond the usual retention
/// a retry could outlive its event.
pub const MAX_RETRY_DELAY_MS: u64 = 7 * 24 * 60 * 60 * 1000;
const MAX_NAME_CHARS: usize = 256;
const MAX_DESCRIPTION_CHARS: usize = 4096;

/// Headers the delivery layer sets itself; an agent may not override them.
const RESERVED_HEADERS: [&str; 11] = [
    "content-type",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-event-source",
    "x-event-type",
    "x-delivery-attempt",
];

/// The set of configured agent ids a route may target.
pub trait KnownAgents {
    fn knows_agent(&self, id: &str) -> bool;
}

impl<S: BuildHasher> KnownAgents for HashSet<String, S> {
    fn knows_agent(&self, id: &str) -> bool {
        self.contains(id)
    }
}

impl<S: BuildHasher> KnownAgents for HashSet<&str, S> {
    fn knows_agent(&self, id: &str) -> bool {
        self.contains(id)
    }
}

impl KnownAgents for BTreeSet<String> {
    fn knows_agent(&self, id: &str) -> bool {
        self.contains(id)
    }
}

impl<V, S: BuildHasher> KnownAgents for HashMap<String, V, S> {
    fn knows_agent(&self, id: &str) -> bool {
        self.contains_key(id)
    }
}

impl<V> KnownAgents for BTreeMap<String, V> {
    fn knows_agent(&self, id: &str) -> bool {
        self.contains_key(id)
    }
}

impl KnownAgents for [Agent] {
    fn knows_agent(&self, id: &str) -> bool {
        self.iter().any(|a| a.id == id)
    }
}

impl KnownAgents for Vec<Agent> {
    fn knows_agent(&self, id: &str) -> bool {
        self.as_slice().knows_agent(id)
    }
}

impl KnownAgents for [String] {
    fn knows_agent(&self, id: &str) -> bool {
        self.iter().any(|a| a == id)
    }
}

impl KnownAgents for Vec<String> {
    fn knows_agent(&self, id: &str) -> bool {
        self.as_slice().knows_agent(id)
    }
}

impl KnownAgents for [&str] {
    fn knows_agent(&self, id: &str) -> bool {
        self.contains(&id)
    }
}

/// Parses and validates a global filter from a JSON body.
pub fn parse_filter(bytes: &[u8]) -> Result<EventFilter, ValidationError> {
    finish_filter(from_slice(bytes)?)
}

/// Parses a global filter from a JSON body, with every problem of its meaning. A body that
/// cannot be read into a filter at all (syntax, a value of the wrong type) is one problem.
pub fn parse_filter_all(bytes: &[u8]) -> Result<EventFilter, Vec<ValidationError>> {
    let filter: EventFilter = from_slice(bytes).map_err(|e| vec![e])?;
    none_or(check_filter(&filter)).map(|()| filter)
}

/// Parses a route from a JSON body, with every problem of its meaning (see
/// [`parse_filter_all`]).
pub fn parse_route_all<K: KnownAgents + ?Sized>(
    bytes: &[u8],
    known_agents: &K,
) -> Result<EventRoute, Vec<ValidationError>> {
    let mut route: EventRoute = from_slice(bytes).map_err(|e| vec![e])?;
    none_or(check_route(&route, known_agents))?;
    fill_route_defaults(&mut route);
    Ok(route)
}

/// Parses an agent from a JSON body, with every problem of its meaning (see
/// [`parse_filter_all`]).
pub fn parse_agent_all(bytes: &[u8]) -> Result<Agent, Vec<ValidationError>> {
    let agent: Agent = from_slice(bytes).map_err(|e| vec![e])?;
    none_or(check_agent(&agent)).map(|()| agent)
}

fn none_or(problems: Vec<ValidationError>) -> Result<(), Vec<ValidationError>> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Parses and validates a global filter from a JSON value (config file).
pub fn filter_from_value(value: Value) -> Result<EventFilter, ValidationError> {
    finish_filter(from_value(value)?)
}

/// Parses and validates a route from a JSON body; every target agent must
/// be in `known_agents`.
pub fn parse_route<K: KnownAgents + ?Sized>(
    bytes: &[u8],
    known_agents: &K,
) -> Result<EventRoute, ValidationError> {
    finish_route(from_slice(bytes)?, known_agents)
}

/// Parses and validates a route from a JSON value (config file).
pub fn route_from_value<K: KnownAgents + ?Sized>(
    value: Value,
    known_agents: &K,
) -> Result<EventRoute, ValidationError> {
    finish_route(from_value(value)?, known_agents)
}

/// Parses and validates an agent from a JSON body.
pub fn parse_agent(bytes: &[u8]) -> Result<Agent, ValidationError> {
    finish_agent(from_slice(bytes)?)
}

/// Parses and validates an agent from a JSON value (config file).
pub fn agent_from_value(value: Value) -> Result<Agent, ValidationError> {
    finish_agent(from_value(value)?)
}

fn finish_filter(filter: EventFilter) -> Result<EventFilter, ValidationError> {
    first(check_filter(&filter)).map(|()| filter)
}

fn finish_route<K: KnownAgents + ?Sized>(
    mut route: EventRoute,
    known_agents: &K,
) -> Result<EventRoute, ValidationError> {
    // Ids are checked on what the client sent, before defaults fill gaps.
    first(check_route(&route, known_agents))?;
    fill_route_defaults(&mut route);
    Ok(route)
}

fn finish_agent(agent: Agent) -> Result<Agent, ValidationError> {
    first(check_agent(&agent)).map(|()| agent)
}

fn first(problems: Vec<ValidationError>) -> Result<(), ValidationError> {
    match problems.into_iter().next() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Gives each of a route's source filters without an id the id
/// `<route id>.sourceFilters.<index>`, and a name equal to its id when it
/// has none.
pub fn fill_route_defaults(route: &mut EventRoute) {
    for (i, f) in route.source_filters.iter_mut().enumerate() {
        if f.id.is_empty() {
            f.id = format!("{}.sourceFilters.{i}", route.id);
        }
        if f.name.is_empty() {
            f.name = f.id.clone();
        }
    }
}

/// The first problem of a global filter, if any.
pub fn validate_filter(filter: &EventFilter) -> Result<(), ValidationError> {
    first(check_filter(filter))
}

/// The first problem of a route, if any.
pub fn validate_route<K: KnownAgents + ?Sized>(
    route: &EventRoute,
    known_agents: &K,
) -> Result<(), ValidationError> {
    first(check_route(route, known_agents))
}

/// The first problem of an agent, if any.
pub fn validate_agent(agent: &Agent) -> Result<(), ValidationError> {
    first(check_agent(agent))
}

/// Every problem of a global filter.
pub fn check_filter(filter: &EventFilter) -> Vec<ValidationError> {
    let mut out = Vec::new();
    filter_problems(filter, false, &mut out);
    out
}

/// Every problem of a route.
pub fn check_route<K: KnownAgents + ?Sized>(
    route: &EventRoute,
    known_agents: &K,
) -> Vec<ValidationError> {
    let mut out = Vec::new();
    check_id(&route.id, &mut out);
    check_name(&route.name, &mut out);
    check_description(route.description.as_deref(), &mut out);
    for (i, f) in route.source_filters.iter().enumerate() {
        let mut inner = Vec::new();
        filter_problems(f, true, &mut inner);
        let prefix = format!("sourceFilters[{i}]");
        out.extend(inner.into_iter().map(|e| e.under(&prefix)));
    }
    if route.target_agents.is_empty() {
        out.push(ValidationError::new(
            "targetAgents",
            "at least one agent is required",
        ));
    }
    for (i, agent) in route.target_agents.iter().enumerate() {
        if !known_agents.knows_agent(agent) {
            out.push(ValidationError::new(
                format!("targetAgents[{i}]"),
                format!("unknown agent {agent:?}"),
            ));
        }
    }
    if let Some(t) = &route.transformation {
        check_transformation(t, &mut out);
    }
    if let Some(policy) = &route.retry_policy {
        out.extend(
            retry_problems(policy)
                .into_iter()
                .map(|e| e.under("retryPolicy")),
        );
    }
    if let Some(o) = &route.ordering
        && let Err(m) = FieldPath::parse(&o.key)
    {
        out.push(ValidationError::new("ordering.key", m));
    }
    if let Some(c) = &route.coalesce {
        if let Err(m) = FieldPath::parse(&c.key) {
            out.push(ValidationError::new("coalesce.key", m));
        }
        if !(1..=MAX_COALESCE_MS).contains(&c.window_ms) {
            out.push(ValidationError::new(
                "coalesce.windowMs",
                format!("must be between 1 and {MAX_COALESCE_MS} (ms)"),
            ));
        }
        if c.max_wait_ms < c.window_ms || c.max_wait_ms > MAX_COALESCE_MS {
            out.push(ValidationError::new(
                "coalesce.maxWaitMs",
                format!("must be at least windowMs and at most {MAX_COALESCE_MS} (ms)"),
            ));
        }
    }
    out
}

/// The longest a coalescing window or wait may be: a day.
pub const MAX_COALESCE_MS: u64 = 86_400_000;

/// Every problem of an agent.
pub fn check_agent(agent: &Agent) -> Vec<ValidationError> {
    let mut out = Vec::new();
    check_id(&agent.id, &mut out);
    check_name(&agent.name, &mut out);
    check_description(agent.description.as_deref(), &mut out);
    if let Some(url) = &agent.url
        && let Err(m) = check_http_url(url)
    {
        out.push(ValidationError::new("url", m));
    }
    match (agent.mode, &agent.url) {
        (Some(AgentMode::Push), None) => {
            out.push(ValidationError::new("url", "a push agent needs a url"));
        }
        (Some(AgentMode::Pull), Some(_)) => out.push(ValidationError::new(
            "mode",
            "a pull agent has no url: its consumers poll for deliveries",
        )),
        _ => {}
    }
    if let Some(secret) = &agent.secret
        && let Err(m) = check_token(secret)
    {
        out.push(ValidationError::new("secret", m));
    }
    if let Some(key) = &agent.api_key
        && let Err(m) = check_token(key)
    {
        out.push(ValidationError::new("apiKey", m));
    }
    for (name, value) in &agent.headers {
        let field = format!("headers.{name}");
        if let Err(m) = check_header_name(name) {
            out.push(ValidationError::new(field, m));
        } else if let Err(m) = check_header_value(value) {
            out.push(ValidationError::new(field, m));
        }
    }
    if agent.timeout_ms == 0 {
        out.push(ValidationError::new("timeoutMs", "must be greater than 0"));
    }
    if agent.max_concurrency == 0 {
        out.push(ValidationError::new(
            "maxConcurrency",
            "must be greater than 0",
        ));
    }
    if let Some(cb) = &agent.circuit_breaker {
        out.extend(circuit_breaker_problems(cb));
    }
    if let Some(limit) = &agent.rate_limit {
        if limit.limit == 0 {
            out.push(ValidationError::new(
                "rateLimit.limit",
                "must be greater than 0",
            ));
        }
        if limit.window == 0 {
            out.push(ValidationError::new(
                "rateLimit.window",
                "must be greater than 0 (ms)",
            ));
        }
    }
    out
}

/// Longest cooldown and auto-disable threshold accepted, in ms (a year).
const MAX_BREAKER_MS: u64 = 365 * 86_400_000;

/// Sanity of an agent's circuit breaker settings; fields are relative to the agent.
pub fn circuit_breaker_problems(cb: &CircuitBreaker) -> Vec<ValidationError> {
    let mut out = Vec::new();
    let field = |f: &str| format!("circuitBreaker.{f}");
    if let Some(n) = cb.failure_threshold
        && !(1..=1_000_000).contains(&n)
    {
        out.push(ValidationError::new(
            field("failureThreshold"),
            "must be from 1 to 1000000",
        ));
    }
    if let Some(r) = cb.failure_ratio
        && !(r > 0.0 && r <= 1.0)
    {
        out.push(ValidationError::new(
            field("failureRatio"),
            "must be greater than 0 and at most 1",
        ));
    }
    for (name, v, min) in [
        ("windowMs", cb.window_ms, 1),
        ("cooldownMs", cb.cooldown_ms, 1),
        ("maxCooldownMs", cb.max_cooldown_ms, 1),
        ("disableAfterMs", cb.disable_after_ms, 0),
    ] {
        if let Some(v) = v
            && !(min..=MAX_BREAKER_MS).contains(&v)
        {
            out.push(ValidationError::new(
                field(name),
                format!("must be from {min} to {MAX_BREAKER_MS} (ms)"),
            ));
        }
    }
    if let (Some(c), Some(m)) = (cb.cooldown_ms, cb.max_cooldown_ms)
        && m < c
    {
        out.push(ValidationError::new(
            field("maxCooldownMs"),
            "must be at least cooldownMs",
        ));
    }
    out
}

/// Sanity of a retry policy; fields are relative to the policy.
pub fn retry_problems(p: &RetryPolicy) -> Vec<ValidationError> {
    let mut out = Vec::new();
    if p.max_attempts == 0 {
        out.push(ValidationError::new(
            "maxAttempts",
            "must be at least 1 (it counts the first attempt)",
        ));
    } else if p.max_attempts > MAX_RETRY_ATTEMPTS {
        out.push(ValidationError::new(
            "maxAttempts",
            format!("must be at most {MAX_RETRY_ATTEMPTS}"),
        ));
    }
    if p.max_delay > MAX_RETRY_DELAY_MS {
        out.push(ValidationError::new(
            "maxDelay",
            format!("must be at most {MAX_RETRY_DELAY_MS} ms (7 days)"),
        ));
    }
    if p.base_delay > p.max_delay {
        out.push(ValidationError::new(
            "baseDelay",
            format!(
                "must not exceed maxDelay ({} > {})",
                p.base_delay, p.max_delay
            ),
        ));
    }
    out
}

fn filter_problems(f: &EventFilter, in_route: bool, out: &mut Vec<ValidationError>) {
    // Inside a route, id and name may be omitted (defaults are filled in).
    if !in_route || !f.id.is_empty() {
        check_id(&f.id, out);
    }
    if !in_route || !f.name.is_empty() {
        check_name(&f.name, out);
    }
    check_description(f.description.as_deref(), out);
    for (field, scope) in [("source", &f.source), ("eventType", &f.event_type)] {
        if scope.as_deref().is_some_and(|s| s.trim().is_empty()) {
            out.push(ValidationError::new(
                field,
                "must not be empty (omit it to match any)",
            ));
        }
    }
    for (i, c) in f.conditions.iter().enumerate() {
        if let Err(e) = Condition::compile(c) {
            out.push(e.under(&format!("conditions[{i}]")));
        }
    }
    match (&f.action, &f.transformation) {
        (FilterAction::Transform, None) => out.push(ValidationError::new(
            "transformation",
            "required when action is \"transform\"",
        )),
        (FilterAction::Transform, Some(t)) => check_transformation(t, out),
        (action, Some(_)) => out.push(ValidationError::new(
            "transformation",
            format!("only allowed when action is \"transform\" (action is \"{action}\")"),
        )),
        (_, None) => {}
    }
}

fn check_transformation(t: &EventTransformation, out: &mut Vec<ValidationError>) {
    if let Err(e) = transform::compile(&t.expression) {
        out.push(ValidationError::new(
            "transformation.expression",
            e.to_string(),
        ));
    }
}

/// `id`: 1 to 128 characters of `A-Z a-z 0-9 _ . : -`.
pub fn check_id(id: &str, out: &mut Vec<ValidationError>) {
    if id.is_empty() {
        out.push(ValidationError::new("id", "is required"));
    } else if id.len() > MAX_ID_LEN {
        out.push(ValidationError::new(
            "id",
            format!("must be at most {MAX_ID_LEN} characters"),
        ));
    } else if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-')))
    {
        out.push(ValidationError::new(
            "id",
            format!("invalid character {c:?} (allowed: A-Z a-z 0-9 _ . : -)"),
        ));
    }
}

fn check_name(name: &str, out: &mut Vec<ValidationError>) {
    if name.trim().is_empty() {
        out.push(ValidationError::new("name", "is required"));
    } else if name.chars().count() > MAX_NAME_CHARS {
        out.push(ValidationError::new(
            "name",
            format!("must be at most {MAX_NAME_CHARS} characters"),
        ));
    }
}

fn check_description(description: Option<&str>, out: &mut Vec<ValidationError>) {
    if description.is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_CHARS) {
        out.push(ValidationError::new(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        ));
    }
}

/// An absolute `http://` or `https://` URL with a host.
fn check_http_url(url: &str) -> Result<(), String> {
    let rest = if let Some(r) = url.strip_prefix("https://") {
        r
    } else if let Some(r) = url.strip_prefix("http://") {
        r
    } else {
        return Err(format!("must be an http:// or https:// URL, got {url:?}"));
    };
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain spaces or control characters".into());
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = if host_port.starts_with('[') {
        // IPv6 literal: `[::1]:8080`
        host_port
            .split(']')
            .next()
            .map(|h| h.trim_start_matches('['))
    } else {
        host_port.split(':').next()
    };
    if host.is_none_or(str::is_empty) {
        return Err(format!("has no host: {url:?}"));
    }
    if !host_port.starts_with('[')
        && let Some((_, port)) = host_port.split_once(':')
        && port.parse::<u16>().is_err()
    {
        return Err(format!("has an invalid port: {url:?}"));
    }
    Ok(())
}

/// Secrets and keys: non-empty, no whitespace or control characters.
fn check_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        Err("must not be empty (omit it instead)".into())
    } else if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("must not contain whitespace or control characters".into())
    } else {
        Ok(())
    }
}

/// RFC 9110 field name: one or more `tchar`.
fn check_header_name(name: &str) -> Result<(), String> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(tchar) {
        return Err(format!("invalid header name {name:?}"));
    }
    let lower = name.to_ascii_lowercase();
    if RESERVED_HEADERS.contains(&lower.as_str()) {
        return Err(format!(
            "header {name:?} is set by the router and cannot be overridden"
        ));
    }
    Ok(())
}

/// Visible ASCII, spaces and tabs (what HTTP clients accept from a string).
fn check_header_value(value: &str) -> Result<(), String> {
    if value
        .bytes()
        .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        Ok(())
    } else {
        Err("header value must be visible ASCII (no line breaks or control characters)".into())
    }
}

// serde also accepts a struct written as an array of its fields; a body
// must be an object.
fn not_object() -> ValidationError {
    ValidationError::new("", "must be a JSON object")
}

fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ValidationError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first.is_some_and(|b| *b != b'{') {
        return Err(not_object());
    }
    // Syntax first: a body cut short or with trailing text is that, whatever its fields say.
    serde_json::from_slice::<serde::de::IgnoredAny>(bytes).map_err(|e| syntax_error(&e))?;
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(serde_error)?;
    de.end().map_err(|e| syntax_error(&e))?;
    Ok(value)
}

fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ValidationError> {
    if !value.is_object() {
        return Err(not_object());
    }
    serde_path_to_error::deserialize(value).map_err(serde_error)
}

/// Turns a deserialization error into a field + problem, in the words of
/// the admin API: `conditions[1].operator: unknown operator ...`,
/// `name: is required`, `priorty: unknown field ...`.
fn serde_error(e: serde_path_to_error::Error<serde_json::Error>) -> ValidationError {
    let path = e.path().to_string();
    // `?`: a place serde_path_to_error could not name (inside a map key).
    let path = if path == "." || path == "?" {
        String::new()
    } else {
        path
    };
    let inner = e.into_inner();
    if inner.is_syntax() || inner.is_eof() {
        return syntax_error(&inner);
    }
    serde_problem(&path, &inner).at(&inner)
}

/// A body that is not JSON: the whole body is at fault, at a line and column.
fn syntax_error(e: &serde_json::Error) -> ValidationError {
    ValidationError::new("", format!("invalid JSON: {}", without_position(e))).at(e)
}

/// serde_json's message without its trailing ` at line L column C` (the position is kept
/// apart, in [`ValidationError::position`]).
pub fn without_position(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match message.strip_suffix(&suffix) {
        Some(stripped) if e.line() > 0 => stripped.to_owned(),
        _ => message,
    }
}

fn serde_problem(path: &str, inner: &serde_json::Error) -> ValidationError {
    let path = path.to_owned();
    let message = without_position(inner);
    if let Some(name) = backticked(&message, "missing field `") {
        return ValidationError::new(join_field(&path, &camel(&name)), "is required");
    }
    if let Some(name) = backticked(&message, "duplicate field `") {
        return ValidationError::new(join_field(&path, &name), "appears more than once");
    }
    if let Some(name) = backticked(&message, "unknown field `") {
        let expected: Vec<String> = message
            .split_once("expected ")
            .map(|(_, list)| {
                list.split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        // serde_path_to_error already puts the unknown key on the path.
        let field = if path.ends_with(&name) {
            path
        } else {
            join_field(&path, &name)
        };
        let hint = if expected.is_empty() {
            String::new()
        } else {
            format!(" (expected one of {})", expected.join(", "))
        };
        return ValidationError::new(field, format!("unknown field{hint}"));
    }
    ValidationError::new(path, plain_words(&message))
}

/// serde's message for a value of the wrong type or an unknown variant, in plain words:
/// `invalid type: string "high", expected i64` becomes `must be a whole number (got the text
/// "high")`. Other messages are returned as they are.
pub fn plain_words(message: &str) -> String {
    let rest = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "));
    if let Some((got, want)) = rest.and_then(|r| r.split_once(", expected ")) {
        return format!("must be {} (got {})", plain_want(want), plain_got(got));
    }
    if let Some(rest) = message.strip_prefix("unknown variant `")
        && let Some((got, want)) = rest.split_once("`, expected ")
    {
        let options: Vec<&str> = want.split('`').skip(1).step_by(2).collect();
        return format!("must be one of {} (got \"{got}\")", options.join(", "));
    }
    message.to_string()
}

fn plain_want(want: &str) -> String {
    match want {
        "u8" | "u16" | "u32" | "u64" | "usize" => "a whole number, 0 or more".into(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".into(),
        "f32" | "f64" => "a number".into(),
        "a boolean" => "true or false".into(),
        "a string" | "a borrowed string" => "text".into(),
        "a sequence" => "a list".into(),
        w if w == "a map" || w.starts_with("struct ") => "an object".into(),
        w => w.to_string(),
    }
}

fn plain_got(got: &str) -> String {
    let inner = |s: &str| s.trim_matches('`').to_string();
    if let Some(s) = got.strip_prefix("string ") {
        return format!("the text {s}");
    }
    for prefix in ["integer ", "floating point "] {
        if let Some(n) = got.strip_prefix(prefix) {
            return format!("the number {}", inner(n));
        }
    }
    match got {
        "sequence" => "a list".into(),
        "map" => "an object".into(),
        g => g
            .strip_prefix("boolean ")
            .map_or_else(|| g.to_string(), inner),
    }
}

fn backticked(message: &str, prefix: &str) -> Option<String> {
    let rest = message.strip_prefix(prefix)?;
    Some(rest.split('`').next()?.to_owned())
}

/// Field names in errors use the camelCase wire spelling.
fn camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

impl KnownAgents for super::RuleSet {
    fn knows_agent(&self, id: &str) -> bool {
        self.agent(id).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::model::*;
    use serde_json::json;

    fn agents() -> HashSet<String> {
        ["reviewer", "ctx"].into_iter().map(String::from).collect()
    }

    fn filter_err(v: Value) -> ValidationError {
        let bytes = serde_json::to_vec(&v).unwrap();
        let e = parse_filter(&bytes).unwrap_err();
        assert_eq!(
            same(filter_from_value(v).unwrap_err()),
            same(e.clone()),
            "bytes and value paths agree"
        );
        e
    }

    fn route_err(v: Value) -> ValidationError {
        let bytes = serde_json::to_vec(&v).unwrap();
        let e = parse_route(&bytes, &agents()).unwrap_err();
        assert_eq!(
            same(route_from_value(v, &agents()).unwrap_err()),
            same(e.clone())
        );
        e
    }

    fn agent_err(v: Value) -> ValidationError {
        let bytes = serde_json::to_vec(&v).unwrap();
        let e = parse_agent(&bytes).unwrap_err();
        assert_eq!(same(agent_from_value(v).unwrap_err()), same(e.clone()));
        e
    }

    /// What the bytes and the value paths agree on: only bytes have a line and column.
    fn same(e: ValidationError) -> (String, String) {
        (e.field, e.message)
    }

    fn base_filter() -> Value {
        json!({"id": "f1", "name": "F", "action": "include",
               "conditions": [{"field": "payload.a", "operator": "equals", "value": 1}]})
    }

    fn with(mut base: Value, patch: Value) -> Value {
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                base.as_object_mut().unwrap().remove(k);
            } else {
                base[k] = v.clone();
            }
        }
        base
    }

    fn assert_err(e: ValidationError, field: &str, message_part: &str) {
        assert_eq!(e.field, field, "{e}");
        assert!(e.message.contains(message_part), "{e}");
    }

    #[test]
    fn display() {
        let e = ValidationError::new("conditions[1].operator", "bad");
        assert_eq!(e.to_string(), "conditions[1].operator: bad");
        assert_eq!(ValidationError::new("", "bad").to_string(), "bad");
        assert_eq!(
            ValidationError::new("value", "x")
                .under("conditions[0]")
                .field,
            "conditions[0].value"
        );
        assert_eq!(
            ValidationError::new("[2]", "x").under("targetAgents").field,
            "targetAgents[2]"
        );
    }

    #[test]
    fn filter_defaults_and_aliases() {
        let f = filter_from_value(json!({
            "id": "f", "name": "n", "action": "exclude", "event_type": "push",
            "conditions": [{"field": "x", "operator": "exists", "value": true, "case_sensitive": false}]
        }))
        .unwrap();
        assert_eq!(f.priority, 0);
        assert!(f.enabled);
        assert_eq!(f.event_type.as_deref(), Some("push"));
        assert!(!f.conditions[0].case_sensitive);
        assert!(!f.conditions[0].negate);
        let f = filter_from_value(base_filter()).unwrap();
        assert!(f.conditions[0].case_sensitive);
    }

    #[test]
    fn filter_errors() {
        let cases = [
            (
                with(
                    base_filter(),
                    json!({"conditions": [
                {"field": "a", "operator": "equals", "value": 1},
                {"field": "a", "operator": "startsWith", "value": "x"}]}),
                ),
                "conditions[1].operator",
                "unknown operator \"startsWith\" (expected one of equals, contains, regex, exists, gt, lt, in)",
            ),
            (
                with(
                    base_filter(),
                    json!({"conditions": [{"field": "a", "operator": "regex", "value": "a("}]}),
                ),
                "conditions[0].value",
                "invalid regex: ",
            ),
            (
                with(base_filter(), json!({"action": "transform"})),
                "transformation",
                "required when action is \"transform\"",
            ),
            (
                with(
                    base_filter(),
                    json!({"transformation": {"type": "jq", "expression": "."}}),
                ),
                "transformation",
                "only allowed when action is \"transform\"",
            ),
            (
                with(
                    base_filter(),
                    json!({"action": "transform", "transformation": {"type": "jq", "expression": "{a: .b | }"}}),
                ),
                "transformation.expression",
                "jq compile error at line 1, column 10: ",
            ),
            (
                with(
                    base_filter(),
                    json!({"action": "transform", "transformation": {"type": "js", "expression": "."}}),
                ),
                "transformation.type",
                "unknown transformation type \"js\" (expected jq)",
            ),
            (
                with(base_filter(), json!({"action": "drop"})),
                "action",
                "unknown action \"drop\" (expected one of include, exclude, transform)",
            ),
            (
                with(base_filter(), json!({"id": "bad id"})),
                "id",
                "invalid character ' '",
            ),
            (
                with(base_filter(), json!({"id": "x".repeat(129)})),
                "id",
                "at most 128",
            ),
            (
                with(base_filter(), json!({"id": null})),
                "id",
                "is required",
            ),
            (
                with(base_filter(), json!({"name": null})),
                "name",
                "is required",
            ),
            (
                with(base_filter(), json!({"action": null})),
                "action",
                "is required",
            ),
            (
                with(base_filter(), json!({"source": ""})),
                "source",
                "must not be empty",
            ),
            (
                with(
                    base_filter(),
                    json!({"conditions": [{"field": "a", "operator": "in", "value": 1}]}),
                ),
                "conditions[0].value",
                "in needs an array",
            ),
            (
                with(
                    base_filter(),
                    json!({"conditions": [{"field": "a", "operator": "exists", "value": "yes"}]}),
                ),
                "conditions[0].value",
                "exists needs a boolean",
            ),
            (
                with(
                    base_filter(),
                    json!({"conditions": [{"field": "a", "operator": "gt", "value": true}]}),
                ),
                "conditions[0].value",
                "gt needs a number or a string",
            ),
            (
                with(
                    base_filter(),
                    json!({"conditions": [{"field": "a", "operator": "lt", "value": {}}]}),
                ),
                "conditions[0].value",
                "lt needs a number or a string",
            ),
            (
                with(
                    base_filter(),
                    json!({"conditions": [{"field": "a..b", "operator": "equals", "value": 1}]}),
                ),
                "conditions[0].field",
                "empty",
            ),
            (
                with(
                    base_filter(),
                    json!({"conditions": [{"field": "a", "operator": "equals"}]}),
                ),
                "conditions[0].value",
                "is required",
            ),
            (
                with(
                    base_filter(),
                    json!({"conditions": [{"field": "a", "operator": "equals", "value": 1, "caseSensitve": false}]}),
                ),
                "conditions[0].caseSensitve",
                "unknown field (expected one of field, operator, value, caseSensitive, case_sensitive, negate)",
            ),
            (
                with(base_filter(), json!({"priorty": 3})),
                "priorty",
                "unknown field",
            ),
            (
                with(base_filter(), json!({"priority": "high"})),
                "priority",
                "must be a whole number (got the text \"high\")",
            ),
            (
                with(base_filter(), json!({"enabled": 1})),
                "enabled",
                "must be true or false (got the number 1)",
            ),
        ];
        for (value, field, msg) in cases {
            assert_err(filter_err(value), field, msg);
        }
    }

    #[test]
    fn invalid_json_bodies() {
        let e = parse_filter(b"{\"id\": ").unwrap_err();
        assert_eq!(e.field, "");
        assert!(e.message.starts_with("invalid JSON: "), "{e}");
        let e =
            parse_filter(b"{\"id\":\"a\",\"name\":\"b\",\"action\":\"include\"} x").unwrap_err();
        assert!(
            e.message.starts_with("invalid JSON: trailing characters"),
            "{e}"
        );
        assert_eq!(e.position, Some((1, 42)));
        // A body cut short with a wrong field before the cut is cut short.
        let e = parse_filter(b"{\"id\": 5,\n \"name\": ").unwrap_err();
        assert_eq!((e.field.as_str(), e.position), ("", Some((2, 9))), "{e}");
        // A value of the wrong type: its field, and where it is.
        let e = parse_filter(b"{\"id\": \"f\",\n  \"name\": 5}").unwrap_err();
        assert_eq!(e.field, "name");
        assert_eq!(e.message, "must be text (got the number 5)");
        assert_eq!(e.position, Some((2, 11)));
        let e = parse_filter(b"{\"id\": \"f\", \"id\": \"g\"}").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.message.as_str()),
            ("id", "appears more than once")
        );
        let e = parse_filter(b" []").unwrap_err();
        assert_eq!(e.to_string(), "must be a JSON object");
        assert_eq!(
            filter_from_value(json!([1])).unwrap_err().message,
            "must be a JSON object"
        );
    }

    fn base_route() -> Value {
        json!({"id": "r1", "name": "R", "targetAgents": ["reviewer"]})
    }

    #[test]
    fn route_defaults_and_errors() {
        let r = route_from_value(
            json!({"id": "r1", "name": "R", "target_agents": ["reviewer", "ctx"],
                   "source_filters": [{"action": "include", "source": "github"},
                                      {"id": "mine", "action": "exclude", "conditions": []}],
                   "retry_policy": {"max_attempts": 3, "backoff_strategy": "exponential",
                                    "base_delay": 1000, "max_delay": 60000}}),
            &agents(),
        )
        .unwrap();
        assert_eq!(r.source_filters[0].id, "r1.sourceFilters.0");
        assert_eq!(r.source_filters[0].name, "r1.sourceFilters.0");
        assert_eq!(r.source_filters[1].id, "mine");
        assert_eq!(r.priority, 0);
        assert!(r.enabled);
        assert!(!r.retry_policy.unwrap().jitter);

        let cases = [
            (
                with(base_route(), json!({"targetAgents": ["reviewer", "x"]})),
                "targetAgents[1]",
                "unknown agent \"x\"",
            ),
            (
                with(base_route(), json!({"targetAgents": []})),
                "targetAgents",
                "at least one agent",
            ),
            (
                with(base_route(), json!({"targetAgents": null})),
                "targetAgents",
                "is required",
            ),
            (
                with(
                    base_route(),
                    json!({"sourceFilters": [{"action": "include", "conditions": [
                {"field": "a", "operator": "bogus", "value": 1}]}]}),
                ),
                "sourceFilters[0].conditions[0].operator",
                "unknown operator \"bogus\"",
            ),
            (
                with(
                    base_route(),
                    json!({"sourceFilters": [{"id": "has space", "action": "include"}]}),
                ),
                "sourceFilters[0].id",
                "invalid character",
            ),
            (
                with(
                    base_route(),
                    json!({"transformation": {"type": "jq", "expression": "{a:\n  nosuch}"}}),
                ),
                "transformation.expression",
                "jq compile error at line 2, column 3: undefined filter nosuch/0",
            ),
            (
                with(
                    base_route(),
                    json!({"retryPolicy": {"maxAttempts": 0, "backoffStrategy": "fixed", "baseDelay": 1, "maxDelay": 1}}),
                ),
                "retryPolicy.maxAttempts",
                "at least 1",
            ),
            (
                with(
                    base_route(),
                    json!({"retryPolicy": {"maxAttempts": 101, "backoffStrategy": "fixed", "baseDelay": 1, "maxDelay": 1}}),
                ),
                "retryPolicy.maxAttempts",
                "at most 100",
            ),
            (
                with(
                    base_route(),
                    json!({"retryPolicy": {"maxAttempts": 3, "backoffStrategy": "fixed", "baseDelay": 10, "maxDelay": 1}}),
                ),
                "retryPolicy.baseDelay",
                "must not exceed maxDelay",
            ),
            (
                with(
                    base_route(),
                    json!({"retryPolicy": {"maxAttempts": 3, "backoffStrategy": "fixed", "baseDelay": 1, "maxDelay": 700000000}}),
                ),
                "retryPolicy.maxDelay",
                "at most",
            ),
            (
                with(
                    base_route(),
                    json!({"retryPolicy": {"maxAttempts": 3, "backoffStrategy": "random", "baseDelay": 1, "maxDelay": 1}}),
                ),
                "retryPolicy.backoffStrategy",
                "unknown backoff strategy \"random\" (expected one of linear, exponential, fixed)",
            ),
            (
                with(
                    base_route(),
                    json!({"retryPolicy": {"maxAttempts": -1, "backoffStrategy": "fixed", "baseDelay": 1, "maxDelay": 1}}),
                ),
                "retryPolicy.maxAttempts",
                "must be a whole number, 0 or more (got the number -1)",
            ),
            (
                with(
                    base_route(),
                    json!({"retryPolicy": {"backoffStrategy": "fixed", "baseDelay": 1, "maxDelay": 1}}),
                ),
                "retryPolicy.maxAttempts",
                "is required",
            ),
        ];
        for (value, field, msg) in cases {
            assert_err(route_err(value), field, msg);
        }
    }

    fn base_agent() -> Value {
        json!({"id": "reviewer", "name": "Reviewer", "url": "https://agent.example.com/hook"})
    }

    #[test]
    fn agent_defaults_and_errors() {
        let a = agent_from_value(
            json!({"id": "a", "name": "A", "api_key": "k-123", "timeout_ms": 500,
                                        "rate_limit": {"limit": 5, "window": 1000}}),
        )
        .unwrap();
        assert_eq!(a.timeout_ms, 500);
        assert_eq!(a.max_concurrency, 16);
        assert_eq!(a.api_key.as_deref(), Some("k-123"));
        assert!(a.enabled);
        let a = agent_from_value(base_agent()).unwrap();
        assert_eq!(a.timeout_ms, 10_000);

        for ok in [
            "http://localhost:8080/x",
            "https://[::1]:9000/",
            "http://user@h/p?q#f",
            "https://a.b",
        ] {
            agent_from_value(with(base_agent(), json!({"url": ok})))
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let cases = [
            (
                with(base_agent(), json!({"url": "ftp://x"})),
                "url",
                "http:// or https://",
            ),
            (
                with(base_agent(), json!({"url": "https://"})),
                "url",
                "has no host",
            ),
            (
                with(base_agent(), json!({"url": "https:///path"})),
                "url",
                "has no host",
            ),
            (
                with(base_agent(), json!({"url": "http://h:99999/"})),
                "url",
                "invalid port",
            ),
            (
                with(base_agent(), json!({"url": "http://a b/"})),
                "url",
                "spaces",
            ),
            (
                with(base_agent(), json!({"timeoutMs": 0})),
                "timeoutMs",
                "greater than 0",
            ),
            (
                with(base_agent(), json!({"maxConcurrency": 0})),
                "maxConcurrency",
                "greater than 0",
            ),
            (
                with(base_agent(), json!({"headers": {"X Bad": "v"}})),
                "headers.X Bad",
                "invalid header name",
            ),
            (
                with(base_agent(), json!({"headers": {"X-Ok": "line\nbreak"}})),
                "headers.X-Ok",
                "visible ASCII",
            ),
            (
                with(
                    base_agent(),
                    json!({"headers": {"Webhook-Signature": "v1,x"}}),
                ),
                "headers.Webhook-Signature",
                "cannot be overridden",
            ),
            (
                with(
                    base_agent(),
                    json!({"rateLimit": {"limit": 0, "window": 10}}),
                ),
                "rateLimit.limit",
                "greater than 0",
            ),
            (
                with(
                    base_agent(),
                    json!({"rateLimit": {"limit": 1, "window": 0}}),
                ),
                "rateLimit.window",
                "greater than 0",
            ),
            (
                with(base_agent(), json!({"secret": ""})),
                "secret",
                "must not be empty",
            ),
            (
                with(base_agent(), json!({"apiKey": "a b"})),
                "apiKey",
                "whitespace",
            ),
            (
                with(base_agent(), json!({"id": "a/b"})),
                "id",
                "invalid character '/'",
            ),
            (
                with(base_agent(), json!({"name": "  "})),
                "name",
                "is required",
            ),
            (
                with(base_agent(), json!({"timeoutMs": "fast"})),
                "timeoutMs",
                "must be a whole number, 0 or more (got the text \"fast\")",
            ),
        ];
        for (value, field, msg) in cases {
            assert_err(agent_err(value), field, msg);
        }
    }

    #[test]
    fn check_returns_every_problem() {
        let f: EventFilter = serde_json::from_value(json!({
            "id": "", "name": "", "action": "transform",
            "conditions": [{"field": "", "operator": "regex", "value": "("}]
        }))
        .unwrap();
        let fields: Vec<String> = check_filter(&f).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            ["id", "name", "conditions[0].field", "transformation"]
        );
    }

    #[test]
    fn round_trips() {
        let filter = filter_from_value(json!({
            "id": "exclude-draft-prs", "name": "Exclude Draft PRs", "description": "d",
            "source": "github", "eventType": "pull_request",
            "conditions": [{"field": "payload.pull_request.draft", "operator": "equals", "value": true,
                            "caseSensitive": false, "negate": true}],
            "action": "transform", "transformation": {"type": "jq", "expression": ". + {x: 1}"},
            "priority": -3, "enabled": false
        }))
        .unwrap();
        let json = serde_json::to_value(&filter).unwrap();
        assert_eq!(json["eventType"], "pull_request");
        assert_eq!(json["conditions"][0]["caseSensitive"], false);
        assert_eq!(json["transformation"]["type"], "jq");
        assert_eq!(filter_from_value(json).unwrap(), filter);

        let route = route_from_value(
            json!({"id": "r", "name": "R", "targetAgents": ["ctx"], "priority": 7,
                   "sourceFilters": [{"action": "include", "source": "linear"}],
                   "transformation": {"type": "jq", "expression": "."},
                   "retryPolicy": {"maxAttempts": 5, "backoffStrategy": "linear", "baseDelay": 10, "maxDelay": 100, "jitter": true}}),
            &agents(),
        )
        .unwrap();
        let json = serde_json::to_value(&route).unwrap();
        assert_eq!(json["retryPolicy"]["backoffStrategy"], "linear");
        assert_eq!(json["sourceFilters"][0]["id"], "r.sourceFilters.0");
        assert_eq!(route_from_value(json, &agents()).unwrap(), route);

        let agent = agent_from_value(json!({
            "id": "reviewer", "name": "R", "url": "https://x.test/h", "secret": "whsec_abc",
            "apiKey": "super-secret-key", "headers": {"X-Team": "core"}, "timeoutMs": 2500,
            "maxConcurrency": 4, "rateLimit": {"limit": 10, "window": 1000}, "enabled": false
        }))
        .unwrap();
        let json = serde_json::to_value(&agent).unwrap();
        assert!(json.get("apiKey").is_none(), "apiKey is write-only");
        assert_eq!(json["secret"], "whsec_abc");
        assert_eq!(json["timeoutMs"], 2500);
        assert_eq!(json["rateLimit"]["window"], 1000);
        let back = agent_from_value(json).unwrap();
        assert_eq!(back.api_key, None);
        assert_eq!(
            Agent {
                api_key: Some("super-secret-key".into()),
                ..back
            },
            agent
        );
        assert!(!format!("{agent:?}").contains("super-secret-key"));
        assert!(!format!("{agent:?}").contains("whsec_abc"));
    }
}
