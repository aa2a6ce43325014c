//! MetalLB → PureLB. Reads `metallb.io` IPAddressPool, L2Advertisement, BGPAdvertisement,
//! BGPPeer (`v1beta1`/`v1beta2`), BFDProfile and Community objects, or the legacy ConfigMap
//! (`config` key: `address-pools`, `peers`, `bgp-communities`, `bfd-profiles`); and the Services'
//! `metallb.universe.tf/*` and `metallb.io/*` annotations.
//!
//! Mapping (each choice is also written in `docs/migration.md`):
//! - a pool → a ServiceGroup of the same name: `local` when an L2Advertisement covers it,
//!   `remote` when only a BGPAdvertisement does (both: `local`, reported); its `addresses`
//!   entries → `v4pools`/`v6pools`, each with a subnet ([`super::subnets`]);
//! - MetalLB assigns automatically from pools with `autoAssign` (default true); PureLB from the
//!   group named `default` or the groups listing the Service's namespace: the first automatic
//!   pool without namespaces becomes the group `default` (and annotations naming it follow),
//!   `serviceAllocation.namespaces` → `namespaces`; other automatic pools are reported;
//! - a BGPAdvertisement's aggregation lengths, communities and local preference → the remote
//!   group's `aggregation` and `bgp`; BGPPeers (with their BFD profile) → BGPPeers;
//! - L2Advertisement interfaces → an LBNodeAgent `localInterface` pattern;
//! - Service annotations `address-pool`, `loadBalancerIPs`, `allow-shared-ip`,
//!   `ip-allocated-from-pool` → `purelb.io/service-group`, `purelb.io/addresses`,
//!   `purelb.io/allow-shared-ip`, `purelb.io/allocated-from`.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::{Value, json};

use super::{
    Converted, Input, Options,
    report::{Finding, Level},
    subnets::Chooser,
};
use crate::{
    agent::config::selector_matches,
    api::contract,
    core::ipam::{AddressRange, Family, Subnet},
};

const PREFIXES: [&str; 2] = ["metallb.io/", "metallb.universe.tf/"];

#[derive(Clone, Debug, Default)]
struct Pool {
    name: String,
    source: String,
    labels: BTreeMap<String, String>,
    addresses: Vec<String>,
    auto_assign: bool,
    avoid_buggy_ips: bool,
    namespaces: Vec<String>,
    priority: Option<i64>,
    selectors_unconvertible: Vec<String>,
}

#[derive(Clone, Debug, Default)]
struct Advertisement {
    source: String,
    pools: Vec<String>,
    pool_selectors: Vec<LabelSelector>,
    node_selectors: bool,
    interfaces: Vec<String>,
    aggregation_v4: Option<u8>,
    aggregation_v6: Option<u8>,
    local_pref: Option<u32>,
    communities: Vec<String>,
    peers: Vec<String>,
}

impl Advertisement {
    fn covers(&self, pool: &Pool) -> bool {
        if self.pools.is_empty() && self.pool_selectors.is_empty() {
            return true;
        }
        self.pools.contains(&pool.name) || self.pool_selectors.iter().any(|s| selector_matches(s, &pool.labels))
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| s.as_str().map(|s| s.trim().to_owned())).collect())
        .unwrap_or_default()
}

fn selectors(v: Option<&Value>) -> Vec<LabelSelector> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|s| serde_json::from_value(legacy_selector(s)).ok()).collect())
        .unwrap_or_default()
}

/// The legacy ConfigMap spells selectors `match-labels` / `match-expressions`.
fn legacy_selector(v: &Value) -> Value {
    let mut out = v.clone();
    if let Value::Object(map) = &mut out {
        for (from, to) in [("match-labels", "matchLabels"), ("match-expressions", "matchExpressions")] {
            if let Some(x) = map.remove(from) {
                map.insert(to.to_owned(), x);
            }
        }
    }
    out
}

fn is(kind: &str, v: &Value) -> bool {
    v.get("kind").and_then(Value::as_str) == Some(kind)
        && v.get("apiVersion").and_then(Value::as_str).is_some_and(|a| a.starts_with("metallb.io/"))
}

fn labels(v: &Value) -> BTreeMap<String, String> {
    v.pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned()))).collect())
        .unwrap_or_default()
}

struct Sources {
    pools: Vec<Pool>,
    l2: Vec<Advertisement>,
    bgp: Vec<Advertisement>,
    /// (source label, spec in the CRD spelling)
    peers: Vec<(String, String, Value)>,
    bfd: BTreeMap<String, Value>,
    communities: BTreeMap<String, String>,
}

fn read_crs(input: &Input, out: &mut Sources) {
    for o in &input.objects {
        let name = super::name_of(o);
        let spec = o.get("spec").cloned().unwrap_or(Value::Null);
        if is("IPAddressPool", o) {
            let alloc = spec.get("serviceAllocation");
            let mut unconvertible = Vec::new();
            if alloc
                .and_then(|a| a.get("namespaceSelectors"))
                .is_some_and(|s| s.as_array().is_some_and(|a| !a.is_empty()))
            {
                unconvertible.push("spec.serviceAllocation.namespaceSelectors".to_owned());
            }
            if alloc
                .and_then(|a| a.get("serviceSelectors"))
                .is_some_and(|s| s.as_array().is_some_and(|a| !a.is_empty()))
            {
                unconvertible.push("spec.serviceAllocation.serviceSelectors".to_owned());
            }
            out.pools.push(Pool {
                source: format!("IPAddressPool {name}"),
                labels: labels(o),
                addresses: strings(spec.get("addresses")),
                auto_assign: spec.get("autoAssign").and_then(Value::as_bool).unwrap_or(true),
                avoid_buggy_ips: spec.get("avoidBuggyIPs").and_then(Value::as_bool).unwrap_or(false),
                namespaces: strings(alloc.and_then(|a| a.get("namespaces"))),
                priority: alloc.and_then(|a| a.get("priority")).and_then(Value::as_i64),
                selectors_unconvertible: unconvertible,
                name,
            });
        } else if is("L2Advertisement", o) {
            out.l2.push(Advertisement {
                source: format!("L2Advertisement {name}"),
                pools: strings(spec.get("ipAddressPools")),
                pool_selectors: selectors(spec.get("ipAddressPoolSelectors")),
                node_selectors: spec.get("nodeSelectors").and_then(Value::as_array).is_some_and(|a| !a.is_empty()),
                interfaces: strings(spec.get("interfaces")),
                ..Advertisement::default()
            });
        } else if is("BGPAdvertisement", o) {
            let len = |k: &str| spec.get(k).and_then(Value::as_u64).and_then(|n| u8::try_from(n).ok());
            out.bgp.push(Advertisement {
                source: format!("BGPAdvertisement {name}"),
                pools: strings(spec.get("ipAddressPools")),
                pool_selectors: selectors(spec.get("ipAddressPoolSelectors")),
                node_selectors: spec.get("nodeSelectors").and_then(Value::as_array).is_some_and(|a| !a.is_empty()),
                aggregation_v4: len("aggregationLength"),
                aggregation_v6: len("aggregationLengthV6"),
                local_pref: spec.get("localPref").and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok()),
                communities: strings(spec.get("communities")),
                peers: strings(spec.get("peers")),
                ..Advertisement::default()
            });
        } else if is("BGPPeer", o) {
            out.peers.push((format!("BGPPeer {name}"), name, spec));
        } else if is("BFDProfile", o) {
            out.bfd.insert(name, spec);
        } else if is("Community", o) {
            for c in spec.get("communities").and_then(Value::as_array).into_iter().flatten() {
                if let (Some(n), Some(v)) =
                    (c.get("name").and_then(Value::as_str), c.get("value").and_then(Value::as_str))
                {
                    out.communities.insert(n.to_owned(), v.to_owned());
                }
            }
        }
    }
}

/// The legacy format: a ConfigMap (usually `metallb-system/config`) whose `config` key holds YAML.
fn read_legacy(input: &Input, out: &mut Sources, findings: &mut Vec<Finding>) {
    for o in &input.objects {
        if o.get("kind").and_then(Value::as_str) != Some("ConfigMap") {
            continue;
        }
        let Some(text) = o.pointer("/data/config").and_then(Value::as_str) else { continue };
        let cm = format!("ConfigMap {}", super::name_of(o));
        let config: Value = match serde_yaml_ng::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                findings.push(Finding::new(Level::Error, &cm, format!("data.config is not YAML: {e}")));
                continue;
            }
        };
        for (alias, value) in config.get("bgp-communities").and_then(Value::as_object).into_iter().flatten() {
            if let Some(v) = value.as_str() {
                out.communities.insert(alias.clone(), v.to_owned());
            }
        }
        for p in config.get("bfd-profiles").and_then(Value::as_array).into_iter().flatten() {
            let name = p.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
            let spec = json!({
                "receiveInterval": p.get("receive-interval"),
                "transmitInterval": p.get("transmit-interval"),
                "detectMultiplier": p.get("detect-multiplier"),
                "echoMode": p.get("echo-mode"),
                "passiveMode": p.get("passive-mode"),
                "minimumTtl": p.get("minimum-ttl"),
            });
            out.bfd.insert(name, spec);
        }
        for (i, p) in config.get("peers").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let name = p.get("name").and_then(Value::as_str).map_or_else(|| format!("peer-{}", i + 1), str::to_owned);
            let spec = json!({
                "peerAddress": p.get("peer-address"),
                "peerASN": p.get("peer-asn"),
                "myASN": p.get("my-asn"),
                "sourceAddress": p.get("source-address"),
                "peerPort": p.get("peer-port"),
                "holdTime": p.get("hold-time"),
                "keepaliveTime": p.get("keepalive-time"),
                "routerID": p.get("router-id"),
                "password": p.get("password"),
                "bfdProfile": p.get("bfd-profile"),
                "ebgpMultiHop": p.get("ebgp-multihop"),
                "nodeSelectors": p.get("node-selectors").and_then(Value::as_array)
                    .map(|a| a.iter().map(legacy_selector).collect::<Vec<_>>()),
            });
            out.peers.push((format!("{cm}: peers[{i}]"), name, strip_nulls(spec)));
        }
        for (i, p) in config.get("address-pools").and_then(Value::as_array).into_iter().flatten().enumerate() {
            let name = p.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
            let protocol = p.get("protocol").and_then(Value::as_str).unwrap_or("layer2").to_owned();
            let pool = Pool {
                source: format!("{cm}: address-pools[{i}] ({name})"),
                labels: BTreeMap::new(),
                addresses: strings(p.get("addresses")),
                auto_assign: p.get("auto-assign").and_then(Value::as_bool).unwrap_or(true),
                avoid_buggy_ips: p.get("avoid-buggy-ips").and_then(Value::as_bool).unwrap_or(false),
                namespaces: Vec::new(),
                priority: None,
                selectors_unconvertible: Vec::new(),
                name: name.clone(),
            };
            if protocol == "bgp" {
                let advs = p.get("bgp-advertisements").and_then(Value::as_array).cloned().unwrap_or_default();
                let advs = if advs.is_empty() { vec![json!({})] } else { advs };
                for (j, a) in advs.iter().enumerate() {
                    let len = |k: &str| a.get(k).and_then(Value::as_u64).and_then(|n| u8::try_from(n).ok());
                    out.bgp.push(Advertisement {
                        source: format!("{cm}: address-pools[{i}].bgp-advertisements[{j}]"),
                        pools: vec![name.clone()],
                        aggregation_v4: len("aggregation-length"),
                        aggregation_v6: len("aggregation-length-v6"),
                        local_pref: a.get("localpref").and_then(Value::as_u64).and_then(|n| u32::try_from(n).ok()),
                        communities: strings(a.get("communities")),
                        ..Advertisement::default()
                    });
                }
            } else if protocol == "layer2" {
                out.l2.push(Advertisement {
                    source: format!("{cm}: address-pools[{i}]"),
                    pools: vec![name.clone()],
                    ..Advertisement::default()
                });
            } else {
                findings.push(Finding::new(
                    Level::Error,
                    &pool.source,
                    format!("protocol {protocol:?} is not layer2 or bgp"),
                ));
            }
            out.pools.push(pool);
        }
    }
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(map) => Value::Object(map.into_iter().filter(|(_, v)| !v.is_null()).collect()),
        other => other,
    }
}

/// Converts MetalLB's configuration.
#[must_use]
pub fn convert(input: &Input, options: &Options) -> Converted {
    let mut c = Converted::default();
    let mut src = Sources {
        pools: Vec::new(),
        l2: Vec::new(),
        bgp: Vec::new(),
        peers: Vec::new(),
        bfd: BTreeMap::new(),
        communities: BTreeMap::new(),
    };
    read_crs(input, &mut src);
    read_legacy(input, &mut src, &mut c.findings);
    if src.pools.is_empty() {
        c.findings.push(Finding::new(
            Level::Warning,
            "MetalLB",
            "no IPAddressPool and no legacy ConfigMap address-pools found: nothing to convert (is --source-namespace right?)",
        ));
    }
    let chooser = Chooser::new(&options.subnets, &input.nodes);
    let ns = options.namespace.as_str();

    // Which pool becomes `default`: the first automatic pool without namespaces, by priority.
    let mut automatic: Vec<&Pool> = src.pools.iter().filter(|p| p.auto_assign && p.namespaces.is_empty()).collect();
    automatic.sort_by_key(|p| p.priority.unwrap_or(i64::MAX));
    let names: BTreeSet<&str> = src.pools.iter().map(|p| p.name.as_str()).collect();
    let mut rename: BTreeMap<String, String> = src.pools.iter().map(|p| (p.name.clone(), p.name.clone())).collect();
    if let Some(first) = automatic.first()
        && first.name != "default"
    {
        if names.contains("default") {
            c.findings.push(Finding::new(
                Level::Warning,
                &first.source,
                "MetalLB assigns from this pool automatically, but another pool is named default: PureLB assigns automatically only from the group named default (or groups listing the namespace); Services without purelb.io/service-group will use the group default",
            ));
        } else {
            rename.insert(first.name.clone(), "default".to_owned());
            c.findings.push(Finding::new(
                Level::Info,
                &first.source,
                "becomes ServiceGroup default: MetalLB assigns from it automatically, PureLB from the group named default; annotations naming the pool name the group default",
            ));
        }
    }
    for extra in automatic.iter().skip(1) {
        c.findings.push(Finding::new(
            Level::Warning,
            &extra.source,
            format!(
                "MetalLB may also assign from this pool automatically (autoAssign); PureLB assigns automatically only from {}: Services that should get addresses from it need purelb.io/service-group: {}",
                rename.get(&automatic[0].name).cloned().unwrap_or_default(),
                extra.name
            ),
        ));
    }

    for pool in &src.pools {
        let group_name = rename.get(&pool.name).cloned().unwrap_or_else(|| pool.name.clone());
        let l2 = src.l2.iter().any(|a| a.covers(pool));
        let bgp: Vec<&Advertisement> = src.bgp.iter().filter(|a| a.covers(pool)).collect();
        let local = match (l2, bgp.is_empty()) {
            (true, true) => true,
            (false, false) => false,
            (true, false) => {
                c.findings.push(Finding::new(
                    Level::Warning,
                    &pool.source,
                    "advertised over both L2 and BGP: PureLB announces a group one way; converted as a local (L2) group. For routed addresses, make it a remote group",
                ));
                true
            }
            (false, true) => {
                c.findings.push(Finding::new(
                    Level::Warning,
                    &pool.source,
                    "no L2Advertisement or BGPAdvertisement covers this pool (MetalLB assigns its addresses but announces none); converted as a local group",
                ));
                true
            }
        };
        if pool.avoid_buggy_ips {
            c.findings.push(Finding::new(
                Level::Info,
                format!("{}: avoidBuggyIPs", pool.source),
                "PureLB never hands out the network and broadcast addresses of a local IPv4 subnet; other .0 and .255 addresses in the ranges may be handed out: leave them out of the ranges if a client cannot reach them",
            ));
        }
        for field in &pool.selectors_unconvertible {
            c.findings.push(Finding::new(
                Level::Warning,
                format!("{}: {field}", pool.source),
                "has no equivalent: PureLB scopes groups by namespace name (spec.namespaces); Services the selector picked must name the group with purelb.io/service-group",
            ));
        }
        if !pool.namespaces.is_empty() {
            c.findings.push(Finding::new(
                Level::Info,
                format!("{}: serviceAllocation.namespaces", pool.source),
                "→ spec.namespaces: the group is the default for those namespaces; add enforceNamespaces: true to keep other namespaces out, as MetalLB did",
            ));
        }
        let (agg4, agg6) = aggregation(&bgp, pool, &mut c.findings);
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (i, text) in pool.addresses.iter().enumerate() {
            let field = format!("{}: spec.addresses[{i}]", pool.source);
            let range = match AddressRange::parse(text) {
                Ok(r) => r,
                Err(e) => {
                    c.findings.push(Finding::new(
                        Level::Error,
                        &field,
                        format!("{text:?} is not a CIDR or a from-to range ({e:?}): fix the pool"),
                    ));
                    continue;
                }
            };
            let cidr = text.contains('/').then(|| Subnet::parse(text).ok()).flatten();
            let choice = chooser.choose(&range, cidr);
            if let Some(g) = &choice.guessed {
                c.findings.push(Finding::new(Level::Info, &field, format!("subnet {}: {g}", choice.subnet)));
            }
            if local && !choice.on_nodes && chooser.knows_nodes() {
                c.findings.push(Finding::new(
                    Level::Warning,
                    &field,
                    format!(
                        "{text} is on no node's subnet: PureLB announces a local address from a node with an interface on its subnet (MetalLB answered ARP on any interface); pass --subnet, or make the group remote and route it"
                    ),
                ));
            }
            let mut entry = json!({"pool": text.trim(), "subnet": choice.subnet.to_string()});
            match range.family() {
                Family::V4 => {
                    if !local {
                        entry["aggregation"] = json!(format!("/{}", agg4.unwrap_or(32)));
                    }
                    v4.push(entry);
                }
                Family::V6 => {
                    if !local {
                        entry["aggregation"] = json!(format!("/{}", agg6.unwrap_or(128)));
                    }
                    v6.push(entry);
                }
            }
        }
        let mut pools = json!({});
        if !v4.is_empty() {
            pools["v4pools"] = json!(v4);
        }
        if !v6.is_empty() {
            pools["v6pools"] = json!(v6);
        }
        if !local && let Some(b) = bgp_settings(&bgp, &src.communities, pool, &mut c.findings) {
            pools["bgp"] = b;
        }
        let mut spec = if local { json!({"local": pools}) } else { json!({"remote": pools}) };
        if !pool.namespaces.is_empty() {
            spec["namespaces"] = json!(pool.namespaces);
        }
        c.objects.push(super::object("ServiceGroup", &group_name, ns, spec));
    }
    // Several groups listing one namespace: MetalLB's priority decides, PureLB's namespaceDefault.
    let mut by_ns: BTreeMap<&str, Vec<&Pool>> = BTreeMap::new();
    for p in src.pools.iter().filter(|p| p.auto_assign) {
        for n in &p.namespaces {
            by_ns.entry(n.as_str()).or_default().push(p);
        }
    }
    for (namespace, mut pools) in by_ns.into_iter().filter(|(_, p)| p.len() > 1) {
        pools.sort_by_key(|p| p.priority.unwrap_or(i64::MAX));
        let first = rename.get(&pools[0].name).cloned().unwrap_or_default();
        if let Some(o) = c.objects.iter_mut().find(|o| super::name_of(o) == first) {
            o["spec"]["namespaceDefault"] = json!(true);
        }
        c.findings.push(Finding::new(
            Level::Info,
            format!("namespace {namespace}"),
            format!("several pools serve it; {first} (best serviceAllocation.priority) gets namespaceDefault: true"),
        ));
    }

    l2_agent(&src.l2, ns, &mut c);
    for (source, name, spec) in &src.peers {
        if let Some(peer) = peer(source, name, spec, &src.bfd, &mut c.findings) {
            c.objects.push(super::object("BGPPeer", name, ns, peer));
        }
    }
    for adv in src.bgp.iter().filter(|a| !a.peers.is_empty() || a.node_selectors) {
        c.findings.push(Finding::new(
            Level::Warning,
            &adv.source,
            "peers / nodeSelectors have no equivalent: PureLB advertises every remote group to every BGPPeer selecting the node; restrict peers with the BGPPeer's nodeSelector",
        ));
    }
    services(input, &rename, &mut c);
    c
}

/// The aggregation lengths of a remote pool (the first covering advertisement's; others that
/// differ are reported).
fn aggregation(bgp: &[&Advertisement], pool: &Pool, findings: &mut Vec<Finding>) -> (Option<u8>, Option<u8>) {
    let first = bgp.first().map(|a| (a.aggregation_v4, a.aggregation_v6));
    if bgp.iter().skip(1).any(|a| Some((a.aggregation_v4, a.aggregation_v6)) != first) {
        findings.push(Finding::new(
            Level::Warning,
            &pool.source,
            "covered by several BGPAdvertisements with different aggregation lengths: PureLB has one per range; the first one's is used",
        ));
    }
    first.unwrap_or((None, None))
}

fn bgp_settings(
    bgp: &[&Advertisement],
    aliases: &BTreeMap<String, String>,
    pool: &Pool,
    findings: &mut Vec<Finding>,
) -> Option<Value> {
    let mut communities = Vec::new();
    let mut large = Vec::new();
    let mut local_pref = None;
    for adv in bgp {
        for c in &adv.communities {
            let value = aliases.get(c).cloned().unwrap_or_else(|| c.clone());
            if let Some(l) = value.strip_prefix("large:") {
                large.push(l.to_owned());
            } else if value.split(':').count() == 2
                || ["no-export", "no-advertise", "no-export-subconfed"].contains(&value.as_str())
            {
                communities.push(value);
            } else {
                findings.push(Finding::new(
                    Level::Error,
                    format!("{}: communities", adv.source),
                    format!(
                        "{c:?} is neither a community (a:b), a large community (large:a:b:c) nor a Community alias"
                    ),
                ));
            }
        }
        if adv.local_pref.is_some() {
            local_pref = local_pref.or(adv.local_pref);
        }
    }
    communities.sort();
    communities.dedup();
    large.sort();
    large.dedup();
    if communities.is_empty() && large.is_empty() && local_pref.is_none() {
        return None;
    }
    let _ = pool;
    let mut b = json!({});
    if !communities.is_empty() {
        b["communities"] = json!(communities);
    }
    if !large.is_empty() {
        b["largeCommunities"] = json!(large);
    }
    if let Some(lp) = local_pref {
        b["localPref"] = json!(lp);
    }
    Some(b)
}

/// L2Advertisement interfaces → one LBNodeAgent. It has a selector matching every node, so it
/// takes precedence over the chart's catch-all `default` LBNodeAgent.
fn l2_agent(l2: &[Advertisement], ns: &str, c: &mut Converted) {
    let mut interfaces: BTreeSet<String> = BTreeSet::new();
    let mut sets: BTreeSet<Vec<String>> = BTreeSet::new();
    for a in l2 {
        if a.node_selectors {
            c.findings.push(Finding::new(
                Level::Warning,
                format!("{}: nodeSelectors", a.source),
                "has no equivalent: PureLB elects among the nodes whose agent has an interface on the address's subnet; keep nodes out by running the agent DaemonSet only where wanted (chart agent.nodeSelector)",
            ));
        }
        if !a.interfaces.is_empty() {
            sets.insert(a.interfaces.clone());
            interfaces.extend(a.interfaces.iter().cloned());
        }
    }
    if interfaces.is_empty() {
        return;
    }
    if sets.len() > 1 {
        c.findings.push(Finding::new(
            Level::Warning,
            "L2Advertisement interfaces",
            "different interfaces per advertisement: PureLB's interface choice is per node, not per pool; the converted LBNodeAgent allows all of them",
        ));
    }
    let pattern = interfaces.iter().map(|i| regex::escape(i)).collect::<Vec<_>>().join("|");
    c.objects.push(super::object(
        "LBNodeAgent",
        "from-metallb",
        ns,
        json!({
            "nodeSelector": {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "Exists"}]},
            "local": {"localInterface": pattern},
        }),
    ));
    c.findings.push(Finding::new(
        Level::Info,
        "L2Advertisement interfaces",
        format!("→ LBNodeAgent from-metallb, localInterface {pattern:?} (its nodeSelector matches every node, so it wins over a catch-all LBNodeAgent)"),
    ));
}

fn duration_ms(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64)
}

fn peer(
    source: &str,
    name: &str,
    spec: &Value,
    bfd: &BTreeMap<String, Value>,
    findings: &mut Vec<Finding>,
) -> Option<Value> {
    let get = |k: &str| spec.get(k).filter(|v| !v.is_null());
    let (Some(address), Some(peer_asn), Some(my_asn)) = (
        get("peerAddress").and_then(Value::as_str),
        get("peerASN").and_then(Value::as_u64),
        get("myASN").and_then(Value::as_u64),
    ) else {
        findings.push(Finding::new(Level::Error, source, "needs peerAddress, peerASN and myASN"));
        return None;
    };
    let mut out = json!({"peerAddress": address, "peerASN": peer_asn, "localASN": my_asn});
    if let Some(s) = get("sourceAddress").and_then(Value::as_str) {
        out["sourceAddress"] = json!(s);
    }
    if let Some(p) = get("peerPort").and_then(Value::as_u64) {
        out["port"] = json!(p);
    }
    for (from, to) in [("holdTime", "holdTime"), ("keepaliveTime", "keepaliveTime")] {
        if let Some(t) = get(from).and_then(Value::as_str) {
            out[to] = json!(t);
        }
    }
    if let Some(m) = get("ebgpMultiHop").and_then(Value::as_bool) {
        out["ebgpMultihop"] = json!(m);
    }
    if let Some(g) = get("enableGracefulRestart").and_then(Value::as_bool) {
        out["gracefulRestart"] = json!(g);
    }
    if let Some(list) = get("nodeSelectors").and_then(Value::as_array) {
        if let Some(first) = list.first() {
            out["nodeSelector"] = first.clone();
        }
        if list.len() > 1 {
            findings.push(Finding::new(
                Level::Warning,
                format!("{source}: nodeSelectors"),
                "several selectors (any matching): PureLB's BGPPeer has one; the first is used, merge the others into it",
            ));
        }
    }
    if let Some(profile) = get("bfdProfile").and_then(Value::as_str) {
        match bfd.get(profile) {
            Some(p) => {
                let rx = duration_ms(p.get("receiveInterval")).unwrap_or(300);
                let tx = duration_ms(p.get("transmitInterval")).unwrap_or(300);
                let mult = p.get("detectMultiplier").and_then(Value::as_u64).unwrap_or(3);
                out["bfd"] = json!({"enabled": true, "minInterval": format!("{}ms", rx.max(tx)), "multiplier": mult});
                for field in ["echoMode", "passiveMode", "minimumTtl", "echoInterval"] {
                    if p.get(field).is_some_and(|v| !v.is_null() && v != &json!(false)) {
                        findings.push(Finding::new(
                            Level::Warning,
                            format!("BFDProfile {profile}: {field}"),
                            "has no equivalent: PureLB's BFD has an interval and a multiplier",
                        ));
                    }
                }
            }
            None => findings.push(Finding::new(
                Level::Error,
                format!("{source}: bfdProfile"),
                format!("names BFDProfile {profile}, which does not exist"),
            )),
        }
    }
    if get("password").is_some() || get("passwordSecret").is_some() {
        out["passwordSecretKey"] = json!(name);
        findings.push(Finding::new(
            Level::Warning,
            format!("{source}: password"),
            format!(
                "PureLB's agent never reads Secrets: put the password in the Secret the chart mounts into BIRD (bgp.passwordSecret) under the key {name:?} (set as passwordSecretKey)"
            ),
        ));
    }
    for (field, why) in [
        ("routerID", "has no equivalent: BIRD picks the router ID from the node's addresses"),
        ("vrf", "has no equivalent: PureLB's sessions run in the node's main routing table"),
        ("dynamicASN", "has no equivalent: set peerASN to the peer's ASN"),
        ("connectTime", "has no equivalent: BIRD retries connections on its own schedule"),
        ("disableMP", "has no equivalent: a session carries the routes of its peer address's family only"),
    ] {
        if get(field).is_some_and(|v| v != &json!(false) && v != &json!("")) {
            findings.push(Finding::new(Level::Warning, format!("{source}: {field}"), why));
        }
    }
    Some(out)
}

fn annotation<'a>(annotations: &'a BTreeMap<String, String>, key: &str) -> Option<&'a String> {
    PREFIXES.iter().find_map(|p| annotations.get(&format!("{p}{key}")))
}

/// MetalLB's Service annotations → PureLB's.
fn services(input: &Input, rename: &BTreeMap<String, String>, c: &mut Converted) {
    for svc in &input.services {
        let annotations = svc.metadata.annotations.clone().unwrap_or_default();
        let ns = svc.metadata.namespace.clone().unwrap_or_default();
        let name = svc.metadata.name.clone().unwrap_or_default();
        let label = format!("Service {ns}/{name}");
        let mut want = BTreeMap::new();
        if let Some(pool) = annotation(&annotations, "address-pool") {
            match rename.get(pool.trim()) {
                Some(group) => {
                    want.insert(contract::ANNOTATION_SERVICE_GROUP.to_owned(), group.clone());
                }
                None => c.findings.push(Finding::new(
                    Level::Error,
                    format!("{label}: address-pool"),
                    format!("names pool {pool:?}, which does not exist: fix the annotation or add the pool"),
                )),
            }
        }
        if let Some(ips) = annotation(&annotations, "loadBalancerIPs") {
            want.insert(
                contract::ANNOTATION_ADDRESSES.to_owned(),
                ips.split(',').map(str::trim).collect::<Vec<_>>().join(","),
            );
        }
        if let Some(key) = annotation(&annotations, "allow-shared-ip") {
            want.insert(contract::ANNOTATION_ALLOW_SHARED_IP.to_owned(), key.clone());
        }
        if let Some(pool) = annotation(&annotations, "ip-allocated-from-pool")
            && let Some(group) = rename.get(pool.trim())
        {
            want.insert(contract::ANNOTATION_ALLOCATED_FROM.to_owned(), group.clone());
        }
        if !want.is_empty() {
            c.annotations.insert((ns, name), want);
        }
    }
}
