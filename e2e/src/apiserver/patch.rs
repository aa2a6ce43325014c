//! The four patch types a Kubernetes API server accepts. JSON merge patch (RFC 7386) and
//! JSON patch (RFC 6902) are exact; strategic merge patch and server-side apply are
//! approximations documented in `e2e/README.md`:
//! - strategic merge: a merge patch in which lists whose elements have a known merge key
//!   (`ports` by `port`, `conditions` by `type`, `containers`/`env`/... by `name`, ...) are
//!   merged element by element, `$patch: delete` removes an element, and other `$` directives
//!   are dropped;
//! - apply: the applied object is merged into the live one (maps recursively, lists replaced);
//!   fields an earlier apply set and this one omits are not removed (no managedFields).

use serde_json::{Map, Value};

/// Patch content types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`
    Merge,
    /// `application/json-patch+json`
    Json,
    /// `application/strategic-merge-patch+json`
    Strategic,
    /// `application/apply-patch+yaml`
    Apply,
}

impl PatchType {
    /// From a Content-Type header.
    #[must_use]
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let ct = ct.split(';').next().unwrap_or_default().trim();
        match ct {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }
}

/// Parses a patch body.
///
/// # Errors
///
/// A message for a 400/422 answer.
pub fn parse_body(kind: PatchType, body: &[u8]) -> Result<Value, String> {
    match kind {
        PatchType::Apply => serde_yaml_ng::from_slice::<Value>(body).map_err(|e| format!("error decoding YAML: {e}")),
        _ => serde_json::from_slice(body).map_err(|e| format!("error decoding patch: {e}")),
    }
}

/// Applies a patch to `doc`.
///
/// # Errors
///
/// A JSON patch operation that fails (message for a 422 answer).
pub fn apply_patch(kind: PatchType, doc: &mut Value, patch: &Value) -> Result<(), String> {
    match kind {
        PatchType::Merge => {
            json_patch::merge(doc, patch);
            Ok(())
        }
        PatchType::Json => {
            let ops: json_patch::Patch =
                serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
            json_patch::patch(doc, &ops).map_err(|e| format!("the JSON patch could not be applied: {e}"))
        }
        PatchType::Strategic => {
            strategic_merge(doc, patch, "");
            Ok(())
        }
        PatchType::Apply => {
            apply_merge(doc, patch);
            Ok(())
        }
    }
}

fn merge_key(field: &str) -> Option<&'static str> {
    match field {
        "ports" => Some("port"),
        "conditions" => Some("type"),
        "containers" | "initContainers" | "env" | "volumes" | "volumeMounts" | "imagePullSecrets" => Some("name"),
        "tolerations" => Some("key"),
        "ownerReferences" => Some("uid"),
        _ => None,
    }
}

fn strategic_merge(doc: &mut Value, patch: &Value, field: &str) {
    let Value::Object(patch_map) = patch else {
        *doc = patch.clone();
        return;
    };
    if !doc.is_object() {
        *doc = Value::Object(Map::new());
    }
    let Some(doc_map) = doc.as_object_mut() else { return };
    let _ = field;
    for (key, value) in patch_map {
        if key.starts_with('$') {
            continue;
        }
        match value {
            Value::Null => {
                doc_map.remove(key);
            }
            Value::Array(items) if merge_key(key).is_some() => {
                let mk = merge_key(key).unwrap_or("name");
                let target = doc_map.entry(key.clone()).or_insert_with(|| Value::Array(Vec::new()));
                if !target.is_array() {
                    *target = Value::Array(Vec::new());
                }
                if let Value::Array(existing) = target {
                    for item in items {
                        let id = &item[mk];
                        let delete = item["$patch"].as_str() == Some("delete");
                        let pos = existing.iter().position(|e| &e[mk] == id && !id.is_null());
                        match (pos, delete) {
                            (Some(p), true) => {
                                existing.remove(p);
                            }
                            (None, true) => {}
                            (Some(p), false) => strategic_merge(&mut existing[p], item, key),
                            (None, false) => {
                                let mut fresh = Value::Object(Map::new());
                                strategic_merge(&mut fresh, item, key);
                                existing.push(fresh);
                            }
                        }
                    }
                }
            }
            Value::Object(_) => strategic_merge(doc_map.entry(key.clone()).or_insert(Value::Null), value, key),
            other => {
                doc_map.insert(key.clone(), other.clone());
            }
        }
    }
}

fn apply_merge(doc: &mut Value, patch: &Value) {
    match (doc, patch) {
        (Value::Object(doc_map), Value::Object(patch_map)) => {
            for (key, value) in patch_map {
                match doc_map.get_mut(key) {
                    Some(existing) if existing.is_object() && value.is_object() => apply_merge(existing, value),
                    _ => {
                        doc_map.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (doc, patch) => *doc = patch.clone(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn strategic_merges_lists_by_key_and_drops_directives() {
        let mut doc = json!({"spec": {"ports": [{"port": 80, "protocol": "TCP"}, {"port": 443}], "type": "ClusterIP"}});
        let patch = json!({"spec": {"$setElementOrder/ports": [{"port": 80}], "ports": [{"port": 80, "name": "http"}, {"port": 443, "$patch": "delete"}], "type": "LoadBalancer"}});
        apply_patch(PatchType::Strategic, &mut doc, &patch).unwrap();
        assert_eq!(
            doc,
            json!({"spec": {"ports": [{"port": 80, "protocol": "TCP", "name": "http"}], "type": "LoadBalancer"}})
        );
    }

    #[test]
    fn merge_and_json_patches_are_exact() {
        let mut doc = json!({"metadata": {"annotations": {"a": "1", "b": "2"}}});
        apply_patch(PatchType::Merge, &mut doc, &json!({"metadata": {"annotations": {"a": null, "c": "3"}}})).unwrap();
        assert_eq!(doc, json!({"metadata": {"annotations": {"b": "2", "c": "3"}}}));
        apply_patch(
            PatchType::Json,
            &mut doc,
            &json!([{"op": "replace", "path": "/metadata/annotations/b", "value": "x"}]),
        )
        .unwrap();
        assert_eq!(doc["metadata"]["annotations"]["b"], "x");
        assert!(apply_patch(PatchType::Json, &mut doc, &json!([{"op": "remove", "path": "/nope"}])).is_err());
    }

    #[test]
    fn apply_merges_maps_and_replaces_lists() {
        let mut doc = json!({"spec": {"a": 1, "list": [1, 2], "m": {"x": 1}}});
        apply_patch(PatchType::Apply, &mut doc, &json!({"spec": {"list": [3], "m": {"y": 2}}})).unwrap();
        assert_eq!(doc, json!({"spec": {"a": 1, "list": [3], "m": {"x": 1, "y": 2}}}));
    }
}
