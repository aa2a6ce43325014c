//! The Go PureLB → PureLB. Reads `purelb.io/v1` ServiceGroups and LBNodeAgents (v0.13–v0.14)
//! and the Go `purelb.io/v2` of v0.15–v0.17 (same group and version as ours, other fields).
//!
//! - v1 groups had no local/remote split (the agent decided at run time by whether a node's
//!   interface covered the subnet): `local` when the subnet is on a node (Nodes' addresses or
//!   `--subnet`) and the aggregation is not a host route, else `remote`; the legacy
//!   `subnet`/`pool`/`aggregation` triple → `v4pool`/`v6pool`;
//! - Go v2 groups keep their shape; `multiPool` and `external` have no equivalent (reported;
//!   an `external` group is not converted);
//! - `netbox` needs a `tokenSecretRef` (v1 read the token from the environment): reported;
//! - LBNodeAgents: `localint`/`localInterface` were unanchored Go regular expressions, ours are
//!   anchored: a pattern `P` becomes `.*(?:P).*`; `extlbint` → `dummyInterface`; `sendgarp` /
//!   `garpConfig` → `garp`;
//! - Service annotations keep their names; the class `purelb.io/purelb` of v1 is immutable on a
//!   Service (the report says which Services need `--lb-class purelb.io/purelb`).

use serde_json::{Map, Value, json};

use super::{
    Converted, Input, Options,
    report::{Finding, Level},
    subnets::Chooser,
};
use crate::core::ipam::{AddressRange, Family, Subnet};

fn is(kind: &str, version: &str, v: &Value) -> bool {
    v.get("kind").and_then(Value::as_str) == Some(kind)
        && v.get("apiVersion").and_then(Value::as_str) == Some(&format!("purelb.io/{version}"))
}

/// Converts the Go PureLB's configuration.
#[must_use]
pub fn convert(input: &Input, options: &Options) -> Converted {
    let mut c = Converted::default();
    let chooser = Chooser::new(&options.subnets, &input.nodes);
    let ns = options.namespace.as_str();
    let mut found = false;
    for o in &input.objects {
        let name = super::name_of(o);
        let spec = o.get("spec").cloned().unwrap_or(Value::Null);
        if is("ServiceGroup", "v1", o) {
            found = true;
            if let Some(spec) = group_v1(&name, &spec, &chooser, &mut c.findings) {
                c.objects.push(super::object("ServiceGroup", &name, ns, spec));
            }
        } else if is("ServiceGroup", "v2", o) {
            found = true;
            if let Some(spec) = group_v2(&name, &spec, &mut c.findings) {
                c.objects.push(super::object("ServiceGroup", &name, ns, spec));
            }
        } else if is("LBNodeAgent", "v1", o) || is("LBNodeAgent", "v2", o) {
            found = true;
            let spec = agent(&name, &spec, &mut c.findings);
            c.objects.push(super::object("LBNodeAgent", &name, ns, spec));
        }
    }
    if !found {
        c.findings.push(Finding::new(
            Level::Warning,
            "Go PureLB",
            "no purelb.io/v1 or v2 ServiceGroup or LBNodeAgent found: nothing to convert (is --source-namespace right?)",
        ));
    }
    for svc in &input.services {
        let annotations = svc.metadata.annotations.clone().unwrap_or_default();
        let label = format!(
            "Service {}/{}",
            svc.metadata.namespace.clone().unwrap_or_default(),
            svc.metadata.name.clone().unwrap_or_default()
        );
        for (key, why) in [
            (
                "purelb.io/allow-local",
                "PureLB always honours externalTrafficPolicy: Local (the Go agent rewrote it to Cluster without this annotation)",
            ),
            (
                "purelb.io/multi-pool",
                "multi-pool allocation has no equivalent: the Service keeps the addresses it has, one per family",
            ),
            (
                "purelb.io/node-affinity",
                "PureLB prefers nodes with a ready endpoint only for externalTrafficPolicy: Local Services",
            ),
        ] {
            if annotations.contains_key(key) {
                c.findings.push(Finding::new(Level::Warning, format!("{label}: {key}"), why));
            }
        }
    }
    c
}

fn pool_entry(text: &str, subnet: &str, aggregation: Option<&Value>) -> Value {
    let mut e = json!({"pool": text.trim(), "subnet": subnet.trim()});
    if let Some(a) = aggregation.and_then(Value::as_str).filter(|a| !a.is_empty() && *a != "default") {
        e["aggregation"] = json!(a);
    }
    e
}

fn group_v1(name: &str, spec: &Value, chooser: &Chooser, findings: &mut Vec<Finding>) -> Option<Value> {
    let source = format!("ServiceGroup {name} (v1)");
    if let Some(nb) = spec.get("netbox") {
        findings.push(Finding::new(
            Level::Warning,
            format!("{source}: netbox"),
            "the token moves from the allocator's environment (NETBOX_USER_TOKEN) to a Secret: create Secret purelb-netbox with key token in PureLB's namespace (tokenSecretRef)",
        ));
        let mut out = json!({
            "url": nb.get("url").cloned().unwrap_or(Value::Null),
            "tenant": nb.get("tenant").cloned().unwrap_or(Value::Null),
            "tokenSecretRef": {"name": "purelb-netbox", "key": "token"},
        });
        if let Some(a) = nb.get("aggregation").filter(|a| !a.is_null()) {
            out["aggregation"] = a.clone();
        }
        return Some(json!({"netbox": out}));
    }
    let Some(local) = spec.get("local") else {
        findings.push(Finding::new(Level::Error, &source, "has neither spec.local nor spec.netbox"));
        return None;
    };
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let mut host_route = false;
    let mut on_nodes = true;
    let mut push = |entry: Value, field: &str, findings: &mut Vec<Finding>| {
        let (Some(pool), Some(subnet)) =
            (entry.get("pool").and_then(Value::as_str), entry.get("subnet").and_then(Value::as_str))
        else {
            findings.push(Finding::new(Level::Error, format!("{source}: {field}"), "needs pool and subnet"));
            return;
        };
        let Ok(range) = AddressRange::parse(pool) else {
            findings.push(Finding::new(
                Level::Error,
                format!("{source}: {field}.pool"),
                format!("{pool:?} is not a CIDR or a from-to range"),
            ));
            return;
        };
        if let Some(a) = entry.get("aggregation").and_then(Value::as_str) {
            host_route |= a == "/32" || a == "/128";
        }
        let subnet = Subnet::parse(subnet).ok();
        let choice = chooser.choose(&range, subnet);
        on_nodes &= choice.on_nodes;
        match range.family() {
            Family::V4 => v4.push(entry),
            Family::V6 => v6.push(entry),
        }
    };
    if local.get("pool").is_some() {
        push(
            pool_entry(
                local.get("pool").and_then(Value::as_str).unwrap_or_default(),
                local.get("subnet").and_then(Value::as_str).unwrap_or_default(),
                local.get("aggregation"),
            ),
            "spec.local",
            findings,
        );
    }
    for (key, many) in [("v4pool", false), ("v6pool", false), ("v4pools", true), ("v6pools", true)] {
        let entries: Vec<Value> = match local.get(key) {
            Some(Value::Array(a)) if many => a.clone(),
            Some(v @ Value::Object(_)) if !many => vec![v.clone()],
            _ => continue,
        };
        for (i, e) in entries.iter().enumerate() {
            let entry = pool_entry(
                e.get("pool").and_then(Value::as_str).unwrap_or_default(),
                e.get("subnet").and_then(Value::as_str).unwrap_or_default(),
                e.get("aggregation"),
            );
            push(entry, &format!("spec.local.{key}[{i}]"), findings);
        }
    }
    let remote = host_route || (chooser.knows_nodes() && !on_nodes);
    if !chooser.knows_nodes() && !host_route {
        findings.push(Finding::new(
            Level::Warning,
            &source,
            "v1 decided at run time whether the addresses went on a node's LAN interface or on kube-lb0; with no Node addresses and no --subnet to tell, it is converted as local: make it remote if its subnet is on no node",
        ));
    } else {
        findings.push(Finding::new(
            Level::Info,
            &source,
            if remote {
                "→ remote: its subnet is on no node (or its aggregation is a host route), so v1 put its addresses on kube-lb0"
            } else {
                "→ local: its subnet is on the nodes' LAN, so v1 put its addresses on the LAN interface"
            },
        ));
    }
    let mut pools = Map::new();
    if !v4.is_empty() {
        pools.insert("v4pools".to_owned(), json!(v4));
    }
    if !v6.is_empty() {
        pools.insert("v6pools".to_owned(), json!(v6));
    }
    Some(if remote { json!({"remote": pools}) } else { json!({"local": pools}) })
}

fn group_v2(name: &str, spec: &Value, findings: &mut Vec<Finding>) -> Option<Value> {
    let source = format!("ServiceGroup {name} (Go v2)");
    if spec.get("external").is_some() {
        findings.push(Finding::new(
            Level::Warning,
            format!("{source}: external"),
            "external IPAM (a gRPC sidecar) has no equivalent: the group is not converted; its Services keep their addresses only if another group's ranges contain them (see the Services below)",
        ));
        return None;
    }
    let mut out = spec.clone();
    let Value::Object(map) = &mut out else {
        findings.push(Finding::new(Level::Error, &source, "spec is not an object"));
        return None;
    };
    for kind in ["local", "remote"] {
        if let Some(Value::Object(pool)) = map.get_mut(kind)
            && pool.remove("multiPool").is_some_and(|v| v == json!(true))
        {
            findings.push(Finding::new(
                    Level::Warning,
                    format!("{source}: spec.{kind}.multiPool"),
                    "has no equivalent (one address per range): Services keep the addresses they have; new ones get one per family",
                ));
        }
    }
    if let Some(Value::Object(nb)) = map.get_mut("netbox")
        && !nb.contains_key("tokenSecretRef")
    {
        nb.insert("tokenSecretRef".to_owned(), json!({"name": "purelb-netbox", "key": "token"}));
        findings.push(Finding::new(
            Level::Warning,
            format!("{source}: netbox"),
            "needs a token Secret: create Secret purelb-netbox with key token in PureLB's namespace (tokenSecretRef)",
        ));
    }
    Some(out)
}

/// An unanchored Go pattern as our anchored one (same matches).
fn unanchored(pattern: &str) -> String {
    if pattern.is_empty() || pattern == "default" { "default".to_owned() } else { format!(".*(?:{pattern}).*") }
}

fn agent(name: &str, spec: &Value, findings: &mut Vec<Finding>) -> Value {
    let source = format!("LBNodeAgent {name}");
    let local = spec.get("local").cloned().unwrap_or(json!({}));
    let pattern =
        local.get("localInterface").or_else(|| local.get("localint")).and_then(Value::as_str).unwrap_or("default");
    let mut out = json!({"localInterface": unanchored(pattern)});
    if pattern != "default" && !pattern.is_empty() {
        findings.push(Finding::new(
            Level::Info,
            format!("{source}: localInterface"),
            format!(
                "{pattern:?} matched anywhere in a name (Go); PureLB anchors its patterns: written as {:?}",
                unanchored(pattern)
            ),
        ));
    }
    if let Some(d) = local.get("dummyInterface").or_else(|| local.get("extlbint")).and_then(Value::as_str) {
        out["dummyInterface"] = json!(d);
    }
    if let Some(list) = local.get("interfaces").filter(|v| v.is_array()) {
        out["interfaces"] = list.clone();
    }
    if let Some(g) = local.get("garpConfig") {
        let mut garp = json!({"enabled": g.get("enabled").and_then(Value::as_bool).unwrap_or(true)});
        for key in ["count", "interval", "initialDelay"] {
            if let Some(v) = g.get(key).filter(|v| !v.is_null()) {
                garp[key] = v.clone();
            }
        }
        if g.get("verifyBeforeSend").is_some() {
            findings.push(Finding::new(
                Level::Info,
                format!("{source}: garpConfig.verifyBeforeSend"),
                "PureLB stops a burst when the node stops holding the address; the setting is not needed",
            ));
        }
        out["garp"] = garp;
    } else if let Some(send) = local.get("sendgarp").and_then(Value::as_bool) {
        out["garp"] = json!({"enabled": send});
    } else {
        findings.push(Finding::new(
            Level::Info,
            format!("{source}: garp"),
            "the Go agent sent no gratuitous ARP without garpConfig/sendgarp; PureLB sends 3 on every takeover (set spec.local.garp.enabled: false for the old behaviour)",
        ));
    }
    if let Some(a) = local.get("addressConfig").filter(|v| v.is_object()) {
        out["addressConfig"] = a.clone();
    }
    let mut spec_out = json!({"local": out});
    if let Some(sel) = spec.get("nodeSelector").filter(|v| !v.is_null()) {
        spec_out["nodeSelector"] = sel.clone();
    }
    spec_out
}
