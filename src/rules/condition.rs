//! Filter conditions compiled for evaluation: path, operator, literal.
//!
//! Exact semantics (API.md section 5), decided once here:
//! - `equals`: JSON equality; numbers compare numerically (`3 == 3.0`);
//!   with `caseSensitive: false` every string inside the compared values is
//!   case-folded (object keys are not).
//! - `contains`: a string field contains the string value as a substring, or
//!   an array field has an element equal (as `equals`) to the value. Any other
//!   pairing is false.
//! - `regex`: Rust `regex` syntax on string fields only (other types false);
//!   `caseSensitive: false` compiles the pattern case-insensitively.
//! - `exists`: `true` holds when the field is present, `false` when absent.
//!   A JSON `null` counts as present: the key is there, and "is it null" is
//!   what `equals null` asks.
//! - `gt`/`lt`: numbers numerically, strings lexicographically by code point
//!   (case-folded if asked); any other pairing is false.
//! - `in`: the field equals (as `equals`) one of the value's elements.
//! - A missing field satisfies nothing but `exists: false`.
//! - Through arrays the condition holds if it holds for any element; `negate`
//!   inverts that final answer, so a negated condition on a missing field
//!   holds.
//!
//! Case folding is Unicode lowercasing applied char by char (`ÉCOLE` equals
//! `école`), the literal folded at compile time and the event side folded
//! on the fly without allocating (substring search reuses a per-thread
//! buffer).

use std::cell::RefCell;
use std::cmp::Ordering;

use regex::{Regex, RegexBuilder};
use serde_json::{Number, Value};

use super::model::{FilterCondition, Operator};
use super::path::{FieldPath, Memo, PrefixTable};
use super::validate::ValidationError;

/// Compiled regexes larger than this are refused (the default of the regex
/// crate is 10 MiB per regex; a filter needs far less).
const REGEX_SIZE_LIMIT: usize = 2 << 20;

/// A compiled [`FilterCondition`].
#[derive(Debug, Clone)]
pub struct Condition {
    path: FieldPath,
    test: Test,
    negate: bool,
}

#[derive(Debug, Clone)]
enum Test {
    Equals(Literal),
    Contains(Literal),
    Regex(Regex),
    Exists(bool),
    Gt(Literal),
    Lt(Literal),
    In(Box<[Value]>, bool),
}

/// A comparison value, pre-folded when the condition ignores case.
#[derive(Debug, Clone)]
struct Literal {
    value: Value,
    fold: bool,
}

impl Literal {
    fn new(value: &Value, case_sensitive: bool) -> Literal {
        let fold = !case_sensitive;
        Literal {
            value: if fold {
                fold_value(value)
            } else {
                value.clone()
            },
            fold,
        }
    }
}

impl Condition {
    /// Compiles a condition. Errors name the condition's own attribute
    /// (`field`, `value`); callers prefix them with `conditions[i]`.
    pub fn compile(c: &FilterCondition) -> Result<Condition, ValidationError> {
        let path = FieldPath::parse(&c.field).map_err(|m| ValidationError::new("field", m))?;
        let op = c.operator.as_str();
        let need = |what: &str| {
            ValidationError::new(
                "value",
                format!("{op} needs {what}, got {}", json_type(&c.value)),
            )
        };
        let test = match c.operator {
            Operator::Equals => Test::Equals(Literal::new(&c.value, c.case_sensitive)),
            Operator::Contains => Test::Contains(Literal::new(&c.value, c.case_sensitive)),
            Operator::Regex => {
                let pattern = c.value.as_str().ok_or_else(|| need("a string pattern"))?;
                let re = RegexBuilder::new(pattern)
                    .case_insensitive(!c.case_sensitive)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| ValidationError::new("value", format!("invalid regex: {e}")))?;
                Test::Regex(re)
            }
            Operator::Exists => Test::Exists(
                c.value
                    .as_bool()
                    .ok_or_else(|| need("a boolean (true = present, false = absent)"))?,
            ),
            Operator::Gt | Operator::Lt => {
                if !(c.value.is_number() || c.value.is_string()) {
                    return Err(need("a number or a string"));
                }
                let lit = Literal::new(&c.value, c.case_sensitive);
                if c.operator == Operator::Gt {
                    Test::Gt(lit)
                } else {
                    Test::Lt(lit)
                }
            }
            Operator::In => {
                let items = c.value.as_array().ok_or_else(|| need("an array"))?;
                let fold = !c.case_sensitive;
                let items = items
                    .iter()
                    .map(|v| if fold { fold_value(v) } else { v.clone() })
                    .collect();
                Test::In(items, fold)
            }
        };
        Ok(Condition {
            path,
            test,
            negate: c.negate,
        })
    }

    /// Whether the condition holds for `event` (the section 4 event object).
    #[inline]
    pub fn holds(&self, event: &Value) -> bool {
        let test = &self.test;
        let hit = self.path.any(event, &mut |leaf| test.test(leaf));
        hit != self.negate
    }

    /// [`Condition::holds`] through a per-event prefix memo (see
    /// [`PrefixTable`]).
    #[inline]
    pub fn holds_memo(&self, memo: &mut Memo<'_, '_>) -> bool {
        let test = &self.test;
        let hit = self.path.any_memo(memo, &mut |leaf| test.test(leaf));
        hit != self.negate
    }

    /// Shares this condition's path prefix with the others of a rule set.
    pub fn link(&mut self, table: &mut PrefixTable) {
        table.link(&mut self.path);
    }

    pub fn path(&self) -> &FieldPath {
        &self.path
    }

    /// Whether this condition looks into the event's `payload` (its path is `payload…`).
    pub fn reads_payload(&self) -> bool {
        self.path
            .as_str()
            .strip_prefix("payload")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    }
}

impl Test {
    fn test(&self, leaf: Option<&Value>) -> bool {
        let Some(v) = leaf else {
            return matches!(self, Test::Exists(false));
        };
        match self {
            Test::Exists(present) => *present,
            Test::Equals(lit) => json_eq(v, &lit.value, lit.fold),
            Test::Contains(lit) => match (v, &lit.value) {
                (Value::String(hay), Value::String(needle)) => {
                    if lit.fold {
                        contains_folded(hay, needle)
                    } else {
                        hay.contains(needle.as_str())
                    }
                }
                (Value::Array(items), want) => items.iter().any(|x| json_eq(x, want, lit.fold)),
                _ => false,
            },
            Test::Regex(re) => v.as_str().is_some_and(|s| re.is_match(s)),
            Test::Gt(lit) => compare(v, lit) == Some(Ordering::Greater),
            Test::Lt(lit) => compare(v, lit) == Some(Ordering::Less),
            Test::In(items, fold) => items.iter().any(|x| json_eq(v, x, *fold)),
        }
    }
}

/// Orders the event's value against the literal: numbers with numbers,
/// strings with strings, else unordered.
fn compare(v: &Value, lit: &Literal) -> Option<Ordering> {
    match (v, &lit.value) {
        (Value::Number(a), Value::Number(b)) => num_cmp(a, b),
        (Value::String(a), Value::String(b)) => Some(if lit.fold {
            fold_chars(a).cmp(b.chars())
        } else {
            a.as_str().cmp(b.as_str())
        }),
        _ => None,
    }
}

/// JSON equality with numeric number comparison; when `fold`, `lit` is
/// already folded and strings of `v` are folded on the fly.
pub(crate) fn json_eq(v: &Value, lit: &Value, fold: bool) -> bool {
    match (v, lit) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(a), Value::Bool(b)) => a == b,
        (Value::Number(a), Value::Number(b)) => num_cmp(a, b) == Some(Ordering::Equal),
        (Value::String(a), Value::String(b)) => {
            if fold {
                eq_folded(a, b)
            } else {
                a == b
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| json_eq(x, y, fold))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len()
                && a.iter()
                    .all(|(k, x)| b.get(k).is_some_and(|y| json_eq(x, y, fold)))
        }
        _ => false,
    }
}

/// Numeric order of two JSON numbers: exact for integers (up to u64/i64),
/// exact for an integer against an integral float, else by f64.
pub(crate) fn num_cmp(a: &Number, b: &Number) -> Option<Ordering> {
    match (as_int(a), as_int(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        (Some(x), None) => int_float_cmp(x, b.as_f64()?),
        (None, Some(y)) => int_float_cmp(y, a.as_f64()?).map(Ordering::reverse),
        (None, None) => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

fn as_int(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

fn int_float_cmp(x: i128, f: f64) -> Option<Ordering> {
    // 2^100 is far beyond any i64/u64, so the cast below is exact.
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e30 {
        Some(x.cmp(&(f as i128)))
    } else {
        (x as f64).partial_cmp(&f)
    }
}

/// Lowercases char by char (not `str::to_lowercase`, whose final-sigma rule
/// would differ from the on-the-fly folding of the other side).
pub(crate) fn fold_str(s: &str) -> String {
    if s.is_ascii() {
        s.to_ascii_lowercase()
    } else {
        fold_chars(s).collect()
    }
}

fn fold_chars(s: &str) -> impl Iterator<Item = char> + '_ {
    s.chars().flat_map(char::to_lowercase)
}

fn fold_value(v: &Value) -> Value {
    match v {
        Value::String(s) => Value::String(fold_str(s)),
        Value::Array(items) => Value::Array(items.iter().map(fold_value).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, x)| (k.clone(), fold_value(x)))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn eq_folded(s: &str, folded: &str) -> bool {
    if s.is_ascii() {
        s.len() == folded.len()
            && s.bytes()
                .zip(folded.bytes())
                .all(|(a, b)| a.to_ascii_lowercase() == b)
    } else {
        fold_chars(s).eq(folded.chars())
    }
}

thread_local! {
    /// Folded haystack for case-insensitive `contains`; reused so that the
    /// hot path does not allocate once warm.
    static FOLD_BUFFER: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Haystacks up to this size are searched in place when both sides are
/// ASCII; longer ones are folded into a buffer for a fast substring search.
const SMALL_HAYSTACK: usize = 512;

fn contains_folded(hay: &str, folded_needle: &str) -> bool {
    if folded_needle.is_empty() {
        return true;
    }
    if hay.len() <= SMALL_HAYSTACK && hay.is_ascii() && folded_needle.is_ascii() {
        let needle = folded_needle.as_bytes();
        return hay
            .as_bytes()
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle));
    }
    FOLD_BUFFER.with(|buf| {
        let Ok(mut buf) = buf.try_borrow_mut() else {
            // Not reachable (no re-entrancy), but never panic over it.
            return fold_str(hay).contains(folded_needle);
        };
        buf.clear();
        if hay.is_ascii() {
            buf.extend(hay.bytes().map(|b| char::from(b.to_ascii_lowercase())));
        } else {
            buf.extend(fold_chars(hay));
        }
        buf.contains(folded_needle)
    })
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn cond(field: &str, op: Operator, value: Value) -> FilterCondition {
        FilterCondition {
            field: field.into(),
            operator: op,
            value,
            case_sensitive: true,
            negate: false,
        }
    }

    /// (field, operator, value, caseSensitive, event, expected)
    fn check(table: &[(&str, Operator, Value, bool, Value, bool)]) {
        for (i, (field, op, value, cs, event, want)) in table.iter().enumerate() {
            let mut c = cond(field, *op, value.clone());
            c.case_sensitive = *cs;
            let compiled = Condition::compile(&c).unwrap_or_else(|e| panic!("row {i}: {e}"));
            assert_eq!(
                compiled.holds(event),
                *want,
                "row {i}: {field} {op} {value} (caseSensitive {cs}) on {event}"
            );
            c.negate = true;
            let negated = Condition::compile(&c).unwrap();
            assert_eq!(negated.holds(event), !*want, "row {i} negated");
        }
    }

    use Operator::*;

    #[test]
    fn equals() {
        let e = json!({"s": "Bug", "n": 3, "f": 3.0, "half": 2.5, "t": true, "z": null,
                       "a": [1, "X"], "o": {"k": "V"}, "big": 18446744073709551615u64,
                       "neg": -9223372036854775808i64, "u": "ÉCOLE"});
        check(&[
            ("s", Equals, json!("Bug"), true, e.clone(), true),
            ("s", Equals, json!("bug"), true, e.clone(), false),
            ("s", Equals, json!("bug"), false, e.clone(), true),
            ("s", Equals, json!("BUG"), false, e.clone(), true),
            ("n", Equals, json!(3), true, e.clone(), true),
            ("n", Equals, json!(3.0), true, e.clone(), true),
            ("f", Equals, json!(3), true, e.clone(), true),
            ("half", Equals, json!(2.5), true, e.clone(), true),
            ("half", Equals, json!(2), true, e.clone(), false),
            ("n", Equals, json!("3"), true, e.clone(), false),
            ("t", Equals, json!(true), true, e.clone(), true),
            ("t", Equals, json!(1), true, e.clone(), false),
            ("z", Equals, json!(null), true, e.clone(), true),
            ("missing", Equals, json!(null), true, e.clone(), false),
            ("a", Equals, json!([1, "X"]), true, e.clone(), true),
            ("a", Equals, json!([1.0, "x"]), false, e.clone(), true),
            ("a", Equals, json!([1, "x"]), true, e.clone(), false),
            ("o", Equals, json!({"k": "v"}), false, e.clone(), true),
            ("o", Equals, json!({"K": "V"}), false, e.clone(), false),
            (
                "big",
                Equals,
                json!(18446744073709551615u64),
                true,
                e.clone(),
                true,
            ),
            (
                "big",
                Equals,
                json!(18446744073709551614u64),
                true,
                e.clone(),
                false,
            ),
            (
                "neg",
                Equals,
                json!(-9223372036854775808i64),
                true,
                e.clone(),
                true,
            ),
            ("u", Equals, json!("école"), false, e.clone(), true),
            ("u", Equals, json!("école"), true, e.clone(), false),
            ("u", Equals, json!("ecole"), false, e.clone(), false),
        ]);
    }

    #[test]
    fn contains() {
        let e = json!({"title": "Fix the ÉCOLE crash 🚀 now", "labels": ["bug", "P1", 3],
                       "n": 12, "o": {"a": 1}, "objs": [{"a": 1}]});
        check(&[
            ("title", Contains, json!("ÉCOLE"), true, e.clone(), true),
            ("title", Contains, json!("école"), true, e.clone(), false),
            (
                "title",
                Contains,
                json!("école crash"),
                false,
                e.clone(),
                true,
            ),
            ("title", Contains, json!("🚀"), true, e.clone(), true),
            ("title", Contains, json!("CRASH"), false, e.clone(), true),
            ("title", Contains, json!("CRASH"), true, e.clone(), false),
            ("title", Contains, json!(""), true, e.clone(), true),
            ("title", Contains, json!(""), false, e.clone(), true),
            ("title", Contains, json!(3), true, e.clone(), false),
            ("labels", Contains, json!("bug"), true, e.clone(), true),
            ("labels", Contains, json!("BUG"), true, e.clone(), false),
            ("labels", Contains, json!("p1"), false, e.clone(), true),
            ("labels", Contains, json!("b"), true, e.clone(), false),
            ("labels", Contains, json!(3.0), true, e.clone(), true),
            ("objs", Contains, json!({"a": 1}), true, e.clone(), true),
            ("n", Contains, json!(1), true, e.clone(), false),
            ("o", Contains, json!("a"), true, e.clone(), false),
            ("missing", Contains, json!("x"), true, e.clone(), false),
        ]);
    }

    #[test]
    fn regex() {
        let e = json!({"branch": "feature/ABC-123", "n": 123, "u": "Straße"});
        check(&[
            (
                "branch",
                Regex,
                json!("^feature/[A-Z]+-\\d+$"),
                true,
                e.clone(),
                true,
            ),
            (
                "branch",
                Regex,
                json!("^feature/[a-z]+-\\d+$"),
                true,
                e.clone(),
                false,
            ),
            (
                "branch",
                Regex,
                json!("^feature/[a-z]+-\\d+$"),
                false,
                e.clone(),
                true,
            ),
            ("branch", Regex, json!("abc"), false, e.clone(), true),
            ("n", Regex, json!("123"), true, e.clone(), false),
            ("u", Regex, json!("STRAẞE"), false, e.clone(), true),
            ("missing", Regex, json!(".*"), true, e.clone(), false),
        ]);
    }

    #[test]
    fn exists() {
        let e = json!({"a": null, "b": {"c": false}, "arr": [{"x": 1}, {}], "empty": []});
        check(&[
            ("a", Exists, json!(true), true, e.clone(), true),
            ("a", Exists, json!(false), true, e.clone(), false),
            ("b.c", Exists, json!(true), true, e.clone(), true),
            ("b.d", Exists, json!(true), true, e.clone(), false),
            ("b.d", Exists, json!(false), true, e.clone(), true),
            ("a.x", Exists, json!(true), true, e.clone(), false),
            ("arr.x", Exists, json!(true), true, e.clone(), true),
            // any element lacks x
            ("arr.x", Exists, json!(false), true, e.clone(), true),
            ("arr.5", Exists, json!(true), true, e.clone(), false),
            ("empty.x", Exists, json!(true), true, e.clone(), false),
            ("empty.x", Exists, json!(false), true, e.clone(), true),
        ]);
    }

    #[test]
    fn gt_lt() {
        let e = json!({"n": 5, "f": 2.5, "s": "m", "u": "É", "big": 18446744073709551615u64,
                       "t": true, "z": null, "a": [1, 9]});
        check(&[
            ("n", Gt, json!(3), true, e.clone(), true),
            ("n", Gt, json!(5), true, e.clone(), false),
            ("n", Gt, json!(4.5), true, e.clone(), true),
            ("n", Lt, json!(5.5), true, e.clone(), true),
            ("n", Lt, json!(5), true, e.clone(), false),
            ("f", Gt, json!(2), true, e.clone(), true),
            ("f", Lt, json!(3), true, e.clone(), true),
            (
                "big",
                Gt,
                json!(9223372036854775807i64),
                true,
                e.clone(),
                true,
            ),
            ("big", Gt, json!(1e30), true, e.clone(), false),
            ("n", Gt, json!("3"), true, e.clone(), false),
            ("s", Gt, json!(3), true, e.clone(), false),
            ("s", Gt, json!("a"), true, e.clone(), true),
            ("s", Lt, json!("z"), true, e.clone(), true),
            ("s", Gt, json!("M"), true, e.clone(), true),
            ("s", Gt, json!("M"), false, e.clone(), false),
            ("s", Lt, json!("N"), false, e.clone(), true),
            ("u", Gt, json!("e"), true, e.clone(), true),
            ("u", Lt, json!("f"), false, e.clone(), false),
            ("t", Gt, json!(0), true, e.clone(), false),
            ("z", Lt, json!(1), true, e.clone(), false),
            ("missing", Gt, json!(0), true, e.clone(), false),
            ("missing", Lt, json!(0), true, e.clone(), false),
            // arrays at the end of a path are values, not crossed
            ("a", Gt, json!(0), true, e.clone(), false),
        ]);
    }

    #[test]
    fn in_operator() {
        let e = json!({"s": "Opened", "n": 2, "z": null, "a": ["x"]});
        check(&[
            ("s", In, json!(["opened", "closed"]), true, e.clone(), false),
            ("s", In, json!(["opened", "closed"]), false, e.clone(), true),
            ("s", In, json!(["Opened"]), true, e.clone(), true),
            ("n", In, json!([1, 2.0]), true, e.clone(), true),
            ("n", In, json!(["2"]), true, e.clone(), false),
            ("z", In, json!([null]), true, e.clone(), true),
            ("a", In, json!([["X"]]), false, e.clone(), true),
            ("s", In, json!([]), true, e.clone(), false),
            ("missing", In, json!([null]), true, e.clone(), false),
        ]);
    }

    #[test]
    fn any_element_and_indices() {
        let pr = json!({"payload": {"pull_request": {
            "labels": [{"name": "enhancement"}, {"name": "bug"}],
            "requested_reviewers": [[{"login": "octocat"}], [{"login": "hubot"}]],
            "assignees": []
        }}});
        check(&[
            (
                "payload.pull_request.labels.name",
                Equals,
                json!("bug"),
                true,
                pr.clone(),
                true,
            ),
            (
                "payload.pull_request.labels.name",
                Equals,
                json!("BUG"),
                false,
                pr.clone(),
                true,
            ),
            (
                "payload.pull_request.labels.name",
                Equals,
                json!("wontfix"),
                true,
                pr.clone(),
                false,
            ),
            (
                "payload.pull_request.labels.0.name",
                Equals,
                json!("bug"),
                true,
                pr.clone(),
                false,
            ),
            (
                "payload.pull_request.labels.1.name",
                Equals,
                json!("bug"),
                true,
                pr.clone(),
                true,
            ),
            (
                "payload.pull_request.labels.2.name",
                Equals,
                json!("bug"),
                true,
                pr.clone(),
                false,
            ),
            (
                "payload.pull_request.labels.2.name",
                Exists,
                json!(false),
                true,
                pr.clone(),
                true,
            ),
            (
                "payload.pull_request.requested_reviewers.login",
                Equals,
                json!("hubot"),
                true,
                pr.clone(),
                true,
            ),
            (
                "payload.pull_request.requested_reviewers.1.login",
                Equals,
                json!("hubot"),
                true,
                pr.clone(),
                true,
            ),
            (
                "payload.pull_request.requested_reviewers.0.login",
                Equals,
                json!("hubot"),
                true,
                pr.clone(),
                false,
            ),
            (
                "payload.pull_request.labels.name",
                Regex,
                json!("^enh"),
                true,
                pr.clone(),
                true,
            ),
            (
                "payload.pull_request.labels.name",
                In,
                json!(["x", "bug"]),
                true,
                pr.clone(),
                true,
            ),
            (
                "payload.pull_request.assignees.login",
                Equals,
                json!("x"),
                true,
                pr.clone(),
                false,
            ),
            (
                "payload.pull_request.labels",
                Contains,
                json!({"name": "bug"}),
                true,
                pr.clone(),
                true,
            ),
        ]);
        // negate of the any-element result: "no label is named bug"
        let mut c = cond("payload.pull_request.labels.name", Equals, json!("bug"));
        c.negate = true;
        assert!(!Condition::compile(&c).unwrap().holds(&pr));
        c.value = json!("wontfix");
        assert!(Condition::compile(&c).unwrap().holds(&pr));
    }

    #[test]
    fn missing_fields_with_negate() {
        let e = json!({"a": 1});
        for op in [Equals, Contains, Gt, Lt] {
            let mut c = cond("nope.deeper", op, json!(1));
            assert!(!Condition::compile(&c).unwrap().holds(&e));
            c.negate = true;
            assert!(Condition::compile(&c).unwrap().holds(&e), "{op}");
        }
    }

    #[test]
    fn compile_errors() {
        let bad = [
            (
                cond("a..b", Equals, json!(1)),
                "field",
                "segment 2 is empty",
            ),
            (cond("", Equals, json!(1)), "field", "must not be empty"),
            (cond("a", Regex, json!("(")), "value", "invalid regex: "),
            (
                cond("a", Regex, json!(1)),
                "value",
                "regex needs a string pattern, got a number",
            ),
            (
                cond("a", In, json!("x")),
                "value",
                "in needs an array, got a string",
            ),
            (
                cond("a", Exists, json!("yes")),
                "value",
                "exists needs a boolean",
            ),
            (
                cond("a", Gt, json!([1])),
                "value",
                "gt needs a number or a string, got an array",
            ),
            (
                cond("a", Lt, json!(null)),
                "value",
                "lt needs a number or a string, got null",
            ),
        ];
        for (c, field, msg) in bad {
            let e = Condition::compile(&c).unwrap_err();
            assert_eq!(e.field, field, "{e}");
            assert!(e.message.contains(msg), "{e}");
        }
    }

    #[test]
    fn fold_matches_char_by_char() {
        assert_eq!(fold_str("ÉCOLE"), "école");
        // Both sides fold char by char, so Σ is σ on either side.
        assert!(eq_folded("ΟΔΟΣ", &fold_str("οδοσ")));
        assert!(eq_folded("ΟΔΟΣ", &fold_str("ΟΔΟΣ")));
        assert!(eq_folded("İ", &fold_str("İ")));
        assert!(contains_folded("xxİyy", &fold_str("İY")));
        assert!(contains_folded("Hello World", "o w"));
        assert!(!contains_folded("Hello", "hello!"));
        let long = format!("{}Needle", "x".repeat(1000));
        assert!(contains_folded(&long, "needle"));
        assert!(!contains_folded(&long, "needles"));
    }

    pub(crate) fn arb_json() -> impl Strategy<Value = Value> {
        arb_json_of("[a-cA-CéÉ]{0,3}", "[a-c0-2]", 4, 32)
    }

    /// Random JSON: scalars of every kind, strings matching `strings`, and arrays and objects
    /// (keys matching `keys`) nested up to `depth`, about `size` nodes in all.
    pub(crate) fn arb_json_of(
        strings: &'static str,
        keys: &'static str,
        depth: u32,
        size: u32,
    ) -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            strings.prop_map(Value::String),
        ];
        leaf.prop_recursive(depth, size, 4, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(keys, inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    pub(crate) fn arb_path() -> impl Strategy<Value = String> {
        prop::collection::vec("[a-c0-2]", 1..4).prop_map(|s| s.join("."))
    }

    pub(crate) fn arb_operator() -> impl Strategy<Value = Operator> {
        prop::sample::select(Operator::ALL.to_vec())
    }

    /// A value the operator accepts, drawn from or shaped like `v`.
    pub(crate) fn fit(op: Operator, v: Value) -> Value {
        match op {
            Operator::Exists => Value::Bool(v.as_bool().unwrap_or(true)),
            Operator::In => match v {
                Value::Array(_) => v,
                other => Value::Array(vec![other]),
            },
            Operator::Regex => Value::String(match v {
                Value::String(s) => regex::escape(&s),
                _ => "a|b".into(),
            }),
            Operator::Gt | Operator::Lt => match v {
                Value::Number(_) | Value::String(_) => v,
                _ => Value::from(0),
            },
            Operator::Equals | Operator::Contains => v,
        }
    }

    proptest! {
        #[test]
        fn negate_is_exact_complement(
            event in arb_json(),
            path in arb_path(),
            op in arb_operator(),
            value in arb_json(),
            case_sensitive in any::<bool>(),
        ) {
            let mut c = FilterCondition {
                field: path,
                operator: op,
                value: fit(op, value),
                case_sensitive,
                negate: false,
            };
            let plain = Condition::compile(&c).unwrap().holds(&event);
            c.negate = true;
            let negated = Condition::compile(&c).unwrap().holds(&event);
            prop_assert!(plain != negated, "exactly one of a condition and its negation holds");
        }

        #[test]
        fn case_insensitive_equals_is_symmetric_in_case(s in "[a-zA-Zéàü ÉÀÜ]{0,8}") {
            let event = json!({"s": s.to_uppercase()});
            let mut c = cond("s", Equals, json!(s.to_lowercase()));
            c.case_sensitive = false;
            prop_assert!(Condition::compile(&c).unwrap().holds(&event));
        }
    }
}
