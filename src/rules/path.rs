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
    /// Set by [`PrefixTable::link`]: the shared node of this path, resolved
    /// (with its prefixes) once per event by a [`Memo`].
    node: Option<PrefixId>,
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
            if i == MAX_SEGMENTS {
                return Err(format!(
                    "invalid path {path:?}: more than {MAX_SEGMENTS} segments"
                ));
            }
            if key.is_empty() {
                return Err(format!("invalid path {path:?}: segment {} is empty", i + 1));
            }
            if key.trim() != key {
                return Err(format!(
                    "invalid path {path:?}: segment {key:?} has surrounding spaces"
                ));
            }
            segments.push(Segment {
                key: key.into(),
                index: crate::event::array_index(key),
            });
        }
        Ok(FieldPath {
            raw: path.into(),
            segments: segments.into(),
            node: None,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// Each segment's key, and its array index when the key is all digits.
    pub(crate) fn segments(&self) -> impl Iterator<Item = (&str, Option<usize>)> {
        self.segments.iter().map(|s| (&*s.key, s.index))
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

    /// [`FieldPath::any`] through a per-event memo of shared prefixes.
    #[inline]
    pub(crate) fn any_memo<'v>(
        &self,
        memo: &mut Memo<'v, '_>,
        test: &mut dyn FnMut(Option<&'v Value>) -> bool,
    ) -> bool {
        let Some(node) = self.node else {
            return walk(memo.root, &self.segments, test);
        };
        match memo.resolve(node) {
            Slot::Found(v) => test(Some(v)),
            Slot::Missing => test(None),
            // An array without an index on the way: the any-element rule
            // walks from the deepest prefix that resolved to one value.
            Slot::Unresolved | Slot::Crossing => {
                let mut id = node;
                let mut depth = self.segments.len();
                loop {
                    let Some(parent) = memo.table.nodes.get(id as usize).map(|n| n.parent) else {
                        return walk(memo.root, &self.segments, test);
                    };
                    depth -= 1;
                    if parent == ROOT || depth == 0 {
                        return walk(memo.root, &self.segments, test);
                    }
                    if let Slot::Found(v) = memo.resolve(parent) {
                        return walk(v, &self.segments[depth..], test);
                    }
                    id = parent;
                }
            }
        }
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

    /// [`FieldPath::get`] on JSON text, without building the tree: keys off the path are
    /// skipped as they are scanned, and only the value at the end is parsed. `None` also when
    /// the text is not valid JSON up to and around that value.
    ///
    /// Hand-written over serde's visitor API: an ordering key read from a 6 KB payload this way
    /// costs a scan, where the `Value` tree costs an allocation per node of the payload.
    pub fn get_raw(&self, text: &[u8]) -> Option<Value> {
        let mut de = serde_json::Deserializer::from_slice(text);
        serde::de::DeserializeSeed::deserialize(Seek(&self.segments), &mut de)
            .ok()
            .flatten()
    }
}

/// Finds the value at `segments` in what is being deserialized.
struct Seek<'p>(&'p [Segment]);

impl<'de> serde::de::DeserializeSeed<'de> for Seek<'_> {
    type Value = Option<Value>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        if self.0.is_empty() {
            return <Value as serde::Deserialize>::deserialize(d).map(Some);
        }
        d.deserialize_any(self)
    }
}

/// Whether a map key equals the expected one (without allocating for it).
struct KeyIs<'k>(&'k str);

impl<'de> serde::de::DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeyIs<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

impl<'de> serde::de::Visitor<'de> for Seek<'_> {
    type Value = Option<Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (first, rest) = (&self.0[0], &self.0[1..]);
        let mut found = None;
        while let Some(is) = map.next_key_seed(KeyIs(&first.key))? {
            if is {
                // The last of duplicate keys, as in the tree.
                found = map.next_value_seed(Seek(rest))?;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(found)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let (first, rest) = (&self.0[0], &self.0[1..]);
        let mut found = None;
        let mut i = 0usize;
        loop {
            if Some(i) == first.index {
                match seq.next_element_seed(Seek(rest))? {
                    Some(v) => found = v,
                    None => break,
                }
            } else if seq.next_element::<serde::de::IgnoredAny>()?.is_none() {
                break;
            }
            i += 1;
        }
        Ok(found)
    }

    // A scalar where the path goes on: missing.
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// Index of a node in a [`PrefixTable`].
pub(crate) type PrefixId = u32;
const ROOT: PrefixId = PrefixId::MAX;

#[derive(Debug, Clone)]
struct PrefixNode {
    parent: PrefixId,
    segment: Segment,
}

/// The distinct paths of a rule set and their prefixes, as a tree.
/// Conditions on the same field, or sharing `payload.pull_request.`, then
/// look those keys up once per event instead of once per condition: map
/// lookups (string compares in a BTreeMap) are most of the cost of
/// evaluating a rule set.
#[derive(Debug, Clone, Default)]
pub struct PrefixTable {
    nodes: Vec<PrefixNode>,
    index: std::collections::HashMap<(PrefixId, Box<str>), PrefixId>,
}

impl PrefixTable {
    /// Links `path` to its node, creating nodes for it and its prefixes as
    /// needed.
    pub fn link(&mut self, path: &mut FieldPath) {
        let mut parent = ROOT;
        for seg in path.segments.iter() {
            let key = (parent, seg.key.clone());
            parent = match self.index.get(&key) {
                Some(&id) => id,
                None => {
                    let Ok(id) = PrefixId::try_from(self.nodes.len()) else {
                        return;
                    };
                    if id == ROOT {
                        return;
                    }
                    self.nodes.push(PrefixNode {
                        parent,
                        segment: seg.clone(),
                    });
                    self.index.insert(key, id);
                    id
                }
            };
        }
        if parent != ROOT {
            path.node = Some(parent);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.nodes.len()
    }
}

/// What a prefix resolved to in one event.
#[derive(Debug, Clone, Copy)]
enum Slot<'v> {
    Unresolved,
    Found(&'v Value),
    Missing,
    /// Reached through an array without an index.
    Crossing,
}

/// Per-event cache of resolved prefixes. Cheap to create; must not outlive
/// a change of the event (it borrows it).
pub struct Memo<'v, 't> {
    root: &'v Value,
    table: &'t PrefixTable,
    slots: Slots<'v>,
}

/// Slots live on the stack for tables of up to [`INLINE_SLOTS`] nodes, so
/// evaluating an event does not allocate.
const INLINE_SLOTS: usize = 64;

struct Slots<'v> {
    inline: [Slot<'v>; INLINE_SLOTS],
    /// Used instead when the table is larger (`Vec::new` does not allocate).
    heap: Vec<Slot<'v>>,
}

impl<'v> Slots<'v> {
    fn new(len: usize) -> Self {
        Slots {
            inline: [Slot::Unresolved; INLINE_SLOTS],
            heap: if len > INLINE_SLOTS {
                vec![Slot::Unresolved; len]
            } else {
                Vec::new()
            },
        }
    }

    #[inline]
    fn as_mut_slice(&mut self) -> &mut [Slot<'v>] {
        if self.heap.is_empty() {
            &mut self.inline[..]
        } else {
            &mut self.heap[..]
        }
    }
}

impl<'v, 't> Memo<'v, 't> {
    pub fn new(table: &'t PrefixTable, root: &'v Value) -> Self {
        let len = table.nodes.len();
        Memo {
            root,
            table,
            slots: Slots::new(len),
        }
    }

    fn resolve(&mut self, id: PrefixId) -> Slot<'v> {
        let i = id as usize;
        match self.slots.as_mut_slice().get(i) {
            Some(Slot::Unresolved) => {}
            Some(slot) => return *slot,
            None => return Slot::Unresolved,
        }
        let Some(node) = self.table.nodes.get(i) else {
            return Slot::Unresolved;
        };
        let parent = if node.parent == ROOT {
            Slot::Found(self.root)
        } else {
            self.resolve(node.parent)
        };
        let slot = match parent {
            Slot::Found(Value::Object(map)) => map
                .get(&*node.segment.key)
                .map_or(Slot::Missing, Slot::Found),
            Slot::Found(Value::Array(items)) => match node.segment.index {
                Some(idx) => items.get(idx).map_or(Slot::Missing, Slot::Found),
                None => Slot::Crossing,
            },
            Slot::Found(_) | Slot::Missing => Slot::Missing,
            Slot::Crossing | Slot::Unresolved => Slot::Crossing,
        };
        if let Some(cell) = self.slots.as_mut_slice().get_mut(i) {
            *cell = slot;
        }
        slot
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

    #[test]
    fn get_raw_agrees_with_get_on_the_tree() {
        let text = r#"{"id":"x","payload":{"pull_request":{"number":42,"labels":[{"name":"bug"},{"name":"ui"}],
            "title":"a \"quoted\" title","head":null},"n\u0061me":"escaped key"},"metadata":{"k":true}}"#;
        let tree: Value = serde_json::from_str(text).unwrap();
        for path in [
            "payload.pull_request.number",
            "payload.pull_request.labels.1.name",
            "payload.pull_request.labels.2.name",
            "payload.pull_request.labels.name",
            "payload.pull_request.title",
            "payload.pull_request.head",
            "payload.pull_request.number.deeper",
            "payload.name",
            "payload",
            "metadata.k",
            "missing",
        ] {
            let p = FieldPath::parse(path).unwrap();
            assert_eq!(p.get_raw(text.as_bytes()), p.get(&tree).cloned(), "{path}");
        }
        let p = FieldPath::parse("a.b").unwrap();
        assert_eq!(p.get_raw(b"{\"a\": {\"b\": 1"), None, "cut short");
        assert_eq!(p.get_raw(b"not json"), None);
    }
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
    fn memo_agrees_with_walk() {
        let events = [
            json!({"a": {"b": {"c": 1, "d": [1, 2]}, "x": [{"c": 1}, {"c": 2}]}}),
            json!({"a": {"b": 5}}),
            json!({"a": [{"b": {"c": 2}}, {"b": {"c": 1}}]}),
            json!({"a": null}),
            json!([]),
        ];
        let paths = [
            "a.b.c", "a.b.d", "a.x.c", "a.x.1.c", "a.b", "a", "a.b.c.d", "a.0.b.c", "q.r",
        ];
        let mut table = PrefixTable::default();
        let mut linked: Vec<FieldPath> =
            paths.iter().map(|p| FieldPath::parse(p).unwrap()).collect();
        for p in &mut linked {
            table.link(p);
        }
        // a a.b a.b.c a.b.d a.x a.x.c a.x.1 a.x.1.c a.b.c.d a.0 a.0.b a.0.b.c q q.r
        assert_eq!(table.len(), 14);
        for event in &events {
            let mut memo = Memo::new(&table, event);
            for (p, path) in paths.iter().zip(&linked) {
                let plain = FieldPath::parse(p).unwrap();
                let mut expected = Vec::new();
                plain.any(event, &mut |leaf| {
                    expected.push(leaf.cloned());
                    false
                });
                let mut got = Vec::new();
                path.any_memo(&mut memo, &mut |leaf| {
                    got.push(leaf.cloned());
                    false
                });
                assert_eq!(got, expected, "{p} on {event}");
            }
        }
    }

    use proptest::prelude::*;

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<i8>().prop_map(Value::from),
            "[ab]{0,2}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 48, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-c0-1]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn memo_equals_walk_for_random_events(
            event in arb_json(),
            paths in prop::collection::vec(
                prop::collection::vec("[a-c0-1]", 1..5).prop_map(|s| s.join(".")),
                1..8,
            ),
        ) {
            let mut table = PrefixTable::default();
            let mut linked: Vec<FieldPath> =
                paths.iter().map(|p| FieldPath::parse(p).unwrap()).collect();
            for p in &mut linked {
                table.link(p);
            }
            let mut memo = Memo::new(&table, &event);
            for path in &linked {
                let mut expected = Vec::new();
                path.any(&event, &mut |leaf| {
                    expected.push(leaf.cloned());
                    false
                });
                let mut got = Vec::new();
                path.any_memo(&mut memo, &mut |leaf| {
                    got.push(leaf.cloned());
                    false
                });
                prop_assert_eq!(got, expected);
            }
        }
    }

    #[test]
    fn get_is_exact() {
        let v = json!({"a": [{"b": 1}]});
        assert_eq!(FieldPath::parse("a.0.b").unwrap().get(&v), Some(&json!(1)));
        assert_eq!(FieldPath::parse("a.b").unwrap().get(&v), None);
    }
}
