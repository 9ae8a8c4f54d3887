//! The `RateLimitConfig` wire/config shape (API.md sections 6 and 8), its parsing and validation.

use serde::{Deserialize, Serialize};

/// Longest accepted window: 30 days. Longer windows would pin idle keys in
/// memory for months and are better expressed as a quota elsewhere.
pub const MAX_WINDOW_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// Longest accepted `source` or `identifier` in a config, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Which algorithm decides a key's requests. See `docs/rate-limits.md`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    FixedWindow,
    SlidingWindow,
    TokenBucket,
}

impl Strategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::FixedWindow => "fixed_window",
            Strategy::SlidingWindow => "sliding_window",
            Strategy::TokenBucket => "token_bucket",
        }
    }
}

/// One limit: `limit` requests per `window` ms for `source:identifier`.
///
/// Every field name is a single word, so the camelCase of the API and the
/// snake_case of the TOML file are the same spelling and no aliases are needed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimitConfig {
    pub source: String,
    /// `"*"` applies to every identifier of the source without an exact entry.
    pub identifier: String,
    pub limit: u64,
    /// Milliseconds.
    pub window: u64,
    /// Token bucket capacity; defaults to `limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
}

impl RateLimitConfig {
    /// The strategy this config runs with.
    ///
    /// A config that sets `burst` but no strategy means a token bucket: burst
    /// is only meaningful there, and silently ignoring a capacity the operator
    /// wrote down would be the more surprising reading.
    pub fn effective_strategy(&self) -> Strategy {
        match (self.strategy, self.burst) {
            (Some(s), _) => s,
            (None, Some(_)) => Strategy::TokenBucket,
            (None, None) => Strategy::SlidingWindow,
        }
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        check_name("source", &self.source)?;
        check_name("identifier", &self.identifier)?;
        if self.limit < 1 {
            return Err(ValidationError::new("limit", "must be at least 1"));
        }
        if self.window < 1 {
            return Err(ValidationError::new("window", "must be at least 1 ms"));
        }
        if self.window > MAX_WINDOW_MS {
            return Err(ValidationError::new(
                "window",
                format!("must be at most {MAX_WINDOW_MS} ms (30 days)"),
            ));
        }
        if let Some(burst) = self.burst {
            if burst < 1 {
                return Err(ValidationError::new("burst", "must be at least 1"));
            }
            if self.effective_strategy() != Strategy::TokenBucket {
                return Err(ValidationError::new(
                    "burst",
                    format!(
                        "only applies to strategy token_bucket, not {}",
                        self.effective_strategy().as_str()
                    ),
                ));
            }
        }
        Ok(())
    }
}

fn check_name(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(ValidationError::new(
            field,
            format!("must be at most {MAX_NAME_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// A config the caller got wrong; `field` is a path such as `limit` or
/// `[2].window`, ready for a 400 body or a `check-config` report.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
    /// Line and column (1-based) in a JSON body of a syntax error or a value of the wrong type.
    pub position: Option<(usize, usize)>,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            position: None,
        }
    }

    /// Prefixes the field with a list position, for errors in a whole set.
    pub fn at_index(mut self, index: usize) -> Self {
        self.field = format!("[{index}].{}", self.field);
        self
    }
}

/// Parses and validates one config from a JSON body (the admin `PUT`).
pub fn parse_config(json: &[u8]) -> Result<RateLimitConfig, ValidationError> {
    let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| {
        let mut err = ValidationError::new("body", message_of(&e));
        err.position = position_of(&e);
        err
    })?;
    if !value.is_object() {
        return config_from_value(value);
    }
    // Read from the bytes (not the value) so that a wrong type is reported where it is.
    let de = &mut serde_json::Deserializer::from_slice(json);
    let config: RateLimitConfig = serde_path_to_error::deserialize(de).map_err(|e| {
        let position = position_of(e.inner());
        let mut err = from_serde_error(e);
        err.position = position;
        err
    })?;
    config.validate()?;
    Ok(config)
}

fn position_of(e: &serde_json::Error) -> Option<(usize, usize)> {
    // serde_json counts column 0 for the end of the body just after a line break.
    (e.line() > 0).then(|| (e.line(), e.column().max(1)))
}

/// serde_json's message without its trailing position (kept apart).
fn message_of(e: &serde_json::Error) -> String {
    let message = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match message.strip_suffix(&suffix) {
        Some(stripped) if e.line() > 0 => stripped.to_string(),
        _ => message,
    }
}

/// Parses and validates one config from an already-decoded JSON value
/// (e.g. one element of a TOML array converted to JSON).
pub fn config_from_value(value: serde_json::Value) -> Result<RateLimitConfig, ValidationError> {
    // serde's derive would also accept a positional array for a struct;
    // nobody means that, and "expected an object" is the clearer answer.
    if !value.is_object() {
        return Err(ValidationError::new(
            "body",
            format!("expected a JSON object, found {}", json_kind(&value)),
        ));
    }
    let config: RateLimitConfig =
        serde_path_to_error::deserialize(value).map_err(from_serde_error)?;
    config.validate()?;
    Ok(config)
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn from_serde_error(err: serde_path_to_error::Error<serde_json::Error>) -> ValidationError {
    let message = crate::rules::validate::plain_words(&message_of(err.inner()));
    let path = err.path().to_string();
    if path != "." {
        return ValidationError::new(path, message);
    }
    if let Some(name) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        return ValidationError::new(name, "is required");
    }
    // Missing and unknown fields are reported by serde at the object itself;
    // name the field so the dashboard can show the error next to it.
    let field = ["missing field `", "unknown field `"]
        .iter()
        .find_map(|prefix| message.strip_prefix(prefix))
        .and_then(|rest| rest.split('`').next())
        .unwrap_or("body")
        .to_string();
    ValidationError::new(field, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> serde_json::Value {
        json!({"source": "github", "identifier": "octocat", "limit": 10, "window": 60000})
    }

    #[test]
    fn parses_minimal_and_full_configs() {
        let c = parse_config(valid().to_string().as_bytes()).expect("valid");
        assert_eq!(c.limit, 10);
        assert_eq!(c.burst, None);
        assert_eq!(c.strategy, None);
        assert_eq!(c.effective_strategy(), Strategy::SlidingWindow);

        let c = config_from_value(json!({"source": "linear", "identifier": "*", "limit": 5,
            "window": 1000, "burst": 20, "strategy": "token_bucket"}))
        .expect("valid");
        assert_eq!(c.burst, Some(20));
        assert_eq!(c.strategy, Some(Strategy::TokenBucket));
    }

    #[test]
    fn burst_without_strategy_means_token_bucket() {
        let mut v = valid();
        v["burst"] = json!(3);
        let c = config_from_value(v).expect("valid");
        assert_eq!(c.effective_strategy(), Strategy::TokenBucket);
    }

    #[test]
    fn burst_with_a_window_strategy_is_rejected() {
        let mut v = valid();
        v["burst"] = json!(3);
        v["strategy"] = json!("fixed_window");
        let err = config_from_value(v).expect_err("invalid");
        assert_eq!(err.field, "burst");
    }

    #[test]
    fn serializes_without_absent_options_and_round_trips() {
        let c = config_from_value(valid()).expect("valid");
        let out = serde_json::to_value(&c).expect("serialize");
        assert_eq!(out, valid());
        let mut v = valid();
        v["strategy"] = json!("fixed_window");
        let c = config_from_value(v.clone()).expect("valid");
        assert_eq!(serde_json::to_value(&c).expect("serialize"), v);
    }

    #[test]
    fn serde_errors_name_the_field() {
        let cases = [
            (
                json!({"source": "github", "identifier": "x", "limit": -1, "window": 1}),
                "limit",
            ),
            (
                json!({"source": "github", "identifier": "x", "limit": 1, "window": "1s"}),
                "window",
            ),
            (
                json!({"source": "github", "identifier": "x", "window": 1}),
                "limit",
            ),
            (
                json!({"source": "github", "identifier": "x", "limit": 1, "window": 1, "bogus": 1}),
                "bogus",
            ),
            (
                json!({"source": "github", "identifier": "x", "limit": 1, "window": 1, "strategy": "leaky"}),
                "strategy",
            ),
            (json!([1, 2]), "body"),
        ];
        for (value, field) in cases {
            let err = config_from_value(value.clone()).expect_err("invalid");
            assert_eq!(err.field, field, "{value}: {err}");
            let err = parse_config(value.to_string().as_bytes()).expect_err("invalid");
            assert_eq!(err.field, field, "{value}: {err}");
        }
        let err = parse_config(b"{\"source\": ").expect_err("truncated");
        assert_eq!(err.field, "body");
        let err = parse_config(format!("{} x", valid()).as_bytes()).expect_err("trailing");
        assert_eq!(err.field, "body");
    }

    #[test]
    fn validation_bounds() {
        let base = config_from_value(valid()).expect("valid");
        let check = |f: fn(&mut RateLimitConfig), field: &str| {
            let mut c = base.clone();
            f(&mut c);
            let err = c.validate().expect_err("invalid");
            assert_eq!(err.field, field);
            assert!(err.to_string().starts_with(&format!("{field}: ")));
        };
        check(|c| c.limit = 0, "limit");
        check(|c| c.window = 0, "window");
        check(|c| c.window = MAX_WINDOW_MS + 1, "window");
        check(|c| c.burst = Some(0), "burst");
        check(|c| c.source.clear(), "source");
        check(|c| c.identifier.clear(), "identifier");
        check(|c| c.source = "s".repeat(MAX_NAME_BYTES + 1), "source");
        check(
            |c| c.identifier = "i".repeat(MAX_NAME_BYTES + 1),
            "identifier",
        );

        let mut edge = base.clone();
        edge.window = MAX_WINDOW_MS;
        edge.limit = 1;
        edge.identifier = "i".repeat(MAX_NAME_BYTES);
        assert!(edge.validate().is_ok());
    }

    #[test]
    fn error_display_and_index() {
        let e = ValidationError::new("limit", "must be at least 1").at_index(2);
        assert_eq!(e.to_string(), "[2].limit: must be at least 1");
    }
}
