//! The parts of an event's payload that the rule set's conditions can read, taken from the
//! payload's JSON text in one pass, without building the rest of the tree.
//!
//! Ingest leaves a JSON payload as text (the event's `payload` is `null`). Building the whole
//! `serde_json::Value` of a 6 KB GitHub payload for one condition on
//! `payload.pull_request.number` cost about a third of end-to-end throughput
//! (docs/performance.md). Instead, every `payload…` path of the compiled rule set goes into one
//! tree of keys ([`PayloadPaths`]), and one serde pass over the text builds a *projection*: the
//! payload with everything off those paths left out.
//!
//! The projection is built so that evaluating any of those paths on it (with the any-element
//! rule of [`FieldPath::any`](super::FieldPath::any), or through the per-event prefix memo) finds
//! exactly what it finds on the whole tree:
//! - an object keeps only the keys on some path (the last of duplicate keys, as in the tree);
//! - where a path ends, the value is kept whole (conditions compare whole objects and arrays);
//! - an array keeps its length: an element no path reads is `null`, and when a path crosses the
//!   array without an index, every element is read as the array itself is;
//! - a scalar where paths go on is `null` (any non-container is "missing" to them).
//!
//! So the projection is only for conditions: nothing else may see it (the rule set puts the
//! `null` back, or the whole tree when a jq program has to run).

use std::collections::HashMap;
use std::fmt;

use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use super::path::FieldPath;

type NodeId = u32;
/// The payload itself.
const ROOT: NodeId = 0;

/// Children looked up by a linear scan up to this many keys, by hash beyond (1,000 routes on
/// 1,000 fields of one object should not cost 1,000 compares per key of the text).
const LINEAR_KEYS: usize = 8;

#[derive(Debug, Default)]
struct Node {
    /// Some path ends here: the value is kept whole.
    whole: bool,
    /// The next segments, by key (a digit key also indexes arrays).
    keys: Vec<(Box<str>, NodeId)>,
    /// `keys` by key, once there are more than [`LINEAR_KEYS`].
    by_key: Option<HashMap<Box<str>, NodeId>>,
    /// The children whose key is an array index.
    indices: Vec<(usize, NodeId)>,
    /// Some child is not an index: an array here is crossed, each element read like this node.
    crosses: bool,
}

impl Node {
    #[inline]
    fn child(&self, key: &str) -> Option<NodeId> {
        match &self.by_key {
            Some(map) => map.get(key).copied(),
            None => self
                .keys
                .iter()
                .find(|(k, _)| &**k == key)
                .map(|(_, id)| *id),
        }
    }
}

/// The `payload…` paths of a rule set's conditions, as a tree of keys.
#[derive(Debug)]
pub struct PayloadPaths {
    nodes: Vec<Node>,
}

impl Default for PayloadPaths {
    fn default() -> Self {
        PayloadPaths {
            nodes: vec![Node::default()],
        }
    }
}

impl PayloadPaths {
    /// Adds `path` when it reads the payload (`payload` or `payload.…`); ignores it otherwise.
    pub fn add(&mut self, path: &FieldPath) {
        let mut segments = path.segments();
        if segments.next().map(|(key, _)| key) != Some("payload") {
            return;
        }
        let mut at = ROOT;
        for (key, index) in segments {
            at = match self.nodes[at as usize].child(key) {
                Some(id) => id,
                None => {
                    let Ok(id) = NodeId::try_from(self.nodes.len()) else {
                        // Unreachable (4 billion path segments); keep the payload whole.
                        self.nodes[ROOT as usize].whole = true;
                        return;
                    };
                    self.nodes.push(Node::default());
                    let parent = &mut self.nodes[at as usize];
                    parent.keys.push((key.into(), id));
                    match &mut parent.by_key {
                        Some(map) => {
                            map.insert(key.into(), id);
                        }
                        None if parent.keys.len() > LINEAR_KEYS => {
                            parent.by_key = Some(parent.keys.iter().cloned().collect());
                        }
                        None => {}
                    }
                    match index {
                        Some(i) => parent.indices.push((i, id)),
                        None => parent.crosses = true,
                    }
                    id
                }
            };
        }
        self.nodes[at as usize].whole = true;
    }

    /// No condition reads the payload.
    pub fn is_empty(&self) -> bool {
        self.nodes.len() == 1 && !self.nodes[ROOT as usize].whole
    }

    /// The projection of the payload `text` (see the module's comment). An error only when the
    /// text is not valid JSON.
    pub fn project(&self, text: &[u8]) -> Result<Value, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(text);
        let value = Project {
            paths: self,
            at: &[ROOT],
        }
        .deserialize(&mut de)?;
        de.end()?;
        Ok(value)
    }

    #[inline]
    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id as usize]
    }
}

/// Node ids: one without allocating, or several (paths that meet again through arrays).
enum Ids {
    One(NodeId),
    Many(Vec<NodeId>),
}

impl Ids {
    fn as_slice(&self) -> &[NodeId] {
        match self {
            Ids::One(id) => std::slice::from_ref(id),
            Ids::Many(ids) => ids,
        }
    }
}

/// Collects distinct ids, allocating only from the second one on.
#[derive(Default)]
struct IdsBuilder(Option<Ids>);

impl IdsBuilder {
    fn push(&mut self, id: NodeId) {
        self.0 = Some(match self.0.take() {
            None => Ids::One(id),
            Some(Ids::One(first)) if first == id => Ids::One(first),
            Some(Ids::One(first)) => Ids::Many(vec![first, id]),
            Some(Ids::Many(mut ids)) => {
                if !ids.contains(&id) {
                    ids.push(id);
                }
                Ids::Many(ids)
            }
        });
    }

    fn build(self) -> Option<Ids> {
        self.0
    }
}

/// Projects the value being deserialized, read as the nodes `at`.
struct Project<'p, 's> {
    paths: &'p PayloadPaths,
    at: &'s [NodeId],
}

impl<'de> DeserializeSeed<'de> for Project<'_, '_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        if self.at.iter().any(|&id| self.paths.node(id).whole) {
            return Value::deserialize(d);
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Project<'_, '_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(found) = map.next_key_seed(Lookup {
            paths: self.paths,
            at: self.at,
        })? {
            match found {
                Some((key, ids)) => {
                    let value = map.next_value_seed(Project {
                        paths: self.paths,
                        at: ids.as_slice(),
                    })?;
                    // The last of duplicate keys wins, as in the tree.
                    out.insert(key, value);
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Value::Object(out))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let paths = self.paths;
        let mut out = Vec::new();
        // Without index children, every element is read the same way: as the crossing nodes.
        let indexed = self.at.iter().any(|&n| !paths.node(n).indices.is_empty());
        let crossing: Vec<NodeId>;
        let crossing: &[NodeId] = if self.at.iter().all(|&n| paths.node(n).crosses) {
            self.at
        } else {
            crossing = self
                .at
                .iter()
                .copied()
                .filter(|&n| paths.node(n).crosses)
                .collect();
            &crossing
        };
        let mut i = 0usize;
        loop {
            let element: Option<Ids>;
            let at: &[NodeId] = if indexed {
                let mut ids = IdsBuilder::default();
                for &n in crossing {
                    ids.push(n);
                }
                for &n in self.at {
                    for &(index, child) in &paths.node(n).indices {
                        if index == i {
                            ids.push(child);
                        }
                    }
                }
                element = ids.build();
                element.as_ref().map_or(&[], Ids::as_slice)
            } else {
                crossing
            };
            let next = if at.is_empty() {
                // No path reads this element: only its place counts.
                seq.next_element::<IgnoredAny>()?.map(|_| Value::Null)
            } else {
                seq.next_element_seed(Project { paths, at })?
            };
            match next {
                Some(v) => out.push(v),
                None => break,
            }
            i += 1;
        }
        Ok(Value::Array(out))
    }

    // A scalar where the paths go on: what they find is "missing", whatever the scalar.
    fn visit_bool<E>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_str<E>(self, _: &str) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

/// Reads an object key: the key and the nodes it leads to when some path goes through it.
struct Lookup<'p, 's> {
    paths: &'p PayloadPaths,
    at: &'s [NodeId],
}

impl<'de> DeserializeSeed<'de> for Lookup<'_, '_> {
    type Value = Option<(String, Ids)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Lookup<'_, '_> {
    type Value = Option<(String, Ids)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Self::Value, E> {
        let mut ids = IdsBuilder::default();
        for &n in self.at {
            if let Some(child) = self.paths.node(n).child(key) {
                ids.push(child);
            }
        }
        Ok(ids.build().map(|ids| (key.to_owned(), ids)))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn paths(list: &[&str]) -> PayloadPaths {
        let mut p = PayloadPaths::default();
        for path in list {
            p.add(&FieldPath::parse(path).unwrap());
        }
        p
    }

    /// Every leaf `path` reaches in `event`, in order.
    fn leaves(path: &FieldPath, event: &Value) -> Vec<Option<Value>> {
        let mut out = Vec::new();
        path.any(event, &mut |leaf| {
            out.push(leaf.cloned());
            false
        });
        out
    }

    /// Asserts that each path finds the same in the projection as in the whole payload.
    fn agrees(list: &[&str], text: &str) {
        let tree: Value = serde_json::from_str(text).unwrap();
        let projected = paths(list).project(text.as_bytes()).unwrap();
        let (whole, part) = (json!({ "payload": tree }), json!({ "payload": projected }));
        for path in list {
            let p = FieldPath::parse(path).unwrap();
            assert_eq!(
                leaves(&p, &part),
                leaves(&p, &whole),
                "{path} on {text} (projection {part})"
            );
        }
    }

    #[test]
    fn keeps_only_what_the_paths_reach() {
        let text = r#"{"action":"opened","pull_request":{"number":42,"title":"T","body":"long",
            "labels":[{"name":"bug","color":"red"},{"name":"ui"}],"head":{"ref":"x"}},"sender":{"login":"a"}}"#;
        let p = paths(&[
            "payload.pull_request.number",
            "payload.pull_request.labels.name",
            "payload.pull_request.head",
            "type",
        ]);
        assert_eq!(
            p.project(text.as_bytes()).unwrap(),
            json!({"pull_request": {"number": 42, "labels": [{"name": "bug"}, {"name": "ui"}],
                   "head": {"ref": "x"}}})
        );
        assert!(!p.is_empty());
        assert!(paths(&["type", "metadata.headers.x"]).is_empty());
        let all = paths(&["payload"]);
        assert!(!all.is_empty());
        assert_eq!(
            all.project(text.as_bytes()).unwrap(),
            serde_json::from_str::<Value>(text).unwrap()
        );
    }

    #[test]
    fn many_keys_are_looked_up_by_hash() {
        let list: Vec<String> = (0..20).map(|i| format!("payload.k{i}.v")).collect();
        let list: Vec<&str> = list.iter().map(String::as_str).collect();
        let text = (0..25)
            .map(|i| format!("\"k{i}\":{{\"v\":{i},\"w\":0}}"))
            .collect::<Vec<_>>()
            .join(",");
        agrees(&list, &format!("{{{text}}}"));
        let projected = paths(&list)
            .project(format!("{{{text}}}").as_bytes())
            .unwrap();
        assert_eq!(projected.as_object().map(|m| m.len()), Some(20));
        assert_eq!(projected["k19"], json!({"v": 19}));
    }

    #[test]
    fn arrays_keep_their_length_and_indices() {
        let text = r#"{"xs":[{"a":1},{"a":2},{"a":3,"b":[]}],"ys":[[1,{"c":"d"}],[]],"n":[]}"#;
        let p = paths(&["payload.xs.1.a"]);
        assert_eq!(
            p.project(text.as_bytes()).unwrap(),
            json!({"xs": [null, {"a": 2}, null]})
        );
        for list in [
            &["payload.xs.1.a"][..],
            &["payload.xs.5.a", "payload.xs.a"],
            &["payload.xs.0", "payload.xs.b"],
            &["payload.ys.c", "payload.ys.0.1.c", "payload.ys.1"],
            &["payload.n.x", "payload.n.0"],
            &["payload.xs.a.b", "payload.xs.1.a.b"],
        ] {
            agrees(list, text);
        }
    }

    #[test]
    fn missing_nulls_scalars_duplicates_and_escapes() {
        agrees(
            &[
                "payload.a.b",
                "payload.a",
                "payload.z",
                "payload.s.x",
                "payload.n.x",
            ],
            r#"{"a":null,"s":"str","n":3}"#,
        );
        // The last of duplicate keys, as serde_json's tree keeps it.
        agrees(&["payload.a.b"], r#"{"a":{"b":1},"a":{"c":2}}"#);
        agrees(&["payload.a.b"], r#"{"a":{"c":2},"a":{"b":1}}"#);
        agrees(&["payload.a"], r#"{"a":1,"a":[1,2]}"#);
        // Escaped keys match their unescaped path; escaped values are unescaped.
        agrees(
            &["payload.name", "payload.ü.x", "payload.t"],
            r#"{"n\u0061me":"\u00c9cole \ud83d\ude80","\u00fc":{"x":"\"q\""},"t":"a\/b"}"#,
        );
        // Numbers are kept as the tree has them (integer, float, exponent, large).
        agrees(
            &[
                "payload.i",
                "payload.f",
                "payload.e",
                "payload.big",
                "payload.neg",
            ],
            r#"{"i":3,"f":3.0,"e":1e2,"big":18446744073709551615,"neg":-9223372036854775808}"#,
        );
        // A payload that is an array (HubSpot).
        agrees(&["payload.0.id", "payload.id"], r#"[{"id":1},{"id":2}]"#);
        assert!(paths(&["payload.a"]).project(b"{\"a\": 1").is_err());
        assert!(paths(&["payload.a"]).project(b"{} x").is_err());
    }

    /// A JSON text for `v` with every string char escaped as `\uXXXX` when `escape` says so, and
    /// spaces around tokens, so that the projection is checked on text that is not serde's.
    pub(crate) fn odd_text(v: &Value, escape: &mut dyn Iterator<Item = bool>, out: &mut String) {
        let string = |s: &str, escape: &mut dyn Iterator<Item = bool>, out: &mut String| {
            out.push('"');
            for c in s.chars() {
                if escape.next().unwrap_or(false) {
                    let mut buf = [0u16; 2];
                    for unit in c.encode_utf16(&mut buf) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                } else {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                        c => out.push(c),
                    }
                }
            }
            out.push('"');
        };
        match v {
            Value::String(s) => string(s, escape, out),
            Value::Array(items) => {
                out.push_str("[ ");
                for (i, x) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(" , ");
                    }
                    odd_text(x, escape, out);
                }
                out.push_str(" ]");
            }
            Value::Object(map) => {
                out.push_str("{ ");
                for (i, (k, x)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    string(k, escape, out);
                    out.push_str(" :");
                    odd_text(x, escape, out);
                }
                out.push_str(" }");
            }
            other => out.push_str(&other.to_string()),
        }
    }

    fn arb_payload() -> impl Strategy<Value = Value> {
        crate::rules::condition::tests::arb_json_of("[a-c0-1éÉ\"\\\\🚀]{0,3}", "[a-c0-2é]", 5, 48)
    }

    proptest! {
        #[test]
        fn every_path_finds_the_same_in_the_projection(
            payload in arb_payload(),
            escapes in prop::collection::vec(any::<bool>(), 0..64),
            list in prop::collection::vec(
                prop::collection::vec("[a-c0-2é]", 0..5).prop_map(|s| {
                    std::iter::once("payload".to_string()).chain(s).collect::<Vec<_>>().join(".")
                }),
                1..6,
            ),
        ) {
            let mut text = String::new();
            odd_text(&payload, &mut escapes.into_iter().cycle(), &mut text);
            // What ingest would parse (floats may not read back bit for bit).
            let payload: Value = serde_json::from_str(&text).unwrap();
            let set = {
                let mut p = PayloadPaths::default();
                for path in &list {
                    p.add(&FieldPath::parse(path).unwrap());
                }
                p
            };
            let projected = set.project(text.as_bytes()).unwrap();
            let (whole, part) = (json!({ "payload": payload }), json!({ "payload": projected }));
            for path in &list {
                let p = FieldPath::parse(path).unwrap();
                prop_assert_eq!(leaves(&p, &part), leaves(&p, &whole), "{}", path);
            }
        }
    }
}
