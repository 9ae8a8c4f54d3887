//! `event-router check-config FILE`: the file alone (no environment, no flags) read, and every
//! rule object it declares (`[[agents]]`, `[[filters]]`, `[[routes]]`, `[[rate_limits]]`)
//! checked, each error pointing at its line. `serve` runs the same checks before it starts.
//!
//! The checks are here, with the commands, because they use the parsers of rules, rate limits
//! and signing secrets: in `config`, which nearly every module imports, they would close
//! circles of imports.

use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use crate::event::snake_case;

use crate::config::{Config, ConfigError, ConfigErrors, Declared};
use crate::providers::standard::StandardSigner;
use crate::ratelimit;
use crate::rules::{self, KnownAgents};

struct AnyAgent;

impl KnownAgents for AnyAgent {
    fn knows_agent(&self, _: &str) -> bool {
        true
    }
}

/// The agents declared in the file, and the stand-in target of a route whose targets were all
/// set aside (see [`every_problem`]).
struct DeclaredAgents<'a>(&'a [String]);

impl KnownAgents for DeclaredAgents<'_> {
    fn knows_agent(&self, id: &str) -> bool {
        id == STAND_IN_AGENT || self.0.knows_agent(id)
    }
}

/// Not a valid agent id (a space), so never one of the file's.
const STAND_IN_AGENT: &str = "set aside";

fn error(kind: &str, index: usize, d: &Declared, field: &str, message: &str) -> ConfigError {
    // One error per line: a regex or jq error may span several.
    let message: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    ConfigError {
        location: d.location_of(field).to_string(),
        key: match field {
            // The object as a whole (not a table, say).
            "" | "body" => format!("{kind}[{index}]"),
            _ => format!("{kind}[{index}].{field}"),
        },
        message: message.join(" "),
    }
}

/// Checks every declared object. Route targets are checked against the declared agents only
/// when `routes_against_declared_agents` (check-config: the file alone); at `serve` they are
/// checked against the store's agents too, when the file is applied.
pub fn check_declarations(
    config: &Config,
    routes_against_declared_agents: bool,
) -> Result<(), ConfigErrors> {
    let errors = declaration_errors(config, routes_against_declared_agents);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Every problem of every declared object, in the order of the file.
fn declaration_errors(config: &Config, routes_against_declared_agents: bool) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let mut report = |kind: &str, i: usize, d: &Declared, problems: Vec<Problem>| {
        // In the file's words: an element of `filters = [ … ]` that is not an inline table.
        if !d.value.is_object() {
            errors.push(error(kind, i, d, "", "expected a table"));
            return;
        }
        errors.extend(
            problems
                .into_iter()
                .map(|(field, message)| error(kind, i, d, &field, &message)),
        );
    };
    // A route may name an agent whose declaration has other mistakes: that is one error (the
    // agent's), not two, so the ids are read from what was written.
    let agent_ids: Vec<String> = config
        .agents
        .iter()
        .filter_map(|d| d.value.get("id")?.as_str().map(str::to_string))
        .collect();
    for (i, d) in config.agents.iter().enumerate() {
        let mut problems = every_problem(&d.value, &|v| {
            let a = rules::agent_from_value(v).map_err(|e| (e.field, e.message))?;
            match &a.secret {
                Some(s) => StandardSigner::from_secret(s).map(|_| ()).map_err(|e| {
                    (
                        "secret".into(),
                        format!("not a Standard Webhooks secret: {e}"),
                    )
                }),
                None => Ok(()),
            }
        });
        if let Some(id) = d.value.get("id").and_then(Value::as_str)
            && agent_ids[..i].iter().any(|a| a == id)
        {
            problems.push(("id".into(), format!("duplicate agent id \"{id}\"")));
        }
        report("agents", i, d, problems);
    }
    for (i, d) in config.filters.iter().enumerate() {
        let problems = every_problem(&d.value, &|v| {
            rules::filter_from_value(v)
                .map(|_| ())
                .map_err(|e| (e.field, e.message))
        });
        report("filters", i, d, problems);
    }
    for (i, d) in config.routes.iter().enumerate() {
        let problems = every_problem(&d.value, &|v| {
            let result = if routes_against_declared_agents {
                rules::route_from_value(v, &DeclaredAgents(&agent_ids)).map(|_| ())
            } else {
                // Any agent id passes here; the real targets are checked when applied.
                rules::route_from_value(v, &AnyAgent).map(|_| ())
            };
            result.map_err(|e| (e.field, e.message))
        });
        report("routes", i, d, problems);
    }
    for (i, d) in config.rate_limits.iter().enumerate() {
        let problems = every_problem(&d.value, &|v| {
            ratelimit::config_from_value(v)
                .map(|_| ())
                .map_err(|e| (e.field, e.message))
        });
        report("rate_limits", i, d, problems);
    }
    errors
}

/// A field path and what is wrong there.
type Problem = (String, String);

/// Every problem of one declared object, where the parsers report only the first: each
/// problem found is set aside (the bad element of a list removed, a bad required key given a
/// harmless value, any other bad key removed) and the object parsed again, until it parses.
/// Problems that follow from an earlier one (a missing key after its bad value was removed,
/// `targetAgents` empty after its only unknown agent was removed) are not reported again.
fn every_problem(value: &Value, parse: &dyn Fn(Value) -> Result<(), Problem>) -> Vec<Problem> {
    // Enough for any object a person writes; a bound so that a repair that changes nothing
    // cannot loop.
    const MAX_ROUNDS: usize = 64;
    let mut work = value.clone();
    let mut removed: Vec<(Vec<Seg>, usize)> = Vec::new();
    let mut seen: Vec<Vec<Seg>> = Vec::new();
    let mut placed: Vec<Vec<Seg>> = Vec::new();
    let mut out = Vec::new();
    for _ in 0..MAX_ROUNDS {
        let Err((field, message)) = parse(work.clone()) else {
            break;
        };
        let here = parse_path(&field);
        let original = translate(&here, &removed);
        if !seen.iter().any(|s| related(s, &original)) {
            out.push((show_path(&original), message));
        }
        seen.push(original);
        if here.is_empty() || !set_aside(&mut work, &here, &mut removed, &mut placed) {
            break;
        }
    }
    out
}

#[derive(Debug, Clone)]
enum Seg {
    /// As the error spelled it; compared in snake_case, since errors use the wire's camelCase
    /// and the file may not.
    Key(String),
    Index(usize),
}

impl PartialEq for Seg {
    fn eq(&self, other: &Seg) -> bool {
        match (self, other) {
            (Seg::Key(a), Seg::Key(b)) => a == b || snake_case(a) == snake_case(b),
            (Seg::Index(a), Seg::Index(b)) => a == b,
            _ => false,
        }
    }
}

/// The spellings a key may have in the object: as named, snake_case, camelCase.
fn spellings(key: &str) -> [String; 3] {
    let snake = snake_case(key);
    [key.to_string(), camel_case(&snake), snake]
}

/// `sourceFilters[0].conditions[1].operator` → segments.
fn parse_path(field: &str) -> Vec<Seg> {
    let mut segs = Vec::new();
    for part in field.split('.').filter(|p| !p.is_empty()) {
        let (key, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !key.is_empty() {
            segs.push(Seg::Key(key.to_string()));
        }
        while let Some(inner) = rest.strip_prefix('[') {
            let Some((index, tail)) = inner.split_once(']') else {
                break;
            };
            match index.parse() {
                Ok(i) => segs.push(Seg::Index(i)),
                Err(_) => segs.push(Seg::Key(index.to_string())),
            }
            rest = tail;
        }
    }
    segs
}

fn show_path(segs: &[Seg]) -> String {
    let mut out = String::new();
    for s in segs {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn camel_case(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    let mut upper = false;
    for c in key.chars() {
        if c == '_' && !out.is_empty() {
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

/// One path is the other or lies inside it.
fn related(a: &[Seg], b: &[Seg]) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

/// A path in the object as it is now, back in the object as written (before elements were
/// removed from its lists).
fn translate(path: &[Seg], removed: &[(Vec<Seg>, usize)]) -> Vec<Seg> {
    let mut path = path.to_vec();
    for (list, index) in removed.iter().rev() {
        if path.len() > list.len()
            && path[..list.len()] == list[..]
            && let Seg::Index(i) = &mut path[list.len()]
            && *i >= *index
        {
            *i += 1;
        }
    }
    path
}

/// Takes the problem at `path` out of `work` so that parsing can go on; false when nothing
/// more can be done.
fn set_aside(
    work: &mut Value,
    path: &[Seg],
    removed: &mut Vec<(Vec<Seg>, usize)>,
    placed: &mut Vec<Vec<Seg>>,
) -> bool {
    // Inside a list, the element goes (a condition, a source filter, a target agent).
    if let Some(at) = path.iter().rposition(|s| matches!(s, Seg::Index(_))) {
        let (list, Seg::Index(index)) = (&path[..at], &path[at]) else {
            return false;
        };
        return match lookup(work, list) {
            Some(Value::Array(items)) if *index < items.len() => {
                items.remove(*index);
                removed.push((list.to_vec(), *index));
                true
            }
            _ => false,
        };
    }
    let Some((Seg::Key(key), parent)) = path.split_last() else {
        return false;
    };
    let Some(Value::Object(object)) = lookup(work, parent) else {
        return false;
    };
    let written = spellings(key).into_iter().find(|k| object.contains_key(k));
    if !placed.iter().any(|p| p == path)
        && let Some(value) = stand_in(&snake_case(key), object)
    {
        placed.push(path.to_vec());
        let wire = camel_case(&snake_case(key));
        object.insert(written.unwrap_or(wire), value);
        return true;
    }
    match written {
        Some(k) => {
            object.remove(&k);
            true
        }
        // A required key with no stand-in: the object holding it goes, unless it is the
        // declaration itself.
        None => !parent.is_empty() && set_aside(work, parent, removed, placed),
    }
}

/// A valid value for a required key, so that the rest of its object can still be checked.
fn stand_in(key: &str, object: &serde_json::Map<String, Value>) -> Option<Value> {
    Some(match key {
        "id" | "name" | "source" | "identifier" | "field" => Value::from("x"),
        // `transformation` is refused beside any other action.
        "action" if object.contains_key("transformation") => Value::from("transform"),
        "action" => Value::from("include"),
        "target_agents" => Value::Array(vec![Value::from(STAND_IN_AGENT)]),
        "type" => Value::from("jq"),
        "expression" => Value::from("."),
        "max_attempts" | "limit" | "window" => Value::from(1),
        "backoff_strategy" => Value::from("fixed"),
        "base_delay" => Value::from(0),
        "max_delay" => Value::from(rules::validate::MAX_RETRY_DELAY_MS),
        _ => return None,
    })
}

fn lookup<'v>(value: &'v mut Value, path: &[Seg]) -> Option<&'v mut Value> {
    let mut at = value;
    for seg in path {
        at = match (seg, at) {
            (Seg::Index(i), Value::Array(items)) => items.get_mut(*i)?,
            (Seg::Key(k), Value::Object(object)) => {
                let written = spellings(k).into_iter().find(|w| object.contains_key(w))?;
                object.get_mut(&written)?
            }
            _ => return None,
        };
    }
    Some(at)
}

/// Prints `FILE: ok` and exits 0, or prints every error and exits 1: the settings' and those
/// of every declared object, in the order of the file.
pub fn main(path: &Path) -> ExitCode {
    let (cfg, mut errors) = Config::from_file_all(path);
    errors.extend(declaration_errors(&cfg, true));
    if errors.is_empty() {
        println!("{}: ok", path.display());
        return ExitCode::SUCCESS;
    }
    sort_by_position(&mut errors);
    eprintln!("{}", ConfigErrors(errors));
    ExitCode::FAILURE
}

/// Orders errors by line and column where they have one (`file:line:column`); the others keep
/// their place at the end.
pub fn sort_by_position(errors: &mut [ConfigError]) {
    let position = |e: &ConfigError| -> Option<(u64, u64)> {
        let mut parts = e.location.rsplitn(3, ':');
        let column = parts.next()?.parse().ok()?;
        let line = parts.next()?.parse().ok()?;
        parts.next()?;
        Some((line, column))
    };
    errors.sort_by_key(|e| position(e).unwrap_or((u64::MAX, u64::MAX)));
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn filter_problems(value: Value) -> Vec<Problem> {
        every_problem(&value, &|v| {
            rules::filter_from_value(v)
                .map(|_| ())
                .map_err(|e| (e.field, e.message))
        })
    }

    fn fields(problems: &[Problem]) -> Vec<&str> {
        problems.iter().map(|(f, _)| f.as_str()).collect()
    }

    #[test]
    fn every_problem_of_a_filter_with_the_original_indexes() {
        let problems = filter_problems(json!({
            "id": "bad id", "name": "", "action": "explode",
            "conditions": [
                {"field": "a", "operator": "nope", "value": 1},
                {"field": "b", "operator": "equals", "value": 1},
                {"field": "c", "operator": "regex", "value": "("},
                {"field": "d", "operator": "in", "value": 1},
            ],
        }));
        assert_eq!(
            fields(&problems),
            [
                "action",
                "conditions[0].operator",
                "id",
                "name",
                "conditions[2].value",
                "conditions[3].value"
            ],
            "{problems:#?}"
        );
    }

    #[test]
    fn consequences_of_a_problem_are_not_reported_again() {
        // The only target is unknown: "at least one agent" would follow from removing it.
        let problems = every_problem(
            &json!({"id": "r", "name": "R", "target_agents": ["ghost"],
                    "retry_policy": {"max_attempts": 0, "backoff_strategy": "sideways",
                                     "base_delay": 1, "max_delay": 2}}),
            &|v| {
                rules::route_from_value(v, &DeclaredAgents(&["a".to_string()]))
                    .map(|_| ())
                    .map_err(|e| (e.field, e.message))
            },
        );
        assert_eq!(
            fields(&problems),
            [
                "retry_policy.backoff_strategy",
                "targetAgents[0]",
                "retryPolicy.maxAttempts"
            ],
            "{problems:#?}"
        );
        // A missing required key is one problem, and the rest is still checked.
        let problems = filter_problems(json!({"id": "f", "name": "F", "conditions": [
            {"field": "a", "value": 1}, {"field": "b", "operator": "regex", "value": "["}]}));
        assert_eq!(
            fields(&problems),
            ["conditions[0].operator", "action", "conditions[1].value"],
            "{problems:#?}"
        );
    }

    #[test]
    fn a_whole_body_problem_ends_the_search() {
        let problems = filter_problems(json!(["not", "an", "object"]));
        assert_eq!(problems.len(), 1, "{problems:#?}");
    }

    #[test]
    fn paths_translate_across_removed_elements() {
        let removed = vec![(parse_path("conditions"), 0), (parse_path("conditions"), 1)];
        // Now conditions[1] was conditions[3] as written: [0] and then the new [1] went.
        assert_eq!(
            show_path(&translate(&parse_path("conditions[1].value"), &removed)),
            "conditions[3].value"
        );
        assert_eq!(
            show_path(&translate(&parse_path("sourceFilters[0]"), &removed)),
            "sourceFilters[0]"
        );
    }

    #[test]
    fn an_inline_element_that_is_not_a_table_keeps_the_others_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "filters = [ 5, { id = \"f\", name = \"F\", action = \"nope\" } ]\n",
        )
        .unwrap();
        let (cfg, errors) = Config::from_file_all(&path);
        assert!(errors.is_empty(), "{errors:?}");
        let shown: Vec<String> = declaration_errors(&cfg, true)
            .iter()
            .map(|e| format!("{}: {}", e.key, e.message))
            .collect();
        assert_eq!(shown.len(), 2, "{shown:#?}");
        assert_eq!(shown[0], "filters[0]: expected a table");
        assert!(
            shown[1].starts_with("filters[1].action: unknown action"),
            "{shown:#?}"
        );
    }

    #[test]
    fn errors_sort_by_line_then_column() {
        let e = |location: &str| ConfigError {
            location: location.into(),
            key: "k".into(),
            message: "m".into(),
        };
        let mut errors = vec![
            e("env X"),
            e("c.toml:10:2"),
            e("c.toml:2:9"),
            e("c.toml:2:1"),
        ];
        sort_by_position(&mut errors);
        let order: Vec<&str> = errors.iter().map(|e| e.location.as_str()).collect();
        assert_eq!(order, ["c.toml:2:1", "c.toml:2:9", "c.toml:10:2", "env X"]);
    }
}
