//! Stream subscription filters (`filters=` of `/stream/ws` and `/stream/sse`,
//! and the WebSocket `subscribe` message; API.md section 7).
//!
//! Accepted shapes: an array of [`FilterCondition`], or
//! `{"source"?, "eventType"?, "conditions"?}`. All given parts must hold.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::condition::Condition;
use super::model::FilterCondition;
use super::validate::ValidationError;

/// The wire shape of a subscription, normalized to the object form.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, alias = "event_type", skip_serializing_if = "Option::is_none")]
    pub event_type: Option<String>,
    #[serde(default)]
    pub conditions: Vec<FilterCondition>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Shape {
    Conditions(Vec<Value>),
    Object(Value),
}

/// A compiled subscription filter.
#[derive(Debug, Clone)]
pub struct Subscription {
    spec: SubscriptionSpec,
    conditions: Box<[Condition]>,
}

impl Subscription {
    /// Everything passes.
    pub fn all() -> Self {
        Subscription {
            spec: SubscriptionSpec::default(),
            conditions: Box::new([]),
        }
    }

    /// Parses the decoded `filters` parameter (JSON text).
    pub fn parse(json: &str) -> Result<Self, ValidationError> {
        let value: Value = serde_json::from_str(json)
            .map_err(|e| ValidationError::new("filters", format!("invalid JSON: {e}")))?;
        Self::from_value(value)
    }

    /// Compiles either accepted shape.
    pub fn from_value(value: Value) -> Result<Self, ValidationError> {
        let spec_value = match serde_json::from_value::<Shape>(value) {
            Ok(Shape::Conditions(list)) => serde_json::json!({ "conditions": list }),
            Ok(Shape::Object(v)) if v.is_object() => v,
            _ => {
                return Err(ValidationError::new(
                    "filters",
                    "must be an array of conditions or an object {source?, eventType?, conditions?}",
                ));
            }
        };
        let spec: SubscriptionSpec = serde_path_to_error::deserialize(spec_value).map_err(|e| {
            let path = e.path().to_string();
            ValidationError::new(path, e.into_inner().to_string()).under("filters")
        })?;
        let conditions = spec
            .conditions
            .iter()
            .enumerate()
            .map(|(i, c)| {
                Condition::compile(c).map_err(|e| e.under(&format!("filters.conditions[{i}]")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Subscription { spec, conditions })
    }

    /// Whether a condition looks into the event's `payload`: only then must a stream's events
    /// carry the payload as a tree for this filter (its text is in the message either way).
    pub fn reads_payload(&self) -> bool {
        self.conditions.iter().any(Condition::reads_payload)
    }

    /// Whether every event passes (no source, type or condition), so matching needs no event.
    pub fn passes_everything(&self) -> bool {
        self.spec.source.is_none() && self.spec.event_type.is_none() && self.conditions.is_empty()
    }

    /// Whether `event` (the section 4 object) passes.
    pub fn matches(&self, event: &Value) -> bool {
        let scope_ok = |want: &Option<String>, key: &str| {
            want.as_deref()
                .is_none_or(|w| event.get(key).and_then(Value::as_str) == Some(w))
        };
        scope_ok(&self.spec.source, "source")
            && scope_ok(&self.spec.event_type, "type")
            && self.conditions.iter().all(|c| c.holds(event))
    }

    /// The normalized filter, for `subscription_update` messages.
    pub fn spec(&self) -> &SubscriptionSpec {
        &self.spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn both_shapes() {
        let event =
            json!({"source": "github", "type": "push", "payload": {"ref": "refs/heads/main"}});
        let a = Subscription::parse(
            r#"[{"field":"payload.ref","operator":"contains","value":"main"}]"#,
        )
        .unwrap();
        assert!(a.matches(&event));
        let b = Subscription::parse(r#"{"source":"github","eventType":"pull_request"}"#).unwrap();
        assert!(!b.matches(&event));
        let c = Subscription::parse(r#"{"source":"github"}"#).unwrap();
        assert!(c.matches(&event));
        assert!(Subscription::all().matches(&event));
    }

    #[test]
    fn errors_name_the_field() {
        let e =
            Subscription::parse(r#"[{"field":"a","operator":"regex","value":"("}]"#).unwrap_err();
        assert_eq!(e.field, "filters.conditions[0].value");
        let e = Subscription::parse(r#"[{"field":"a","operator":"nope","value":1}]"#).unwrap_err();
        assert_eq!(e.field, "filters.conditions[0].operator");
        assert!(Subscription::parse("42").is_err());
        assert!(Subscription::parse("{").is_err());
        assert!(Subscription::parse(r#"{"sauce":"x"}"#).is_err());
    }
}
