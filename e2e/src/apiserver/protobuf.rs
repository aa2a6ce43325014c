//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), as kubectl's generators
//! (`kubectl create namespace|service|configmap|secret ...`) and Helm's release storage send them
//! for built-in kinds. The emulator stores JSON, so a body is turned into the JSON object a real
//! API server would have decoded from it.
//!
//! The wire format is Kubernetes' envelope: the magic `k8s\0`, then a `runtime.Unknown` message
//! whose `typeMeta` names the kind and whose `raw` holds the object's own message. Messages are
//! decoded generically, guided by `protobuf/schema.json`: field numbers, wire types, nested types
//! and JSON names for every message reachable from the built-in kinds, generated from the
//! `k8s-pb` and `k8s-openapi` sources by `scripts/gen-protobuf-schema.py`.
//!
//! Go's encoder writes every non-pointer field, also when empty; Go's JSON encoder leaves empty
//! ones out. So an empty string field is left out (a pointer string set to `""` is the one case
//! this cannot tell apart; `e2e/FIDELITY.md`), while `false` and `0` are kept: for a non-pointer
//! field they mean the same as absent, and for a pointer field (`ready: false`, `replicas: 0`)
//! they are the value.

use std::{collections::HashMap, sync::OnceLock};

use base64::Engine;
use purelb::k8s_openapi::jiff;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The media type of protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";
const TIME: &str = "apimachinery.pkg.apis.meta.v1.Time";
const MICRO_TIME: &str = "apimachinery.pkg.apis.meta.v1.MicroTime";
const DURATION: &str = "apimachinery.pkg.apis.meta.v1.Duration";
const QUANTITY: &str = "apimachinery.pkg.api.resource.Quantity";
const INT_OR_STRING: &str = "apimachinery.pkg.util.intstr.IntOrString";
const RAW_EXTENSION: &str = "apimachinery.pkg.runtime.RawExtension";
const FIELDS_V1: &str = "apimachinery.pkg.apis.meta.v1.FieldsV1";
const META_V1: &str = "apimachinery.pkg.apis.meta.v1";
/// Nesting deeper than this is refused (a hostile body cannot exhaust the stack).
const MAX_DEPTH: usize = 64;

/// One row of `schema.json`: field number, JSON name, kind, label (`opt`, `rep`, `inline`) and
/// the nested type.
type Row = (u32, String, String, String, Option<String>);

#[derive(Debug, Deserialize)]
struct Schema {
    messages: HashMap<String, Vec<Row>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String,
    Bytes,
    Bool,
    Int32,
    Int64,
    Double,
    Message,
    Map,
}

#[derive(Debug)]
struct Field {
    json: String,
    kind: Kind,
    repeated: bool,
    inline: bool,
    /// The nested message type, or a map's value kind (`string`, `bytes`) or message type.
    reference: Option<String>,
}

type Messages = HashMap<String, HashMap<u32, Field>>;

fn messages() -> &'static Messages {
    static MESSAGES: OnceLock<Messages> = OnceLock::new();
    MESSAGES.get_or_init(|| {
        let schema: Schema =
            serde_json::from_str(include_str!("protobuf/schema.json")).unwrap_or(Schema { messages: HashMap::new() });
        schema
            .messages
            .into_iter()
            .map(|(name, rows)| {
                let fields = rows
                    .into_iter()
                    .filter_map(|(tag, json, kind, label, reference)| {
                        let kind = match kind.as_str() {
                            "string" => Kind::String,
                            "bytes" => Kind::Bytes,
                            "bool" => Kind::Bool,
                            "int32" => Kind::Int32,
                            "int64" => Kind::Int64,
                            "double" => Kind::Double,
                            "message" => Kind::Message,
                            "map" => Kind::Map,
                            _ => return None,
                        };
                        let field =
                            Field { json, kind, repeated: label == "rep", inline: label == "inline", reference };
                        Some((tag, field))
                    })
                    .collect();
                (name, fields)
            })
            .collect()
    })
}

/// The message name of a kind sent with `apiVersion`, e.g. `api.core.v1.Service` for `v1`
/// `Service`, `api.coordination.v1.Lease` for `coordination.k8s.io/v1` `Lease`. Options such as
/// `DeleteOptions` are sent under the client's group version but are `meta/v1` messages.
fn message_name(api_version: &str, kind: &str) -> Option<String> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = match group {
        "" => "api.core".to_owned(),
        "apiextensions.k8s.io" => "apiextensions_apiserver.pkg.apis.apiextensions".to_owned(),
        _ => format!("api.{}", group.split('.').next().unwrap_or(group)),
    };
    let all = messages();
    [format!("{package}.{version}.{kind}"), format!("{META_V1}.{kind}")].into_iter().find(|m| all.contains_key(m))
}

/// Decodes a protobuf request body into the JSON object it stands for (with `apiVersion` and
/// `kind`). The error says what is wrong, for a 400 (malformed) or 415 (a kind not known).
pub fn decode(body: &[u8]) -> Result<Value, DecodeError> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| DecodeError::Malformed("a protobuf body starts with the magic bytes \"k8s\\x00\"".to_owned()))?;
    let mut type_meta = (String::new(), String::new());
    let mut raw: &[u8] = &[];
    let mut encoding = String::new();
    let mut reader = Reader::new(rest);
    while let Some((tag, wire)) = reader.key()? {
        match (tag, wire) {
            (1, 2) => {
                let mut inner = Reader::new(reader.bytes()?);
                while let Some((tag, wire)) = inner.key()? {
                    match (tag, wire) {
                        (1, 2) => type_meta.0 = inner.string()?,
                        (2, 2) => type_meta.1 = inner.string()?,
                        _ => inner.skip(wire)?,
                    }
                }
            }
            (2, 2) => raw = reader.bytes()?,
            (3, 2) => encoding = reader.string()?,
            _ => reader.skip(wire)?,
        }
    }
    if !encoding.is_empty() {
        return Err(DecodeError::Unsupported(format!("protobuf content encoding {encoding:?}")));
    }
    let (api_version, kind) = type_meta;
    let message = message_name(&api_version, &kind).ok_or_else(|| {
        DecodeError::Unsupported(format!(
            "protobuf bodies of {kind:?} ({api_version:?}); the emulator decodes built-in kinds only: send JSON"
        ))
    })?;
    let mut object = match decode_message(&message, raw, 0)? {
        Value::Object(map) => map,
        _ => Map::new(),
    };
    object.insert("apiVersion".to_owned(), Value::String(api_version));
    object.insert("kind".to_owned(), Value::String(kind));
    Ok(Value::Object(object))
}

/// A protobuf body as client-go writes it: the magic, then a `runtime.Unknown` envelope around
/// `raw`, the encoded message of `kind` (used by the tests and the lab's checks).
#[must_use]
pub fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
    let field = write::bytes;
    let mut type_meta = Vec::new();
    field(&mut type_meta, 1, api_version.as_bytes());
    field(&mut type_meta, 2, kind.as_bytes());
    let mut out = MAGIC.to_vec();
    field(&mut out, 1, &type_meta);
    field(&mut out, 2, raw);
    field(&mut out, 3, b"");
    field(&mut out, 4, b"");
    out
}

/// Just enough protobuf writing for the envelope and `/openapi/v2` (registry.rs).
pub(crate) mod write {
    /// A varint.
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            #[allow(clippy::cast_possible_truncation)]
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        #[allow(clippy::cast_possible_truncation)]
        out.push(v as u8);
    }

    /// A length-delimited field.
    pub fn bytes(out: &mut Vec<u8>, field: u32, data: &[u8]) {
        varint(out, u64::from(field) << 3 | 2);
        varint(out, data.len() as u64);
        out.extend_from_slice(data);
    }

    /// A string field.
    pub fn string(out: &mut Vec<u8>, field: u32, text: &str) {
        bytes(out, field, text.as_bytes());
    }

    /// A message holding one length-delimited field.
    pub fn message(field: u32, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        bytes(&mut out, field, data);
        out
    }
}

/// Why a body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not valid protobuf for its kind (400).
    #[error("malformed protobuf body: {0}")]
    Malformed(String),
    /// Valid, but not something the emulator decodes (415).
    #[error("unsupported protobuf body: {0}")]
    Unsupported(String),
}

fn malformed(what: &str) -> DecodeError {
    DecodeError::Malformed(what.to_owned())
}

fn decode_message(name: &str, bytes: &[u8], depth: usize) -> Result<Value, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(malformed("messages nested too deeply"));
    }
    match name {
        TIME | MICRO_TIME => return time(name == MICRO_TIME, bytes),
        QUANTITY => return Ok(single_string(bytes)?.map_or(Value::Null, Value::String)),
        INT_OR_STRING => return int_or_string(bytes),
        RAW_EXTENSION | FIELDS_V1 => return raw_json(bytes),
        DURATION => return duration(bytes),
        _ => {}
    }
    let fields = messages().get(name).ok_or_else(|| malformed(&format!("no message {name}")))?;
    let mut object = Map::new();
    let mut reader = Reader::new(bytes);
    while let Some((tag, wire)) = reader.key()? {
        let Some(field) = fields.get(&tag) else {
            // Unknown fields are ignored, as by a real server.
            reader.skip(wire)?;
            continue;
        };
        if field.inline {
            let reference = field.reference.as_deref().unwrap_or_default();
            if let Value::Object(inner) = decode_message(reference, reader.bytes()?, depth + 1)? {
                object.extend(inner);
            }
            continue;
        }
        if field.kind == Kind::Map {
            let (key, value) = map_entry(field, reader.bytes()?, depth)?;
            let entry = object.entry(field.json.clone()).or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(map) = entry {
                map.insert(key, value);
            }
            continue;
        }
        if field.repeated {
            let values = if wire == 2 && is_scalar_number(field.kind) {
                // A packed list of numbers.
                let mut packed = Reader::new(reader.bytes()?);
                let mut values = Vec::new();
                while !packed.done() {
                    values.push(scalar(field.kind, 0, &mut packed)?);
                }
                values
            } else {
                vec![value(field, wire, &mut reader, depth)?]
            };
            let entry = object.entry(field.json.clone()).or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(list) = entry {
                list.extend(values);
            }
            continue;
        }
        let value = value(field, wire, &mut reader, depth)?;
        match value {
            Value::Null => {
                object.remove(&field.json);
            }
            Value::String(s) if s.is_empty() && field.kind == Kind::String => {
                object.remove(&field.json);
            }
            other => {
                object.insert(field.json.clone(), other);
            }
        }
    }
    Ok(Value::Object(object))
}

fn is_scalar_number(kind: Kind) -> bool {
    matches!(kind, Kind::Bool | Kind::Int32 | Kind::Int64 | Kind::Double)
}

fn value(field: &Field, wire: u8, reader: &mut Reader<'_>, depth: usize) -> Result<Value, DecodeError> {
    match field.kind {
        Kind::String => Ok(Value::String(expect_wire(wire, 2, reader)?.string()?)),
        Kind::Bytes => {
            Ok(Value::String(base64::engine::general_purpose::STANDARD.encode(expect_wire(wire, 2, reader)?.bytes()?)))
        }
        Kind::Message => {
            let reference = field.reference.as_deref().unwrap_or_default();
            decode_message(reference, expect_wire(wire, 2, reader)?.bytes()?, depth + 1)
        }
        Kind::Bool | Kind::Int32 | Kind::Int64 | Kind::Double => scalar(field.kind, wire, reader),
        Kind::Map => Err(malformed("a map field outside a map entry")),
    }
}

fn expect_wire<'r, 'a>(wire: u8, expected: u8, reader: &'r mut Reader<'a>) -> Result<&'r mut Reader<'a>, DecodeError> {
    if wire == expected {
        Ok(reader)
    } else {
        Err(malformed(&format!("wire type {wire} where {expected} was expected")))
    }
}

/// A number or bool; `wire` 0 means "whatever the kind's wire type is" (inside a packed list).
fn scalar(kind: Kind, wire: u8, reader: &mut Reader<'_>) -> Result<Value, DecodeError> {
    if kind == Kind::Double {
        if wire != 0 && wire != 1 {
            return Err(malformed("a double that is not fixed64"));
        }
        return Ok(serde_json::Number::from_f64(f64::from_bits(reader.fixed64()?)).map_or(Value::Null, Value::Number));
    }
    if wire != 0 {
        return Err(malformed(&format!("wire type {wire} for a varint field")));
    }
    let raw = reader.varint()?;
    Ok(match kind {
        Kind::Bool => Value::Bool(raw != 0),
        // Negative int32s are sign-extended to 64 bits on the wire.
        #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
        Kind::Int32 => Value::from(raw as i64 as i32),
        #[allow(clippy::cast_possible_wrap)]
        _ => Value::from(raw as i64),
    })
}

fn map_entry(field: &Field, bytes: &[u8], depth: usize) -> Result<(String, Value), DecodeError> {
    let reference = field.reference.as_deref().unwrap_or_default();
    let mut key = String::new();
    let mut value = match reference {
        "string" | "bytes" => Value::String(String::new()),
        _ => Value::Null,
    };
    let mut reader = Reader::new(bytes);
    while let Some((tag, wire)) = reader.key()? {
        match (tag, wire) {
            (1, 2) => key = reader.string()?,
            (2, 2) => {
                value = match reference {
                    "string" => Value::String(reader.string()?),
                    "bytes" => Value::String(base64::engine::general_purpose::STANDARD.encode(reader.bytes()?)),
                    message => decode_message(message, reader.bytes()?, depth + 1)?,
                };
            }
            _ => reader.skip(wire)?,
        }
    }
    Ok((key, value))
}

/// `metav1.Time` (seconds) and `MicroTime` (microseconds); an empty message is the zero time,
/// which Go writes as `null`.
fn time(micro: bool, bytes: &[u8]) -> Result<Value, DecodeError> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    let (mut seconds, mut nanos) = (0_i64, 0_i64);
    let mut reader = Reader::new(bytes);
    while let Some((tag, wire)) = reader.key()? {
        match (tag, wire) {
            #[allow(clippy::cast_possible_wrap)]
            (1, 0) => seconds = reader.varint()? as i64,
            #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
            (2, 0) => nanos = i64::from(reader.varint()? as i64 as i32),
            _ => reader.skip(wire)?,
        }
    }
    let timestamp = jiff::Timestamp::new(seconds, 0).map_err(|e| malformed(&format!("time out of range: {e}")))?;
    let text = if micro {
        format!("{}.{:06}Z", timestamp.strftime("%Y-%m-%dT%H:%M:%S"), nanos.clamp(0, 999_999_999) / 1000)
    } else {
        format!("{}Z", timestamp.strftime("%Y-%m-%dT%H:%M:%S"))
    };
    Ok(Value::String(text))
}

fn single_string(bytes: &[u8]) -> Result<Option<String>, DecodeError> {
    let mut out = None;
    let mut reader = Reader::new(bytes);
    while let Some((tag, wire)) = reader.key()? {
        match (tag, wire) {
            (1, 2) => out = Some(reader.string()?),
            _ => reader.skip(wire)?,
        }
    }
    Ok(out)
}

fn int_or_string(bytes: &[u8]) -> Result<Value, DecodeError> {
    let (mut is_string, mut int, mut string) = (false, 0_i32, String::new());
    let mut reader = Reader::new(bytes);
    while let Some((tag, wire)) = reader.key()? {
        match (tag, wire) {
            (1, 0) => is_string = reader.varint()? == 1,
            #[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
            (2, 0) => int = reader.varint()? as i64 as i32,
            (3, 2) => string = reader.string()?,
            _ => reader.skip(wire)?,
        }
    }
    Ok(if is_string { Value::String(string) } else { Value::from(int) })
}

/// `RawExtension` and `FieldsV1` hold JSON bytes.
fn raw_json(bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut raw: &[u8] = &[];
    let mut reader = Reader::new(bytes);
    while let Some((tag, wire)) = reader.key()? {
        match (tag, wire) {
            (1, 2) => raw = reader.bytes()?,
            _ => reader.skip(wire)?,
        }
    }
    if raw.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(raw).map_err(|e| malformed(&format!("embedded object is not JSON: {e}")))
}

/// `metav1.Duration` (nanoseconds) as Go prints it, e.g. `1m30s`, `500ms`.
fn duration(bytes: &[u8]) -> Result<Value, DecodeError> {
    let mut nanos = 0_i64;
    let mut reader = Reader::new(bytes);
    while let Some((tag, wire)) = reader.key()? {
        match (tag, wire) {
            #[allow(clippy::cast_possible_wrap)]
            (1, 0) => nanos = reader.varint()? as i64,
            _ => reader.skip(wire)?,
        }
    }
    Ok(Value::String(go_duration(nanos)))
}

fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".to_owned();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    if n < 1_000 {
        return format!("{sign}{n}ns");
    }
    if n < 1_000_000 {
        return format!("{sign}{}µs", trim(n, 1_000));
    }
    if n < 1_000_000_000 {
        return format!("{sign}{}ms", trim(n, 1_000_000));
    }
    let (h, rest) = (n / 3_600_000_000_000, n % 3_600_000_000_000);
    let (m, rest) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let mut out = sign.to_owned();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{}s", trim(rest, 1_000_000_000)));
    out
}

/// `n / unit` with the fraction, trailing zeros dropped (`1500000, 1000000` → `1.5`).
fn trim(n: u64, unit: u64) -> String {
    let (whole, frac) = (n / unit, n % unit);
    if frac == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{frac:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// A cursor over protobuf wire data.
struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    fn done(&self) -> bool {
        self.data.is_empty()
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut value = 0_u64;
        for (i, byte) in self.data.iter().enumerate().take(10) {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.data = &self.data[i + 1..];
                return Ok(value);
            }
        }
        Err(malformed("truncated or overlong varint"))
    }

    fn key(&mut self) -> Result<Option<(u32, u8)>, DecodeError> {
        if self.data.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let tag = u32::try_from(key >> 3).map_err(|_| malformed("field number out of range"))?;
        if tag == 0 {
            return Err(malformed("field number 0"));
        }
        #[allow(clippy::cast_possible_truncation)]
        Ok(Some((tag, (key & 7) as u8)))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.data.len() {
            return Err(malformed("truncated field"));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let len = usize::try_from(self.varint()?).map_err(|_| malformed("length out of range"))?;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| malformed("a string that is not UTF-8"))
    }

    fn fixed64(&mut self) -> Result<u64, DecodeError> {
        let bytes = self.take(8)?;
        let mut buf = [0_u8; 8];
        buf.copy_from_slice(bytes);
        Ok(u64::from_le_bytes(buf))
    }

    fn skip(&mut self, wire: u8) -> Result<(), DecodeError> {
        match wire {
            0 => self.varint().map(drop),
            1 => self.take(8).map(drop),
            2 => self.bytes().map(drop),
            5 => self.take(4).map(drop),
            other => Err(malformed(&format!("unsupported wire type {other}"))),
        }
    }
}

#[cfg(test)]
mod tests;
