//! The resources the emulator serves: built-in kinds registered at start, custom resources
//! registered when their CustomResourceDefinition is created, and the discovery documents
//! (`/api`, `/apis`, per-group resource lists) that kubectl and kube's discovery read.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// Identifies stored objects of one resource: `(group, plural)`.
pub type ResKey = (String, String);

/// How objects of a resource are stored when it is a view of another (events.k8s.io/v1 events
/// are core/v1 events seen through another shape).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Stored as itself.
    Own,
    /// events.k8s.io/v1 over core/v1 events.
    EventsV1,
}

/// One served resource.
#[derive(Clone, Debug)]
pub struct ResourceDef {
    /// API group ("" for core).
    pub group: String,
    /// Served versions (first is preferred).
    pub versions: Vec<String>,
    /// Kind.
    pub kind: String,
    /// Plural (URL segment).
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// Short names for kubectl.
    pub short_names: Vec<String>,
    /// Has a status subresource.
    pub status: bool,
    /// OpenAPI v3 schema per version (custom resources only).
    pub schemas: BTreeMap<String, Value>,
    /// Printer columns per version (custom resources only).
    pub printer_columns: BTreeMap<String, Value>,
    /// Storage view.
    pub view: View,
}

impl ResourceDef {
    fn builtin(
        group: &str,
        version: &str,
        kind: &str,
        plural: &str,
        namespaced: bool,
        status: bool,
        short: &[&str],
    ) -> Self {
        Self {
            group: group.to_owned(),
            versions: vec![version.to_owned()],
            kind: kind.to_owned(),
            plural: plural.to_owned(),
            singular: kind.to_lowercase(),
            namespaced,
            short_names: short.iter().map(|s| (*s).to_owned()).collect(),
            status,
            schemas: BTreeMap::new(),
            printer_columns: BTreeMap::new(),
            view: View::Own,
        }
    }

    /// `apiVersion` for `version`.
    #[must_use]
    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() { version.to_owned() } else { format!("{}/{version}", self.group) }
    }

    /// Key of the objects this resource reads and writes.
    #[must_use]
    pub fn storage_key(&self) -> ResKey {
        match self.view {
            View::Own => (self.group.clone(), self.plural.clone()),
            View::EventsV1 => (String::new(), "events".to_owned()),
        }
    }

    /// Whether it is a custom resource.
    #[must_use]
    pub fn is_custom(&self) -> bool {
        !self.schemas.is_empty()
    }

    fn verbs() -> Value {
        json!(["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"])
    }

    fn discovery_entries(&self) -> Vec<Value> {
        let mut out = vec![json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": Self::verbs(),
            "shortNames": self.short_names,
            // As on a real server: `kubectl get all` means the workloads and Services.
            "categories": if !self.is_custom() && ["pods", "services", "daemonsets", "deployments"].contains(&self.plural.as_str()) {
                json!(["all"])
            } else {
                json!([])
            },
        })];
        if self.status {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        out
    }
}

/// All served resources.
#[derive(Clone, Debug)]
pub struct Registry {
    resources: Vec<ResourceDef>,
    version: String,
}

impl Registry {
    /// The built-in kinds, answering `/version` as Kubernetes `version` (e.g. `v1.33.0`).
    #[must_use]
    pub fn new(version: &str) -> Self {
        let b = ResourceDef::builtin;
        let mut events_v1 = b("events.k8s.io", "v1", "Event", "events", true, false, &["ev"]);
        events_v1.view = View::EventsV1;
        let resources = vec![
            b("", "v1", "Namespace", "namespaces", false, true, &["ns"]),
            b("", "v1", "Service", "services", true, true, &["svc"]),
            b("", "v1", "Node", "nodes", false, true, &["no"]),
            b("", "v1", "Secret", "secrets", true, false, &[]),
            b("", "v1", "ConfigMap", "configmaps", true, false, &["cm"]),
            b("", "v1", "ServiceAccount", "serviceaccounts", true, false, &["sa"]),
            b("", "v1", "Pod", "pods", true, true, &["po"]),
            b("", "v1", "Endpoints", "endpoints", true, false, &["ep"]),
            b("", "v1", "Event", "events", true, false, &["ev"]),
            events_v1,
            b("discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", true, false, &[]),
            b("coordination.k8s.io", "v1", "Lease", "leases", true, false, &[]),
            b(
                "apiextensions.k8s.io",
                "v1",
                "CustomResourceDefinition",
                "customresourcedefinitions",
                false,
                true,
                &["crd", "crds"],
            ),
            b("rbac.authorization.k8s.io", "v1", "Role", "roles", true, false, &[]),
            b("rbac.authorization.k8s.io", "v1", "RoleBinding", "rolebindings", true, false, &[]),
            b("rbac.authorization.k8s.io", "v1", "ClusterRole", "clusterroles", false, false, &[]),
            b("rbac.authorization.k8s.io", "v1", "ClusterRoleBinding", "clusterrolebindings", false, false, &[]),
            b("apps", "v1", "Deployment", "deployments", true, true, &["deploy"]),
            b("apps", "v1", "DaemonSet", "daemonsets", true, true, &["ds"]),
            b("apps", "v1", "ControllerRevision", "controllerrevisions", true, false, &[]),
            b("policy", "v1", "PodDisruptionBudget", "poddisruptionbudgets", true, true, &["pdb"]),
            b("scheduling.k8s.io", "v1", "PriorityClass", "priorityclasses", false, false, &["pc"]),
        ];
        Self { resources, version: version.to_owned() }
    }

    /// Finds the resource served at `group/version/plural`.
    #[must_use]
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceDef> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.plural == plural && r.versions.iter().any(|v| v == version))
    }

    /// Finds a resource by its storage key.
    #[must_use]
    pub fn by_key(&self, key: &ResKey) -> Option<&ResourceDef> {
        self.resources.iter().find(|r| r.view == View::Own && r.group == key.0 && r.plural == key.1)
    }

    /// Finds a resource by group and kind.
    #[must_use]
    pub fn by_kind(&self, group: &str, kind: &str) -> Option<&ResourceDef> {
        self.resources.iter().find(|r| r.view == View::Own && r.group == group && r.kind == kind)
    }

    /// Registers (or replaces) the custom resource a CRD object declares.
    ///
    /// # Errors
    ///
    /// A message naming what the CRD lacks.
    pub fn register_crd(&mut self, crd: &Value) -> Result<ResourceDef, String> {
        let spec = &crd["spec"];
        let group = spec["group"].as_str().ok_or("spec.group: Required value")?.to_owned();
        let names = &spec["names"];
        let plural = names["plural"].as_str().ok_or("spec.names.plural: Required value")?.to_owned();
        let kind = names["kind"].as_str().ok_or("spec.names.kind: Required value")?.to_owned();
        let expected = format!("{plural}.{group}");
        if crd["metadata"]["name"].as_str() != Some(expected.as_str()) {
            return Err(format!(
                "metadata.name: Invalid value: must be spec.names.plural+\".\"+spec.group ({expected})"
            ));
        }
        let scope = spec["scope"].as_str().unwrap_or("Namespaced");
        let mut versions = Vec::new();
        let mut schemas = BTreeMap::new();
        let mut printer_columns = BTreeMap::new();
        let mut status = false;
        for v in spec["versions"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let Some(name) = v["name"].as_str() else { continue };
            if v["served"].as_bool() == Some(false) {
                continue;
            }
            versions.push(name.to_owned());
            schemas.insert(name.to_owned(), v["schema"]["openAPIV3Schema"].clone());
            printer_columns.insert(name.to_owned(), v["additionalPrinterColumns"].clone());
            status |= v["subresources"]["status"].is_object();
        }
        if versions.is_empty() {
            return Err("spec.versions: Required value: must have at least one served version".to_owned());
        }
        let def = ResourceDef {
            group,
            versions,
            kind: kind.clone(),
            plural,
            singular: names["singular"].as_str().map_or_else(|| kind.to_lowercase(), str::to_owned),
            namespaced: scope == "Namespaced",
            short_names: names["shortNames"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                .unwrap_or_default(),
            status,
            schemas,
            printer_columns,
            view: View::Own,
        };
        self.resources.retain(|r| !(r.group == def.group && r.plural == def.plural));
        self.resources.push(def.clone());
        Ok(def)
    }

    /// Stops serving the custom resource of a deleted CRD.
    pub fn unregister_crd(&mut self, crd: &Value) {
        let group = crd["spec"]["group"].as_str().unwrap_or_default();
        let plural = crd["spec"]["names"]["plural"].as_str().unwrap_or_default();
        self.resources.retain(|r| !(r.is_custom() && r.group == group && r.plural == plural));
    }

    /// The minor version of the emulated Kubernetes (`33` for `v1.33.0`): behaviour that changed
    /// between releases follows it.
    #[must_use]
    pub fn minor(&self) -> u32 {
        self.version.trim_start_matches('v').split('.').nth(1).and_then(|m| m.parse().ok()).unwrap_or(33)
    }

    /// `/version`.
    #[must_use]
    pub fn version_doc(&self) -> Value {
        let trimmed = self.version.trim_start_matches('v');
        let mut parts = trimmed.split('.');
        let major = parts.next().unwrap_or("1");
        let minor = parts.next().unwrap_or("33");
        json!({
            "major": major, "minor": minor, "gitVersion": self.version,
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.24.0", "compiler": "gc",
            "platform": "linux/amd64", "emulationMajor": major, "emulationMinor": minor,
        })
    }

    /// `/api`.
    #[must_use]
    pub fn core_versions_doc() -> Value {
        json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})
    }

    fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in self.resources.iter().filter(|r| !r.group.is_empty()) {
            let entry = groups.entry(r.group.clone()).or_default();
            for v in &r.versions {
                if !entry.contains(v) {
                    entry.push(v.clone());
                }
            }
        }
        groups
    }

    fn group_doc(name: &str, versions: &[String]) -> Value {
        let vs: Vec<Value> =
            versions.iter().map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v})).collect();
        json!({"name": name, "versions": vs, "preferredVersion": vs.first().cloned().unwrap_or(Value::Null)})
    }

    /// `/apis`.
    #[must_use]
    pub fn group_list_doc(&self) -> Value {
        let groups: Vec<Value> = self.groups().iter().map(|(g, vs)| Self::group_doc(g, vs)).collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `/apis/<group>`.
    #[must_use]
    pub fn group_doc_for(&self, group: &str) -> Option<Value> {
        self.groups().get(group).map(|vs| {
            let mut doc = Self::group_doc(group, vs);
            doc["kind"] = json!("APIGroup");
            doc["apiVersion"] = json!("v1");
            doc
        })
    }

    /// `/api/v1` or `/apis/<group>/<version>`.
    #[must_use]
    pub fn resource_list_doc(&self, group: &str, version: &str) -> Option<Value> {
        let resources: Vec<Value> = self
            .resources
            .iter()
            .filter(|r| r.group == group && r.versions.iter().any(|v| v == version))
            .flat_map(ResourceDef::discovery_entries)
            .collect();
        if resources.is_empty() {
            return None;
        }
        let gv = if group.is_empty() { version.to_owned() } else { format!("{group}/{version}") };
        Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
    }

    /// `/openapi/v3`: the index of per-group-version documents.
    #[must_use]
    pub fn openapi_root(&self) -> Value {
        let mut paths = serde_json::Map::new();
        let mut gvs: Vec<(String, String)> = Vec::new();
        for r in &self.resources {
            for v in &r.versions {
                let gv = (r.group.clone(), v.clone());
                if !gvs.contains(&gv) {
                    gvs.push(gv);
                }
            }
        }
        for (g, v) in gvs {
            let key = if g.is_empty() { format!("api/{v}") } else { format!("apis/{g}/{v}") };
            paths.insert(
                key.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{key}?hash={}", self.resources.len())}),
            );
        }
        json!({"paths": paths})
    }

    /// `/openapi/v3/apis/<group>/<version>`: just enough for kubectl to see that the server
    /// validates fields itself (`fieldValidation` on every PATCH) and which kinds live where.
    #[must_use]
    pub fn openapi_group_version(&self, group: &str, version: &str) -> Option<Value> {
        let prefix = if group.is_empty() { format!("/api/{version}") } else { format!("/apis/{group}/{version}") };
        let mut paths = serde_json::Map::new();
        let mut schemas = serde_json::Map::new();
        let param =
            |name: &str| json!({"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": true}});
        for r in self.resources.iter().filter(|r| r.group == group && r.versions.iter().any(|v| v == version)) {
            let gvk = json!({"group": group, "version": version, "kind": r.kind});
            let op = |action: &str| {
                json!({"x-kubernetes-action": action, "x-kubernetes-group-version-kind": gvk,
                    "parameters": [param("fieldValidation"), param("fieldManager"), param("dryRun")],
                    "responses": {"200": {"description": "OK"}}})
            };
            let item = if r.namespaced {
                format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
            } else {
                format!("{prefix}/{}/{{name}}", r.plural)
            };
            paths.insert(
                item,
                json!({"get": op("get"), "put": op("put"), "patch": op("patch"), "delete": op("delete")}),
            );
            let collection = if r.namespaced {
                format!("{prefix}/namespaces/{{namespace}}/{}", r.plural)
            } else {
                format!("{prefix}/{}", r.plural)
            };
            paths.insert(collection, json!({"get": op("list"), "post": op("post")}));
            let schema_name =
                format!("{}.{}.{}", if group.is_empty() { "io.k8s.api.core" } else { group }, version, r.kind);
            let mut schema = r
                .schemas
                .get(version)
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}));
            schema["x-kubernetes-group-version-kind"] = json!([gvk]);
            schemas.insert(schema_name, schema);
        }
        if paths.is_empty() {
            return None;
        }
        Some(
            json!({"openapi": "3.0.0", "info": {"title": "Kubernetes", "version": self.version}, "paths": paths, "components": {"schemas": schemas}}),
        )
    }
    /// `/openapi/v2` as kubectl 1.27 and 1.28 read it (protobuf, gnostic's `openapi.v2.Document`):
    /// every resource's operations with their group-version-kind and the query parameters the
    /// server takes, so that kubectl asks the server for field validation (`fieldValidation`)
    /// instead of validating against schemas the emulator does not publish.
    #[must_use]
    pub fn openapi_v2(&self) -> Vec<u8> {
        use super::protobuf::write as pb;
        let mut paths = Vec::new();
        for r in &self.resources {
            for version in &r.versions {
                let prefix =
                    if r.group.is_empty() { format!("/api/{version}") } else { format!("/apis/{}/{version}", r.group) };
                let gvk = format!("group: \"{}\"\nkind: {}\nversion: {version}\n", r.group, r.kind);
                let operation = |action: &str| {
                    let mut op = Vec::new();
                    for name in ["fieldValidation", "fieldManager", "dryRun"] {
                        let mut query = Vec::new();
                        pb::string(&mut query, 2, "query");
                        pb::string(&mut query, 4, name);
                        pb::string(&mut query, 6, "string");
                        let non_body = pb::message(3, &query);
                        let parameter = pb::message(2, &non_body);
                        pb::bytes(&mut op, 8, &pb::message(1, &parameter));
                    }
                    for (name, yaml) in [
                        ("x-kubernetes-action", format!("{action}\n")),
                        ("x-kubernetes-group-version-kind", gvk.clone()),
                    ] {
                        let mut any = Vec::new();
                        pb::string(&mut any, 2, &yaml);
                        let mut named = Vec::new();
                        pb::string(&mut named, 1, name);
                        pb::bytes(&mut named, 2, &any);
                        pb::bytes(&mut op, 13, &named);
                    }
                    op
                };
                let (item, collection) = if r.namespaced {
                    (
                        format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural),
                        format!("{prefix}/namespaces/{{namespace}}/{}", r.plural),
                    )
                } else {
                    (format!("{prefix}/{}/{{name}}", r.plural), format!("{prefix}/{}", r.plural))
                };
                let mut item_ops = Vec::new();
                for (field, action) in [(2, "get"), (3, "put"), (5, "delete"), (8, "patch")] {
                    pb::bytes(&mut item_ops, field, &operation(action));
                }
                let mut collection_ops = Vec::new();
                for (field, action) in [(2, "list"), (4, "post")] {
                    pb::bytes(&mut collection_ops, field, &operation(action));
                }
                for (path, ops) in [(item, item_ops), (collection, collection_ops)] {
                    let mut named = Vec::new();
                    pb::string(&mut named, 1, &path);
                    pb::bytes(&mut named, 2, &ops);
                    pb::bytes(&mut paths, 2, &named);
                }
            }
        }
        let mut info = Vec::new();
        pb::string(&mut info, 1, "Kubernetes");
        pb::string(&mut info, 2, &self.version);
        let mut doc = Vec::new();
        pb::string(&mut doc, 1, "2.0");
        pb::bytes(&mut doc, 2, &info);
        pb::bytes(&mut doc, 8, &paths);
        doc
    }
}
