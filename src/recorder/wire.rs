//! The one validation path of a submitted result: serde visitors that build `ClientInfo`, `Step`
//! and `ResultDoc` straight from any serde `Deserializer` — serde_json's reader over a REST body,
//! `xmlrpc`'s streaming reader over an XML-RPC body, or a `serde_json::Value` (stored bags,
//! `ResultDoc::from_json`) — refusing with a `BagError` that names the offending path.
//!
//! Implementation note: a refusal is the visitor's *value* (`Result<_, BagError>`), never a serde
//! error, so the reader still runs to the end of its input: a body that is both invalid and
//! malformed is refused as malformed, as when the whole body was parsed before any check. Known
//! keys are collected first and checked in a fixed order once their object ends, so the error a
//! client gets does not depend on the order of its keys. No `serde_json::Value` tree is built
//! for a result: only the keys the recorder does not know go into their `Bag`.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Number, Value as Json};

use super::model::{Bag, BagError, ClientInfo, ResultDoc, Step, check_name};

/// A known key's value as sent, before it is checked. Scalars are kept; containers only by
/// their kind (their contents read and dropped), except a top-level array's scalar items (tags,
/// an argv `command`).
pub(super) enum Lax {
    Null,
    Bool(bool),
    Num(Number),
    Str(String),
    Array(Vec<Lax>),
    /// "struct", a nested "array", or a number JSON cannot hold.
    Other(&'static str),
}

impl Lax {
    fn kind(&self) -> &'static str {
        match self {
            Lax::Null => "nil",
            Lax::Bool(_) => "boolean",
            Lax::Num(_) => "number",
            Lax::Str(_) => "string",
            Lax::Array(_) => "array",
            Lax::Other(k) => k,
        }
    }
}

/// Reads one `Lax`; `nested` arrays are not collected (only a top-level one is).
struct LaxSeed {
    nested: bool,
}

impl<'de> DeserializeSeed<'de> for LaxSeed {
    type Value = Lax;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Lax, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for LaxSeed {
    type Value = Lax;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_unit<E>(self) -> Result<Lax, E> {
        Ok(Lax::Null)
    }
    fn visit_none<E>(self) -> Result<Lax, E> {
        Ok(Lax::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Lax, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Lax, E> {
        Ok(Lax::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Lax, E> {
        Ok(Lax::Num(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Lax, E> {
        Ok(Lax::Num(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Lax, E> {
        Ok(Number::from_f64(v).map_or(Lax::Other("non-finite number"), Lax::Num))
    }
    fn visit_str<E>(self, v: &str) -> Result<Lax, E> {
        Ok(Lax::Str(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Lax, E> {
        Ok(Lax::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Lax, A::Error> {
        if self.nested {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            return Ok(Lax::Other("array"));
        }
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(v) = seq.next_element_seed(LaxSeed { nested: true })? {
            items.push(v);
        }
        Ok(Lax::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Lax, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Lax::Other("struct"))
    }
}

fn wrong(path: &str, expected: &'static str, got: &Lax) -> BagError {
    BagError::WrongType { path: path.to_owned(), expected, got: got.kind() }
}

fn name(v: Option<Lax>, path: &str) -> Result<String, BagError> {
    match v {
        None | Some(Lax::Null) => Err(BagError::Missing { path: path.to_owned() }),
        Some(Lax::Str(s)) => check_name(s, path),
        Some(other) => Err(wrong(path, "string", &other)),
    }
}

fn opt_f64(v: Option<Lax>, path: impl FnOnce() -> String) -> Result<Option<f64>, BagError> {
    match v {
        None | Some(Lax::Null) => Ok(None),
        Some(Lax::Num(n)) => Ok(n.as_f64()),
        Some(other) => Err(wrong(&path(), "number", &other)),
    }
}

fn opt_string(v: Option<Lax>, path: impl FnOnce() -> String) -> Result<String, BagError> {
    match v {
        None | Some(Lax::Null) => Ok(String::new()),
        Some(Lax::Str(s)) => Ok(s),
        Some(other) => Err(wrong(&path(), "string", &other)),
    }
}

/// Something read from a map: what it makes of the map, or of the kind of value that came instead.
pub(super) trait FromMap<'de>: Sized {
    type Out;
    fn map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Out, A::Error>;
    fn not_a_map(self, got: &'static str) -> Self::Out;
}

/// Visits a value that should be a map; any other value becomes `not_a_map(its kind)`.
pub(super) struct ExpectMap<T>(pub T);

impl<'de, T: FromMap<'de>> DeserializeSeed<'de> for ExpectMap<T> {
    type Value = T::Out;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T::Out, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de, T: FromMap<'de>> Visitor<'de> for ExpectMap<T> {
    type Value = T::Out;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T::Out, A::Error> {
        self.0.map(map)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<T::Out, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(self.0.not_a_map("array"))
    }
    fn visit_unit<E>(self) -> Result<T::Out, E> {
        Ok(self.0.not_a_map("nil"))
    }
    fn visit_none<E>(self) -> Result<T::Out, E> {
        Ok(self.0.not_a_map("nil"))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<T::Out, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E>(self, _: bool) -> Result<T::Out, E> {
        Ok(self.0.not_a_map("boolean"))
    }
    fn visit_i64<E>(self, _: i64) -> Result<T::Out, E> {
        Ok(self.0.not_a_map("number"))
    }
    fn visit_u64<E>(self, _: u64) -> Result<T::Out, E> {
        Ok(self.0.not_a_map("number"))
    }
    fn visit_f64<E>(self, _: f64) -> Result<T::Out, E> {
        Ok(self.0.not_a_map("number"))
    }
    fn visit_str<E>(self, _: &str) -> Result<T::Out, E> {
        Ok(self.0.not_a_map("string"))
    }
}

/// `client_info` → a validated `ClientInfo`.
pub(super) struct ClientInfoSeed;

impl<'de> DeserializeSeed<'de> for ClientInfoSeed {
    type Value = Result<ClientInfo, BagError>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        ExpectMap(self).deserialize(d)
    }
}

impl<'de> FromMap<'de> for ClientInfoSeed {
    type Out = Result<ClientInfo, BagError>;
    fn not_a_map(self, got: &'static str) -> Self::Out {
        Err(BagError::WrongType { path: "client_info".into(), expected: "struct", got })
    }
    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        let (mut package, mut arch, mut host, mut tags, mut success, mut duration) = (None, None, None, None, None, None);
        let mut extra = Bag::new();
        while let Some(key) = map.next_key::<String>()? {
            let slot = match key.as_str() {
                "package" => &mut package,
                "arch" => &mut arch,
                "host" => &mut host,
                "tags" => &mut tags,
                "success" => &mut success,
                "duration" => &mut duration,
                _ => {
                    extra.insert(key, map.next_value::<Json>()?);
                    continue;
                }
            };
            *slot = Some(map.next_value_seed(LaxSeed { nested: false })?);
        }
        Ok(client_info(package, arch, host, tags, success, duration, extra))
    }
}

fn client_info(
    package: Option<Lax>,
    arch: Option<Lax>,
    host: Option<Lax>,
    tags: Option<Lax>,
    success: Option<Lax>,
    duration: Option<Lax>,
    extra: Bag,
) -> Result<ClientInfo, BagError> {
    let package = name(package, "client_info.package")?;
    let arch = name(arch, "client_info.arch")?;
    let host = name(host, "client_info.host")?;
    let tags = match tags {
        None | Some(Lax::Null) => Vec::new(),
        Some(Lax::Array(items)) => items
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let path = format!("client_info.tags[{i}]");
                match t {
                    Lax::Str(s) => check_name(s, &path),
                    other => Err(wrong(&path, "string", &other)),
                }
            })
            .collect::<Result<_, _>>()?,
        Some(other) => return Err(wrong("client_info.tags", "array", &other)),
    };
    let success = match success {
        None | Some(Lax::Null) => return Err(BagError::Missing { path: "client_info.success".into() }),
        Some(Lax::Bool(b)) => b,
        Some(other) => return Err(wrong("client_info.success", "boolean", &other)),
    };
    let duration = opt_f64(duration, || "client_info.duration".into())?;
    Ok(ClientInfo { package, arch, host, tags, success, duration, extra })
}

/// One entry of `results` → a validated `Step`.
pub(super) struct StepSeed {
    pub index: usize,
}

impl<'de> FromMap<'de> for StepSeed {
    type Out = Result<Step, BagError>;
    fn not_a_map(self, got: &'static str) -> Self::Out {
        Err(BagError::WrongType { path: format!("results[{}]", self.index), expected: "struct", got })
    }
    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        let (mut name, mut step_type, mut command, mut status, mut output, mut errout, mut duration) =
            (None, None, None, None, None, None, None);
        let mut extra = Bag::new();
        while let Some(key) = map.next_key::<String>()? {
            let slot = match key.as_str() {
                "name" => &mut name,
                "type" => &mut step_type,
                "command" => &mut command,
                "status" => &mut status,
                "output" => &mut output,
                "errout" => &mut errout,
                "duration" => &mut duration,
                _ => {
                    extra.insert(key, map.next_value::<Json>()?);
                    continue;
                }
            };
            *slot = Some(map.next_value_seed(LaxSeed { nested: false })?);
        }
        Ok(step(self.index, [name, step_type, command, status, output, errout, duration], extra))
    }
}

/// A step's known keys as read (`name`, `type`, `command`, `status`, `output`, `errout`,
/// `duration`), checked in that order.
fn step(index: usize, known: [Option<Lax>; 7], extra: Bag) -> Result<Step, BagError> {
    let [name, step_type, command, status, output, errout, duration] = known;
    let p = || format!("results[{index}]");
    let name = opt_string(name, || format!("{}.name", p()))?;
    let step_type = opt_string(step_type, || format!("{}.type", p()))?;
    // pony-build clients send the command as a string or as an argv list.
    let command = match command {
        None | Some(Lax::Null) => String::new(),
        Some(Lax::Str(s)) => s,
        Some(Lax::Array(items)) => {
            let mut words = Vec::with_capacity(items.len());
            for (i, w) in items.into_iter().enumerate() {
                match w {
                    Lax::Str(s) => words.push(s),
                    other => return Err(wrong(&format!("{}.command[{i}]", p()), "string", &other)),
                }
            }
            words.join(" ")
        }
        Some(other) => return Err(wrong(&format!("{}.command", p()), "string or array", &other)),
    };
    let status = match status {
        None | Some(Lax::Null) => return Err(BagError::Missing { path: format!("{}.status", p()) }),
        Some(Lax::Num(n)) => {
            n.as_i64().ok_or_else(|| BagError::Invalid { path: format!("{}.status", p()), reason: "must be an integer" })?
        }
        Some(other) => return Err(wrong(&format!("{}.status", p()), "integer", &other)),
    };
    let output = opt_string(output, || format!("{}.output", p()))?;
    let errout = opt_string(errout, || format!("{}.errout", p()))?;
    let duration = opt_f64(duration, || format!("{}.duration", p()))?;
    Ok(Step { name, step_type, command, status, output, errout, duration, extra })
}

/// `results` → the validated steps, in order; the first refused step ends the checks (the rest
/// is still read, and dropped).
pub(super) struct StepsSeed;

impl<'de> DeserializeSeed<'de> for StepsSeed {
    type Value = Result<Vec<Step>, BagError>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StepsSeed {
    type Value = Result<Vec<Step>, BagError>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut steps = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(step) = seq.next_element_seed(ExpectMap(StepSeed { index: steps.len() }))? {
            match step {
                Ok(s) => steps.push(s),
                Err(e) => {
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    return Ok(Err(e));
                }
            }
        }
        Ok(Ok(steps))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Err(not_array("struct")))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Err(not_array("nil")))
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Err(not_array("nil")))
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(not_array("boolean")))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(not_array("number")))
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(not_array("number")))
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(not_array("number")))
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err(not_array("string")))
    }
}

fn not_array(got: &'static str) -> BagError {
    BagError::WrongType { path: "results".into(), expected: "array", got }
}

/// `extras` → its bag; nil is an empty one.
pub(super) struct ExtrasSeed;

impl<'de> DeserializeSeed<'de> for ExtrasSeed {
    type Value = Result<Bag, BagError>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        ExpectMap(self).deserialize(d)
    }
}

impl<'de> FromMap<'de> for ExtrasSeed {
    type Out = Result<Bag, BagError>;
    fn not_a_map(self, got: &'static str) -> Self::Out {
        if got == "nil" {
            return Ok(Bag::new());
        }
        Err(BagError::WrongType { path: "extras".into(), expected: "struct", got })
    }
    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Out, A::Error> {
        let mut bag = Bag::new();
        while let Some((k, v)) = map.next_entry::<String, Json>()? {
            bag.insert(k, v);
        }
        Ok(Ok(bag))
    }
}

/// The three parts of a submission, each as read; `assemble` checks them in pony-build's order.
pub(super) fn assemble(
    client_info: Result<ClientInfo, BagError>,
    steps: Result<Vec<Step>, BagError>,
    extras: Option<Result<Bag, BagError>>,
) -> Result<ResultDoc, BagError> {
    let client_info = client_info?;
    let steps = steps?;
    let extras = extras.transpose()?.unwrap_or_default();
    Ok(ResultDoc { client_info, steps, extras })
}

/// A `POST /api/v1/results` body's top level, each part as read (`None`: absent).
#[derive(Default)]
pub(super) struct Top {
    pub not_an_object: Option<&'static str>,
    pub idempotency_key: Option<Lax>,
    pub client_info: Option<Result<ClientInfo, BagError>>,
    pub results: Option<Result<Vec<Step>, BagError>>,
    pub extras: Option<Result<Bag, BagError>>,
}

pub(super) struct TopSeed;

impl<'de> DeserializeSeed<'de> for TopSeed {
    type Value = Top;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Top, D::Error> {
        ExpectMap(self).deserialize(d)
    }
}

impl<'de> FromMap<'de> for TopSeed {
    type Out = Top;
    fn not_a_map(self, got: &'static str) -> Top {
        Top { not_an_object: Some(got), ..Top::default() }
    }
    fn map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top, A::Error> {
        let mut top = Top::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "idempotency_key" => top.idempotency_key = Some(map.next_value_seed(LaxSeed { nested: true })?),
                "client_info" => top.client_info = Some(map.next_value_seed(ClientInfoSeed)?),
                "results" => top.results = Some(map.next_value_seed(StepsSeed)?),
                "extras" => top.extras = Some(map.next_value_seed(ExtrasSeed)?),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(top)
    }
}

impl Top {
    /// The idempotency key, if one was sent: a string of 1 to 256 bytes.
    pub fn idempotency_key(&mut self) -> Result<Option<String>, ()> {
        match self.idempotency_key.take() {
            None | Some(Lax::Null) => Ok(None),
            Some(Lax::Str(k)) if !k.is_empty() && k.len() <= 256 => Ok(Some(k)),
            Some(_) => Err(()),
        }
    }
}

/// For `Value`-based callers: a refusal from serde_json's `Value` deserializer cannot happen
/// (it never fails on `deserialize_any`), but is a refusal, not a panic, if it did.
pub(super) fn from_value<T>(
    v: Json,
    seed: impl for<'de> DeserializeSeed<'de, Value = Result<T, BagError>>,
    path: &str,
) -> Result<T, BagError> {
    seed.deserialize(v).unwrap_or_else(|_: serde_json::Error| Err(BagError::Invalid { path: path.to_owned(), reason: "unreadable" }))
}
