//! RBAC authorization over the Role, ClusterRole, RoleBinding and ClusterRoleBinding objects
//! stored in the emulator, as the API server's RBAC authorizer decides: a request is allowed
//! when some binding that names the user (or one of its groups, or its service account)
//! grants a rule matching the verb, API group, resource (with subresource) and name.

use serde_json::Value;

use super::store::Store;

/// Who sends a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// User name, e.g. `system:serviceaccount:purelb-system:agent`.
    pub user: String,
    /// Groups, e.g. `system:authenticated`.
    pub groups: Vec<String>,
}

impl Identity {
    /// The identity of a service account token.
    #[must_use]
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self {
            user: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_owned(),
            ],
        }
    }

    /// Parses `system:serviceaccount:<ns>:<name>` or any other user name.
    #[must_use]
    pub fn from_user(user: &str) -> Self {
        if let Some(rest) = user.strip_prefix("system:serviceaccount:")
            && let Some((ns, name)) = rest.split_once(':')
        {
            return Self::service_account(ns, name);
        }
        let mut groups = vec!["system:authenticated".to_owned()];
        if user == "admin" {
            groups.push("system:masters".to_owned());
        }
        Self { user: user.to_owned(), groups }
    }

    fn is_master(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
}

/// The attributes of a resource request.
#[derive(Clone, Debug)]
pub struct Attributes<'a> {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: &'a str,
    /// API group ("" for core).
    pub group: &'a str,
    /// Resource plural, with `/subresource` when there is one.
    pub resource: &'a str,
    /// Namespace ("" for cluster-scoped).
    pub namespace: &'a str,
    /// Object name ("" for collections).
    pub name: &'a str,
}

fn list_has(list: &Value, want: &str) -> bool {
    list.as_array().is_some_and(|items| items.iter().any(|v| v.as_str() == Some("*") || v.as_str() == Some(want)))
}

fn rule_allows(rule: &Value, attrs: &Attributes<'_>) -> bool {
    if !list_has(&rule["verbs"], attrs.verb) || !list_has(&rule["apiGroups"], attrs.group) {
        return false;
    }
    let resource_ok = list_has(&rule["resources"], attrs.resource)
        || attrs.resource.split_once('/').is_some_and(|(base, _)| {
            rule["resources"].as_array().is_some_and(|r| r.iter().any(|v| v.as_str() == Some(&format!("{base}/*"))))
        })
        || (rule["resources"].as_array().is_some_and(|r| r.iter().any(|v| v.as_str() == Some("*"))));
    if !resource_ok {
        return false;
    }
    match rule["resourceNames"].as_array() {
        Some(names) if !names.is_empty() => names.iter().any(|n| n.as_str() == Some(attrs.name)),
        _ => true,
    }
}

fn subject_matches(subject: &Value, who: &Identity, binding_ns: &str) -> bool {
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("User") => who.user == name,
        Some("Group") => who.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let ns = subject["namespace"].as_str().unwrap_or(binding_ns);
            who.user == format!("system:serviceaccount:{ns}:{name}")
        }
        _ => false,
    }
}

fn role_rules(store: &Store, role_ref: &Value, binding_ns: &str) -> Vec<Value> {
    let name = role_ref["name"].as_str().unwrap_or_default();
    let object = match role_ref["kind"].as_str() {
        Some("ClusterRole") => {
            store.get(&("rbac.authorization.k8s.io".to_owned(), "clusterroles".to_owned()), "", name)
        }
        Some("Role") => store.get(&("rbac.authorization.k8s.io".to_owned(), "roles".to_owned()), binding_ns, name),
        _ => None,
    };
    object.and_then(|o| o["rules"].as_array().cloned()).unwrap_or_default()
}

/// Whether `who` may make the request.
#[must_use]
pub fn authorize(store: &Store, who: &Identity, attrs: &Attributes<'_>) -> bool {
    if who.is_master() {
        return true;
    }
    let rbac = "rbac.authorization.k8s.io".to_owned();
    let granted_by = |bindings: Vec<std::sync::Arc<Value>>, scope_ns: Option<&str>| {
        bindings.iter().any(|b| {
            let binding_ns = b["metadata"]["namespace"].as_str().unwrap_or_default();
            b["subjects"].as_array().is_some_and(|s| s.iter().any(|s| subject_matches(s, who, binding_ns)))
                && scope_ns.is_none_or(|ns| ns == attrs.namespace)
                && role_rules(store, &b["roleRef"], binding_ns).iter().any(|r| rule_allows(r, attrs))
        })
    };
    let (cluster_bindings, _) = store.list(&(rbac.clone(), "clusterrolebindings".to_owned()), None);
    if granted_by(cluster_bindings, None) {
        return true;
    }
    if attrs.namespace.is_empty() {
        return false;
    }
    let (bindings, _) = store.list(&(rbac, "rolebindings".to_owned()), Some(attrs.namespace));
    granted_by(bindings, Some(attrs.namespace))
}
