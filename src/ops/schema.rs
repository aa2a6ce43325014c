//! Validation of custom resources against their CRD's structural OpenAPI v3 schema, as the
//! API server does on create and update: defaults, unknown-field pruning (or rejection with
//! `fieldValidation=Strict`), types, required fields, enums, patterns, bounds, list sizes,
//! and the CEL rules in `x-kubernetes-validations` (evaluated with kube-cel). Messages use the
//! API server's wording so that clients and people see what they would see on a real cluster.
//!
//! Entry point: [`validate_custom_resource`].

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use regex::Regex;
use serde_json::Value;

/// One failed check: a field path and the API server's message for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Cause reason (`FieldValueInvalid`, `FieldValueRequired`, ...).
    pub reason: &'static str,
    /// Field path such as `spec.local.v4pool.pool`.
    pub field: String,
    /// Full message including the field.
    pub message: String,
}

/// How unknown fields are treated (`fieldValidation` query parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldValidation {
    /// Drop them silently.
    Ignore,
    /// Drop them and warn.
    Warn,
    /// Reject the request.
    Strict,
}

impl FieldValidation {
    /// Parses the query parameter (default `Warn`, as on a real server).
    #[must_use]
    pub fn parse(text: Option<&str>) -> Self {
        match text {
            Some("Strict") => Self::Strict,
            Some("Ignore") => Self::Ignore,
            _ => Self::Warn,
        }
    }
}

/// Outcome of validating an object.
#[derive(Debug, Default)]
pub struct Validated {
    /// Errors (empty = valid).
    pub errors: Vec<FieldError>,
    /// Unknown fields that were dropped.
    pub pruned: Vec<String>,
}

fn regex_cache(pattern: &str) -> Option<Regex> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    let mut map = cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    map.entry(pattern.to_owned()).or_insert_with(|| Regex::new(pattern).ok()).clone()
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{s:?}"),
        Value::Object(_) => "\"object\"".to_owned(),
        Value::Array(_) => "\"array\"".to_owned(),
        other => other.to_string(),
    }
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() { field.to_owned() } else { format!("{path}.{field}") }
}

struct Walker {
    out: Validated,
}

impl Walker {
    fn invalid(&mut self, path: &str, value: &Value, detail: String) {
        self.out.errors.push(FieldError {
            reason: "FieldValueInvalid",
            field: path.to_owned(),
            message: format!("{path}: Invalid value: {}: {detail}", shown(value)),
        });
    }

    /// Validates `value` against `schema` at `path`, pruning unknown fields in place.
    fn walk(&mut self, schema: &Value, value: &mut Value, path: &str) {
        if value.is_null() {
            if schema["nullable"].as_bool() != Some(true) && !schema.get("type").is_none_or(Value::is_null) {
                let ty = schema["type"].as_str().unwrap_or("object");
                self.invalid(path, value, format!("{path} in body must be of type {ty}: \"null\""));
            }
            return;
        }
        let preserve = schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true);
        let int_or_string = schema["x-kubernetes-int-or-string"].as_bool() == Some(true);
        if let Some(ty) = schema["type"].as_str() {
            let actual = json_type(value);
            let ok = actual == ty || (ty == "number" && actual == "integer");
            if !ok && !int_or_string {
                self.invalid(path, value, format!("{path} in body must be of type {ty}: \"{actual}\""));
                return;
            }
        } else if int_or_string && !(value.is_string() || json_type(value) == "integer") {
            self.invalid(
                path,
                value,
                format!("{path} in body must be of type integer,string: \"{}\"", json_type(value)),
            );
            return;
        }
        if let Some(allowed) = schema["enum"].as_array()
            && !allowed.contains(value)
        {
            let list: Vec<String> = allowed.iter().map(shown).collect();
            self.out.errors.push(FieldError {
                reason: "FieldValueNotSupported",
                field: path.to_owned(),
                message: format!("{path}: Unsupported value: {}: supported values: {}", shown(value), list.join(", ")),
            });
        }
        match value {
            Value::String(s) => self.check_string(schema, s, path),
            Value::Number(n) => {
                let v = n.as_f64().unwrap_or(0.0);
                if let Some(min) = schema["minimum"].as_f64()
                    && v < min
                {
                    self.invalid(
                        path,
                        &Value::Number(n.clone()),
                        format!("{path} in body should be greater than or equal to {min}"),
                    );
                }
                if let Some(max) = schema["maximum"].as_f64()
                    && v > max
                {
                    self.invalid(
                        path,
                        &Value::Number(n.clone()),
                        format!("{path} in body should be less than or equal to {max}"),
                    );
                }
            }
            Value::Array(items) => {
                if let Some(max) = schema["maxItems"].as_u64()
                    && items.len() as u64 > max
                {
                    self.out.errors.push(FieldError {
                        reason: "FieldValueTooMany",
                        field: path.to_owned(),
                        message: format!("{path}: Too many: {}: must have at most {max} items", items.len()),
                    });
                }
                if let Some(min) = schema["minItems"].as_u64()
                    && (items.len() as u64) < min
                {
                    self.invalid(path, &Value::Null, format!("{path} in body should have at least {min} items"));
                }
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter_mut().enumerate() {
                        self.walk(item_schema, item, &format!("{path}[{i}]"));
                    }
                }
            }
            Value::Object(map) => {
                if let Some(required) = schema["required"].as_array() {
                    for name in required.iter().filter_map(Value::as_str) {
                        if !map.contains_key(name) {
                            let field = join(path, name);
                            self.out.errors.push(FieldError {
                                reason: "FieldValueRequired",
                                field: field.clone(),
                                message: format!("{field}: Required value"),
                            });
                        }
                    }
                }
                let props = schema["properties"].as_object();
                let additional = schema.get("additionalProperties").filter(|a| a.is_object());
                let keys: Vec<String> = map.keys().cloned().collect();
                for name in keys {
                    let field = join(path, &name);
                    let child_schema = props.and_then(|p| p.get(&name)).or(additional);
                    match child_schema {
                        Some(child) => {
                            if let Some(child_value) = map.get_mut(&name) {
                                self.walk(child, child_value, &field);
                            }
                        }
                        None if preserve || schema["x-kubernetes-embedded-resource"].as_bool() == Some(true) => {}
                        None if schema.get("additionalProperties").and_then(Value::as_bool) == Some(true) => {}
                        None => {
                            map.remove(&name);
                            self.out.pruned.push(field);
                        }
                    }
                }
            }
            Value::Bool(_) | Value::Null => {}
        }
    }

    fn check_string(&mut self, schema: &Value, s: &str, path: &str) {
        let value = Value::String(s.to_owned());
        if let Some(max) = schema["maxLength"].as_u64()
            && s.chars().count() as u64 > max
        {
            self.out.errors.push(FieldError {
                reason: "FieldValueTooLong",
                field: path.to_owned(),
                message: format!("{path}: Too long: may not be more than {max} bytes"),
            });
        }
        if let Some(min) = schema["minLength"].as_u64()
            && (s.chars().count() as u64) < min
        {
            self.invalid(path, &value, format!("{path} in body should be at least {min} chars long"));
        }
        if let Some(pattern) = schema["pattern"].as_str() {
            match regex_cache(pattern) {
                Some(re) if re.is_match(s) => {}
                Some(_) => self.invalid(path, &value, format!("{path} in body should match '{pattern}'")),
                None => self.invalid(path, &value, format!("{path}: the schema pattern {pattern:?} is not supported")),
            }
        }
    }
}

/// Validates a custom resource against `schema` (the version's `openAPIV3Schema`): applies
/// defaults and prunes unknown fields in `object`, then checks the structure and the CEL
/// rules (`old` is the stored object on update, for transition rules).
#[must_use]
pub fn validate_custom_resource(schema: &Value, object: &mut Value, old: Option<&Value>) -> Validated {
    *object = kube_cel::apply_defaults(schema, object);
    let mut walker = Walker { out: Validated::default() };
    // apiVersion, kind and metadata are validated by the server itself, not the schema.
    let meta = object.as_object_mut().map(|m| ["apiVersion", "kind", "metadata"].map(|k| (k, m.remove(k))));
    walker.walk(schema, object, "");
    if let (Some(meta), Some(map)) = (meta, object.as_object_mut()) {
        for (k, v) in meta {
            if let Some(v) = v {
                map.insert(k.to_owned(), v);
            }
        }
    }
    if walker.out.errors.is_empty()
        && let Err(errors) = kube_cel::validate(schema, object, old)
    {
        for e in errors.iter() {
            let field = if e.field_path.is_empty() { "<root>".to_owned() } else { e.field_path.clone() };
            walker.out.errors.push(FieldError {
                reason: "FieldValueInvalid",
                field: field.clone(),
                message: format!("{field}: Invalid value: \"object\": {}", e.message),
            });
        }
    }
    walker.out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "required": ["name"],
                    "x-kubernetes-validations": [{"rule": "self.count <= 5", "message": "count must be at most 5"}],
                    "properties": {
                        "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                        "count": {"type": "integer", "minimum": 1, "maximum": 10, "default": 3},
                        "mode": {"type": "string", "enum": ["a", "b"]},
                        "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                        "opt": {"type": "string", "nullable": true}
                    }
                }
            }
        })
    }

    fn errors(spec: Value) -> Vec<String> {
        let mut obj = json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "n"}, "spec": spec});
        validate_custom_resource(&schema(), &mut obj, None).errors.into_iter().map(|e| e.message).collect()
    }

    #[test]
    fn valid_object_gets_defaults() {
        let mut obj =
            json!({"apiVersion": "x/v1", "kind": "X", "metadata": {"name": "n"}, "spec": {"name": "abc", "extra": 1}});
        let out = validate_custom_resource(&schema(), &mut obj, None);
        assert!(out.errors.is_empty(), "{:?}", out.errors);
        assert_eq!(obj["spec"]["count"], 3);
        assert_eq!(out.pruned, vec!["spec.extra"]);
        assert!(obj["spec"].get("extra").is_none());
        assert_eq!(obj["metadata"]["name"], "n");
    }

    #[test]
    fn each_check_names_the_field() {
        assert_eq!(errors(json!({})), vec!["spec.name: Required value"]);
        assert!(
            errors(json!({"name": "ABC"}))[0]
                .starts_with("spec.name: Invalid value: \"ABC\": spec.name in body should match")
        );
        assert_eq!(errors(json!({"name": "abcdefg"})), vec!["spec.name: Too long: may not be more than 5 bytes"]);
        assert_eq!(
            errors(json!({"name": "a", "count": "x"})),
            vec!["spec.count: Invalid value: \"x\": spec.count in body must be of type integer: \"string\""]
        );
        assert_eq!(
            errors(json!({"name": "a", "count": 11})),
            vec!["spec.count: Invalid value: 11: spec.count in body should be less than or equal to 10"]
        );
        assert_eq!(
            errors(json!({"name": "a", "mode": "c"})),
            vec!["spec.mode: Unsupported value: \"c\": supported values: \"a\", \"b\""]
        );
        assert_eq!(
            errors(json!({"name": "a", "tags": ["x", "y", "z"]})),
            vec!["spec.tags: Too many: 3: must have at most 2 items"]
        );
        assert!(errors(json!({"name": "a", "opt": null})).is_empty());
        let cel = errors(json!({"name": "a", "count": 7}));
        assert_eq!(cel.len(), 1);
        assert!(cel[0].contains("count must be at most 5"), "{cel:?}");
    }
}
