//! Dot paths into the event object, compiled once into segments.
//!
//! `payload.pull_request.labels.0.name`: each segment is an object key; a
//! segment made of digits also indexes an array. A path that reaches an array
//! with segments left and no index there holds if it holds for ANY element
//! (recursively, so nested arrays are crossed too):
//! `payload.pull_request.labels.name equals "bug"` matches a PR with a label
//! named bug. Keys that contain a dot cannot be addressed.

use std::fmt;

use serde_json::Value;

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq)]
struct Segment {
    key: Box<str>,
    /// Set when the segment is all digits. Too large to be an index of any
    /// real array = `usize::MAX`, which is simply out of range.
    index: Option<usize>,
}

/// A compiled dot path.
#[derive(Clone, PartialEq, Eq)]
pub struct FieldPath {
    raw: Box<str>,
    segments: Box<[Segment]>,
}

impl fmt::Debug for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FieldPath({:?})", self.raw)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Longest path accepted, in segments; deeper than any event can nest.
pub const MAX_SEGMENTS: usize = 64;

impl FieldPath {
    /// Compiles `path`. The error is a sentence for the `field` attribute.
    pub fn parse(path: &str) -> Result<FieldPath, String> {
        if path.is_empty() {
            return Err("must not be empty".into());
        }
        let mut segments = Vec::new();
        for (i, key) in path.split('.').enumerate() {
            if key.is_empty() {
                return Err(format!("invalid path {path:?}: segment {} is empty", i + 1));
            }
            if key.trim() != key {
                return Err(format!(
                    "invalid path {path:?}: segment {key:?} has surrounding spaces"
                ));
            }
            let index = if key.bytes().all(|b| b.is_ascii_digit()) {
                Some(key.parse::<usize>().unwrap_or(usize::MAX))
            } else {
                None
            };
            segments.push(Segment {
                key: key.into(),
                index,
            });
        }
        if segments.len() > MAX_SEGMENTS {
            return Err(format!(
                "invalid path {path:?}: more than {MAX_SEGMENTS} segments"
            ));
        }
        Ok(FieldPath {
            raw: path.into(),
            segments: segments.into(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Resolves the path in `root` and calls `test` on what it finds there:
    /// `Some(value)` for each value reached, `None` where the path is missing
    /// (absent key, index out of range, a scalar where a container was
    /// needed, or an empty array crossed). Returns true as soon as `test`
    /// does: the any-element rule.
    #[inline]
    pub fn any<'v>(
        &self,
        root: &'v Value,
        test: &mut dyn FnMut(Option<&'v Value>) -> bool,
    ) -> bool {
        walk(root, &self.segments, test)
    }

    /// The single value at this path, ignoring the any-element rule (a
    /// non-numeric segment on an array is missing).
    pub fn get<'v>(&self, root: &'v Value) -> Option<&'v Value> {
        let mut current = root;
        for seg in self.segments.iter() {
            current = match current {
                Value::Object(map) => map.get(&*seg.key)?,
                Value::Array(items) => items.get(seg.index?)?,
                _ => return None,
            };
        }
        Some(current)
    }
}

fn walk<'v>(
    value: &'v Value,
    segments: &[Segment],
    test: &mut dyn FnMut(Option<&'v Value>) -> bool,
) -> bool {
    let Some((seg, rest)) = segments.split_first() else {
        return test(Some(value));
    };
    match value {
        Value::Object(map) => match map.get(&*seg.key) {
            Some(next) => walk(next, rest, test),
            None => test(None),
        },
        Value::Array(items) => match seg.index {
            Some(i) => match items.get(i) {
                Some(next) => walk(next, rest, test),
                None => test(None),
            },
            // Crossing an empty array finds nothing, which `exists false`
            // must see as "absent" (no label has a name).
            None if items.is_empty() => test(None),
            // The same segment applies to each element: nested arrays are
            // crossed until an object answers the key.
            None => items.iter().any(|item| walk(item, segments, test)),
        },
        _ => test(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn leaves(path: &str, v: &Value) -> Vec<Option<Value>> {
        let p = FieldPath::parse(path).unwrap();
        let mut out = Vec::new();
        p.any(v, &mut |leaf| {
            out.push(leaf.cloned());
            false
        });
        out
    }

    #[test]
    fn parse_errors() {
        assert!(FieldPath::parse("").is_err());
        assert!(
            FieldPath::parse("a..b")
                .unwrap_err()
                .contains("segment 2 is empty")
        );
        assert!(FieldPath::parse(".a").is_err());
        assert!(FieldPath::parse("a.").is_err());
        assert!(FieldPath::parse("a. b").is_err());
        assert!(FieldPath::parse(&vec!["a"; 65].join(".")).is_err());
        assert!(FieldPath::parse(&vec!["a"; 64].join(".")).is_ok());
    }

    #[test]
    fn resolves_objects_and_indices() {
        let v = json!({"a": {"b": [10, {"c": 1}], "0": "zero"}});
        assert_eq!(leaves("a.b.0", &v), vec![Some(json!(10))]);
        assert_eq!(leaves("a.b.1.c", &v), vec![Some(json!(1))]);
        assert_eq!(leaves("a.b.2", &v), vec![None]);
        assert_eq!(leaves("a.b.99999999999999999999999", &v), vec![None]);
        assert_eq!(leaves("a.0", &v), vec![Some(json!("zero"))]);
        assert_eq!(leaves("a.x", &v), vec![None]);
        assert_eq!(leaves("a.b.0.c", &v), vec![None]);
        assert_eq!(leaves("a", &v), vec![Some(v["a"].clone())]);
    }

    #[test]
    fn crosses_arrays_recursively() {
        let v = json!({"labels": [{"name": "a"}, {"x": 1}, [{"name": "b"}, []]], "empty": []});
        assert_eq!(
            leaves("labels.name", &v),
            vec![Some(json!("a")), None, Some(json!("b")), None]
        );
        assert_eq!(leaves("empty.name", &v), vec![None]);
        assert_eq!(leaves("empty", &v), vec![Some(json!([]))]);
    }

    #[test]
    fn stops_at_first_hit() {
        let v = json!({"xs": [{"n": 1}, {"n": 2}, {"n": 3}]});
        let p = FieldPath::parse("xs.n").unwrap();
        let mut seen = 0;
        assert!(p.any(&v, &mut |leaf| {
            seen += 1;
            leaf == Some(&json!(2))
        }));
        assert_eq!(seen, 2);
    }

    #[test]
    fn get_is_exact() {
        let v = json!({"a": [{"b": 1}]});
        assert_eq!(FieldPath::parse("a.0.b").unwrap().get(&v), Some(&json!(1)));
        assert_eq!(FieldPath::parse("a.b").unwrap().get(&v), None);
    }
}
