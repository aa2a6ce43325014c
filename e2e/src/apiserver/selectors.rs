//! Label selectors (equality, set-based, existence) and field selectors (`a.b=c`, `a.b!=c`)
//! as the API server parses them from `labelSelector` / `fieldSelector` query parameters.

use serde_json::Value;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum LabelRequirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector(Vec<LabelRequirement>);

/// A parsed field selector; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

/// A selector that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unable to parse requirement: {0}")]
pub struct SelectorError(pub String);

/// Splits on commas that are not inside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0_i32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().map(str::trim).filter(|p| !p.is_empty()).collect()
}

fn parse_set(text: &str) -> Result<Vec<String>, SelectorError> {
    let inner = text
        .trim()
        .strip_prefix('(')
        .and_then(|t| t.strip_suffix(')'))
        .ok_or_else(|| SelectorError(format!("expected a set in parentheses, found {text:?}")))?;
    Ok(inner.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect())
}

impl LabelSelector {
    /// Parses `a=b,c!=d,e in (f,g),h notin (i),j,!k`.
    ///
    /// # Errors
    ///
    /// A requirement that does not parse.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for part in split_top_level(text) {
            let req = if let Some(key) = part.strip_prefix('!') {
                LabelRequirement::NotExists(key.trim().to_owned())
            } else if let Some((key, rest)) = part.split_once(" notin ") {
                LabelRequirement::NotIn(key.trim().to_owned(), parse_set(rest)?)
            } else if let Some((key, rest)) = part.split_once(" in ") {
                LabelRequirement::In(key.trim().to_owned(), parse_set(rest)?)
            } else if let Some((key, value)) = part.split_once("!=") {
                LabelRequirement::NotEquals(key.trim().to_owned(), value.trim().to_owned())
            } else if let Some((key, value)) = part.split_once("==").or_else(|| part.split_once('=')) {
                LabelRequirement::Equals(key.trim().to_owned(), value.trim().to_owned())
            } else if part.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
                LabelRequirement::Exists(part.to_owned())
            } else {
                return Err(SelectorError(part.to_owned()));
            };
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Whether it has no requirement (it matches everything).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the object's `metadata.labels` satisfy every requirement.
    #[must_use]
    pub fn matches(&self, object: &Value) -> bool {
        let labels = &object["metadata"]["labels"];
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        self.0.iter().all(|req| match req {
            LabelRequirement::Equals(k, v) => get(k) == Some(v.as_str()),
            LabelRequirement::NotEquals(k, v) => get(k) != Some(v.as_str()),
            LabelRequirement::In(k, set) => get(k).is_some_and(|v| set.iter().any(|s| s == v)),
            LabelRequirement::NotIn(k, set) => get(k).is_none_or(|v| !set.iter().any(|s| s == v)),
            LabelRequirement::Exists(k) => get(k).is_some(),
            LabelRequirement::NotExists(k) => get(k).is_none(),
        })
    }
}

/// The value at a dotted path (`metadata.name`, `involvedObject.kind`) as the API server's
/// field selectors see it: strings as they are, other scalars as text, absent as "".
#[must_use]
pub fn field_value(object: &Value, path: &str) -> String {
    let mut current = object;
    for part in path.split('.') {
        current = match current.get(part) {
            Some(v) => v,
            None => return String::new(),
        };
    }
    match current {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl FieldSelector {
    /// Parses `a.b=c,d!=e` (also `==`).
    ///
    /// # Errors
    ///
    /// A term without an operator.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut terms = Vec::new();
        for part in split_top_level(text) {
            if let Some((k, v)) = part.split_once("!=") {
                terms.push((k.trim().to_owned(), false, v.trim().to_owned()));
            } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
                terms.push((k.trim().to_owned(), true, v.trim().to_owned()));
            } else {
                return Err(SelectorError(part.to_owned()));
            }
        }
        Ok(Self(terms))
    }

    /// Whether it has no term (it matches everything).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether the object satisfies every term.
    #[must_use]
    pub fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(path, eq, want)| (field_value(object, path) == *want) == *eq)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn label_selectors() {
        let obj = json!({"metadata": {"labels": {"app": "web", "tier": "front"}}});
        for (sel, want) in [
            ("", true),
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app in (web, db)", true),
            ("app notin (web)", false),
            ("tier", true),
            ("!tier", false),
            ("missing", false),
            ("!missing", true),
            ("app=web,tier in (front)", true),
            ("app=web,tier notin (front,back)", false),
            ("missing notin (x)", true),
        ] {
            assert_eq!(LabelSelector::parse(sel).unwrap().matches(&obj), want, "{sel}");
        }
        assert!(LabelSelector::parse("a in x").is_err());
    }

    #[test]
    fn field_selectors() {
        let obj = json!({"metadata": {"name": "a", "namespace": "ns"}, "involvedObject": {"kind": "Service", "uid": "u"}, "spec": {"replicas": 3}});
        for (sel, want) in [
            ("metadata.name=a", true),
            ("metadata.name!=a", false),
            ("metadata.namespace==ns,involvedObject.kind=Service", true),
            ("involvedObject.uid=x", false),
            ("spec.replicas=3", true),
            ("spec.missing=", true),
        ] {
            assert_eq!(FieldSelector::parse(sel).unwrap().matches(&obj), want, "{sel}");
        }
    }
}
