//! The rules engine: filter and route models, their validation, and the
//! compiled [`RuleSet`] that decides which agents receive each event.
//!
//! - [`model`]: the wire types of API.md section 5 (serde, camelCase, with
//!   snake_case aliases for the config file).
//! - [`validate`]: parse + validate with errors naming the field.
//! - [`path`], [`condition`]: dot paths and operators, compiled once.
//! - [`transform`]: jq programs (jaq) and their time-budgeted workers.
//! - [`ruleset`]: the immutable compiled rules and `evaluate`.
//! - [`subscription`]: stream `filters=` narrowing.
//! - [`stored`]: the stored form of rules (server-side fields such as an agent's key hash).

pub mod condition;
pub mod model;
pub mod path;
pub mod ruleset;
pub mod stored;
pub mod subscription;
pub mod transform;
pub mod validate;

pub use condition::Condition;
pub use model::{
    Agent, AgentMode, AgentRateLimit, BackoffStrategy, EventFilter, EventRoute,
    EventTransformation, FilterAction, FilterCondition, Operator, RetryPolicy, TransformationType,
};
pub use path::FieldPath;
pub use ruleset::{
    Evaluation, FilterError, IMMUTABLE_FIELDS, PlannedBody, PlannedDelivery, RuleOptions, RuleSet,
};
pub use subscription::{Subscription, SubscriptionSpec};
pub use transform::{JqCompileError, JqProgram, TransformError};
pub use validate::{
    KnownAgents, ValidationError, agent_from_value, check_agent, check_filter, check_route,
    filter_from_value, parse_agent, parse_agent_all, parse_filter, parse_filter_all, parse_route,
    parse_route_all, route_from_value, validate_agent, validate_filter, validate_route,
};
