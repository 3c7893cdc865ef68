//! A streaming reader of an XML-RPC method call: quick-xml's pull reader over the body, with each
//! `<value>` handed to a serde visitor as it is read (no DOM, no `dxr::Value` tree), so
//! `add_results` goes straight through `wire`'s visitors, the same ones a REST body goes through.
//!
//! It reads what `dxr` reads: `<value>` holding `i4`/`int`, `i8`, `boolean` (0 or 1), `string`,
//! `double`, `dateTime.iso8601`, `base64`, `struct`, `array`, `nil`, or bare text (a string);
//! comments and processing instructions are skipped. Unlike `dxr`, a string keeps its leading and
//! trailing whitespace (a build's output usually ends in a newline), as Python's `xmlrpc.client`
//! sends and reads it. Nesting deeper than `MAX_DEPTH` values is refused, so no body can exhaust
//! a worker's stack. The caller refuses DOCTYPEs before this runs; one met here is an error too.

use std::borrow::Cow;
use std::fmt;

use quick_xml::events::Event;
use quick_xml::reader::Reader;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Most `<value>`s one value may nest (dxr refused somewhere below 100).
pub(super) const MAX_DEPTH: usize = 64;

/// Why a body is not a well-formed XML-RPC call. Its text never repeats the body.
#[derive(Debug)]
pub(super) struct XmlError(pub String);

impl fmt::Display for XmlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for XmlError {}

impl de::Error for XmlError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        XmlError(msg.to_string())
    }
}

fn bad(what: impl Into<String>) -> XmlError {
    XmlError(what.into())
}

/// The reader of one method call.
pub(super) struct CallReader<'a> {
    xml: Reader<&'a [u8]>,
    peeked: Option<Event<'a>>,
    depth: usize,
    /// Where the value being read sits (`client_info.x`, `results[3].duration`), kept only to
    /// name the first non-finite double.
    path: String,
    /// The first non-finite `<double>` met (JSON has no form for it), by path.
    pub non_finite: Option<String>,
    params: ParamsState,
}

#[derive(PartialEq)]
enum ParamsState {
    /// `<params>` not seen yet.
    Before,
    Inside,
    Done,
}

impl<'a> CallReader<'a> {
    pub fn new(text: &'a str) -> CallReader<'a> {
        let mut xml = Reader::from_str(text);
        let c = xml.config_mut();
        c.expand_empty_elements = true;
        c.check_end_names = true;
        CallReader { xml, peeked: None, depth: 0, path: String::new(), non_finite: None, params: ParamsState::Before }
    }

    /// The next event that is not a comment, processing instruction or declaration.
    fn next(&mut self) -> Result<Event<'a>, XmlError> {
        if let Some(e) = self.peeked.take() {
            return Ok(e);
        }
        loop {
            match self.xml.read_event().map_err(|e| bad(format!("malformed XML: {e}")))? {
                Event::Comment(_) | Event::PI(_) | Event::Decl(_) => {}
                Event::DocType(_) => return Err(bad("DOCTYPE declarations are not allowed")),
                e => return Ok(e),
            }
        }
    }

    /// The next event that is not whitespace between elements; other text there is an error.
    fn next_tag(&mut self) -> Result<Event<'a>, XmlError> {
        loop {
            match self.next()? {
                Event::Text(t) if t.as_ref().bytes().all(|b| b.is_ascii_whitespace()) => {}
                Event::Text(_) | Event::CData(_) | Event::GeneralRef(_) => return Err(bad("text where an element was expected")),
                e => return Ok(e),
            }
        }
    }

    fn peek_tag(&mut self) -> Result<&Event<'a>, XmlError> {
        let e = self.next_tag()?;
        Ok(self.peeked.insert(e))
    }

    fn expect_start(&mut self, name: &str) -> Result<(), XmlError> {
        match self.next_tag()? {
            Event::Start(s) if s.name().0 == name => Ok(()),
            _ => Err(bad(format!("expected <{name}>"))),
        }
    }

    fn expect_end(&mut self, name: &str) -> Result<(), XmlError> {
        match self.next_tag()? {
            Event::End(e) if e.name().0 == name => Ok(()),
            _ => Err(bad(format!("expected </{name}>"))),
        }
    }

    /// Text up to the end of element `name` (references resolved, line ends normalised); an
    /// element inside is an error. Borrowed from the body when it can be.
    fn text_until_end(&mut self, name: &str, mut text: Cow<'a, str>) -> Result<Cow<'a, str>, XmlError> {
        loop {
            match self.next()? {
                Event::Text(t) => push(&mut text, t.xml10_content()),
                Event::CData(c) => push(&mut text, c.xml10_content()),
                Event::GeneralRef(r) => push(&mut text, resolve(&r)?),
                Event::End(e) if e.name().0 == name => return Ok(text),
                _ => return Err(bad(format!("expected text in <{name}>"))),
            }
        }
    }

    /// `<methodCall><methodName>NAME</methodName>`: the name, trimmed.
    pub fn method_name(&mut self) -> Result<Cow<'a, str>, XmlError> {
        self.expect_start("methodCall")?;
        self.expect_start("methodName")?;
        let name = self.text_until_end("methodName", Cow::Borrowed(""))?;
        Ok(match name {
            Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
            Cow::Owned(s) => Cow::Owned(s.trim().to_owned()),
        })
    }

    /// The next `<param>`'s value through `seed` (`path` names it in refusals), or `None` after
    /// the last one (the call's end then read, up to the end of the body).
    pub fn next_param<S: DeserializeSeed<'a>>(&mut self, seed: S, path: &str) -> Result<Option<S::Value>, XmlError> {
        if self.params == ParamsState::Before {
            match self.next_tag()? {
                Event::Start(s) if s.name().0 == "params" => self.params = ParamsState::Inside,
                Event::End(e) if e.name().0 == "methodCall" => {
                    self.params = ParamsState::Done;
                    return self.end_of_body().map(|()| None);
                }
                _ => return Err(bad("expected <params>")),
            }
        }
        if self.params == ParamsState::Done {
            return Ok(None);
        }
        match self.next_tag()? {
            Event::Start(s) if s.name().0 == "param" => {}
            Event::End(e) if e.name().0 == "params" => {
                self.params = ParamsState::Done;
                self.expect_end("methodCall")?;
                return self.end_of_body().map(|()| None);
            }
            _ => return Err(bad("expected <param>")),
        }
        self.path.clear();
        self.path.push_str(path);
        let v = seed.deserialize(&mut *self)?;
        self.expect_end("param")?;
        Ok(Some(v))
    }

    fn end_of_body(&mut self) -> Result<(), XmlError> {
        match self.next_tag()? {
            Event::Eof => Ok(()),
            _ => Err(bad("content after </methodCall>")),
        }
    }

    fn double(&mut self, text: &str) -> Result<f64, XmlError> {
        let d: f64 = text.trim().parse().map_err(|_| bad("malformed <double>"))?;
        if !d.is_finite() && self.non_finite.is_none() {
            self.non_finite = Some(self.path.clone());
        }
        Ok(d)
    }

    /// After `<value>`: the typed value and `</value>`, handed to `visitor`.
    fn value<V: Visitor<'a>>(&mut self, visitor: V) -> Result<V::Value, XmlError> {
        // Bare text is a string; whitespace before a type element is not.
        let (mut text, mut markup) = (Cow::Borrowed(""), false);
        let ty = loop {
            match self.next()? {
                Event::Text(t) => push(&mut text, t.xml10_content()),
                Event::CData(c) => {
                    push(&mut text, c.xml10_content());
                    markup = true;
                }
                Event::GeneralRef(r) => {
                    push(&mut text, resolve(&r)?);
                    markup = true;
                }
                Event::End(e) if e.name().0 == "value" => return visit_text(text, visitor),
                Event::Start(s) => {
                    if markup || !text.bytes().all(|b| b.is_ascii_whitespace()) {
                        return Err(bad("text before a type element in <value>"));
                    }
                    break s;
                }
                _ => return Err(bad("malformed <value>")),
            }
        };
        let name = ty.name().0;
        let out = match name {
            "string" => {
                let s = self.text_until_end("string", Cow::Borrowed(""))?;
                visit_text(s, visitor)?
            }
            "i4" | "int" => {
                let end = if name == "i4" { "i4" } else { "int" };
                let s = self.text_until_end(end, Cow::Borrowed(""))?;
                let i: i32 = s.trim().parse().map_err(|_| bad("malformed <int>"))?;
                visitor.visit_i64(i64::from(i))?
            }
            "i8" => {
                let s = self.text_until_end("i8", Cow::Borrowed(""))?;
                let i: i64 = s.trim().parse().map_err(|_| bad("malformed <i8>"))?;
                visitor.visit_i64(i)?
            }
            "boolean" => {
                let s = self.text_until_end("boolean", Cow::Borrowed(""))?;
                match s.trim() {
                    "1" => visitor.visit_bool(true)?,
                    "0" => visitor.visit_bool(false)?,
                    _ => return Err(bad("malformed <boolean>")),
                }
            }
            "double" => {
                let s = self.text_until_end("double", Cow::Borrowed(""))?;
                let d = self.double(&s)?;
                visitor.visit_f64(d)?
            }
            "dateTime.iso8601" => {
                let s = self.text_until_end("dateTime.iso8601", Cow::Borrowed(""))?;
                let dt: dxr::DateTime = s.trim().parse().map_err(|_| bad("malformed <dateTime.iso8601>"))?;
                visitor.visit_string(dt.to_string())?
            }
            "base64" => {
                use base64::Engine;
                let s = self.text_until_end("base64", Cow::Borrowed(""))?;
                let stripped: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
                let bytes = base64::engine::general_purpose::STANDARD.decode(stripped).map_err(|_| bad("malformed <base64>"))?;
                let s = String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
                visitor.visit_string(s)?
            }
            "nil" => {
                self.expect_end("nil")?;
                visitor.visit_unit()?
            }
            "struct" => visitor.visit_map(Members { r: self, at: None })?,
            "array" => {
                self.expect_start("data")?;
                let v = visitor.visit_seq(Items { r: self, index: 0 })?;
                self.expect_end("array")?;
                v
            }
            _ => return Err(bad("unknown XML-RPC type")),
        };
        self.expect_end("value")?;
        Ok(out)
    }
}

/// A character or predefined entity reference's text; any other entity is refused.
fn resolve<'a>(r: &quick_xml::events::BytesRef<'a>) -> Result<Cow<'a, str>, XmlError> {
    match r.resolve_char_ref() {
        Ok(Some(ch)) => Ok(Cow::Owned(ch.to_string())),
        Ok(None) => quick_xml::escape::resolve_predefined_entity(r).map(Cow::Borrowed).ok_or_else(|| bad("unknown entity reference")),
        Err(_) => Err(bad("invalid character reference")),
    }
}

fn push<'a>(text: &mut Cow<'a, str>, more: Cow<'a, str>) {
    if text.is_empty() {
        *text = more;
    } else {
        text.to_mut().push_str(&more);
    }
}

fn visit_text<'a, V: Visitor<'a>>(text: Cow<'a, str>, visitor: V) -> Result<V::Value, XmlError> {
    match text {
        Cow::Borrowed(s) => visitor.visit_borrowed_str(s),
        Cow::Owned(s) => visitor.visit_string(s),
    }
}

impl<'de> Deserializer<'de> for &mut CallReader<'de> {
    type Error = XmlError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, XmlError> {
        self.expect_start("value")?;
        if self.depth >= MAX_DEPTH {
            return Err(bad("values nested too deeply"));
        }
        self.depth += 1;
        let out = self.value(visitor);
        self.depth -= 1;
        out
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// A `<struct>`'s members.
struct Members<'r, 'a> {
    r: &'r mut CallReader<'a>,
    /// The path's length before this member's name was added.
    at: Option<usize>,
}

impl<'a> MapAccess<'a> for Members<'_, 'a> {
    type Error = XmlError;

    fn next_key_seed<K: DeserializeSeed<'a>>(&mut self, seed: K) -> Result<Option<K::Value>, XmlError> {
        match self.r.next_tag()? {
            Event::Start(s) if s.name().0 == "member" => {}
            Event::End(e) if e.name().0 == "struct" => return Ok(None),
            _ => return Err(bad("expected <member>")),
        }
        self.r.expect_start("name")?;
        let name = self.r.text_until_end("name", Cow::Borrowed(""))?;
        let name = match name {
            Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
            Cow::Owned(s) => Cow::Owned(s.trim().to_owned()),
        };
        self.at = Some(self.r.path.len());
        self.r.path.push('.');
        self.r.path.push_str(&name);
        let key = match name {
            Cow::Borrowed(s) => seed.deserialize(de::value::BorrowedStrDeserializer::new(s)),
            Cow::Owned(s) => seed.deserialize(de::value::StringDeserializer::new(s)),
        };
        key.map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'a>>(&mut self, seed: V) -> Result<V::Value, XmlError> {
        let v = seed.deserialize(&mut *self.r)?;
        self.r.expect_end("member")?;
        if let Some(at) = self.at.take() {
            self.r.path.truncate(at);
        }
        Ok(v)
    }
}

/// An `<array>`'s `<data>` values.
struct Items<'r, 'a> {
    r: &'r mut CallReader<'a>,
    index: usize,
}

impl<'a> SeqAccess<'a> for Items<'_, 'a> {
    type Error = XmlError;

    fn next_element_seed<T: DeserializeSeed<'a>>(&mut self, seed: T) -> Result<Option<T::Value>, XmlError> {
        if let Event::End(e) = self.r.peek_tag()?
            && e.name().0 == "data"
        {
            self.r.peeked = None;
            return Ok(None);
        }
        let at = self.r.path.len();
        {
            use std::fmt::Write;
            let _ = write!(self.r.path, "[{}]", self.index);
        }
        self.index += 1;
        let v = seed.deserialize(&mut *self.r)?;
        self.r.path.truncate(at);
        Ok(Some(v))
    }
}
