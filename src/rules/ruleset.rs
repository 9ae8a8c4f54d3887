//! The compiled rule set and the evaluation of one event (API.md section 5).
//!
//! Built once per change of filters, routes or agents, then shared read-only
//! (the server keeps it in an `ArcSwap`). Evaluation never allocates when
//! nothing matches: scopes are interned to integers at build time and
//! checked before any condition, conditions walk precompiled paths, and
//! output vectors grow only when something is found.
//!
//! Decisions where the contract is silent:
//! - Global `transform` filters run as a pipeline: each one's scope and
//!   conditions are checked against the event as the previous ones left it.
//!   A run-time failure of one leaves the event as it was before that filter
//!   and the pipeline goes on (reported in [`Evaluation::filter_errors`]):
//!   a broken enrichment must not stop every delivery of every route.
//! - A route's source filter matches when its scope covers the event AND its
//!   conditions hold. So a route whose include filter is scoped to
//!   `github/pull_request` receives nothing else (unlike global include
//!   filters, which only constrain the events in their scope).
//! - A route's matching `transform` source filters, then its own
//!   transformation, run on that route's copy; any failure there fails that
//!   route's deliveries ([`PlannedBody::Failed`]) and nothing else.
//! - Disabled filters (global or inside routes) are ignored as if absent.
//! - Filters of equal priority run in id order, routes of equal priority in
//!   id order, so evaluation is deterministic.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::condition::Condition;
use super::model::{Agent, EventFilter, EventRoute, FilterAction, RetryPolicy};
use super::path::{FieldPath, Memo, PrefixTable};
use super::projection::PayloadPaths;
use super::transform::{self, JqProgram, TransformPool};
use super::validate::ValidationError;

/// Fields a transformation cannot change (API.md section 5).
pub const IMMUTABLE_FIELDS: [&str; 4] = ["id", "source", "deliveryId", "timestamp"];

/// Build options.
#[derive(Debug, Clone)]
pub struct RuleOptions {
    /// Time budget of one transformation run (default 50 ms).
    pub transform_budget: Duration,
    /// Worker threads running transformations (default 2).
    pub transform_workers: usize,
    /// How long a transformation may wait for a free worker before its
    /// delivery fails (default 1 s).
    pub transform_queue_timeout: Duration,
    /// The server's circuit breaker defaults (`circuit_*` in the config), every field set.
    pub circuit_breaker: crate::rules::model::CircuitBreaker,
}

/// The circuit breaker defaults when the config sets none.
pub const DEFAULT_CIRCUIT_BREAKER: crate::rules::model::CircuitBreaker =
    crate::rules::model::CircuitBreaker {
        failure_threshold: Some(10),
        failure_ratio: None,
        window_ms: Some(60_000),
        cooldown_ms: Some(5_000),
        max_cooldown_ms: Some(300_000),
        disable_after_ms: Some(72 * 3_600_000),
    };

impl Default for RuleOptions {
    fn default() -> Self {
        RuleOptions {
            transform_budget: Duration::from_millis(50),
            transform_workers: 2,
            transform_queue_timeout: Duration::from_secs(1),
            circuit_breaker: DEFAULT_CIRCUIT_BREAKER,
        }
    }
}

/// The outcome of evaluating one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The event passed the global filters (`false` = filtered out).
    pub processed: bool,
    /// One per agent, ordered by priority (desc) then agent id.
    pub deliveries: Vec<PlannedDelivery>,
    /// Global transform filters that failed at run time and were skipped;
    /// for the server to log.
    pub filter_errors: Vec<FilterError>,
    /// A global transform filter rewrote the event (so it differs from the archived one).
    pub globally_transformed: bool,
}

impl Evaluation {
    /// At least one agent will receive the event (`routed` of the ingest
    /// response).
    pub fn routed(&self) -> bool {
        !self.deliveries.is_empty()
    }
}

/// Why an event is filtered out, or which routes were checked for it, under a rule set: for an
/// operator reading the archive. Transform filters are not run for it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Explanation {
    /// The exclude filter that drops the event.
    pub excluded_by: Option<Arc<str>>,
    /// Include filters whose scope covers the event, none of which matches it (so it is
    /// dropped).
    pub unmatched_includes: Vec<Arc<str>>,
    /// The enabled routes that can apply to the event's source, each with whether it matches.
    pub routes: Vec<(Arc<str>, bool)>,
}

/// A global transform filter that failed on this event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterError {
    pub filter_id: Arc<str>,
    pub error: String,
}

/// A delivery to create for the event.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedDelivery {
    pub agent_id: Arc<str>,
    pub route_id: Arc<str>,
    /// The route's priority: queue order, larger first.
    pub priority: i64,
    /// The route's policy; `None` = the server's default.
    pub retry: Option<RetryPolicy>,
    pub body: PlannedBody,
    /// The route's ordering and coalescing keys, whose values the caller reads from the event
    /// (from its text when the payload was left unparsed).
    pub keys: Option<Arc<RouteKeys>>,
}

/// A route's `ordering` and `coalesce` paths.
#[derive(Debug, PartialEq)]
pub struct RouteKeys {
    /// The ordering key's path, and whether a dead letter holds the key.
    pub ordering: Option<(FieldPath, bool)>,
    /// The coalescing key's path, window and longest wait (ms).
    pub coalesce: Option<(FieldPath, u64, u64)>,
}

/// What to deliver.
#[derive(Debug, Clone, PartialEq)]
pub enum PlannedBody {
    /// The (globally transformed) event as is.
    Event,
    /// The route's transformed copy of the event.
    Transformed(Value),
    /// The route's transformation failed or ran past its budget: the caller
    /// puts this delivery straight into the dead-letter queue with this
    /// error.
    Failed(String),
}

/// Agents already given a delivery for this event, by index. The first 128
/// live in a word on the stack: no allocation for typical deployments.
#[derive(Default)]
struct AgentSet {
    small: u128,
    large: Vec<u64>,
}

impl AgentSet {
    #[inline]
    fn contains(&self, i: usize) -> bool {
        if i < 128 {
            self.small >> i & 1 == 1
        } else {
            let i = i - 128;
            self.large
                .get(i / 64)
                .is_some_and(|w| w >> (i % 64) & 1 == 1)
        }
    }

    /// Adds `i`; false if it was already there.
    #[inline]
    fn insert(&mut self, i: usize) -> bool {
        if self.contains(i) {
            return false;
        }
        if i < 128 {
            self.small |= 1 << i;
        } else {
            let i = i - 128;
            if self.large.len() <= i / 64 {
                self.large.resize(i / 64 + 1, 0);
            }
            self.large[i / 64] |= 1 << (i % 64);
        }
        true
    }
}

/// Positions (in [`RuleSet`]'s lists) of the rules that can apply to events
/// of one source, in evaluation order.
#[derive(Debug, Default)]
struct SourceIndex {
    excludes: Box<[u32]>,
    includes: Box<[u32]>,
    transforms: Box<[u32]>,
    routes: Box<[u32]>,
    /// Which event types of this source some rule reads the payload of.
    payload: PayloadReaders,
    /// Which event types of this source some condition reads the payload of (jq programs
    /// aside): those a deferred payload is projected for.
    conditions: PayloadReaders,
}

/// The event types for which evaluation may look into `payload`: a condition on a `payload…`
/// path, or a jq program (which sees the whole event).
#[derive(Debug, Default)]
struct PayloadReaders {
    any_type: bool,
    types: Vec<ScopeId>,
}

impl PayloadReaders {
    /// Counts `f` (already known to fit the source) if it reads the payload: with a condition,
    /// or also with its program when `programs`.
    fn add(&mut self, f: &CompiledFilter, programs: bool) {
        let reads =
            (programs && f.program.is_some()) || f.conditions.iter().any(Condition::reads_payload);
        if !reads {
            return;
        }
        match f.event_type {
            None => self.any_type = true,
            Some(t) if !self.types.contains(&t) => self.types.push(t),
            Some(_) => {}
        }
    }

    fn includes(&self, event_type: ScopeId) -> bool {
        self.any_type || self.types.contains(&event_type)
    }
}

impl SourceIndex {
    fn build(source: ScopeId, global: &FilterGroup, all_routes: &[CompiledRoute]) -> Self {
        let fits = |f: &CompiledFilter| f.source.is_none_or(|s| s == source);
        let positions = |list: &[CompiledFilter]| -> Box<[u32]> {
            (0u32..)
                .zip(list)
                .filter(|(_, f)| fits(f))
                .map(|(i, _)| i)
                .collect()
        };
        let routes: Box<[u32]> = (0u32..)
            .zip(all_routes)
            .filter(|(_, r)| r.filters.includes.is_empty() || r.filters.includes.iter().any(fits))
            .map(|(i, _)| i)
            .collect();
        // Filters out of the event's scope are never evaluated, so only those that fit the
        // source (and, per type, the event's type) count. Conservative beyond that: a route's
        // own transformation counts for every type, whatever its include filters.
        let mut payload = PayloadReaders::default();
        let mut conditions = PayloadReaders::default();
        let mut add_group = |g: &FilterGroup, payload: &mut PayloadReaders| {
            for f in g.excludes.iter().chain(&*g.includes).chain(&*g.transforms) {
                if fits(f) {
                    payload.add(f, true);
                    conditions.add(f, false);
                }
            }
        };
        add_group(global, &mut payload);
        for &ri in routes.iter() {
            let route = &all_routes[ri as usize];
            add_group(&route.filters, &mut payload);
            // Ordering and coalescing keys are read from the event's text when its payload
            // is left unparsed: they do not count.
            if route.transformation.is_some() {
                payload.any_type = true;
            }
        }
        SourceIndex {
            excludes: positions(&global.excludes),
            includes: positions(&global.includes),
            transforms: positions(&global.transforms),
            routes,
            payload,
            conditions,
        }
    }
}

/// Interned scope value: index into the rule set's source or type table.
type ScopeId = u32;
/// The event's source or type is not named by any filter.
const UNKNOWN_SCOPE: ScopeId = ScopeId::MAX;

#[derive(Debug, Clone, Copy)]
struct EventScope {
    source: ScopeId,
    event_type: ScopeId,
}

#[derive(Debug)]
struct CompiledFilter {
    id: Arc<str>,
    source: Option<ScopeId>,
    event_type: Option<ScopeId>,
    conditions: Box<[Condition]>,
    program: Option<Arc<JqProgram>>,
}

impl CompiledFilter {
    #[inline]
    fn in_scope(&self, scope: EventScope) -> bool {
        self.source.is_none_or(|s| s == scope.source)
            && self.event_type.is_none_or(|t| t == scope.event_type)
    }

    #[inline]
    fn conditions_hold(&self, memo: &mut Memo<'_, '_>) -> bool {
        self.conditions.iter().all(|c| c.holds_memo(memo))
    }

    #[inline]
    fn matches(&self, memo: &mut Memo<'_, '_>, scope: EventScope) -> bool {
        self.in_scope(scope) && self.conditions_hold(memo)
    }
}

/// Enabled filters by action; transforms in run order.
#[derive(Debug, Default)]
struct FilterGroup {
    excludes: Box<[CompiledFilter]>,
    includes: Box<[CompiledFilter]>,
    transforms: Box<[CompiledFilter]>,
}

#[derive(Debug)]
struct CompiledRoute {
    id: Arc<str>,
    priority: i64,
    retry: Option<RetryPolicy>,
    /// `ordering` and `coalesce`.
    keys: Option<Arc<RouteKeys>>,
    filters: FilterGroup,
    transformation: Option<Arc<JqProgram>>,
    /// Enabled, configured agents, each once.
    agents: Box<[AgentRef]>,
}

#[derive(Debug, Clone)]
struct AgentRef {
    index: usize,
    id: Arc<str>,
}

impl CompiledRoute {
    fn matches(&self, memo: &mut Memo<'_, '_>, scope: EventScope) -> bool {
        let f = &self.filters;
        // Includes first: their scope check rejects most routes for an
        // event without evaluating a single condition.
        (f.includes.is_empty() || f.includes.iter().any(|x| x.matches(memo, scope)))
            && !f.excludes.iter().any(|x| x.matches(memo, scope))
    }

    fn has_transforms(&self) -> bool {
        self.transformation.is_some() || !self.filters.transforms.is_empty()
    }
}

/// Filters, routes and agents compiled for evaluation. Immutable,
/// `Send + Sync`.
pub struct RuleSet {
    filters: FilterGroup,
    /// Enabled routes with at least one deliverable agent, by priority desc
    /// then id.
    routes: Box<[CompiledRoute]>,
    /// Every configured agent, enabled or not.
    agents: HashMap<String, Arc<Agent>>,
    sources: HashMap<Box<str>, ScopeId>,
    types: HashMap<Box<str>, ScopeId>,
    /// Path prefixes shared by the conditions, resolved once per event.
    prefixes: PrefixTable,
    /// Every `payload…` path of the conditions: what a deferred payload is projected to.
    payload_paths: PayloadPaths,
    /// Per interned source, plus a last entry for any other source: the
    /// global filters and routes that can apply, so an event never looks at
    /// rules written for other providers.
    by_source: Box<[SourceIndex]>,
    /// Started only when some filter or route transforms.
    pool: Option<TransformPool>,
    budget: Duration,
}

impl std::fmt::Debug for RuleSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RuleSet")
            .field("filters", &self.filters)
            .field("routes", &self.routes)
            .field("agents", &self.agents.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

struct Builder {
    prefixes: PrefixTable,
    payload_paths: PayloadPaths,
    sources: HashMap<Box<str>, ScopeId>,
    types: HashMap<Box<str>, ScopeId>,
    /// One compiled program per distinct expression.
    programs: HashMap<String, Arc<JqProgram>>,
}

impl Builder {
    fn intern(table: &mut HashMap<Box<str>, ScopeId>, name: &str) -> ScopeId {
        let next = ScopeId::try_from(table.len()).unwrap_or(UNKNOWN_SCOPE - 1);
        *table.entry(name.into()).or_insert(next)
    }

    fn program(&mut self, expression: &str) -> Result<Arc<JqProgram>, ValidationError> {
        if let Some(p) = self.programs.get(expression) {
            return Ok(Arc::clone(p));
        }
        let program = transform::compile(expression)
            .map(Arc::new)
            .map_err(|e| ValidationError::new("transformation.expression", e.to_string()))?;
        self.programs
            .insert(expression.to_owned(), Arc::clone(&program));
        Ok(program)
    }

    fn filter(&mut self, f: &EventFilter) -> Result<CompiledFilter, ValidationError> {
        let conditions = f
            .conditions
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut compiled =
                    Condition::compile(c).map_err(|e| e.under(&format!("conditions[{i}]")))?;
                compiled.link(&mut self.prefixes);
                self.payload_paths.add(compiled.path());
                Ok(compiled)
            })
            .collect::<Result<_, ValidationError>>()?;
        let program = match (f.action, &f.transformation) {
            (FilterAction::Transform, Some(t)) => Some(self.program(&t.expression)?),
            (FilterAction::Transform, None) => {
                return Err(ValidationError::new(
                    "transformation",
                    "required when action is \"transform\"",
                ));
            }
            _ => None,
        };
        Ok(CompiledFilter {
            id: f.id.as_str().into(),
            source: f
                .source
                .as_deref()
                .map(|s| Self::intern(&mut self.sources, s)),
            event_type: f
                .event_type
                .as_deref()
                .map(|t| Self::intern(&mut self.types, t)),
            conditions,
            program,
        })
    }

    fn group<'a>(
        &mut self,
        filters: impl Iterator<Item = (usize, &'a EventFilter)>,
        prefix: &str,
    ) -> Result<FilterGroup, ValidationError> {
        let mut excludes = Vec::new();
        let mut includes = Vec::new();
        let mut transforms = Vec::new();
        for (i, f) in filters {
            if !f.enabled {
                continue;
            }
            let compiled = self.filter(f).map_err(|e| {
                let e = e.under(&format!("{prefix}[{i}]"));
                ValidationError::new(e.field, format!("{} (filter {:?})", e.message, f.id))
            })?;
            match f.action {
                FilterAction::Exclude => excludes.push(compiled),
                FilterAction::Include => includes.push(compiled),
                FilterAction::Transform => transforms.push((f.priority, compiled)),
            }
        }
        transforms.sort_by(|(pa, a), (pb, b)| pb.cmp(pa).then_with(|| a.id.cmp(&b.id)));
        Ok(FilterGroup {
            excludes: excludes.into(),
            includes: includes.into(),
            transforms: transforms.into_iter().map(|(_, f)| f).collect(),
        })
    }
}

fn duplicate<'a>(ids: impl Iterator<Item = &'a str>) -> Option<(usize, &'a str)> {
    let mut seen = std::collections::HashSet::new();
    ids.enumerate().find(|(_, id)| !seen.insert(*id))
}

impl RuleSet {
    /// A rule set with no filters, routes or agents: every event is
    /// processed and routed nowhere.
    pub fn empty() -> Self {
        RuleSet {
            filters: FilterGroup::default(),
            routes: Box::new([]),
            agents: HashMap::new(),
            sources: HashMap::new(),
            types: HashMap::new(),
            prefixes: PrefixTable::default(),
            payload_paths: PayloadPaths::default(),
            by_source: Box::new([SourceIndex::default()]),
            pool: None,
            budget: RuleOptions::default().transform_budget,
        }
    }

    /// Compiles everything (paths, regexes, jq programs). Filters, routes and
    /// agents are assumed validated, but compile errors still surface, as do
    /// duplicate ids. Routes may name unknown or disabled agents: those get
    /// no deliveries.
    pub fn build(
        filters: &[EventFilter],
        routes: &[EventRoute],
        agents: &[Agent],
        opts: RuleOptions,
    ) -> Result<RuleSet, ValidationError> {
        if let Some((i, id)) = duplicate(filters.iter().map(|f| f.id.as_str())) {
            return Err(ValidationError::new(
                format!("filters[{i}].id"),
                format!("duplicate id {id:?}"),
            ));
        }
        if let Some((i, id)) = duplicate(routes.iter().map(|r| r.id.as_str())) {
            return Err(ValidationError::new(
                format!("routes[{i}].id"),
                format!("duplicate id {id:?}"),
            ));
        }
        if let Some((i, id)) = duplicate(agents.iter().map(|a| a.id.as_str())) {
            return Err(ValidationError::new(
                format!("agents[{i}].id"),
                format!("duplicate id {id:?}"),
            ));
        }

        let mut b = Builder {
            prefixes: PrefixTable::default(),
            payload_paths: PayloadPaths::default(),
            sources: HashMap::new(),
            types: HashMap::new(),
            programs: HashMap::new(),
        };
        let global = b.group(filters.iter().enumerate(), "filters")?;

        let agent_index: HashMap<&str, usize> = agents
            .iter()
            .enumerate()
            .filter(|(_, a)| a.enabled)
            .map(|(i, a)| (a.id.as_str(), i))
            .collect();
        let mut compiled_routes = Vec::new();
        for (ri, route) in routes.iter().enumerate() {
            if !route.enabled {
                continue;
            }
            let prefix = format!("routes[{ri}]");
            let mut targets: Vec<AgentRef> = Vec::new();
            for id in &route.target_agents {
                if let Some(&index) = agent_index.get(id.as_str())
                    && !targets.iter().any(|t| t.index == index)
                {
                    targets.push(AgentRef {
                        index,
                        id: id.as_str().into(),
                    });
                }
            }
            if targets.is_empty() {
                // Nothing to deliver: no need to compile or evaluate it.
                continue;
            }
            let filters = b
                .group(
                    route.source_filters.iter().enumerate(),
                    &format!("{prefix}.sourceFilters"),
                )
                .map_err(|e| {
                    ValidationError::new(e.field, format!("{} in route {:?}", e.message, route.id))
                })?;
            let transformation = match &route.transformation {
                Some(t) => Some(b.program(&t.expression).map_err(|e| {
                    ValidationError::new(
                        format!("{prefix}.{}", e.field),
                        format!("{} (route {:?})", e.message, route.id),
                    )
                })?),
                None => None,
            };
            compiled_routes.push(CompiledRoute {
                id: route.id.as_str().into(),
                priority: route.priority,
                retry: route.retry_policy,
                keys: (route.ordering.is_some() || route.coalesce.is_some()).then(|| {
                    Arc::new(RouteKeys {
                        ordering: route.ordering.as_ref().and_then(|o| {
                            FieldPath::parse(&o.key)
                                .ok()
                                .map(|p| (p, o.on_dead == super::model::OnDead::Hold))
                        }),
                        coalesce: route.coalesce.as_ref().and_then(|c| {
                            FieldPath::parse(&c.key)
                                .ok()
                                .map(|p| (p, c.window_ms, c.max_wait_ms))
                        }),
                    })
                }),
                filters,
                transformation,
                agents: targets.into(),
            });
        }
        compiled_routes.sort_by(|a, b| b.priority.cmp(&a.priority).then_with(|| a.id.cmp(&b.id)));

        let compiled_routes: Box<[CompiledRoute]> = compiled_routes.into();
        let by_source = (0..=b.sources.len())
            .map(|i| {
                let source = if i == b.sources.len() {
                    UNKNOWN_SCOPE
                } else {
                    ScopeId::try_from(i).unwrap_or(UNKNOWN_SCOPE)
                };
                SourceIndex::build(source, &global, &compiled_routes)
            })
            .collect();
        let pool = (!b.programs.is_empty()).then(|| {
            TransformPool::new(
                opts.transform_workers,
                opts.transform_budget,
                opts.transform_queue_timeout,
            )
        });
        Ok(RuleSet {
            filters: global,
            routes: compiled_routes,
            agents: agents
                .iter()
                .map(|a| (a.id.clone(), Arc::new(a.clone())))
                .collect(),
            sources: b.sources,
            types: b.types,
            prefixes: b.prefixes,
            payload_paths: b.payload_paths,
            by_source,
            pool,
            budget: opts.transform_budget,
        })
    }

    /// A configured agent (enabled or not), for the delivery and stream
    /// layers.
    pub fn agent(&self, id: &str) -> Option<&Arc<Agent>> {
        self.agents.get(id)
    }

    /// Every configured agent.
    pub fn agents(&self) -> impl Iterator<Item = &Arc<Agent>> {
        self.agents.values()
    }

    /// Why `event` is filtered out or where it goes (see [`Explanation`]), without running any
    /// program.
    pub fn explain(&self, event: &Value) -> Explanation {
        let scope = self.scope_of(event);
        let index = self.source_index(scope);
        let filters = &self.filters;
        let mut memo = Memo::new(&self.prefixes, event);
        let mut out = Explanation {
            excluded_by: index
                .excludes
                .iter()
                .map(|&i| &filters.excludes[i as usize])
                .find(|f| f.matches(&mut memo, scope))
                .map(|f| Arc::clone(&f.id)),
            ..Explanation::default()
        };
        if out.excluded_by.is_some() {
            return out;
        }
        let in_scope: Vec<&CompiledFilter> = index
            .includes
            .iter()
            .map(|&i| &filters.includes[i as usize])
            .filter(|f| f.in_scope(scope))
            .collect();
        if !in_scope.is_empty() && !in_scope.iter().any(|f| f.conditions_hold(&mut memo)) {
            out.unmatched_includes = in_scope.iter().map(|f| Arc::clone(&f.id)).collect();
            return out;
        }
        out.routes = index
            .routes
            .iter()
            .map(|&ri| {
                let route = &self.routes[ri as usize];
                (Arc::clone(&route.id), route.matches(&mut memo, scope))
            })
            .collect();
        out
    }

    /// Runs the section 5 semantics on one event (the section 4 object).
    /// Global transform filters rewrite `event` in place; a filtered-out
    /// event is left untouched.
    pub fn evaluate(&self, event: &mut Value) -> Evaluation {
        self.evaluate_payload(event, None).0
    }

    /// [`RuleSet::evaluate`] on an event whose `payload` is still its JSON text, `payload_text`
    /// (the event's own `payload` is `null`, as ingest leaves it). The outcome is the same as on
    /// the whole tree, without building it for conditions: they read a projection of the text,
    /// the values at the rule set's `payload…` paths taken in one pass (see [`PayloadPaths`]),
    /// and only when a condition on the payload can apply to the event's source and type. The
    /// whole payload is parsed only when a jq program is about to run on the event: a global
    /// transform filter that matched, or a route with transformations that matched.
    ///
    /// Returns the evaluation and whether `event`'s `payload` now holds the parsed payload
    /// (otherwise it is `null`, as it came).
    pub fn evaluate_deferred(&self, event: &mut Value, payload_text: &[u8]) -> (Evaluation, bool) {
        self.evaluate_payload(event, Some(payload_text))
    }

    /// `deferred`: the payload's text while `event`'s `payload` is not the whole tree.
    fn evaluate_payload(
        &self,
        event: &mut Value,
        mut deferred: Option<&[u8]>,
    ) -> (Evaluation, bool) {
        let came_deferred = deferred.is_some();
        let mut scope = self.scope_of(event);
        let filters = &self.filters;
        let index = self.source_index(scope);

        if let Some(text) = deferred
            && index.conditions.includes(scope.event_type)
            && !self.payload_paths.is_empty()
        {
            match self.payload_paths.project(text) {
                Ok(projection) => set_payload(event, projection),
                // Unreachable: ingest validated the text. Parse it the usual way instead.
                Err(_) => {
                    crate::event::materialize_payload(event, text);
                    deferred = None;
                }
            }
        }
        // Whatever the outcome, the projection does not leave the rule set.
        let done = |event: &mut Value, eval: Evaluation, deferred: Option<&[u8]>| {
            if deferred.is_some() {
                set_payload(event, Value::Null);
            }
            (eval, came_deferred && deferred.is_none())
        };

        let mut memo = Memo::new(&self.prefixes, event);
        // 1. Any matching exclude filter filters the event out.
        if index
            .excludes
            .iter()
            .any(|&i| filters.excludes[i as usize].matches(&mut memo, scope))
        {
            return done(event, Evaluation::filtered(), deferred);
        }
        // 2. Include filters constrain only the events in their scope.
        let mut any_in_scope = false;
        let mut any_match = false;
        for f in index
            .includes
            .iter()
            .map(|&i| &filters.includes[i as usize])
            .filter(|f| f.in_scope(scope))
        {
            any_in_scope = true;
            if f.conditions_hold(&mut memo) {
                any_match = true;
                break;
            }
        }
        if any_in_scope && !any_match {
            return done(event, Evaluation::filtered(), deferred);
        }
        if self.pool.is_none() {
            // No program anywhere: nothing rewrites the event.
            // The memo stays valid: the event did not change.
            let winners = self.winners(&mut memo, scope);
            let eval = Evaluation {
                processed: true,
                deliveries: self.deliveries(&winners, scope, None),
                filter_errors: Vec::new(),
                globally_transformed: false,
            };
            return done(event, eval, deferred);
        }

        // Programs run on worker threads; the event goes to them behind an
        // Arc instead of being copied, and comes back at the end.
        let mut shared = Arc::new(std::mem::take(event));
        // 3. Transform filters, larger priority first, as a pipeline.
        let mut filter_errors = Vec::new();
        let mut globally_transformed = false;
        // The source cannot change (it is restored after each run), so the
        // index stays valid through the pipeline.
        for f in index
            .transforms
            .iter()
            .map(|&i| &filters.transforms[i as usize])
        {
            let Some(program) = &f.program else { continue };
            // A fresh memo: earlier transforms may have changed the event.
            if !f.matches(&mut Memo::new(&self.prefixes, &shared), scope) {
                continue;
            }
            // The program sees the whole event. Nothing else holds the Arc before the first
            // run, so this does not copy.
            if let Some(text) = deferred.take() {
                crate::event::materialize_payload(Arc::make_mut(&mut shared), text);
            }
            match self.transform(program, &shared) {
                Ok(out) => {
                    shared = Arc::new(out);
                    globally_transformed = true;
                    scope = self.scope_of(&shared);
                }
                Err(error) => filter_errors.push(FilterError {
                    filter_id: Arc::clone(&f.id),
                    error,
                }),
            }
        }

        let winners = self.winners(&mut Memo::new(&self.prefixes, &shared), scope);
        // A matching route's programs see the whole event too.
        if let Some(text) = deferred
            && winners
                .iter()
                .any(|&(_, ri)| self.routes[ri].has_transforms())
        {
            crate::event::materialize_payload(Arc::make_mut(&mut shared), text);
            deferred = None;
        }
        let deliveries = self.deliveries(&winners, scope, Some(&shared));
        // Workers release their reference before answering; only a run
        // abandoned past its budget may still hold one, and then we copy.
        *event = Arc::try_unwrap(shared).unwrap_or_else(|still_shared| (*still_shared).clone());
        let eval = Evaluation {
            processed: true,
            deliveries,
            filter_errors,
            globally_transformed,
        };
        done(event, eval, deferred)
    }

    /// The routes that match, as (agent index, route index): the first route to reach an agent
    /// wins, as routes are sorted by priority desc then id.
    fn winners(&self, memo: &mut Memo<'_, '_>, scope: EventScope) -> Vec<(usize, usize)> {
        let mut winners: Vec<(usize, usize)> = Vec::new();
        let mut claimed = AgentSet::default();
        for &ri in self.source_index(scope).routes.iter() {
            let ri = ri as usize;
            let route = &self.routes[ri];
            if route.agents.iter().all(|a| claimed.contains(a.index)) {
                continue;
            }
            if !route.matches(memo, scope) {
                continue;
            }
            for a in route.agents.iter() {
                if claimed.insert(a.index) {
                    winners.push((a.index, ri));
                }
            }
        }
        winners
    }

    /// The deliveries of `winners`. `shared` is the event behind an Arc, given when
    /// transformations may run.
    fn deliveries(
        &self,
        winners: &[(usize, usize)],
        scope: EventScope,
        shared: Option<&Arc<Value>>,
    ) -> Vec<PlannedDelivery> {
        if winners.is_empty() {
            return Vec::new();
        }

        let mut deliveries = Vec::with_capacity(winners.len());
        // Each winning route's body is computed once and shared by its agents.
        let mut bodies: Vec<(usize, PlannedBody)> = Vec::new();
        for &(agent_index, ri) in winners {
            let route = &self.routes[ri];
            let body = match (bodies.iter().find(|(r, _)| *r == ri), shared) {
                (Some((_, body)), _) => body.clone(),
                (None, Some(shared)) if route.has_transforms() => {
                    let body = self.route_body(route, shared, scope);
                    bodies.push((ri, body.clone()));
                    body
                }
                (None, _) => PlannedBody::Event,
            };
            let agent_id = route
                .agents
                .iter()
                .find(|a| a.index == agent_index)
                .map(|a| Arc::clone(&a.id))
                .unwrap_or_else(|| Arc::from(""));
            deliveries.push(PlannedDelivery {
                agent_id,
                route_id: Arc::clone(&route.id),
                priority: route.priority,
                retry: route.retry,
                body,
                keys: route.keys.clone(),
            });
        }
        deliveries.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then_with(|| a.agent_id.cmp(&b.agent_id))
        });
        deliveries
    }

    /// The route's copy of the event: its matching transform source filters
    /// (pipeline), then its own transformation.
    fn route_body(
        &self,
        route: &CompiledRoute,
        event: &Arc<Value>,
        scope: EventScope,
    ) -> PlannedBody {
        let mut copy: Option<Arc<Value>> = None;
        let mut scope = scope;
        for f in route.filters.transforms.iter() {
            let Some(program) = &f.program else { continue };
            let current = copy.as_ref().unwrap_or(event);
            if !f.matches(&mut Memo::new(&self.prefixes, current), scope) {
                continue;
            }
            match self.transform(program, current) {
                Ok(out) => {
                    scope = self.scope_of(&out);
                    copy = Some(Arc::new(out));
                }
                Err(e) => return PlannedBody::Failed(format!("filter {:?}: {e}", &*f.id)),
            }
        }
        if let Some(program) = &route.transformation {
            let current = copy.as_ref().unwrap_or(event);
            match self.transform(program, current) {
                Ok(out) => copy = Some(Arc::new(out)),
                Err(e) => return PlannedBody::Failed(e),
            }
        }
        match copy {
            Some(v) => PlannedBody::Transformed(Arc::unwrap_or_clone(v)),
            None => PlannedBody::Event,
        }
    }

    /// Runs one program on `event` within the budget and puts the immutable
    /// fields back as they were (removed if they were absent).
    fn transform(&self, program: &Arc<JqProgram>, event: &Arc<Value>) -> Result<Value, String> {
        let Some(pool) = &self.pool else {
            return Err("no transformation worker pool".into());
        };
        let mut out = pool
            .run(program, Arc::clone(event))
            .map_err(|e| e.to_string())?;
        if let Value::Object(obj) = &mut out {
            for key in IMMUTABLE_FIELDS {
                match event.get(key) {
                    Some(v) => {
                        obj.insert(key.to_owned(), v.clone());
                    }
                    None => {
                        obj.remove(key);
                    }
                }
            }
        }
        Ok(out)
    }

    fn source_index(&self, scope: EventScope) -> &SourceIndex {
        let last = self.by_source.len() - 1;
        &self.by_source[(scope.source as usize).min(last)]
    }

    fn scope_of(&self, event: &Value) -> EventScope {
        let lookup = |table: &HashMap<Box<str>, ScopeId>, key: &str| {
            if table.is_empty() {
                return UNKNOWN_SCOPE;
            }
            event
                .get(key)
                .and_then(Value::as_str)
                .and_then(|s| table.get(s).copied())
                .unwrap_or(UNKNOWN_SCOPE)
        };
        EventScope {
            source: lookup(&self.sources, "source"),
            event_type: lookup(&self.types, "type"),
        }
    }

    /// Whether evaluating an event of this source and type may read its `payload` (a condition
    /// on a `payload…` path or a jq program that can apply). When not, the event can be
    /// evaluated with its payload left out: the outcome is the same.
    pub fn reads_payload(&self, source: &str, event_type: &str) -> bool {
        let scope = |table: &HashMap<Box<str>, ScopeId>, name: &str| {
            table.get(name).copied().unwrap_or(UNKNOWN_SCOPE)
        };
        let scope = EventScope {
            source: scope(&self.sources, source),
            event_type: scope(&self.types, event_type),
        };
        self.source_index(scope).payload.includes(scope.event_type)
    }

    /// Whether any filter or route runs a jq program. `evaluate` then may
    /// block the calling thread for up to the transformation budget (per
    /// program run), so async callers should use `spawn_blocking`; without
    /// programs it is a few microseconds of pure computation.
    pub fn has_transforms(&self) -> bool {
        self.pool.is_some()
    }

    /// The time budget of one transformation run.
    pub fn transform_budget(&self) -> Duration {
        self.budget
    }
}

/// Puts `payload` in the event object's `payload` field.
fn set_payload(event: &mut Value, payload: Value) {
    if let Value::Object(map) = event {
        map.insert("payload".into(), payload);
    }
}

impl Evaluation {
    fn filtered() -> Self {
        Evaluation {
            processed: false,
            deliveries: Vec::new(),
            filter_errors: Vec::new(),
            globally_transformed: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::model::*;
    use serde_json::json;
    use std::time::Instant;

    fn filter(v: Value) -> EventFilter {
        serde_json::from_value(v).unwrap()
    }

    fn route(v: Value) -> EventRoute {
        let mut r: EventRoute = serde_json::from_value(v).unwrap();
        crate::rules::validate::fill_route_defaults(&mut r);
        r
    }

    fn agent(id: &str) -> Agent {
        serde_json::from_value(json!({"id": id, "name": id})).unwrap()
    }

    fn agents(ids: &[&str]) -> Vec<Agent> {
        ids.iter().map(|id| agent(id)).collect()
    }

    fn event(source: &str, ty: &str, payload: Value) -> Value {
        json!({"id": "0193a1c4-0000-7000-8000-000000000001", "source": source, "type": ty,
               "action": payload.get("action").cloned().unwrap_or(Value::Null),
               "deliveryId": "d-1", "timestamp": 1764170000123u64,
               "payload": payload, "metadata": {"identifier": "octocat"}})
    }

    fn build(filters: Vec<Value>, routes: Vec<Value>, agent_ids: &[&str]) -> RuleSet {
        RuleSet::build(
            &filters.into_iter().map(filter).collect::<Vec<_>>(),
            &routes.into_iter().map(route).collect::<Vec<_>>(),
            &agents(agent_ids),
            // Generous, so that a loaded machine cannot fail the tests that
            // are not about the budget.
            RuleOptions {
                transform_budget: Duration::from_millis(300),
                ..RuleOptions::default()
            },
        )
        .unwrap()
    }

    fn targets(e: &Evaluation) -> Vec<(String, String)> {
        e.deliveries
            .iter()
            .map(|d| (d.agent_id.to_string(), d.route_id.to_string()))
            .collect()
    }

    fn exclude_draft_prs() -> Value {
        json!({"id": "exclude-draft-prs", "name": "Exclude Draft PRs", "source": "github",
               "eventType": "pull_request", "action": "exclude", "priority": 10, "enabled": true,
               "conditions": [{"field": "payload.pull_request.draft", "operator": "equals", "value": true}]})
    }

    fn high_priority_issues() -> Value {
        json!({"id": "high-priority-issues", "name": "High Priority Issues", "source": "linear",
               "eventType": "issue", "action": "include", "priority": 5, "enabled": true,
               "conditions": [{"field": "payload.data.priority", "operator": "gt", "value": 3}]})
    }

    fn everything_to(agent: &str) -> Value {
        json!({"id": format!("all-{agent}"), "name": "all", "targetAgents": [agent]})
    }

    #[test]
    fn agent_set() {
        let mut set = AgentSet::default();
        for i in [0, 5, 127, 128, 200, 1000] {
            assert!(!set.contains(i));
            assert!(set.insert(i));
            assert!(set.contains(i));
            assert!(!set.insert(i));
        }
        assert!(
            !set.contains(1) && !set.contains(129) && !set.contains(999) && !set.contains(5000)
        );
    }

    #[test]
    fn many_agents_dedupe() {
        let ids: Vec<String> = (0..300).map(|i| format!("a{i:03}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let rules = build(
            vec![],
            vec![
                json!({"id": "r1", "name": "r1", "priority": 2, "targetAgents": ids}),
                json!({"id": "r2", "name": "r2", "priority": 1, "targetAgents": ids}),
            ],
            &refs,
        );
        let out = rules.evaluate(&mut event("github", "push", json!({})));
        assert_eq!(out.deliveries.len(), 300);
        assert!(out.deliveries.iter().all(|d| &*d.route_id == "r1"));
        assert_eq!(&*out.deliveries[0].agent_id, "a000");
        assert_eq!(&*out.deliveries[299].agent_id, "a299");
    }

    #[test]
    fn is_send_sync() {
        fn assert<T: Send + Sync>() {}
        assert::<RuleSet>();
        assert::<Evaluation>();
        assert::<arc_swap::ArcSwap<RuleSet>>();
    }

    #[test]
    fn empty_processes_and_routes_nowhere() {
        let mut e = event("github", "push", json!({}));
        let before = e.clone();
        let out = RuleSet::empty().evaluate(&mut e);
        assert!(out.processed);
        assert!(!out.routed());
        assert_eq!(e, before);
    }

    #[test]
    fn the_two_design_examples() {
        let rules = build(
            vec![exclude_draft_prs(), high_priority_issues()],
            vec![everything_to("bot")],
            &["bot"],
        );
        let cases = [
            (
                event(
                    "github",
                    "pull_request",
                    json!({"pull_request": {"draft": true}}),
                ),
                false,
            ),
            (
                event(
                    "github",
                    "pull_request",
                    json!({"pull_request": {"draft": false}}),
                ),
                true,
            ),
            (
                event("github", "pull_request", json!({"pull_request": {}})),
                true,
            ),
            // out of the exclude filter's scope
            (
                event("github", "issues", json!({"pull_request": {"draft": true}})),
                true,
            ),
            (
                event(
                    "gitlab",
                    "pull_request",
                    json!({"pull_request": {"draft": true}}),
                ),
                true,
            ),
            (
                event("linear", "issue", json!({"data": {"priority": 4}})),
                true,
            ),
            (
                event("linear", "issue", json!({"data": {"priority": 3}})),
                false,
            ),
            (
                event("linear", "issue", json!({"data": {"priority": "4"}})),
                false,
            ),
            (event("linear", "issue", json!({"data": {}})), false),
            // outside every include filter's scope: passes
            (
                event("linear", "comment", json!({"data": {"priority": 0}})),
                true,
            ),
            (event("slack", "message", json!({})), true),
        ];
        for (i, (mut e, processed)) in cases.into_iter().enumerate() {
            let out = rules.evaluate(&mut e);
            assert_eq!(out.processed, processed, "case {i}");
            assert_eq!(
                out.routed(),
                processed,
                "case {i}: filtered events get no deliveries"
            );
        }
    }

    #[test]
    fn exclude_beats_include_and_any_include_suffices() {
        let rules = build(
            vec![
                json!({"id": "inc-a", "name": "a", "action": "include", "source": "github",
                       "conditions": [{"field": "payload.repo", "operator": "equals", "value": "a"}]}),
                json!({"id": "inc-b", "name": "b", "action": "include", "source": "github",
                       "conditions": [{"field": "payload.repo", "operator": "equals", "value": "b"}]}),
                json!({"id": "exc", "name": "x", "action": "exclude",
                       "conditions": [{"field": "payload.bot", "operator": "equals", "value": true}]}),
                json!({"id": "off", "name": "off", "action": "exclude", "enabled": false, "conditions": []}),
            ],
            vec![everything_to("bot")],
            &["bot"],
        );
        let p = |e: Value| rules.evaluate(&mut e.clone()).processed;
        assert!(p(event("github", "push", json!({"repo": "a"}))));
        assert!(p(event("github", "push", json!({"repo": "b"}))));
        assert!(!p(event("github", "push", json!({"repo": "c"}))));
        assert!(!p(event(
            "github",
            "push",
            json!({"repo": "a", "bot": true})
        )));
        assert!(!p(event("linear", "issue", json!({"bot": true}))));
        assert!(p(event("linear", "issue", json!({}))));
    }

    #[test]
    fn transforms_run_by_priority_as_a_pipeline() {
        let t = |id: &str, prio: i64, expr: &str, conds: Value| {
            json!({"id": id, "name": id, "action": "transform", "priority": prio,
                   "transformation": {"type": "jq", "expression": expr}, "conditions": conds})
        };
        let rules = build(
            vec![
                t("b-low", 1, ".payload.trail += [\"low\"]", json!([])),
                t(
                    "a-high",
                    9,
                    ".payload.trail += [\"high\"] | .payload.tagged = true",
                    json!([]),
                ),
                // same priority as b-low: id order puts a-tie first
                t("a-tie", 1, ".payload.trail += [\"tie\"]", json!([])),
                // sees the effect of a-high
                t(
                    "needs-tag",
                    0,
                    ".payload.trail += [\"tagged\"]",
                    json!([{"field": "payload.tagged", "operator": "equals", "value": true}]),
                ),
                t(
                    "never",
                    100,
                    ".payload.trail += [\"never\"]",
                    json!([{"field": "payload.nope", "operator": "exists", "value": true}]),
                ),
            ],
            vec![everything_to("bot")],
            &["bot"],
        );
        let mut e = event("github", "push", json!({"trail": []}));
        let out = rules.evaluate(&mut e);
        assert!(out.processed);
        assert!(out.filter_errors.is_empty());
        assert_eq!(
            e["payload"]["trail"],
            json!(["high", "tie", "low", "tagged"])
        );
        assert_eq!(out.deliveries[0].body, PlannedBody::Event);
    }

    #[test]
    fn transforms_cannot_change_immutable_fields() {
        let rules = build(
            vec![
                json!({"id": "t", "name": "t", "action": "transform", "transformation": {"type": "jq",
                "expression": "{id: \"x\", source: \"evil\", deliveryId: null, timestamp: 0, type: \"renamed\", payload: .payload, extra: 1}"}}),
            ],
            vec![],
            &[],
        );
        let mut e = event("github", "push", json!({"a": 1}));
        let original = e.clone();
        rules.evaluate(&mut e);
        for key in IMMUTABLE_FIELDS {
            assert_eq!(e[key], original[key], "{key}");
        }
        assert_eq!(e["type"], "renamed");
        assert_eq!(e["extra"], 1);
        assert!(e.get("metadata").is_none(), "the program dropped it");

        // absent originally -> removed
        let mut e = json!({"source": "github", "type": "push", "payload": {}});
        rules.evaluate(&mut e);
        assert!(
            e.get("id").is_none() && e.get("deliveryId").is_none() && e.get("timestamp").is_none()
        );
        assert_eq!(e["source"], "github");
    }

    #[test]
    fn global_transform_failure_leaves_event_and_continues() {
        let rules = build(
            vec![
                json!({"id": "boom", "name": "b", "action": "transform", "priority": 2,
                       "transformation": {"type": "jq", "expression": "error(\"nope\")"}}),
                json!({"id": "slow", "name": "s", "action": "transform", "priority": 1,
                       "transformation": {"type": "jq", "expression": "def f: f; f"}}),
                json!({"id": "ok", "name": "o", "action": "transform", "priority": 0,
                       "transformation": {"type": "jq", "expression": ".payload.ok = true"}}),
            ],
            vec![everything_to("bot")],
            &["bot"],
        );
        let mut e = event("github", "push", json!({}));
        let out = rules.evaluate(&mut e);
        assert!(out.processed && out.routed());
        assert_eq!(e["payload"], json!({"ok": true}));
        let errs: Vec<(&str, &str)> = out
            .filter_errors
            .iter()
            .map(|f| (&*f.filter_id, f.error.as_str()))
            .collect();
        assert_eq!(
            errs,
            [
                ("boom", "jq error: nope"),
                ("slow", "transformation exceeded its time budget of 300 ms")
            ]
        );
    }

    #[test]
    fn filtered_event_is_not_transformed() {
        let rules = build(
            vec![
                json!({"id": "x", "name": "x", "action": "exclude", "conditions": []}),
                json!({"id": "t", "name": "t", "action": "transform",
                       "transformation": {"type": "jq", "expression": ".payload.t = 1"}}),
            ],
            vec![everything_to("bot")],
            &["bot"],
        );
        let mut e = event("github", "push", json!({}));
        let before = e.clone();
        let out = rules.evaluate(&mut e);
        assert!(!out.processed && !out.routed());
        assert_eq!(e, before);
    }

    #[test]
    fn routes_match_on_their_source_filters() {
        let rules = build(
            vec![],
            vec![
                json!({"id": "prs", "name": "prs", "targetAgents": ["reviewer"],
                       "sourceFilters": [{"action": "include", "source": "github", "eventType": "pull_request"},
                                         {"action": "exclude", "conditions": [
                                             {"field": "payload.pull_request.draft", "operator": "equals", "value": true}]}]}),
                json!({"id": "bugs", "name": "bugs", "targetAgents": ["triage"],
                       "sourceFilters": [{"action": "include", "conditions": [
                           {"field": "payload.pull_request.labels.name", "operator": "equals", "value": "bug"}]},
                                         {"action": "include", "source": "linear"}]}),
                json!({"id": "no-draft-anything", "name": "n", "targetAgents": ["audit"],
                       "sourceFilters": [{"action": "exclude", "conditions": [
                           {"field": "payload.pull_request.draft", "operator": "equals", "value": true}]}]}),
                json!({"id": "disabled-filter", "name": "d", "targetAgents": ["all"],
                       "sourceFilters": [{"action": "include", "enabled": false, "source": "nowhere"}]}),
            ],
            &["reviewer", "triage", "audit", "all"],
        );
        let route_of = |e: Value| {
            let mut agents: Vec<String> = rules
                .evaluate(&mut e.clone())
                .deliveries
                .iter()
                .map(|d| d.agent_id.to_string())
                .collect();
            agents.sort();
            agents
        };
        assert_eq!(
            route_of(event(
                "github",
                "pull_request",
                json!({"pull_request": {"draft": false, "labels": [{"name": "bug"}]}})
            )),
            ["all", "audit", "reviewer", "triage"]
        );
        assert_eq!(
            route_of(event(
                "github",
                "pull_request",
                json!({"pull_request": {"draft": true, "labels": []}})
            )),
            ["all"]
        );
        assert_eq!(
            route_of(event("linear", "issue", json!({}))),
            ["all", "audit", "triage"]
        );
        assert_eq!(
            route_of(event("github", "push", json!({}))),
            ["all", "audit"]
        );
    }

    #[test]
    fn one_delivery_per_agent_from_the_highest_priority_route() {
        let rules = build(
            vec![],
            vec![
                json!({"id": "low", "name": "l", "priority": 1, "targetAgents": ["a", "b"]}),
                json!({"id": "high", "name": "h", "priority": 9, "targetAgents": ["b", "c"],
                       "retryPolicy": {"maxAttempts": 2, "backoffStrategy": "fixed", "baseDelay": 5, "maxDelay": 5}}),
                json!({"id": "zeta", "name": "z", "priority": 5, "targetAgents": ["d"]}),
                json!({"id": "alpha", "name": "a", "priority": 5, "targetAgents": ["d", "d"]}),
                json!({"id": "off", "name": "o", "priority": 99, "enabled": false, "targetAgents": ["a"]}),
                json!({"id": "ghost", "name": "g", "priority": 99, "targetAgents": ["unknown", "disabled"]}),
            ],
            &["a", "b", "c", "d"],
        );
        let mut e = event("github", "push", json!({}));
        let out = rules.evaluate(&mut e);
        assert_eq!(
            targets(&out),
            [("b", "high"), ("c", "high"), ("d", "alpha"), ("a", "low")]
                .map(|(a, r)| (a.to_string(), r.to_string()))
        );
        assert_eq!(out.deliveries[0].priority, 9);
        assert_eq!(out.deliveries[0].retry.unwrap().max_attempts, 2);
        assert_eq!(out.deliveries[3].retry, None);
    }

    #[test]
    fn disabled_agents_get_nothing() {
        let mut off = agent("off");
        off.enabled = false;
        let rules = RuleSet::build(
            &[],
            &[route(
                json!({"id": "r", "name": "r", "targetAgents": ["off", "on"]}),
            )],
            &[off, agent("on")],
            RuleOptions::default(),
        )
        .unwrap();
        let out = rules.evaluate(&mut event("github", "push", json!({})));
        assert_eq!(targets(&out), [("on".to_string(), "r".to_string())]);
        assert!(rules.agent("off").is_some(), "still a configured agent");
        assert!(rules.agent("nope").is_none());
    }

    #[test]
    fn route_transformations_work_on_copies() {
        let rules = build(
            vec![],
            vec![
                json!({"id": "slim", "name": "s", "priority": 2, "targetAgents": ["a", "b"],
                       "transformation": {"type": "jq", "expression": "{id: \"forged\", type, summary: .payload.title}"}}),
                json!({"id": "tagged", "name": "t", "priority": 1, "targetAgents": ["c"],
                       "sourceFilters": [
                           {"action": "transform", "priority": 1, "transformation": {"type": "jq", "expression": ".payload.step1 = true"}},
                           {"action": "transform", "priority": 0,
                            "conditions": [{"field": "payload.step1", "operator": "equals", "value": true}],
                            "transformation": {"type": "jq", "expression": ".payload.step2 = true"}},
                           {"action": "transform", "source": "linear", "transformation": {"type": "jq", "expression": ".payload.never = true"}}],
                       "transformation": {"type": "jq", "expression": ".payload.final = (.payload.step2 // false)"}}),
                json!({"id": "broken", "name": "x", "targetAgents": ["d"],
                       "transformation": {"type": "jq", "expression": ".payload.title | ascii_downcase"}}),
                json!({"id": "plain", "name": "p", "targetAgents": ["e"]}),
            ],
            &["a", "b", "c", "d", "e"],
        );
        let mut e = event("github", "issues", json!({"title": "Hello"}));
        let before = e.clone();
        let out = rules.evaluate(&mut e);
        assert_eq!(e, before, "route transformations never touch the event");
        let body = |agent: &str| {
            out.deliveries
                .iter()
                .find(|d| &*d.agent_id == agent)
                .unwrap()
                .body
                .clone()
        };
        let slim = json!({"id": before["id"], "source": "github", "deliveryId": "d-1",
                          "timestamp": 1764170000123u64, "type": "issues", "summary": "Hello"});
        assert_eq!(body("a"), PlannedBody::Transformed(slim.clone()));
        assert_eq!(body("b"), PlannedBody::Transformed(slim));
        let PlannedBody::Transformed(c) = body("c") else {
            panic!("{:?}", body("c"))
        };
        assert_eq!(
            c["payload"],
            json!({"title": "Hello", "step1": true, "step2": true, "final": true})
        );
        let PlannedBody::Failed(err) = body("d") else {
            panic!()
        };
        assert_eq!(
            err,
            "transformation must yield exactly one object, got a string"
        );
        assert_eq!(body("e"), PlannedBody::Event);
    }

    #[test]
    fn runaway_route_transformation_fails_only_its_delivery_within_budget() {
        let rules = RuleSet::build(
            &[],
            &[
                route(json!({"id": "loop", "name": "l", "targetAgents": ["a"],
                             "transformation": {"type": "jq", "expression": "[range(1e12)]"}})),
                route(json!({"id": "fine", "name": "f", "targetAgents": ["b"]})),
            ],
            &agents(&["a", "b"]),
            RuleOptions {
                transform_budget: Duration::from_millis(20),
                ..RuleOptions::default()
            },
        )
        .unwrap();
        let started = Instant::now();
        let out = rules.evaluate(&mut event("github", "push", json!({})));
        assert!(
            started.elapsed()
                < Duration::from_millis(20)
                    + transform::BACKSTOP_GRACE
                    + Duration::from_millis(1000)
        );
        assert_eq!(out.deliveries.len(), 2);
        assert_eq!(
            out.deliveries
                .iter()
                .find(|d| &*d.agent_id == "a")
                .unwrap()
                .body,
            PlannedBody::Failed("transformation exceeded its time budget of 20 ms".into())
        );
        assert_eq!(
            out.deliveries
                .iter()
                .find(|d| &*d.agent_id == "b")
                .unwrap()
                .body,
            PlannedBody::Event
        );
    }

    #[test]
    fn build_errors_surface_with_location() {
        let bad_regex = filter(json!({"id": "f", "name": "f", "action": "include",
            "conditions": [{"field": "a", "operator": "regex", "value": "("}]}));
        let e = RuleSet::build(&[bad_regex], &[], &[], RuleOptions::default()).unwrap_err();
        assert_eq!(e.field, "filters[0].conditions[0].value");
        assert!(
            e.message.contains("invalid regex") && e.message.contains("(filter \"f\")"),
            "{e}"
        );

        let bad_jq = route(json!({"id": "r", "name": "r", "targetAgents": ["a"],
            "transformation": {"type": "jq", "expression": "{"}}));
        let e =
            RuleSet::build(&[], &[bad_jq], &agents(&["a"]), RuleOptions::default()).unwrap_err();
        assert_eq!(e.field, "routes[0].transformation.expression");

        let f = filter(json!({"id": "same", "name": "f", "action": "include"}));
        let e = RuleSet::build(&[f.clone(), f], &[], &[], RuleOptions::default()).unwrap_err();
        assert_eq!(e.to_string(), "filters[1].id: duplicate id \"same\"");
    }

    #[test]
    fn type_changes_rescope_later_rules() {
        let rules = build(
            vec![
                json!({"id": "t", "name": "t", "action": "transform", "source": "internal",
                        "transformation": {"type": "jq", "expression": ".type = \"deploy\""}}),
            ],
            vec![
                json!({"id": "deploys", "name": "d", "targetAgents": ["ops"],
                        "sourceFilters": [{"action": "include", "source": "internal", "eventType": "deploy"}]}),
            ],
            &["ops"],
        );
        let out = rules.evaluate(&mut event("internal", "raw", json!({})));
        assert_eq!(targets(&out), [("ops".to_string(), "deploys".to_string())]);
    }

    #[test]
    fn a_deferred_payload_is_parsed_only_for_a_program_that_runs() {
        let text = br#"{"pull_request":{"number":7,"title":"Fix","body":"long"},"n":1}"#;
        let deferred = || event("github", "pull_request", Value::Null);
        let rules = build(
            vec![],
            vec![
                json!({"id": "num", "name": "n", "targetAgents": ["a"], "priority": 2,
                        "sourceFilters": [{"action": "include", "conditions": [
                            {"field": "payload.pull_request.number", "operator": "gt", "value": 5}]}]}),
                json!({"id": "jq", "name": "j", "targetAgents": ["b"],
                        "sourceFilters": [{"action": "include", "conditions": [
                            {"field": "payload.n", "operator": "equals", "value": 2}]}],
                        "transformation": {"type": "jq", "expression": "{n: .payload.n}"}}),
            ],
            &["a", "b"],
        );
        // Conditions read the projection; the route with a program does not match: no parse.
        let mut e = deferred();
        let (out, parsed) = rules.evaluate_deferred(&mut e, text);
        assert!(!parsed);
        assert_eq!(e, deferred(), "the projection does not leave the rule set");
        assert_eq!(out.deliveries.len(), 1);
        assert_eq!(&*out.deliveries[0].route_id, "num");
        assert_eq!(out.deliveries[0].body, PlannedBody::Event);
        // It matches: the program sees the whole payload.
        let text = br#"{"pull_request":{"number":7,"title":"Fix","body":"long"},"n":2}"#;
        let mut e = deferred();
        let (out, parsed) = rules.evaluate_deferred(&mut e, text);
        assert!(parsed);
        assert_eq!(e["payload"]["pull_request"]["body"], json!("long"));
        assert_eq!(out.deliveries.len(), 2);
        let PlannedBody::Transformed(body) = &out.deliveries[1].body else {
            panic!("{:?}", out.deliveries[1].body);
        };
        assert_eq!(body["n"], json!(2));
        // A global transform filter that matches parses it too, one that does not, not.
        let rules = build(
            vec![json!({"id": "t", "name": "t", "action": "transform",
                        "conditions": [{"field": "payload.n", "operator": "equals", "value": 2}],
                        "transformation": {"type": "jq", "expression": ".payload.seen = true"}})],
            vec![json!({"id": "all", "name": "a", "targetAgents": ["a"]})],
            &["a"],
        );
        let mut e = deferred();
        let (out, parsed) = rules.evaluate_deferred(&mut e, text);
        assert!(parsed && out.globally_transformed);
        assert_eq!(e["payload"]["seen"], json!(true));
        assert_eq!(e["payload"]["pull_request"]["title"], json!("Fix"));
        let mut e = deferred();
        let (out, parsed) =
            rules.evaluate_deferred(&mut e, br#"{"pull_request":{"number":7},"n":1}"#);
        assert!(!parsed && !out.globally_transformed && out.routed());
        assert_eq!(e, deferred());
    }

    #[test]
    fn reads_payload_only_where_a_rule_can_look_into_it() {
        // No rules, or rules on the event's own fields only: the payload is never read.
        assert!(!RuleSet::empty().reads_payload("github", "push"));
        let rules = build(
            vec![json!({"id": "bots", "name": "b", "action": "exclude",
                        "conditions": [{"field": "metadata.identifier", "operator": "contains", "value": "[bot]"},
                                       {"field": "payloadish", "operator": "exists", "value": true}]})],
            vec![json!({"id": "gh", "name": "g", "targetAgents": ["a"],
                        "sourceFilters": [{"action": "include", "source": "github",
                            "conditions": [{"field": "action", "operator": "equals", "value": "opened"}]}]})],
            &["a"],
        );
        assert!(!rules.reads_payload("github", "pull_request"));
        assert!(!rules.reads_payload("linear", "issue"));

        // Payload conditions count for their scope only.
        let rules = build(
            vec![exclude_draft_prs(), high_priority_issues()],
            vec![everything_to("bot")],
            &["bot"],
        );
        assert!(rules.reads_payload("github", "pull_request"));
        assert!(!rules.reads_payload("github", "issues"));
        assert!(!rules.reads_payload("github", "never_named"));
        assert!(rules.reads_payload("linear", "issue"));
        assert!(!rules.reads_payload("slack", "message"));
        let rules = build(
            vec![json!({"id": "p", "name": "p", "action": "include",
                        "conditions": [{"field": "payload", "operator": "exists", "value": true}]})],
            vec![],
            &[],
        );
        assert!(rules.reads_payload("anything", "at_all"));

        // Route filters count for the routes the source can reach; jq programs always read.
        let rules = build(
            vec![],
            vec![
                json!({"id": "lin", "name": "l", "targetAgents": ["a"],
                        "sourceFilters": [{"action": "include", "source": "linear", "eventType": "issue",
                            "conditions": [{"field": "payload.data.priority", "operator": "gt", "value": 2}]}]}),
                json!({"id": "slack", "name": "s", "targetAgents": ["b"],
                        "sourceFilters": [{"action": "include", "source": "slack"}],
                        "transformation": {"type": "jq", "expression": ".payload.text"}}),
                json!({"id": "int", "name": "i", "targetAgents": ["c"],
                        "sourceFilters": [{"action": "transform", "source": "internal", "eventType": "build",
                            "transformation": {"type": "jq", "expression": ".x = 1"}}]}),
            ],
            &["a", "b", "c"],
        );
        assert!(rules.reads_payload("linear", "issue"));
        assert!(!rules.reads_payload("linear", "comment"));
        assert!(rules.reads_payload("slack", "message"));
        assert!(rules.reads_payload("internal", "build"));
        assert!(!rules.reads_payload("internal", "deploy"));
        assert!(!rules.reads_payload("github", "push"));
        let rules = build(
            vec![
                json!({"id": "t", "name": "t", "action": "transform", "source": "internal",
                        "transformation": {"type": "jq", "expression": ".type = \"deploy\""}}),
            ],
            vec![],
            &[],
        );
        assert!(rules.reads_payload("internal", "raw"));
        assert!(!rules.reads_payload("github", "raw"));
    }

    mod properties {
        use super::*;
        use crate::rules::condition::tests::{arb_json, arb_operator, arb_path, fit};
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            /// Through the compiled rule set (prefix memo, scope index): an
            /// unscoped include filter and its negation let exactly one of
            /// two rule sets process any event.
            #[test]
            fn include_and_negated_include_partition_events(
                payload in arb_json(),
                path in arb_path(),
                op in arb_operator(),
                value in arb_json(),
                case_sensitive in any::<bool>(),
            ) {
                let field = format!("payload.{path}");
                let value = fit(op, value);
                let rules_for = |negate: bool| {
                    build(
                        vec![json!({"id": "f", "name": "f", "action": "include",
                            "conditions": [
                                {"field": "source", "operator": "exists", "value": true},
                                {"field": field, "operator": op.as_str(), "value": value,
                                 "caseSensitive": case_sensitive, "negate": negate}]})],
                        vec![],
                        &[],
                    )
                };
                let mut e = event("github", "push", payload);
                let plain = rules_for(false).evaluate(&mut e).processed;
                let negated = rules_for(true).evaluate(&mut e).processed;
                prop_assert!(plain != negated);
            }
        }

        /// A condition on a payload path (mostly), or on the event's own fields.
        fn arb_condition() -> impl Strategy<Value = Value> {
            let field = prop_oneof![
                6 => arb_path().prop_map(|p| format!("payload.{p}")),
                1 => Just("payload".to_string()),
                1 => Just("type".to_string()),
                1 => Just("metadata.identifier".to_string()),
            ];
            (
                field,
                arb_operator(),
                arb_json(),
                any::<bool>(),
                any::<bool>(),
            )
                .prop_map(|(field, op, value, case_sensitive, negate)| {
                    json!({"field": field, "operator": op.as_str(), "value": fit(op, value),
                           "caseSensitive": case_sensitive, "negate": negate})
                })
        }

        fn arb_filter(actions: &'static [&'static str]) -> impl Strategy<Value = Value> {
            (
                prop::sample::select(actions),
                prop::collection::vec(arb_condition(), 1..3),
                prop::option::of(prop::sample::select(&["push", "pull_request"][..])),
                prop::sample::select(&[".payload", ".payload.a = 1", ".type = \"t\""][..]),
            )
                .prop_map(|(action, conditions, event_type, program)| {
                    let mut f = json!({"action": action, "conditions": conditions});
                    if let Some(t) = event_type {
                        f["eventType"] = json!(t);
                    }
                    if action == "transform" {
                        f["transformation"] = json!({"type": "jq", "expression": program});
                    }
                    f
                })
        }

        fn arb_route() -> impl Strategy<Value = Value> {
            (
                prop::collection::vec(arb_filter(&["include", "exclude", "transform"]), 0..3),
                prop::sample::select(&["a", "b"][..]),
                0..3i64,
                prop::option::weighted(
                    0.2,
                    prop::sample::select(
                        &[".payload", "{t: .type, a: .payload.a}", ".payload.a.b"][..],
                    ),
                ),
            )
                .prop_map(|(filters, agent, priority, program)| {
                    let mut r = json!({"name": "r", "sourceFilters": filters,
                                       "targetAgents": [agent], "priority": priority});
                    if let Some(p) = program {
                        r["transformation"] = json!({"type": "jq", "expression": p});
                    }
                    r
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Evaluating an event whose payload is still JSON text (conditions read a
            /// projection of it; programs parse it) decides exactly what evaluating the whole
            /// tree does, and leaves the event as it was or as the tree evaluation leaves it.
            #[test]
            fn deferred_payload_evaluates_as_the_tree(
                payload in crate::rules::condition::tests::arb_json(),
                escapes in prop::collection::vec(any::<bool>(), 0..16),
                event_type in prop::sample::select(&["push", "pull_request"][..]),
                global in prop::collection::vec(
                    arb_filter(&["include", "exclude", "exclude", "transform"]), 0..3),
                routes in prop::collection::vec(arb_route(), 1..4),
            ) {
                let global = global
                    .into_iter()
                    .enumerate()
                    .map(|(i, mut f)| {
                        f["id"] = json!(format!("g{i}"));
                        f["name"] = json!("g");
                        f
                    })
                    .collect();
                let routes = routes
                    .into_iter()
                    .enumerate()
                    .map(|(i, mut r)| {
                        r["id"] = json!(format!("r{i}"));
                        r
                    })
                    .collect();
                let rules = build(global, routes, &["a", "b"]);
                // A deferred payload is an object (or an array, from HubSpot).
                let payload = match payload {
                    v @ (Value::Object(_) | Value::Array(_)) => v,
                    scalar => json!({ "a": scalar }),
                };
                let mut text = String::new();
                crate::rules::projection::tests::odd_text(
                    &payload,
                    &mut escapes.into_iter().cycle(),
                    &mut text,
                );

                // What ingest would parse (floats may not read back bit for bit).
                let payload: Value = serde_json::from_str(&text).unwrap();
                let mut tree = event("github", event_type, payload.clone());
                let expected = rules.evaluate(&mut tree);
                let mut deferred = event("github", event_type, Value::Null);
                let (got, parsed) = rules.evaluate_deferred(&mut deferred, text.as_bytes());
                prop_assert_eq!(&got, &expected);
                if !parsed {
                    prop_assert_eq!(&deferred["payload"], &Value::Null);
                    prop_assert!(!expected.globally_transformed);
                    deferred["payload"] = payload;
                }
                prop_assert_eq!(&deferred, &tree);
            }
        }
    }
}
