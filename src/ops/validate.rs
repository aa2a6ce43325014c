//! `purelb validate`: checks PureLB's configuration, either manifests before they are applied
//! (`-f FILE`, offline, for CI) or what is in the cluster.
//!
//! Every object is checked the way the API server and PureLB would check it:
//! 1. PureLB's custom resources against their CRD's schema, CEL rules included
//!    ([`super::schema`], the same code the test API server runs);
//! 2. the rules that need address arithmetic, as the allocator and agent apply them
//!    ([`GroupSet::build`]: families, subnets, overlaps across groups, namespace scoping;
//!    [`crate::agent::config::Config::from_spec`]; [`crate::bgp::peer::PeerConfig::from_spec`]);
//! 3. Services' PureLB annotations ([`ServiceRequest::from_service`]).
//!
//! Against the cluster it also warns about what only the cluster shows: local ranges on no
//! agent's subnet, interface patterns that match none of the interfaces the agents report,
//! BGPPeers and LBNodeAgents whose nodeSelector matches no Node, remote groups without any BGP
//! peer while BGP is on.
//!
//! Exit codes: 0 PASS (warnings allowed), 1 WARN under `--strict`, 2 FAIL.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use kube::{CustomResourceExt, ResourceExt};
use serde::Serialize;
use serde_json::Value;

use super::{schema, snapshot::Snapshot};
use crate::{
    agent::config::{Config as AgentConfig, name_matches, selector_matches},
    allocator::{groups::GroupSet, request::ServiceRequest},
    api::{BGPPeer, LBNodeAgent, PoolType, ServiceGroup, contract},
    bgp::peer::PeerConfig,
    core::election::{Members, parse_announcing},
};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    /// Fine.
    Pass,
    /// Works, but probably not as meant.
    Warn,
    /// Refused by the API server, or ignored by PureLB.
    Fail,
}

impl Level {
    /// `PASS`, `WARN`, `FAIL`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// PASS, WARN or FAIL.
    pub level: Level,
    /// `Kind namespace/name` (and the file, offline).
    pub object: String,
    /// What is wrong and how to fix it (for PASS: what was checked).
    pub message: String,
}

/// The report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Every finding, in the order of the objects.
    pub findings: Vec<Finding>,
}

impl Report {
    fn push(&mut self, level: Level, object: &str, message: impl Into<String>) {
        self.findings.push(Finding { level, object: object.to_owned(), message: message.into() });
    }

    /// The worst level found.
    #[must_use]
    pub fn worst(&self) -> Level {
        self.findings.iter().map(|f| f.level).max().unwrap_or(Level::Pass)
    }

    /// The exit code: 2 on FAIL, 1 on WARN when `strict`, else 0.
    #[must_use]
    pub fn exit_code(&self, strict: bool) -> u8 {
        match self.worst() {
            Level::Fail => 2,
            Level::Warn if strict => 1,
            _ => 0,
        }
    }

    /// One line per finding, then a summary.
    #[must_use]
    pub fn text(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            out.push_str(&format!("{:<5} {}: {}\n", f.level.as_str(), f.object, f.message));
        }
        let count = |l: Level| self.findings.iter().filter(|f| f.level == l).count();
        out.push_str(&format!(
            "{} PASS, {} WARN, {} FAIL\n",
            count(Level::Pass),
            count(Level::Warn),
            count(Level::Fail)
        ));
        out
    }
}

/// A parsed manifest document with where it came from.
#[derive(Clone, Debug)]
pub struct Document {
    /// `file` or `file#N` (N = the document's position, from 1).
    pub origin: String,
    /// The object.
    pub object: Value,
}

/// Splits YAML (or JSON) text into its objects; `List` kinds are unpacked.
///
/// # Errors
///
/// The text is not YAML; the message names the document.
pub fn parse_documents(origin: &str, text: &str) -> Result<Vec<Document>, String> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(doc).map_err(|e| format!("document {} is not valid YAML: {e}", i + 1))?;
        let origin = format!("{origin}#{}", i + 1);
        match value {
            Value::Null => {}
            Value::Object(ref map) if map.get("kind").and_then(Value::as_str).is_some_and(|k| k.ends_with("List")) => {
                for item in map.get("items").and_then(Value::as_array).cloned().unwrap_or_default() {
                    out.push(Document { origin: origin.clone(), object: item });
                }
            }
            Value::Object(_) => out.push(Document { origin, object: value }),
            other => return Err(format!("document {} is not an object but {}", i + 1, short(&other))),
        }
    }
    Ok(out)
}

fn short(v: &Value) -> String {
    let text = v.to_string();
    if text.len() > 60 { format!("{}…", &text[..text.floor_char_boundary(60)]) } else { text }
}

fn schema_of<K: CustomResourceExt>() -> Value {
    let crd = K::crd();
    crd.spec
        .versions
        .first()
        .and_then(|v| v.schema.as_ref())
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .and_then(|s| serde_json::to_value(s).ok())
        .unwrap_or(Value::Null)
}

/// Which PureLB kind an object is, by apiVersion and kind.
fn purelb_kind(object: &Value) -> Option<&str> {
    let api_version = object.get("apiVersion").and_then(Value::as_str)?;
    let kind = object.get("kind").and_then(Value::as_str)?;
    let group = api_version.split('/').next()?;
    (group == "purelb.io").then_some(kind)
}

fn name_of(object: &Value, default_namespace: &str) -> (String, String) {
    let meta = object.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(Value::as_str).unwrap_or("<no name>").to_owned();
    let ns = meta.and_then(|m| m.get("namespace")).and_then(Value::as_str).unwrap_or(default_namespace).to_owned();
    (ns, name)
}

/// The objects of a validation, typed after the schema check.
#[derive(Default)]
struct Typed {
    groups: Vec<(String, ServiceGroup)>,
    agents: Vec<(String, LBNodeAgent)>,
    peers: Vec<(String, BGPPeer)>,
    services: Vec<(String, Service)>,
}

/// Checks one object: schema, then per-object rules. Objects that pass are typed into `typed`.
fn check_object(doc: &Document, namespace: &str, report: &mut Report, typed: &mut Typed) {
    let mut object = doc.object.clone();
    let (ns, name) = name_of(&object, namespace);
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
    let label = if doc.origin.is_empty() {
        format!("{kind} {ns}/{name}")
    } else {
        format!("{kind} {ns}/{name} ({})", doc.origin)
    };
    if let Some(kind) = purelb_kind(&object).map(str::to_owned) {
        let kind = kind.as_str();
        let api_version = object.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_owned();
        if api_version != "purelb.io/v2" {
            report.push(
                Level::Fail,
                &label,
                format!("apiVersion {api_version} is not served: PureLB's resources are purelb.io/v2 (purelb migrate --from purelb converts v1 objects)"),
            );
            return;
        }
        let schema = match kind {
            "ServiceGroup" => schema_of::<ServiceGroup>(),
            "LBNodeAgent" => schema_of::<LBNodeAgent>(),
            "BGPPeer" => schema_of::<BGPPeer>(),
            other => {
                report.push(
                    Level::Fail,
                    &label,
                    format!("purelb.io/v2 has no kind {other}: use ServiceGroup, LBNodeAgent or BGPPeer"),
                );
                return;
            }
        };
        if name == "<no name>" {
            report.push(Level::Fail, &label, "metadata.name: Required value");
            return;
        }
        let checked = schema::validate_custom_resource(&schema, &mut object, None);
        for field in &checked.pruned {
            report.push(
                Level::Warn,
                &label,
                format!("{field}: unknown field, dropped by the API server (kubectl apply refuses it by default): check its spelling in docs/configuration.md"),
            );
        }
        if !checked.errors.is_empty() {
            for e in checked.errors {
                report.push(Level::Fail, &label, e.message);
            }
            return;
        }
        if ns != namespace {
            report.push(
                Level::Warn,
                &label,
                format!("PureLB reads {kind}s only from its install namespace {namespace}: this one is ignored (or pass -n {ns})"),
            );
        }
        let result = match kind {
            "ServiceGroup" => {
                serde_json::from_value::<ServiceGroup>(object).map(|o| typed.groups.push((label.clone(), o)))
            }
            "LBNodeAgent" => {
                serde_json::from_value::<LBNodeAgent>(object).map(|o| typed.agents.push((label.clone(), o)))
            }
            _ => serde_json::from_value::<BGPPeer>(object).map(|o| typed.peers.push((label.clone(), o))),
        };
        if let Err(e) = result {
            report.push(Level::Fail, &label, format!("does not read as a {kind}: {e}"));
        }
        return;
    }
    if object.get("apiVersion").and_then(Value::as_str) == Some("v1") && kind == "Service" {
        match serde_json::from_value::<Service>(object) {
            Ok(svc) => typed.services.push((label, svc)),
            Err(e) => report.push(Level::Fail, &label, format!("does not read as a Service: {e}")),
        }
    }
}

/// Checks the typed objects together (what needs more than one object).
fn check_set(typed: &Typed, namespace: &str, lb_class: &str, report: &mut Report, cluster: bool) {
    let among = if cluster { format!("in namespace {namespace}") } else { "among the checked objects".to_owned() };
    let mine: Vec<&ServiceGroup> = typed
        .groups
        .iter()
        .map(|(_, g)| g)
        .filter(|g| g.metadata.namespace.as_deref().unwrap_or(namespace) == namespace)
        .collect();
    // GroupSet reads the namespace from the objects: files often leave it out.
    let owned: Vec<ServiceGroup> = mine
        .iter()
        .map(|g| {
            let mut g = (*g).clone();
            g.metadata.namespace = Some(namespace.to_owned());
            g
        })
        .collect();
    let set = GroupSet::build(&owned, namespace);
    for (label, group) in &typed.groups {
        let name = group.name_any();
        if group.metadata.namespace.as_deref().unwrap_or(namespace) != namespace {
            continue;
        }
        match set.invalid.get(&name) {
            Some(invalid) => report.push(Level::Fail, label, invalid.message.clone()),
            None => report.push(Level::Pass, label, "valid ServiceGroup"),
        }
    }
    // Namespace scoping: two groups that both claim to be a namespace's default.
    let mut defaults: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for g in set.valid.values().filter(|g| g.namespace_default) {
        for ns in &g.namespaces {
            defaults.entry(ns.as_str()).or_default().push(g.name.as_str());
        }
    }
    for (ns, groups) in defaults.iter().filter(|(_, g)| g.len() > 1) {
        report.push(
            Level::Warn,
            &format!("namespace {ns}"),
            format!(
                "ServiceGroups {} all set namespaceDefault for it; {} is used: keep namespaceDefault on one group",
                groups.join(", "),
                groups[0]
            ),
        );
    }
    for (label, agent) in &typed.agents {
        match AgentConfig::from_spec(Some(agent.name_any()), &agent.spec.local) {
            Ok(_) => report.push(Level::Pass, label, "valid LBNodeAgent"),
            Err(e) => report.push(Level::Fail, label, e.to_string()),
        }
    }
    for (label, peer) in &typed.peers {
        match PeerConfig::from_spec(&peer.name_any(), &peer.spec) {
            Ok(_) => report.push(Level::Pass, label, "valid BGPPeer"),
            Err(e) => report.push(Level::Fail, label, e),
        }
    }
    for (label, svc) in &typed.services {
        let req = ServiceRequest::from_service(svc, lb_class, true);
        if !req.handled {
            continue;
        }
        let mut failed = false;
        for e in &req.errors {
            failed = true;
            report.push(Level::Fail, label, e.to_string());
        }
        if req.deprecated_lb_ip {
            report.push(
                Level::Warn,
                label,
                "spec.loadBalancerIP is deprecated: use the purelb.io/addresses annotation",
            );
        }
        if let Some(group) = &req.group
            && !typed.groups.is_empty()
            && !set.contains(group)
        {
            failed = true;
            report.push(
                Level::Fail,
                label,
                format!("annotation {}: no ServiceGroup {group} {among}", contract::ANNOTATION_SERVICE_GROUP),
            );
        }
        if !typed.groups.is_empty() {
            for ip in &req.pinned {
                if set.containing(*ip).is_none() {
                    failed = true;
                    report.push(
                        Level::Fail,
                        label,
                        format!("annotation {}: {ip} is in no ServiceGroup's ranges", contract::ANNOTATION_ADDRESSES),
                    );
                }
            }
        }
        if !failed {
            report.push(Level::Pass, label, "valid PureLB annotations");
        }
    }
}

/// Validates manifests (offline). `files`: (path, text). Objects without a namespace are taken
/// to be in `namespace`.
#[must_use]
pub fn validate_files(files: &[(String, String)], namespace: &str, lb_class: &str) -> Report {
    let mut report = Report::default();
    let mut typed = Typed::default();
    for (path, text) in files {
        match parse_documents(path, text) {
            Ok(docs) => {
                for doc in &docs {
                    check_object(doc, namespace, &mut report, &mut typed);
                }
            }
            Err(e) => report.push(Level::Fail, path, e),
        }
    }
    check_set(&typed, namespace, lb_class, &mut report, false);
    report
}

fn as_document<K: Serialize + kube::Resource<DynamicType = ()>>(object: &K) -> Document {
    let mut value = serde_json::to_value(object).unwrap_or(Value::Null);
    // Objects read through the typed client carry no apiVersion/kind.
    if let Value::Object(map) = &mut value {
        map.insert("apiVersion".to_owned(), Value::String(K::api_version(&()).into_owned()));
        map.insert("kind".to_owned(), Value::String(K::kind(&()).into_owned()));
        // What the server manages is not the user's to validate.
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            meta.remove("managedFields");
        }
        map.remove("status");
    }
    Document { origin: String::new(), object: value }
}

/// Validates what is in the cluster.
#[must_use]
pub fn validate_cluster(snapshot: &Snapshot, lb_class: &str) -> Report {
    let namespace = snapshot.namespace.as_str();
    let mut report = Report::default();
    let mut typed = Typed::default();
    let docs: Vec<Document> = snapshot
        .groups
        .iter()
        .map(as_document)
        .chain(snapshot.agents.iter().map(as_document))
        .chain(snapshot.peers.iter().map(as_document))
        .chain(snapshot.services.iter().map(as_document))
        .collect();
    for doc in &docs {
        check_object(doc, namespace, &mut report, &mut typed);
    }
    check_set(&typed, namespace, lb_class, &mut report, true);

    let members = Members::from_leases(&snapshot.leases, snapshot.now());
    let set = GroupSet::build(&snapshot.groups, namespace);
    // Local ranges no agent can announce.
    if !members.is_empty() {
        for g in set.valid.values().filter(|g| g.pool_type == PoolType::Local) {
            for r in g.pools.all() {
                let on_some_node = members.iter().any(|m| m.subnets.iter().any(|s| s.contains(r.range.first())));
                if !on_some_node {
                    report.push(
                        Level::Warn,
                        &format!("ServiceGroup {namespace}/{}", g.name),
                        format!(
                            "{}: range {} is on no live agent's subnet ({}): no node can announce its addresses; use a subnet of the nodes' interfaces or a remote group",
                            r.field,
                            r.text,
                            subnets_text(&members)
                        ),
                    );
                }
            }
        }
    }
    // Interface patterns against the interfaces the agents report holding addresses on.
    let reported: BTreeSet<String> = members
        .iter()
        .flat_map(|m| m.holding.iter().filter_map(|h| h.interface.clone()))
        .chain(snapshot.leases.iter().flat_map(|l| {
            parse_announcing(l.annotations().get(contract::LEASE_ANNOTATION_ANNOUNCING).map_or("", String::as_str))
                .into_iter()
                .filter_map(|h| h.interface)
        }))
        .collect();
    for agent in &snapshot.agents {
        let pattern = &agent.spec.local.local_interface;
        if pattern != "default" && !reported.is_empty() && !reported.iter().any(|i| name_matches(pattern, i)) {
            report.push(
                Level::Warn,
                &format!("LBNodeAgent {namespace}/{}", agent.name_any()),
                format!(
                    "spec.local.localInterface {pattern:?} matches none of the interfaces the agents hold addresses on ({}); the agents' ConfigError Events say whether a node has no matching interface",
                    reported.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        if let Some(selector) = &agent.spec.node_selector
            && !snapshot.nodes.iter().any(|n| selector_matches(selector, n.labels()))
        {
            report.push(
                Level::Warn,
                &format!("LBNodeAgent {namespace}/{}", agent.name_any()),
                "spec.nodeSelector matches no Node: it configures nothing",
            );
        }
    }
    for peer in &snapshot.peers {
        let selects = match &peer.spec.node_selector {
            Some(selector) => snapshot.nodes.iter().any(|n| selector_matches(selector, n.labels())),
            None => !snapshot.nodes.is_empty(),
        };
        if !selects {
            report.push(
                Level::Warn,
                &format!("BGPPeer {namespace}/{}", peer.name_any()),
                "spec.nodeSelector matches no Node: no node peers with it",
            );
        }
    }
    let bgp_on = snapshot.leases.iter().any(|l| l.annotations().contains_key(contract::LEASE_ANNOTATION_BGP));
    if bgp_on && snapshot.peers.is_empty() {
        for g in set.valid.values().filter(|g| g.pool_type != PoolType::Local) {
            report.push(
                Level::Warn,
                &format!("ServiceGroup {namespace}/{}", g.name),
                "a remote group while BGP is on, but there is no BGPPeer: its addresses are advertised to nobody; create a BGPPeer (docs/bgp.md)",
            );
        }
    }
    report
}

fn subnets_text(members: &Members) -> String {
    let all: BTreeSet<String> = members.iter().flat_map(|m| m.subnets.iter().map(ToString::to_string)).collect();
    if all.is_empty() { "the agents report none".to_owned() } else { all.into_iter().collect::<Vec<_>>().join(", ") }
}

#[cfg(test)]
mod tests;
