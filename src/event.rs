//! The normalized event of API.md section 4: body decoding, the payload probe, and the event
//! object. What each provider reads from its requests is in `providers/`.

use std::borrow::Cow;
use std::fmt;

use http::HeaderMap;
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use uuid::Uuid;

/// Why a request body could not become an event (answered `400 invalid_body`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

fn bad(msg: impl Into<String>) -> BodyError {
    BodyError(msg.into())
}

/// The provider body as decoded from JSON or form encoding.
#[derive(Debug)]
pub struct Decoded {
    pub payload: Value,
    /// The raw JSON text of the payload when the body was JSON, so the archive can store the
    /// provider's bytes as they came instead of serializing the parsed tree again.
    pub raw_json: bool,
}

/// Which encoding a request body claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    Form,
}

/// Reads the content type; a missing one is treated as JSON (internal clients often omit it).
pub fn body_kind(headers: &HeaderMap) -> Result<BodyKind, BodyError> {
    let Some(ct) = headers.get(http::header::CONTENT_TYPE) else {
        return Ok(BodyKind::Json);
    };
    let ct = ct
        .to_str()
        .map_err(|_| bad("Content-Type is not valid text"))?;
    let essence = ct.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json")
        || (essence.len() > 5
            && essence[..essence.len() - 5].contains('/')
            && essence[essence.len() - 5..].eq_ignore_ascii_case("+json"))
    {
        Ok(BodyKind::Json)
    } else if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        Ok(BodyKind::Form)
    } else {
        Err(bad(format!(
            "unsupported Content-Type \"{essence}\" (expected application/json or application/x-www-form-urlencoded)"
        )))
    }
}

/// The deepest nesting of objects and arrays the contract accepts.
pub const MAX_DEPTH: usize = 128;

/// Parses a body that must be a JSON object nested at most `MAX_DEPTH` containers deep.
///
/// serde_json's own recursion guard stops one level short of the contract's 128, so on that
/// (rare) error the depth is measured exactly and, when within the limit, the body is parsed
/// again without the guard — safe, because the depth is then known to be bounded.
pub fn parse_json_object(bytes: &[u8]) -> Result<Value, BodyError> {
    parse_json_body(bytes, JsonBody::Object)
}

/// What a provider's JSON bodies may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonBody {
    /// An object (every provider but HubSpot).
    Object,
    /// An object or an array (HubSpot's batches of events).
    ObjectOrArray,
}

/// `parse_json_object`, for a body that may also be an array where `json` allows it.
pub fn parse_json_body(bytes: &[u8], json: JsonBody) -> Result<Value, BodyError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(bad("the body is empty"));
    }
    let parsed = match serde_json::from_slice::<Value>(bytes) {
        Err(e) if e.to_string().starts_with("recursion limit exceeded") => {
            if max_depth(bytes) > MAX_DEPTH {
                return Err(bad("the body is nested deeper than 128 levels"));
            }
            let mut de = serde_json::Deserializer::from_slice(bytes);
            de.disable_recursion_limit();
            serde::Deserialize::deserialize(&mut de).and_then(|v| de.end().map(|()| v))
        }
        other => other,
    };
    match (parsed, json) {
        (Ok(v @ Value::Object(_)), _) => Ok(v),
        (Ok(v @ Value::Array(_)), JsonBody::ObjectOrArray) => Ok(v),
        (Ok(_), JsonBody::Object) => Err(bad("the body must be a JSON object")),
        (Ok(_), JsonBody::ObjectOrArray) => Err(bad("the body must be a JSON object or array")),
        (Err(e), _) => Err(bad(format!("the body is not valid JSON: {e}"))),
    }
}

/// The deepest container nesting in a JSON text (brackets inside strings ignored). Stops
/// counting once past the limit, so hostile input costs one linear scan at most.
fn max_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_str {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
                if deepest > MAX_DEPTH {
                    return deepest;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// What a provider's `application/x-www-form-urlencoded` bodies hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FormBody {
    /// A `payload` field holding the JSON (GitHub); a form without one is refused.
    Payload,
    /// A `payload` field holding JSON (Slack interactivity), or else plain fields, which become
    /// a JSON object of strings (Slack slash commands).
    PayloadOrFields,
}

/// Decodes a provider body. `Form` bodies: a `payload` field holding JSON becomes the payload;
/// without one, the fields become a JSON object of strings where `form` allows it.
pub fn decode_body(kind: BodyKind, bytes: &[u8], form: FormBody) -> Result<Decoded, BodyError> {
    match kind {
        BodyKind::Json => Ok(Decoded {
            payload: parse_json_object(bytes)?,
            raw_json: true,
        }),
        BodyKind::Form => {
            if std::str::from_utf8(bytes).is_err() {
                return Err(bad("the form body is not valid UTF-8"));
            }
            if bytes.iter().all(u8::is_ascii_whitespace) {
                return Err(bad("the body is empty"));
            }
            let mut fields = Map::new();
            for (k, v) in form_urlencoded::parse(bytes) {
                if k == "payload" {
                    let payload = parse_json_object(v.as_bytes())
                        .map_err(|e| bad(format!("form field payload: {}", e.0)))?;
                    return Ok(Decoded {
                        payload,
                        raw_json: false,
                    });
                }
                fields.insert(k.into_owned(), Value::String(v.into_owned()));
            }
            if fields.is_empty() {
                return Err(bad("the form body has no fields"));
            }
            if form == FormBody::Payload {
                return Err(bad("the form body has no payload field"));
            }
            Ok(Decoded {
                payload: Value::Object(fields),
                raw_json: false,
            })
        }
    }
}

// --- The payload probe -------------------------------------------------------------------
//
// Most webhooks need only a handful of their payload's fields on the ingest path: what their
// provider classifies by, and the rate-limit identifier. The stored body splices in the provider's
// raw JSON text (`serialize_event`), so a full `Value` tree is needed only when a rule looks into
// the payload or a stream subscriber filters on it. The probe validates the body exactly as
// `parse_json_object` does (it runs the same parser through `deserialize_any`, so strings, escapes,
// surrogates, numbers and serde's nesting guard are checked the same way) while keeping nothing
// but the fields asked for, borrowed from the body where they contain no escapes.

/// A payload field the ingest path reads: a slot in [`Fields`]. A provider names the slots it
/// uses (`const ACTION: Field = Field::new(0);`) and lists their paths in its probes; the last
/// slot is the source's identifier path. Slots rather than named fields keep a new provider's
/// fields in its own file, and reading one stays an array index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field(u8);

impl Field {
    /// How many slots a provider may use.
    pub const PROVIDER_SLOTS: usize = FIELD_COUNT - IDENTIFIER_SLOTS;
    /// The source's identifier path, when it points into the payload.
    pub const IDENTIFIER: Field = Field(Field::PROVIDER_SLOTS as u8);
    /// The identifier's alternate path (Slack's `payload.team.id`), read when the first has
    /// nothing.
    pub const IDENTIFIER_ALTERNATE: Field = Field(Field::PROVIDER_SLOTS as u8 + 1);

    /// Slot `slot` of a provider's fields; a slot out of range fails to compile in a `const`.
    pub const fn new(slot: usize) -> Field {
        assert!(slot < Field::PROVIDER_SLOTS, "a provider has 7 field slots");
        Field(slot as u8)
    }

    fn index(self) -> usize {
        usize::from(self.0)
    }
}

/// A payload path (`["event", "type"]`) and the slot its value is kept in.
pub type Probe = (&'static [&'static str], Field);

const FIELD_COUNT: usize = 9;
/// The identifier path and one alternate.
const IDENTIFIER_SLOTS: usize = 2;

/// A probed scalar. Anything else (object, array, bool, null, absent) is not kept: no caller
/// reads it.
#[derive(Debug, Clone, PartialEq)]
pub enum Leaf<'a> {
    Str(Cow<'a, str>),
    Num(Number),
}

/// The probed fields of one payload.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Fields<'a> {
    leaves: [Option<Leaf<'a>>; FIELD_COUNT],
}

impl<'a> Fields<'a> {
    pub fn get(&self, f: Field) -> Option<&Leaf<'a>> {
        self.leaves[f.index()].as_ref()
    }

    /// The field if it is a string (what `Value::as_str` would give).
    pub fn str(&self, f: Field) -> Option<&str> {
        match self.get(f) {
            Some(Leaf::Str(s)) => Some(s),
            _ => None,
        }
    }

    /// The field if it is an integer that fits an i64 (what `Value::as_i64` would give).
    pub fn i64(&self, f: Field) -> Option<i64> {
        match self.get(f) {
            Some(Leaf::Num(n)) => n.as_i64(),
            _ => None,
        }
    }

    fn set(&mut self, node: &ProbeNode, leaf: Leaf<'a>) {
        for &f in node.fields.iter() {
            self.leaves[f.index()] = Some(leaf.clone());
        }
    }
}

/// One key (or array index) of the probed paths; the paths form a tree from the payload root.
#[derive(Debug, Clone, Default)]
struct ProbeNode {
    key: Box<str>,
    /// The key as an array index, parsed as `lookup` does.
    index: Option<usize>,
    /// The fields whose path ends here.
    fields: Box<[Field]>,
    /// The fields whose path ends here or below: cleared when the key occurs again, so that, as
    /// in a parsed `Value`, the last of duplicate keys wins.
    subtree: Box<[Field]>,
    children: Vec<ProbeNode>,
}

impl ProbeNode {
    fn insert(&mut self, path: &[&str], field: Field) {
        let mut node = self;
        for seg in path {
            let pos = match node.children.iter().position(|c| &*c.key == *seg) {
                Some(p) => p,
                None => {
                    node.children.push(ProbeNode {
                        key: (*seg).into(),
                        index: array_index(seg),
                        ..ProbeNode::default()
                    });
                    node.children.len() - 1
                }
            };
            node = &mut node.children[pos];
        }
        let mut fields = node.fields.to_vec();
        fields.push(field);
        node.fields = fields.into();
    }

    /// Fills in `subtree` (after every path was inserted).
    fn seal(&mut self) -> Vec<Field> {
        let mut all = self.fields.to_vec();
        for c in &mut self.children {
            all.extend(c.seal());
        }
        self.subtree = all.clone().into();
        all
    }

    fn child(&self, key: &str) -> Option<&ProbeNode> {
        self.children.iter().find(|c| &*c.key == key)
    }

    fn child_at(&self, index: usize) -> Option<&ProbeNode> {
        self.children.iter().find(|c| c.index == Some(index))
    }

    /// The same fields read from a parsed payload (form bodies, and the rare JSON bodies the
    /// probe leaves to `parse_json_object`).
    fn read_value(&self, v: &Value, out: &mut Fields<'_>) {
        match v {
            Value::String(s) => out.set(self, Leaf::Str(Cow::Owned(s.clone()))),
            Value::Number(n) => out.set(self, Leaf::Num(n.clone())),
            Value::Object(m) => {
                for c in &self.children {
                    if let Some(v) = m.get(&*c.key) {
                        c.read_value(v, out);
                    }
                }
            }
            Value::Array(a) => {
                for c in &self.children {
                    if let Some(v) = c.index.and_then(|i| a.get(i)) {
                        c.read_value(v, out);
                    }
                }
            }
            Value::Bool(_) | Value::Null => {}
        }
    }
}

/// Where a source's rate-limit identifier comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum IdentifierPath {
    None,
    /// `payload.…`: probed into this slot ([`Field::IDENTIFIER`], or its alternate).
    InPayload(Field),
    /// Any other path, read from the event object (without its payload or metadata).
    InEvent(Box<str>),
}

/// What to probe in a source's payloads: the fields its provider classifies by, and its
/// identifier paths. Built once per source.
#[derive(Debug, Clone)]
pub struct ProbeSpec {
    root: ProbeNode,
    /// Tried in order; the first that holds an identifier wins.
    identifier: [IdentifierPath; IDENTIFIER_SLOTS],
}

impl ProbeSpec {
    /// `probes`: the provider's fields (`Provider::probes`).
    pub fn new(probes: &[Probe], identifier_field: Option<&str>) -> ProbeSpec {
        ProbeSpec::with_alternate(probes, identifier_field, None)
    }

    /// As [`ProbeSpec::new`], with a second identifier path read when the first has nothing
    /// (`Provider::identifier_alternate`).
    pub fn with_alternate(
        probes: &[Probe],
        identifier_field: Option<&str>,
        alternate: Option<&str>,
    ) -> ProbeSpec {
        let mut root = ProbeNode::default();
        for (path, field) in probes {
            root.insert(path, *field);
        }
        let mut path = |p: Option<&str>, slot: Field| match p {
            None => IdentifierPath::None,
            Some(p) => match p.strip_prefix("payload.") {
                Some(rest) => {
                    root.insert(&rest.split('.').collect::<Vec<_>>(), slot);
                    IdentifierPath::InPayload(slot)
                }
                // The payload itself is an object, never an identifier.
                None if p == "payload" => IdentifierPath::None,
                None => IdentifierPath::InEvent(p.into()),
            },
        };
        let identifier = [
            path(identifier_field, Field::IDENTIFIER),
            path(alternate, Field::IDENTIFIER_ALTERNATE),
        ];
        root.seal();
        ProbeSpec { root, identifier }
    }

    /// The probed fields of a parsed payload.
    pub fn read_value(&self, payload: &Value) -> Fields<'static> {
        let mut out = Fields::default();
        self.root.read_value(payload, &mut out);
        out
    }
}

/// Deserializes one value at `node`: keeps the scalars the node asks for, descends into the
/// children asked for, and skips the rest. Answers what kind of value it was.
/// What kind of JSON value the probe went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Scalar,
    Object,
    Array,
}

struct NodeSeed<'n, 'f, 'de> {
    node: &'n ProbeNode,
    fields: &'f mut Fields<'de>,
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, '_, 'de> {
    type Value = Shape;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
        for &f in self.node.subtree.iter() {
            self.fields.leaves[f.index()] = None;
        }
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_, '_, 'de> {
    type Value = Shape;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Shape, E> {
        if !self.node.fields.is_empty() {
            self.fields.set(self.node, Leaf::Str(Cow::Borrowed(v)));
        }
        Ok(Shape::Scalar)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Shape, E> {
        // Strings with escapes come unescaped in a scratch buffer: copied only if wanted.
        if !self.node.fields.is_empty() {
            self.fields
                .set(self.node, Leaf::Str(Cow::Owned(v.to_owned())));
        }
        Ok(Shape::Scalar)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Shape, E> {
        self.fields.set(self.node, Leaf::Num(v.into()));
        Ok(Shape::Scalar)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Shape, E> {
        self.fields.set(self.node, Leaf::Num(v.into()));
        Ok(Shape::Scalar)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Shape, E> {
        // JSON numbers are finite (serde_json refuses overflow), so this is always Some.
        if let Some(n) = Number::from_f64(v) {
            self.fields.set(self.node, Leaf::Num(n));
        }
        Ok(Shape::Scalar)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Shape, E> {
        Ok(Shape::Scalar)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        let NodeSeed { node, fields } = self;
        while let Some(child) = map.next_key_seed(KeySeed(node))? {
            match child {
                Some(child) => {
                    map.next_value_seed(NodeSeed {
                        node: child,
                        fields: &mut *fields,
                    })?;
                }
                None => {
                    map.next_value::<Skip>()?;
                }
            }
        }
        Ok(Shape::Object)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        let NodeSeed { node, fields } = self;
        let mut index = 0usize;
        loop {
            let more = match node.child_at(index) {
                Some(child) => seq
                    .next_element_seed(NodeSeed {
                        node: child,
                        fields: &mut *fields,
                    })?
                    .is_some(),
                None => seq.next_element::<Skip>()?.is_some(),
            };
            if !more {
                return Ok(Shape::Array);
            }
            index += 1;
        }
    }
}

/// Reads an object key and answers the probed child it names, if any (no allocation).
struct KeySeed<'n>(&'n ProbeNode);

impl<'de, 'n> DeserializeSeed<'de> for KeySeed<'n> {
    type Value = Option<&'n ProbeNode>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, 'n> Visitor<'de> for KeySeed<'n> {
    type Value = Option<&'n ProbeNode>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.child(key))
    }
}

/// Any JSON value, validated exactly as parsing it into a `Value` would (unlike
/// `serde::de::IgnoredAny`, whose fast path in serde_json checks neither surrogate escapes,
/// number ranges nor nesting depth), and then dropped without allocating.
struct Skip;

impl<'de> de::Deserialize<'de> for Skip {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Skip, D::Error> {
        d.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Skip, E> {
        Ok(Skip)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
}

/// A decoded body: the probed fields, and the payload when it had to be parsed.
#[derive(Debug)]
pub struct Probed<'a> {
    /// `None`: the payload is the body's JSON text, validated but not parsed into a tree
    /// (`materialize_payload` does that when something needs it).
    pub payload: Option<Value>,
    pub fields: Fields<'a>,
    /// The payload is the body's JSON text as received (so it can be stored verbatim).
    pub raw_json: bool,
}

/// Validates a body that must be a JSON object nested at most `MAX_DEPTH` deep, as
/// `parse_json_object` does, and probes the fields `spec` asks for without building the tree.
/// Bodies the fast pass refuses (or that sit at serde's nesting guard) go through
/// `parse_json_object`, so the answers and error messages are the same as its own.
pub fn probe_json_object<'a>(bytes: &'a [u8], spec: &ProbeSpec) -> Result<Probed<'a>, BodyError> {
    probe_json(bytes, spec, JsonBody::Object)
}

/// `probe_json_object`, for a body that may also be an array where `json` allows it.
pub fn probe_json<'a>(
    bytes: &'a [u8],
    spec: &ProbeSpec,
    json: JsonBody,
) -> Result<Probed<'a>, BodyError> {
    // Validating UTF-8 up front lets serde_json read the text as a `str`: strings can then be
    // borrowed, and the validation is the same as in the byte-slice parser.
    if let Ok(text) = std::str::from_utf8(bytes) {
        let mut fields = Fields::default();
        let mut de = serde_json::Deserializer::from_str(text);
        let probed = NodeSeed {
            node: &spec.root,
            fields: &mut fields,
        }
        .deserialize(&mut de)
        .and_then(|object| de.end().map(|()| object));
        let accepted = match probed {
            Ok(Shape::Object) => true,
            Ok(Shape::Array) => json == JsonBody::ObjectOrArray,
            _ => false,
        };
        if accepted {
            return Ok(Probed {
                payload: None,
                fields,
                raw_json: true,
            });
        }
    }
    let payload = parse_json_body(bytes, json)?;
    Ok(Probed {
        fields: spec.read_value(&payload),
        payload: Some(payload),
        raw_json: true,
    })
}

/// `decode_body` with the payload's fields probed; a JSON body's payload is left unparsed.
pub fn probe_body<'a>(
    kind: BodyKind,
    bytes: &'a [u8],
    spec: &ProbeSpec,
    form: FormBody,
) -> Result<Probed<'a>, BodyError> {
    probe_body_as(kind, bytes, spec, form, JsonBody::Object)
}

/// `probe_body` for a provider whose JSON bodies may be what `json` says.
pub fn probe_body_as<'a>(
    kind: BodyKind,
    bytes: &'a [u8],
    spec: &ProbeSpec,
    form: FormBody,
    json: JsonBody,
) -> Result<Probed<'a>, BodyError> {
    match kind {
        BodyKind::Json => probe_json(bytes, spec, json),
        BodyKind::Form => {
            let Decoded { payload, raw_json } = decode_body(kind, bytes, form)?;
            Ok(Probed {
                fields: spec.read_value(&payload),
                payload: Some(payload),
                raw_json,
            })
        }
    }
}

/// Parses the payload of an event built without it (see `Probed::payload`) from the body's JSON
/// text, which ingest validated, into the event's `payload` field.
pub fn materialize_payload(event: &mut Value, raw: &[u8]) {
    // Whatever its provider allowed: an object, or a HubSpot array.
    match parse_json_body(raw, JsonBody::ObjectOrArray) {
        Ok(payload) => {
            if let Value::Object(m) = event {
                m.insert("payload".into(), payload);
            }
        }
        // Unreachable: the same text passed the same checks at ingest.
        Err(e) => tracing::error!(error = %e, "a validated payload did not parse"),
    }
}

/// What a provider reads from its request: type, action and delivery id (API.md section 3
/// table, section 4 `action`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub event_type: String,
    pub action: Option<String>,
    pub delivery_id: Option<String>,
}

/// `IssueLabel` → `issue_label`, `OAuthApp` → `o_auth_app`, `issue` → `issue`.
pub fn snake_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    let chars: Vec<char> = s.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).map(|j| chars[j]);
            let next = chars.get(i + 1);
            let boundary = match prev {
                Some(p) if p.is_lowercase() || p.is_ascii_digit() => true,
                Some(p) if p.is_uppercase() => next.is_some_and(|n| n.is_lowercase()),
                _ => false,
            };
            if boundary && !out.ends_with('_') {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else if c == '-' || c == ' ' {
            out.push('_');
        } else {
            out.push(c);
        }
    }
    out
}

/// Headers that carry credentials are never archived or forwarded: these, and every provider's
/// signature headers (`signature_headers`, lowercase).
fn sensitive_header(name: &str, signature_headers: &[&str]) -> bool {
    matches!(name, "authorization" | "proxy-authorization" | "cookie")
        || signature_headers.contains(&name)
}

/// At most this many headers, each value at most 1 KiB, are kept in `metadata.headers`.
const MAX_KEPT_HEADERS: usize = 64;
const MAX_HEADER_VALUE: usize = 1024;

pub fn kept_headers(headers: &HeaderMap, signature_headers: &[&str]) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, value) in headers {
        if out.len() >= MAX_KEPT_HEADERS {
            break;
        }
        let name = name.as_str();
        if sensitive_header(name, signature_headers) || out.contains_key(name) {
            continue;
        }
        let text = String::from_utf8_lossy(value.as_bytes());
        let text = if text.len() > MAX_HEADER_VALUE {
            let mut end = MAX_HEADER_VALUE;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_string()
        } else {
            text.into_owned()
        };
        out.insert(name.to_string(), Value::String(text));
    }
    out
}

/// A path segment as an array index: ASCII digits only (so not `+0` or ` 1`), as rule paths
/// read them; an index too large for `usize` is one no array has.
pub fn array_index(seg: &str) -> Option<usize> {
    (!seg.is_empty() && seg.bytes().all(|b| b.is_ascii_digit()))
        .then(|| seg.parse().unwrap_or(usize::MAX))
}

/// Reads a dot path (`payload.sender.login`, numeric segments index arrays) from an event.
pub fn lookup<'a>(event: &'a Value, path: &str) -> Option<&'a Value> {
    let mut cur = event;
    for seg in path.split('.') {
        cur = match cur {
            Value::Object(m) => m.get(seg)?,
            Value::Array(a) => a.get(array_index(seg)?)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// The rate-limit identifier: the value at the source's identifier path if it is a non-empty
/// string or a number, else the client IP.
pub fn identifier(event: &Value, path: Option<&str>, client_ip: &str) -> String {
    let found = path.and_then(|p| lookup(event, p)).and_then(|v| match v {
        Value::String(s) => identifier_text(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    found.unwrap_or_else(|| client_ip.to_string())
}

fn identifier_text(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| truncate(s, 256).to_string())
}

/// `identifier` for an event built by `normalize`: a `payload.…` path reads the probed field,
/// any other path the event object (which has no metadata yet).
fn probed_identifier(
    spec: &ProbeSpec,
    fields: &Fields<'_>,
    event: &Value,
    client_ip: &str,
) -> String {
    spec.identifier
        .iter()
        .find_map(|path| match path {
            IdentifierPath::None => None,
            IdentifierPath::InEvent(path) => match lookup(event, path)? {
                Value::String(s) => identifier_text(s),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            },
            IdentifierPath::InPayload(slot) => match fields.get(*slot)? {
                Leaf::Str(s) => identifier_text(s),
                Leaf::Num(n) => Some(n.to_string()),
            },
        })
        .unwrap_or_else(|| client_ip.to_string())
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The parts of an event that are columns in the store; the full event is a JSON object.
#[derive(Debug, Clone)]
pub struct EventHeader {
    pub id: Uuid,
    pub source: String,
    pub event_type: String,
    pub action: Option<String>,
    pub delivery_id: Option<String>,
    pub timestamp: i64,
}

/// A fresh UUID v7 and its millisecond timestamp (the same instant, so archive ranges by time are
/// ranges by id).
pub fn new_event_id() -> (Uuid, i64) {
    let id = Uuid::now_v7();
    let ts = id
        .get_timestamp()
        .map(|t| {
            let (s, n) = t.to_unix();
            s as i64 * 1000 + (n / 1_000_000) as i64
        })
        .unwrap_or(0);
    (id, ts)
}

pub struct EventInput<'a> {
    /// The event's id and receipt time (ms), from `new_event_id` or the stream sequencer.
    pub id: (Uuid, i64),
    pub source: &'a str,
    pub classified: Classified,
    /// `None` when the payload stays the body's JSON text for now: the event's `payload` is then
    /// `null` until `materialize_payload` (`serialize_event` splices the text in its place).
    pub payload: Option<Value>,
    /// The payload's probed fields, and what was probed (for the identifier path).
    pub fields: &'a Fields<'a>,
    pub probe: &'a ProbeSpec,
    pub headers: &'a HeaderMap,
    /// Headers never kept in `metadata.headers` besides the credential ones: every provider's
    /// signature headers, lowercase.
    pub signature_headers: &'a [&'a str],
    pub client_ip: &'a str,
    pub received_bytes: usize,
}

/// Builds the section 4 event object. Returns the header columns and the JSON object.
pub fn normalize(input: EventInput<'_>) -> (EventHeader, Value) {
    let EventInput {
        id: (id, timestamp),
        source,
        classified,
        payload,
        fields,
        probe,
        headers,
        signature_headers,
        client_ip,
        received_bytes,
    } = input;
    let opt_string = |s: &Option<String>| s.clone().map(Value::String).unwrap_or(Value::Null);
    let mut event = Map::new();
    event.insert("id".into(), Value::String(id.to_string()));
    event.insert("source".into(), Value::String(source.to_string()));
    event.insert("type".into(), Value::String(classified.event_type.clone()));
    event.insert("action".into(), opt_string(&classified.action));
    event.insert("deliveryId".into(), opt_string(&classified.delivery_id));
    event.insert("timestamp".into(), Value::from(timestamp));
    event.insert("payload".into(), payload.unwrap_or(Value::Null));
    let mut event = Value::Object(event);
    let ident = probed_identifier(probe, fields, &event, client_ip);
    let mut metadata = Map::new();
    metadata.insert("clientIp".into(), Value::String(client_ip.to_string()));
    metadata.insert("receivedBytes".into(), Value::from(received_bytes as u64));
    metadata.insert(
        "headers".into(),
        Value::Object(kept_headers(headers, signature_headers)),
    );
    metadata.insert("identifier".into(), Value::String(ident));
    if let Value::Object(m) = &mut event {
        m.insert("metadata".into(), Value::Object(metadata));
    }
    let header = EventHeader {
        id,
        source: source.to_string(),
        event_type: classified.event_type,
        action: classified.action,
        delivery_id: classified.delivery_id,
        timestamp,
    };
    (header, event)
}

/// Serializes an event object (compact JSON text), writing `raw_payload` verbatim in place of the
/// event's `payload` when given: the provider's own JSON text, already validated at ingest. That
/// saves re-serializing the largest part of the event on the hot path, and is what lets ingest
/// leave the payload unparsed (`null` in the event) when nothing else needs it.
pub fn serialize_event(event: &Value, raw_payload: Option<&[u8]>) -> Vec<u8> {
    serialize_event_spliced(event, raw_payload).0
}

/// `serialize_event`, and where in its output the spliced payload text lies (when it was
/// spliced in), so that the payload can be taken from the serialized event (`Bytes::slice`)
/// rather than by keeping the request body around.
pub fn serialize_event_spliced(
    event: &Value,
    raw_payload: Option<&[u8]>,
) -> (Vec<u8>, Option<std::ops::Range<usize>>) {
    let (Value::Object(map), Some(raw)) = (event, raw_payload) else {
        return (serde_json::to_vec(event).unwrap_or_default(), None);
    };
    let raw = raw.trim_ascii();
    let mut out = Vec::with_capacity(raw.len() + 1024);
    let mut span = None;
    out.push(b'{');
    for (i, (k, v)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing to a Vec cannot fail; serde escapes the key as needed.
        let _ = serde_json::to_writer(&mut out, k);
        out.push(b':');
        if k == "payload" {
            span = Some(out.len()..out.len() + raw.len());
            out.extend_from_slice(raw);
        } else {
            let _ = serde_json::to_writer(&mut out, v);
        }
    }
    out.push(b'}');
    (out, span)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn identifier_paths_index_arrays_with_plain_digits_only() {
        let event = serde_json::json!({"payload": {"owners": ["ann", "bob"]}});
        assert_eq!(
            lookup(&event, "payload.owners.1"),
            Some(&Value::from("bob"))
        );
        for odd in ["+1", " 1", "1 ", "-0", "0x1", "", "99999999999999999999999"] {
            assert_eq!(
                lookup(&event, &format!("payload.owners.{odd}")),
                None,
                "{odd:?}"
            );
        }
        assert_eq!(
            identifier(&event, Some("payload.owners.+0"), "10.0.0.1"),
            "10.0.0.1"
        );
        assert_eq!(array_index("007"), Some(7));
        assert_eq!(array_index("99999999999999999999999"), Some(usize::MAX));
    }

    // Probe lists shaped like the providers' (each provider's own tests check its list).
    const ACTION: Field = Field::new(0);
    const TYPE: Field = Field::new(1);
    const EVENT_ID: Field = Field::new(2);
    const COMMAND: Field = Field::new(3);
    const EVENT_TYPE: Field = Field::new(4);
    const EVENT_SUBTYPE: Field = Field::new(5);
    const WEBHOOK_TIMESTAMP: Field = Field::new(6);
    const GITHUB_LIKE: &[Probe] = &[(&["action"], ACTION)];
    const LINEAR_LIKE: &[Probe] = &[
        (&["type"], TYPE),
        (&["action"], ACTION),
        (&["webhookTimestamp"], WEBHOOK_TIMESTAMP),
    ];
    const SLACK_LIKE: &[Probe] = &[
        (&["type"], TYPE),
        (&["event_id"], EVENT_ID),
        (&["command"], COMMAND),
        (&["event", "type"], EVENT_TYPE),
        (&["event", "subtype"], EVENT_SUBTYPE),
    ];
    const STANDARD_LIKE: &[Probe] = &[(&["type"], TYPE), (&["action"], ACTION)];

    fn hdrs(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn snake_case_matches_linear_types() {
        assert_eq!(snake_case("Issue"), "issue");
        assert_eq!(snake_case("IssueLabel"), "issue_label");
        assert_eq!(snake_case("ProjectUpdate"), "project_update");
        assert_eq!(snake_case("OAuthApp"), "o_auth_app");
        assert_eq!(snake_case("already_snake"), "already_snake");
    }

    #[test]
    fn nesting_limit_is_128() {
        for inner in ["1", ""] {
            let ok = format!("{}{inner}{}", "[".repeat(127), "]".repeat(127));
            let ok = format!("{{\"a\":{ok}}}");
            assert_eq!(max_depth(ok.as_bytes()), 128);
            assert!(parse_json_object(ok.as_bytes()).is_ok(), "{inner:?}");
            let deep = format!("{}{inner}{}", "[".repeat(128), "]".repeat(128));
            let deep = format!("{{\"a\":{deep}}}");
            let err = parse_json_object(deep.as_bytes()).unwrap_err();
            assert!(err.0.contains("deeper than 128"), "{err}");
        }
        let objects = format!("{}{{}}{}", "{\"a\":".repeat(127), "}".repeat(127));
        assert!(parse_json_object(objects.as_bytes()).is_ok());
        // Brackets inside strings do not count.
        let s = format!("{{\"a\":\"{}\\\"{}\"}}", "[".repeat(500), "{".repeat(500));
        assert_eq!(max_depth(s.as_bytes()), 1);
        assert!(parse_json_object(s.as_bytes()).is_ok());
        let very_deep = "[".repeat(10_000);
        assert!(parse_json_object(very_deep.as_bytes()).is_err());
    }

    #[test]
    fn rejects_non_objects_and_garbage() {
        for body in [
            &b""[..],
            b"  ",
            b"[]",
            b"1",
            b"\"s\"",
            b"{",
            b"\xff\xfe",
            b"{\"a\":1}x",
        ] {
            assert!(parse_json_object(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(body_kind(&hdrs(&[])).unwrap(), BodyKind::Json);
        assert_eq!(
            body_kind(&hdrs(&[(
                "content-type",
                "application/json; charset=utf-8"
            )]))
            .unwrap(),
            BodyKind::Json
        );
        assert_eq!(
            body_kind(&hdrs(&[("content-type", "application/vnd.api+json")])).unwrap(),
            BodyKind::Json
        );
        assert_eq!(
            body_kind(&hdrs(&[(
                "content-type",
                "application/x-www-form-urlencoded"
            )]))
            .unwrap(),
            BodyKind::Form
        );
        assert!(body_kind(&hdrs(&[("content-type", "text/plain")])).is_err());
        assert!(body_kind(&hdrs(&[("content-type", "+json")])).is_err());
    }

    #[test]
    fn form_payload_and_slash_command() {
        let form = FormBody::PayloadOrFields;
        let d = decode_body(
            BodyKind::Form,
            b"payload=%7B%22type%22%3A%22block_actions%22%7D",
            form,
        )
        .unwrap();
        assert_eq!(d.payload["type"], "block_actions");
        let d = decode_body(
            BodyKind::Form,
            b"command=%2Fdeploy&text=prod&team_id=T1",
            form,
        )
        .unwrap();
        assert_eq!(d.payload["command"], "/deploy");
        assert_eq!(d.payload["text"], "prod");
        assert!(decode_body(BodyKind::Form, b"payload=notjson", form).is_err());
        assert!(decode_body(BodyKind::Form, b"", form).is_err());
    }

    #[test]
    fn a_form_that_must_carry_payload_refuses_plain_fields() {
        let form = FormBody::Payload;
        let d = decode_body(BodyKind::Form, b"x=1&payload=%7B%22a%22%3A1%7D", form).unwrap();
        assert_eq!(d.payload["a"], 1);
        for body in [
            &b"zen=hi&hook_id=1"[..],
            b"payloads=%7B%7D",
            b"Payload=%7B%7D",
        ] {
            let err = decode_body(BodyKind::Form, body, form).unwrap_err();
            assert_eq!(err.0, "the form body has no payload field", "{body:?}");
        }
        // Other refusals keep their own message.
        let err = decode_body(BodyKind::Form, b"&&", form).unwrap_err();
        assert_eq!(err.0, "the form body has no fields");
        // A JSON body is not a form.
        assert!(decode_body(BodyKind::Json, br#"{"zen":"hi"}"#, form).is_ok());
    }

    #[test]
    fn normalize_builds_section_4_event() {
        let headers = hdrs(&[
            ("x-github-event", "pull_request"),
            ("x-hub-signature-256", "sha256=secretish"),
            ("authorization", "Bearer k"),
        ]);
        let payload = serde_json::json!({"sender": {"login": "octocat"}, "action": "opened"});
        let probe = ProbeSpec::new(GITHUB_LIKE, Some("payload.sender.login"));
        let fields = probe.read_value(&payload);
        let (h, ev) = normalize(EventInput {
            id: new_event_id(),
            source: "github",
            classified: Classified {
                event_type: "pull_request".into(),
                action: Some("opened".into()),
                delivery_id: Some("d".into()),
            },
            payload: Some(payload),
            fields: &fields,
            probe: &probe,
            headers: &headers,
            signature_headers: &["x-hub-signature-256"],
            client_ip: "127.0.0.1",
            received_bytes: 42,
        });
        assert_eq!(h.id.get_version_num(), 7);
        assert_eq!(ev["id"], h.id.to_string());
        assert_eq!(ev["timestamp"], h.timestamp);
        assert_eq!(ev["metadata"]["identifier"], "octocat");
        assert_eq!(ev["metadata"]["receivedBytes"], 42);
        assert_eq!(ev["metadata"]["headers"]["x-github-event"], "pull_request");
        assert!(
            ev["metadata"]["headers"]
                .get("x-hub-signature-256")
                .is_none()
        );
        assert!(ev["metadata"]["headers"].get("authorization").is_none());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        assert!((now - h.timestamp).abs() < 5_000);
    }

    #[test]
    fn identifier_falls_back_to_ip() {
        let ev = serde_json::json!({"payload": {"n": 5, "e": "", "o": {}}});
        assert_eq!(identifier(&ev, Some("payload.n"), "1.2.3.4"), "5");
        assert_eq!(identifier(&ev, Some("payload.e"), "1.2.3.4"), "1.2.3.4");
        assert_eq!(identifier(&ev, Some("payload.o"), "1.2.3.4"), "1.2.3.4");
        assert_eq!(identifier(&ev, None, "1.2.3.4"), "1.2.3.4");
    }

    #[test]
    fn serialize_splices_raw_payload() {
        let raw = br#"{ "b": 1,  "a": [1, 2] }"#;
        let mut ev = serde_json::json!({"id": "x", "type": "t", "payload": {}});
        ev["payload"] = serde_json::from_slice(raw).unwrap();
        let s = String::from_utf8(serialize_event(&ev, Some(raw))).unwrap();
        let back: Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, ev);
        assert!(s.contains(r#""b": 1,  "a""#));
        // Without a raw payload, or with keys that need escaping, it is serde's own text.
        ev["we\"ird\nkey"] = Value::from("v");
        assert_eq!(serialize_event(&ev, None), serde_json::to_vec(&ev).unwrap());
        let spliced = serialize_event(&ev, Some(b" \n{}\t "));
        ev["payload"] = serde_json::json!({});
        assert_eq!(spliced, serde_json::to_vec(&ev).unwrap());
    }

    #[test]
    fn probe_accepts_and_refuses_what_parsing_does() {
        let deep = |n: usize| format!("{{\"a\":{}{}}}", "[".repeat(n - 1), "]".repeat(n - 1));
        let bodies: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b" \r\n\t ".to_vec(),
            b"hello".to_vec(),
            b"[1,2]".to_vec(),
            b"\"s\"".to_vec(),
            b"42".to_vec(),
            b"null".to_vec(),
            b"{".to_vec(),
            b"{\"a\":1} x".to_vec(),
            b"{\"a\":1}  \n".to_vec(),
            b"{\"a\":\"\xff\xfe\"}".to_vec(),
            b"\xef\xbb{\"a\":1}".to_vec(),
            b"{\"a\":\"x\x00y\"}".to_vec(),
            br#"{"a":"\ud800"}"#.to_vec(),
            br#"{"a":"\ud83d\ude00"}"#.to_vec(),
            br#"{"\ud800":1}"#.to_vec(),
            br#"{"a":"\q"}"#.to_vec(),
            br#"{"n":1e400}"#.to_vec(),
            br#"{"n":-1e400}"#.to_vec(),
            br#"{"n":1e-400}"#.to_vec(),
            br#"{"n":01}"#.to_vec(),
            br#"{"a":[1,]}"#.to_vec(),
            br#"{"a":1,}"#.to_vec(),
            br#"{1:1}"#.to_vec(),
            br#"{"action":"opened","action":5}"#.to_vec(),
            deep(127).into_bytes(),
            deep(128).into_bytes(),
            deep(129).into_bytes(),
            "[".repeat(10_000).into_bytes(),
            "{\"a\":".repeat(10_000).into_bytes(),
            include_bytes!("../examples/github-pull_request.json").to_vec(),
        ];
        for probes in [GITHUB_LIKE, LINEAR_LIKE, SLACK_LIKE, STANDARD_LIKE] {
            let spec = ProbeSpec::new(probes, Some("payload.a.0"));
            for body in &bodies {
                let want = parse_json_object(body);
                let got = probe_json_object(body, &spec);
                match (&want, &got) {
                    (Ok(v), Ok(p)) => {
                        assert!(p.raw_json);
                        assert_eq!(p.fields, spec.read_value(v));
                        if let Some(parsed) = &p.payload {
                            assert_eq!(parsed, v);
                        }
                    }
                    (Err(w), Err(g)) => assert_eq!(w, g, "same message"),
                    _ => panic!("{:?}: {want:?} vs {got:?}", String::from_utf8_lossy(body)),
                }
            }
        }
        // The common case builds no tree; bodies at serde's nesting guard take the parser.
        let spec = ProbeSpec::new(GITHUB_LIKE, None);
        let pr = include_bytes!("../examples/github-pull_request.json");
        assert!(probe_json_object(pr, &spec).unwrap().payload.is_none());
        let at_limit = deep(128);
        assert!(
            probe_json_object(at_limit.as_bytes(), &spec)
                .unwrap()
                .payload
                .is_some()
        );
    }

    #[test]
    fn probe_reads_fields_and_identifier_paths() {
        let body = br#"{"action":"op\"ened","type":"IssueLabel","webhookTimestamp":1764170000123,
            "event":{"type":"message","subtype":"bot_message"},"event_id":"Ev1","command":"/x",
            "sender":{"login":"octocat","id":-7},"data":[{"id":"first"},{"id":2.5}],
            "byKey":{"0":{"id":"zero"}},"n":18446744073709551615,"empty":"","obj":{},
            "other":{"action":"nested, not ours"}}"#;
        let cases: &[(&str, Option<Leaf<'_>>)] = &[
            ("payload.sender.login", Some(Leaf::Str("octocat".into()))),
            ("payload.sender.id", Some(Leaf::Num((-7).into()))),
            ("payload.data.0.id", Some(Leaf::Str("first".into()))),
            (
                "payload.data.1.id",
                Some(Leaf::Num(Number::from_f64(2.5).unwrap())),
            ),
            ("payload.data.2.id", None),
            ("payload.data.x", None),
            ("payload.byKey.0.id", Some(Leaf::Str("zero".into()))),
            ("payload.n", Some(Leaf::Num(u64::MAX.into()))),
            ("payload.empty", Some(Leaf::Str("".into()))),
            ("payload.obj", None),
            ("payload.missing.deeper", None),
            ("payload.sender.login.more", None),
            ("payload.event.type", Some(Leaf::Str("message".into()))),
        ];
        for (path, want) in cases {
            let spec = ProbeSpec::new(SLACK_LIKE, Some(path));
            let p = probe_json_object(body, &spec).unwrap();
            assert!(p.payload.is_none());
            assert_eq!(p.fields.get(Field::IDENTIFIER), want.as_ref(), "{path}");
            assert_eq!(p.fields.str(EVENT_TYPE), Some("message"));
            assert_eq!(p.fields.str(EVENT_SUBTYPE), Some("bot_message"));
            assert_eq!(p.fields.str(EVENT_ID), Some("Ev1"));
            assert_eq!(p.fields.str(COMMAND), Some("/x"));
            // The same as the parsed payload's `identifier`.
            let event = serde_json::json!({ "payload": parse_json_object(body).unwrap() });
            let ident = probed_identifier(&spec, &p.fields, &event, "ip");
            assert_eq!(ident, identifier(&event, Some(path), "ip"), "{path}");
        }
        let spec = ProbeSpec::new(LINEAR_LIKE, None);
        let p = probe_json_object(body, &spec).unwrap();
        // Escaped strings are unescaped (copied); plain ones are borrowed from the body.
        assert_eq!(p.fields.str(ACTION), Some("op\"ened"));
        assert!(matches!(
            p.fields.get(TYPE),
            Some(Leaf::Str(Cow::Borrowed("IssueLabel")))
        ));
        assert_eq!(p.fields.i64(WEBHOOK_TIMESTAMP), Some(1764170000123));
        // Slack's fields are not probed for Linear.
        assert_eq!(p.fields.get(EVENT_TYPE), None);
        assert_eq!(p.fields.get(Field::IDENTIFIER), None);
    }

    #[test]
    fn probe_keeps_the_last_of_duplicate_keys() {
        let spec = ProbeSpec::new(SLACK_LIKE, Some("payload.event.type"));
        for body in [
            &br#"{"type":"a","type":"event_callback","event":{"type":"x"},"event":{"type":"y"}}"#[..],
            br#"{"type":"event_callback","event":{"type":"x","subtype":"s"},"event":5}"#,
            br#"{"type":1,"type":"t","event":{"type":"x","type":null}}"#,
            br#"{"event":{"type":"x"},"event":{"subtype":"s"}}"#,
        ] {
            let p = probe_json_object(body, &spec).unwrap();
            let v = parse_json_object(body).unwrap();
            assert_eq!(
                p.fields,
                spec.read_value(&v),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let p = probe_json_object(br#"{"type":"a","type":5}"#, &spec).unwrap();
        assert_eq!(p.fields.str(TYPE), None);
    }

    #[test]
    fn an_alternate_identifier_path_is_read_when_the_first_has_nothing() {
        let spec =
            ProbeSpec::with_alternate(SLACK_LIKE, Some("payload.team_id"), Some("payload.team.id"));
        let ident = |body: &[u8]| {
            let p = probe_json_object(body, &spec).unwrap();
            let event = serde_json::json!({"payload": parse_json_object(body).unwrap()});
            probed_identifier(&spec, &p.fields, &event, "10.0.0.1")
        };
        assert_eq!(ident(br#"{"team_id":"T1","team":{"id":"T2"}}"#), "T1");
        assert_eq!(ident(br#"{"team":{"id":"T2","domain":"d"}}"#), "T2");
        assert_eq!(ident(br#"{"team_id":"","team":{"id":"T2"}}"#), "T2");
        assert_eq!(ident(br#"{"team":"T3"}"#), "10.0.0.1");
        assert_eq!(ident(br#"{}"#), "10.0.0.1");
        // An interactivity form body: `payload=<json>`.
        let p = probe_body(
            BodyKind::Form,
            b"payload=%7B%22type%22%3A%22block_actions%22%2C%22team%22%3A%7B%22id%22%3A%22T9%22%7D%7D",
            &spec,
            FormBody::PayloadOrFields,
        )
        .unwrap();
        let event = serde_json::json!({"payload": p.payload.clone()});
        assert_eq!(probed_identifier(&spec, &p.fields, &event, "ip"), "T9");
        // Without an alternate, the first path alone.
        let spec = ProbeSpec::new(SLACK_LIKE, Some("payload.team_id"));
        let p = probe_json_object(br#"{"team":{"id":"T2"}}"#, &spec).unwrap();
        assert_eq!(
            probed_identifier(&spec, &p.fields, &Value::Null, "ip"),
            "ip"
        );
    }

    #[test]
    fn probe_of_form_bodies_parses_them() {
        let spec = ProbeSpec::new(SLACK_LIKE, Some("payload.user_id"));
        let form = FormBody::PayloadOrFields;
        let p = probe_body(
            BodyKind::Form,
            b"command=%2Fdeploy&text=prod&user_id=U1",
            &spec,
            form,
        )
        .unwrap();
        assert!(!p.raw_json);
        assert_eq!(p.payload.as_ref().unwrap()["text"], "prod");
        assert_eq!(p.fields.str(COMMAND), Some("/deploy"));
        assert_eq!(p.fields.str(Field::IDENTIFIER), Some("U1"));
        let p = probe_body(
            BodyKind::Form,
            b"payload=%7B%22type%22%3A%22block_actions%22%7D",
            &spec,
            form,
        )
        .unwrap();
        assert_eq!(p.fields.str(TYPE), Some("block_actions"));
        assert!(p.payload.is_some());
        for bad_body in [&b"payload=notjson"[..], b"", b"payload=%5B1%5D"] {
            assert_eq!(
                probe_body(BodyKind::Form, bad_body, &spec, form).unwrap_err(),
                decode_body(BodyKind::Form, bad_body, form).unwrap_err()
            );
        }
        assert_eq!(
            probe_body(BodyKind::Form, b"text=prod", &spec, FormBody::Payload).unwrap_err(),
            decode_body(BodyKind::Form, b"text=prod", FormBody::Payload).unwrap_err()
        );
    }

    #[test]
    fn a_deferred_payload_serializes_and_materializes_as_a_parsed_one() {
        let body = include_bytes!("../examples/github-pull_request.json");
        let headers = hdrs(&[("x-github-event", "pull_request")]);
        for ident in [
            Some("payload.sender.login"),
            Some("source"),
            Some("metadata.clientIp"),
            Some("payload"),
            None,
        ] {
            let probe = ProbeSpec::new(GITHUB_LIKE, ident);
            let id = new_event_id();
            let build = |payload: Option<Value>, fields: &Fields<'_>| {
                normalize(EventInput {
                    id,
                    source: "github",
                    classified: Classified {
                        event_type: "pull_request".into(),
                        action: fields.str(ACTION).map(str::to_string),
                        delivery_id: None,
                    },
                    payload,
                    fields,
                    probe: &probe,
                    headers: &headers,
                    signature_headers: &[],
                    client_ip: "10.0.0.1",
                    received_bytes: body.len(),
                })
                .1
            };
            let p = probe_json_object(body, &probe).unwrap();
            assert!(p.payload.is_none());
            let mut deferred = build(None, &p.fields);
            assert!(deferred["payload"].is_null());
            let parsed = parse_json_object(body).unwrap();
            let full = build(Some(parsed.clone()), &probe.read_value(&parsed));
            let (text, span) = serialize_event_spliced(&deferred, Some(body));
            assert_eq!(text, serialize_event(&full, Some(body)));
            assert_eq!(serde_json::from_slice::<Value>(&text).unwrap(), full);
            // The span is the payload's text inside the serialized event: materializing from
            // it is materializing from the request body.
            let span = span.expect("spliced");
            assert_eq!(&text[span.clone()], body.trim_ascii());
            let mut from_span = deferred.clone();
            materialize_payload(&mut from_span, &text[span]);
            materialize_payload(&mut deferred, body);
            assert_eq!(deferred, full);
            assert_eq!(from_span, full);
            let want = match ident {
                Some("payload.sender.login") => "octocat",
                Some("source") => "github",
                _ => "10.0.0.1",
            };
            assert_eq!(full["metadata"]["identifier"], want, "{ident:?}");
        }
    }
}
