//! `purelb reconcile`: one shot, same decisions as the agent. Lists the cluster once (Services,
//! EndpointSlices, ServiceGroups, LBNodeAgents, this Node, node Leases: one LIST each, no
//! watches), computes what this node should hold with the agent's own code
//! ([`crate::agent::config`], [`crate::agent::decide`]) and removes every PureLB-owned address
//! it should not hold (the agent's ownership rule: PureLB's mark, see
//! [`crate::core::netlink::is_owned`]). `--all` removes every PureLB-owned address and
//! every link PureLB created, without the cluster (uninstall). See `docs/operations.md`.
//!
//! - [`plan`]: the pure decision (what goes and why);
//! - [`report`]: text and JSON output;
//! - entry points: [`run_node`], [`run_all`].
//!
//! The node itself counts as a live, non-draining member with the subnets of its announce
//! interfaces, whatever its own Lease says ([`plan::members_with_self`]), so an init container
//! that runs before the agent never removes an address this node would win once the agent runs.

pub mod plan;
pub mod report;

#[cfg(test)]
mod tests;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::{
        coordination::v1::Lease,
        core::v1::{Node, Service},
        discovery::v1::EndpointSlice,
    },
    jiff::Timestamp,
};
use kube::{
    Api, Client, ResourceExt,
    api::{ListParams, ObjectList},
};
use plan::Plan;
use report::{KeptEntry, LinkEntry, Mode, OrphanEntry, Report};

use crate::{
    agent::{
        config::{self, Config, ConfigError},
        decide,
        lease::LeaseError,
        plan::{Snapshot, Timing},
    },
    api::{LBNodeAgent, ServiceGroup, contract},
    core::{
        endpoints::EndpointIndex,
        ipam::Family,
        netlink::{AddressManager, AddressSnapshot, NetlinkError},
    },
};

/// Exit status of `purelb reconcile --exit-code` when orphans were found (also with
/// `--dry-run`).
pub const EXIT_ORPHANS_FOUND: u8 = 3;

/// What to do.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Install namespace (ServiceGroups, LBNodeAgents, node Leases).
    pub namespace: String,
    /// Only report.
    pub dry_run: bool,
    /// Timeout of every API call.
    pub api_timeout: Duration,
}

/// Why reconcile could not decide or act. Nothing is removed when deciding fails.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A LIST failed.
    #[error("cannot list {what} from the Kubernetes API: {error}; {}", api_hint(error))]
    List {
        /// What was listed.
        what: &'static str,
        /// The client's error (in the message, so not a `source`: the chain would repeat it).
        error: Box<kube::Error>,
    },
    /// A LIST did not answer in time.
    #[error(
        "listing {what} from the Kubernetes API did not answer within {timeout:?}: the API server is \
         unreachable or overloaded; nothing was removed; to remove every PureLB-owned address \
         without API access (uninstall), use --all"
    )]
    Timeout {
        /// What was listed.
        what: &'static str,
        /// The bound.
        timeout: Duration,
    },
    /// `--node-name` names no Node.
    #[error(
        "there is no Node named {node:?} in the cluster; --node-name (NODE_NAME) must name the node \
         this runs on; nothing was removed"
    )]
    NoSuchNode {
        /// The name given.
        node: String,
    },
    /// The LBNodeAgent that selects this node is invalid.
    #[error("{0}; nothing was removed (fix the LBNodeAgent, or use --all to remove every PureLB-owned address)")]
    Config(ConfigError),
    /// The membership table could not be built.
    #[error(transparent)]
    Membership(#[from] LeaseError),
    /// A netlink operation failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
}

fn api_hint(error: &kube::Error) -> &'static str {
    match error {
        kube::Error::Api(status) if status.code == 401 || status.code == 403 => {
            "reconcile needs read access to Services, EndpointSlices, Nodes, ServiceGroups, LBNodeAgents \
             and Leases (the agent's ServiceAccount has it, see docs/rbac.md); nothing was removed"
        }
        kube::Error::Api(_) => "nothing was removed",
        _ => {
            "is the API server reachable? nothing was removed; to remove every PureLB-owned address \
             without API access (uninstall), use --all"
        }
    }
}

async fn list<K>(
    api: Api<K>,
    params: &ListParams,
    what: &'static str,
    timeout: Duration,
) -> Result<Vec<K>, ReconcileError>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    match tokio::time::timeout(timeout, api.list(params)).await {
        Ok(Ok(ObjectList { items, .. })) => Ok(items),
        Ok(Err(error)) => Err(ReconcileError::List { what, error: Box::new(error) }),
        Err(_) => Err(ReconcileError::Timeout { what, timeout }),
    }
}

/// One LIST of everything the agent watches.
struct Cluster {
    services: Vec<Service>,
    slices: Vec<EndpointSlice>,
    groups: Vec<ServiceGroup>,
    agents: Vec<LBNodeAgent>,
    nodes: Vec<Node>,
    leases: Vec<Lease>,
}

async fn list_cluster(client: &Client, settings: &Settings, node: &str) -> Result<Cluster, ReconcileError> {
    let ns = settings.namespace.as_str();
    let t = settings.api_timeout;
    let all = ListParams::default();
    let agent_leases = ListParams::default().labels(&format!(
        "{}={}",
        contract::LABEL_COMPONENT_AGENT.0,
        contract::LABEL_COMPONENT_AGENT.1
    ));
    let this_node = ListParams::default().fields(&format!("metadata.name={node}"));
    let (services, slices, groups, agents, nodes, leases) = futures::try_join!(
        list(Api::<Service>::all(client.clone()), &all, "services", t),
        list(Api::<EndpointSlice>::all(client.clone()), &all, "endpointslices", t),
        list(Api::<ServiceGroup>::namespaced(client.clone(), ns), &all, "servicegroups", t),
        list(Api::<LBNodeAgent>::namespaced(client.clone(), ns), &all, "lbnodeagents", t),
        list(Api::<Node>::all(client.clone()), &this_node, "nodes", t),
        list(Api::<Lease>::namespaced(client.clone(), ns), &agent_leases, "leases", t),
    )?;
    Ok(Cluster { services, slices, groups, agents, nodes, leases })
}

/// The configuration the agent of `node` uses: the LBNodeAgent selecting its labels
/// ([`config::select`]), checked ([`Config::from_spec`]); the built-in defaults when none does.
fn node_config(agents: Vec<LBNodeAgent>, node: &Node) -> Result<Config, ReconcileError> {
    let agents: Vec<Arc<LBNodeAgent>> = agents.into_iter().map(Arc::new).collect();
    let chosen = config::select(&agents, node.labels());
    let source = chosen.map(|a| format!("{}/{}", a.namespace().unwrap_or_default(), a.name_any()));
    let spec = chosen.map_or_else(|| crate::api::LBNodeAgentSpec::default().local, |a| a.spec.local.clone());
    Config::from_spec(source, &spec).map_err(ReconcileError::Config)
}

/// Removes what `plan` says (unless `dry_run`) and reports it.
async fn apply(
    mgr: &AddressManager,
    snapshot: &AddressSnapshot,
    plan: &Plan,
    dry_run: bool,
) -> (Vec<OrphanEntry>, Vec<LinkEntry>) {
    let mut orphans = Vec::with_capacity(plan.orphans.len());
    for orphan in &plan.orphans {
        let mut entry = OrphanEntry::planned(orphan);
        if !dry_run {
            match mgr.delete_listed(&orphan.address, snapshot).await {
                Ok(_) => entry.removed = true,
                Err(error) => entry.error = Some(error.to_string()),
            }
        }
        orphans.push(entry);
    }
    let mut links = Vec::with_capacity(plan.links.len());
    for link in &plan.links {
        let mut entry = LinkEntry::planned(link);
        if link.remove && !dry_run {
            match mgr.delete_created_link(&link.link).await {
                Ok(_) => entry.removed = true,
                Err(error) => entry.error = Some(error.to_string()),
            }
        }
        links.push(entry);
    }
    (orphans, links)
}

/// Reconciles `node` (the node this runs on): lists the cluster, decides with the agent's code
/// and removes the orphans (reports only with `dry_run`).
///
/// # Errors
///
/// [`ReconcileError`] when the cluster cannot be listed, the node or its configuration is
/// unusable, or netlink cannot be read; nothing is removed then. Failed removals are not errors
/// here: they are in the report.
pub async fn run_node(client: &Client, settings: &Settings, node: &str) -> Result<Report, ReconcileError> {
    let cluster = list_cluster(client, settings, node).await?;
    let node_object = cluster
        .nodes
        .iter()
        .find(|n| n.name_any() == node)
        .ok_or_else(|| ReconcileError::NoSuchNode { node: node.to_owned() })?;
    let config = node_config(cluster.agents, node_object)?;
    let mgr = AddressManager::new()?;
    let snapshot = mgr.snapshot().await?;
    let mut default_links = Vec::new();
    if config.local_interface == "default" {
        for family in [Family::V4, Family::V6] {
            default_links.extend(mgr.default_interface(family).await?);
        }
    }
    let announce = config::announce_interfaces(&config, &snapshot.links, &default_links);
    let subnets = config::announce_subnets(&snapshot.addresses, &announce);
    let members = plan::members_with_self(node, &cluster.leases, &subnets, Timestamp::now())?;
    let (groups, ranges) = decide::parse_groups(&cluster.groups);
    let mut endpoints = EndpointIndex::new();
    endpoints.replace_all(&cluster.slices, Instant::now());
    let services: Vec<&Service> = cluster.services.iter().collect();
    tracing::debug!(
        services = cluster.services.len(),
        members = members.len(),
        interfaces = ?announce,
        config = ?config.source,
        "planning"
    );
    let plan = plan::node_plan(&Snapshot {
        node,
        services: &services,
        members: &members,
        endpoints: &endpoints,
        groups: &groups,
        ranges: &ranges,
        kernel: &snapshot,
        announce: &announce,
        dummy_interface: &config.dummy_interface,
        local_options: config.local_options,
        dummy_options: config.dummy_options,
        marks: mgr.mark_support(),
        lease_ok: true,
        draining: false,
        drain_started: None,
        now: Instant::now(),
        timing: Timing {
            lease_duration: Duration::ZERO,
            handover_timeout: Duration::ZERO,
            settle_time: Duration::ZERO,
            quiet_wait: Duration::ZERO,
            race_wait: Duration::ZERO,
        },
    });
    let (orphans, links) = apply(&mgr, &snapshot, &plan, settings.dry_run).await;
    Ok(Report {
        mode: Mode::Node,
        node: Some(node.to_owned()),
        dry_run: settings.dry_run,
        orphans,
        links,
        kept: plan.kept.iter().map(KeptEntry::from_kept).collect(),
    })
}

/// `--all`: removes every PureLB-owned address on every interface and every link PureLB created
/// (reports only with `dry_run`). Uses no cluster access.
///
/// # Errors
///
/// [`ReconcileError::Netlink`] when netlink cannot be read; failed removals are in the report.
pub async fn run_all(settings: &Settings) -> Result<Report, ReconcileError> {
    let mgr = AddressManager::new()?;
    let snapshot = mgr.snapshot().await?;
    let plan = plan::all_plan(&snapshot);
    let (orphans, links) = apply(&mgr, &snapshot, &plan, settings.dry_run).await;
    Ok(Report { mode: Mode::All, node: None, dry_run: settings.dry_run, orphans, links, kept: Vec::new() })
}
