//! What a real API server does to built-in kinds on every write, beyond names: fields it does
//! not know are dropped (or refused under `fieldValidation=Strict`), a value of the wrong type
//! is a 400, fields behind a feature gate that is off in the emulated version are dropped, and
//! Service `status.conditions` are validated like every `metav1.Condition` list.
//!
//! "Known" is what the `k8s-openapi` types (Kubernetes 1.33) have: an object is read into its
//! type and written back, and every field of the request that did not survive is unknown. The
//! stored object is the request with those fields removed (not the re-serialised one, so
//! values keep the form they were sent in).

use std::collections::HashSet;

use purelb::k8s_openapi::{
    api::{
        apps::v1 as apps, coordination::v1 as coordination, core::v1 as core, discovery::v1 as discovery,
        policy::v1 as policy, rbac::v1 as rbac, scheduling::v1 as scheduling,
    },
    apiextensions_apiserver::pkg::apis::apiextensions::v1 as apiextensions,
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// What checking a write found.
#[derive(Debug, Default)]
pub struct Checked {
    /// Dotted paths of the fields dropped as unknown (`spec.foo`, `spec.ports[0].bar`).
    pub unknown: Vec<String>,
    /// Field errors: (path, message, reason), for a 422.
    pub errors: Vec<(String, String, &'static str)>,
}

/// Checks and prunes `object` of the built-in kind served at `group`/`plural`, as a server of
/// Kubernetes 1.`minor` would. `Err` is a body that does not decode into the kind (a 400).
pub fn check(group: &str, plural: &str, object: &mut Value, minor: u32) -> Result<Checked, String> {
    let known = match (group, plural) {
        ("", "namespaces") => roundtrip::<core::Namespace>(object),
        ("", "services") => roundtrip::<core::Service>(object),
        ("", "nodes") => roundtrip::<core::Node>(object),
        ("", "secrets") => roundtrip::<core::Secret>(object),
        ("", "configmaps") => roundtrip::<core::ConfigMap>(object),
        ("", "serviceaccounts") => roundtrip::<core::ServiceAccount>(object),
        ("", "pods") => roundtrip::<core::Pod>(object),
        ("", "endpoints") => roundtrip::<core::Endpoints>(object),
        ("", "events") => roundtrip::<core::Event>(object),
        // Stored in the core/v1 shape (one store for both APIs): checked as such.
        ("events.k8s.io", "events") => {
            let mut core_shaped = object.clone();
            core_shaped["apiVersion"] = Value::from("v1");
            roundtrip::<core::Event>(&core_shaped).map(|mut known| {
                known["apiVersion"] = object["apiVersion"].clone();
                known
            })
        }
        ("discovery.k8s.io", "endpointslices") => roundtrip::<discovery::EndpointSlice>(object),
        ("coordination.k8s.io", "leases") => roundtrip::<coordination::Lease>(object),
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            roundtrip::<apiextensions::CustomResourceDefinition>(object)
        }
        ("rbac.authorization.k8s.io", "roles") => roundtrip::<rbac::Role>(object),
        ("rbac.authorization.k8s.io", "rolebindings") => roundtrip::<rbac::RoleBinding>(object),
        ("rbac.authorization.k8s.io", "clusterroles") => roundtrip::<rbac::ClusterRole>(object),
        ("rbac.authorization.k8s.io", "clusterrolebindings") => roundtrip::<rbac::ClusterRoleBinding>(object),
        ("apps", "deployments") => roundtrip::<apps::Deployment>(object),
        ("apps", "daemonsets") => roundtrip::<apps::DaemonSet>(object),
        ("apps", "controllerrevisions") => roundtrip::<apps::ControllerRevision>(object),
        ("policy", "poddisruptionbudgets") => roundtrip::<policy::PodDisruptionBudget>(object),
        ("scheduling.k8s.io", "priorityclasses") => roundtrip::<scheduling::PriorityClass>(object),
        _ => return Ok(Checked::default()),
    }?;
    let mut checked = Checked::default();
    prune(object, &known, "", &mut checked.unknown);
    if (group, plural) == ("", "services") {
        drop_gated_service_fields(object, minor);
        checked.errors = conditions(&object["status"]["conditions"], "status.conditions");
    }
    Ok(checked)
}

/// What a real server checks when a Service changes (`ValidateServiceUpdate`):
/// `spec.loadBalancerClass` may not change while the Service stays of type LoadBalancer, and
/// is only allowed on type LoadBalancer.
#[must_use]
pub fn service_update(old: Option<&Value>, new: &Value) -> Vec<(String, String, &'static str)> {
    let is_lb = |v: &Value| v["spec"]["type"].as_str() == Some("LoadBalancer");
    let class = |v: &Value| v["spec"]["loadBalancerClass"].as_str().map(str::to_owned);
    let shown = |c: &Option<String>| c.as_ref().map_or_else(|| "null".to_owned(), |c| format!("{c:?}"));
    let field = "spec.loadBalancerClass".to_owned();
    let mut errors = Vec::new();
    if let Some(old) = old
        && is_lb(old)
        && is_lb(new)
        && class(old) != class(new)
    {
        errors.push((
            field.clone(),
            format!("{field}: Invalid value: {}: may not change once set", shown(&class(new))),
            "FieldValueInvalid",
        ));
    }
    if !is_lb(new) && class(new).is_some() {
        errors.push((
            field.clone(),
            format!("{field}: Invalid value: {}: may only be used when `type` is 'LoadBalancer'", shown(&class(new))),
            "FieldValueInvalid",
        ));
    }
    errors
}

fn roundtrip<T: DeserializeOwned + Serialize>(object: &Value) -> Result<Value, String> {
    // Nulls mean "unset" to a real server; they are not unknown fields.
    let mut cleaned = object.clone();
    strip_nulls(&mut cleaned);
    let typed: T = serde_json::from_value(cleaned).map_err(|e| e.to_string())?;
    serde_json::to_value(typed).map_err(|e| e.to_string())
}

fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(list) => list.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

/// Removes from `object` every key `known` does not have (recursively), recording its path.
fn prune(object: &mut Value, known: &Value, path: &str, unknown: &mut Vec<String>) {
    match (object, known) {
        (Value::Object(map), Value::Object(known_map)) => {
            let drop: Vec<String> = map
                .iter()
                .filter(|(k, v)| !v.is_null() && !known_map.contains_key(*k))
                .map(|(k, _)| k.clone())
                .collect();
            for key in drop {
                map.remove(&key);
                unknown.push(join(path, &key));
            }
            for (key, value) in map.iter_mut() {
                if let Some(k) = known_map.get(key) {
                    prune(value, k, &join(path, key), unknown);
                }
            }
        }
        (Value::Array(list), Value::Array(known_list)) => {
            for (i, (value, k)) in list.iter_mut().zip(known_list).enumerate() {
                prune(value, k, &format!("{path}[{i}]"), unknown);
            }
        }
        _ => {}
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

/// Fields of Services behind feature gates that are off in older releases: a server drops them
/// on write. `status.loadBalancer.ingress[].ipMode` (LoadBalancerIPMode) is on by default from
/// 1.30 (alpha and off in 1.29, absent before); `spec.trafficDistribution` from 1.31.
fn drop_gated_service_fields(svc: &mut Value, minor: u32) {
    if minor < 30
        && let Some(ingress) = svc["status"]["loadBalancer"]["ingress"].as_array_mut()
    {
        for entry in ingress.iter_mut().filter_map(Value::as_object_mut) {
            entry.remove("ipMode");
        }
    }
    if minor < 31
        && let Some(spec) = svc["spec"].as_object_mut()
    {
        spec.remove("trafficDistribution");
    }
}

/// `metav1.Condition` list rules (apimachinery's `ValidateConditions`): `type` a qualified
/// name and unique, `status` True/False/Unknown, `reason` a CamelCase identifier of at most
/// 1024 characters, `message` at most 32768, `lastTransitionTime` set, `observedGeneration` ≥ 0.
#[must_use]
pub fn conditions(list: &Value, path: &str) -> Vec<(String, String, &'static str)> {
    let mut errors = Vec::new();
    let Some(items) = list.as_array() else { return errors };
    let mut seen = HashSet::new();
    for (i, c) in items.iter().enumerate() {
        let at = |field: &str| format!("{path}[{i}].{field}");
        let mut error = |field: String, message: String, reason: &'static str| {
            let text = format!("{field}: {message}");
            errors.push((field, text, reason));
        };
        match c["type"].as_str().filter(|t| !t.is_empty()) {
            None => error(at("type"), "Required value".into(), "FieldValueRequired"),
            Some(t) => {
                if let Err(why) = qualified_name(t) {
                    error(at("type"), format!("Invalid value: \"{t}\": {why}"), "FieldValueInvalid");
                }
                if !seen.insert(t.to_owned()) {
                    error(at("type"), format!("Duplicate value: \"{t}\""), "FieldValueDuplicate");
                }
            }
        }
        match c["status"].as_str() {
            None | Some("") => error(at("status"), "Required value".into(), "FieldValueRequired"),
            Some("True" | "False" | "Unknown") => {}
            Some(other) => error(
                at("status"),
                format!("Unsupported value: \"{other}\": supported values: \"False\", \"True\", \"Unknown\""),
                "FieldValueNotSupported",
            ),
        }
        if c["observedGeneration"].as_i64().is_some_and(|g| g < 0) {
            error(
                at("observedGeneration"),
                "Invalid value: must be greater than or equal to zero".into(),
                "FieldValueInvalid",
            );
        }
        if c["lastTransitionTime"].as_str().is_none_or(str::is_empty) {
            error(at("lastTransitionTime"), "Required value: must be set".into(), "FieldValueRequired");
        }
        match c["reason"].as_str().filter(|r| !r.is_empty()) {
            None => error(at("reason"), "Required value".into(), "FieldValueRequired"),
            Some(r) if r.len() > 1024 => {
                error(at("reason"), "Too long: may not be more than 1024 bytes".into(), "FieldValueTooLong");
            }
            Some(r) if !camel_identifier(r) => error(
                at("reason"),
                format!(
                    "Invalid value: \"{r}\": a condition reason must start with alphabetic character, optionally followed by a string of alphanumeric characters or '_,:', and must end with an alphanumeric character or '_' (regex used for validation is '[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?')"
                ),
                "FieldValueInvalid",
            ),
            Some(_) => {}
        }
        if c["message"].as_str().is_some_and(|m| m.len() > 32768) {
            error(at("message"), "Too long: may not be more than 32768 bytes".into(), "FieldValueTooLong");
        }
    }
    errors
}

fn camel_identifier(reason: &str) -> bool {
    let bytes = reason.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else { return false };
    first.is_ascii_alphabetic()
        && (last.is_ascii_alphanumeric() || *last == b'_')
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b',' | b':'))
}

/// A qualified name: `[prefix/]name`, the prefix a DNS subdomain, the name at most 63
/// characters of alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric.
fn qualified_name(value: &str) -> Result<(), String> {
    let (prefix, name) = match value.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, value),
    };
    if let Some(prefix) = prefix {
        let ok = !prefix.is_empty()
            && prefix.len() <= 253
            && prefix.split('.').all(|label| {
                !label.is_empty()
                    && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !ok {
            return Err("prefix part a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into());
        }
    }
    let bytes = name.as_bytes();
    let ends_ok =
        bytes.first().is_some_and(u8::is_ascii_alphanumeric) && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if name.is_empty()
        || name.len() > 63
        || !ends_ok
        || !bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') and be at most 63 characters".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn unknown_fields_are_dropped_and_named_known_ones_stay_as_sent() {
        let mut svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "bogus": 1},
            "spec": {"type": "LoadBalancer", "ports": [{"port": 80, "extra": true}], "loadBalancerClass": null,
                     "allocateLoadBalancerNodePorts": false},
            "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "VIP"}]}}});
        let checked = check("", "services", &mut svc, 33).expect("decodes");
        assert_eq!(checked.unknown, vec!["metadata.bogus".to_owned(), "spec.ports[0].extra".to_owned()]);
        assert_eq!(svc["spec"]["ports"], json!([{"port": 80}]));
        assert_eq!(svc["spec"]["allocateLoadBalancerNodePorts"], false);
        assert_eq!(svc["status"]["loadBalancer"]["ingress"][0]["ipMode"], "VIP");
    }

    #[test]
    fn ip_mode_is_kept_from_1_30_only() {
        for (minor, kept) in [(25, false), (28, false), (29, false), (30, true), (33, true)] {
            let mut svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},
                "status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1", "ipMode": "VIP"}]}}});
            let checked = check("", "services", &mut svc, minor).expect("decodes");
            assert!(checked.unknown.is_empty(), "not unknown, gated: {:?}", checked.unknown);
            assert_eq!(svc["status"]["loadBalancer"]["ingress"][0].get("ipMode").is_some(), kept, "1.{minor}");
        }
    }

    #[test]
    fn a_value_of_the_wrong_type_is_an_error() {
        let mut svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},
            "spec": {"ports": [{"port": "eighty"}]}});
        assert!(check("", "services", &mut svc, 33).is_err());
    }

    #[test]
    fn load_balancer_class_is_immutable_like_on_a_real_server() {
        let svc = |t: &str, class: Option<&str>| json!({"spec": {"type": t, "loadBalancerClass": class}});
        let lb = svc("LoadBalancer", Some("a"));
        assert!(service_update(Some(&lb), &lb).is_empty());
        assert!(service_update(None, &lb).is_empty());
        let changed = service_update(Some(&lb), &svc("LoadBalancer", Some("b")));
        assert_eq!(changed[0].1, "spec.loadBalancerClass: Invalid value: \"b\": may not change once set");
        assert_eq!(
            service_update(Some(&lb), &svc("LoadBalancer", None))[0].1,
            "spec.loadBalancerClass: Invalid value: null: may not change once set"
        );
        // Set when it becomes a LoadBalancer: allowed; kept on a ClusterIP: refused.
        assert!(service_update(Some(&svc("ClusterIP", None)), &lb).is_empty());
        assert!(
            service_update(Some(&lb), &svc("ClusterIP", Some("a")))[0]
                .1
                .contains("may only be used when `type` is 'LoadBalancer'")
        );
        assert!(service_update(Some(&lb), &svc("ClusterIP", None)).is_empty());
    }

    #[test]
    fn conditions_follow_the_metav1_rules() {
        let ok = json!([{"type": "purelb.io/Allocated", "status": "True", "reason": "Allocated",
            "message": "x", "lastTransitionTime": "2026-12-02T00:00:00Z", "observedGeneration": 1}]);
        assert!(conditions(&ok, "status.conditions").is_empty());
        let bad = json!([
            {"type": "purelb.io/Allocated", "status": "Maybe", "reason": "no spaces allowed", "lastTransitionTime": "2026-12-02T00:00:00Z"},
            {"type": "purelb.io/Allocated", "status": "True", "reason": "R", "lastTransitionTime": "2026-12-02T00:00:00Z"},
            {"type": "Bad_Prefix/x", "status": "True", "lastTransitionTime": "", "observedGeneration": -1},
        ]);
        let fields: Vec<String> = conditions(&bad, "status.conditions").into_iter().map(|e| e.1).collect();
        let expect = [
            "status.conditions[0].status: Unsupported value: \"Maybe\"",
            "status.conditions[0].reason: Invalid value: \"no spaces allowed\"",
            "status.conditions[1].type: Duplicate value",
            "status.conditions[2].type: Invalid value",
            "status.conditions[2].observedGeneration: Invalid value",
            "status.conditions[2].lastTransitionTime: Required value",
            "status.conditions[2].reason: Required value",
        ];
        assert_eq!(fields.len(), expect.len(), "{fields:#?}");
        for (got, want) in fields.iter().zip(expect) {
            assert!(got.starts_with(want), "{got} / {want}");
        }
    }

    #[test]
    fn every_registered_builtin_decodes_its_own_minimal_object() {
        for (group, plural, kind, version) in [
            ("", "namespaces", "Namespace", "v1"),
            ("coordination.k8s.io", "leases", "Lease", "coordination.k8s.io/v1"),
            ("discovery.k8s.io", "endpointslices", "EndpointSlice", "discovery.k8s.io/v1"),
            ("apps", "daemonsets", "DaemonSet", "apps/v1"),
            ("apps", "controllerrevisions", "ControllerRevision", "apps/v1"),
        ] {
            let mut object = json!({"apiVersion": version, "kind": kind, "metadata": {"name": "a"}});
            if plural == "endpointslices" {
                object["addressType"] = json!("IPv4");
                object["endpoints"] = json!([]);
            }
            if plural == "daemonsets" {
                object["spec"] = json!({"selector": {}, "template": {}});
            }
            let checked = check(group, plural, &mut object, 33).unwrap_or_else(|e| panic!("{plural}: {e}"));
            assert!(checked.unknown.is_empty(), "{plural}: {:?}", checked.unknown);
        }
    }
}
