//! Watching a running lab without loading it: the emulator's change log read as it grows (no
//! API request at all, also while the API is down), the nodes' kernel addresses read with one
//! rtnetlink socket per node namespace (a dump costs well under a millisecond), and a sampling
//! loop that feeds both, with the expectation computed from the Services and Leases, into the
//! [`Checker`].
//!
//! Entry points: [`ChangeLog`], [`KernelSampler::open`], [`Sampler::start`].

use std::{
    collections::{BTreeMap, VecDeque},
    io::{Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use purelb::{
    api::ServiceGroup,
    core::netlink::AddressManager,
    k8s_openapi::{
        api::{coordination::v1::Lease, core::v1::Service, discovery::v1::EndpointSlice},
        jiff::Timestamp,
    },
};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::{
    LabError,
    invariants::{Checker, CheckerReport, Expectation, Kernel, KernelAddress, Note, ServiceView, World, expectation},
    netns,
    topology::Topology,
};

type ObjectKey = (String, String);

/// The objects of the resources the checker reads, mirrored from the emulator's append-only
/// change log (`--data-dir`, one JSON line per write: revision, resource, type, object).
#[derive(Debug)]
pub struct ChangeLog {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    services: BTreeMap<ObjectKey, Service>,
    leases: BTreeMap<ObjectKey, Lease>,
    slices: BTreeMap<ObjectKey, EndpointSlice>,
    groups: BTreeMap<ObjectKey, ServiceGroup>,
    /// Revision of the last change read.
    pub revision: u64,
    /// Lines that did not parse (or objects that did not decode).
    pub unreadable: u64,
}

enum Resource {
    Services,
    Leases,
    Slices,
    Groups,
}

fn resource_of(group: &str, plural: &str) -> Option<Resource> {
    match (group, plural) {
        ("", "services") => Some(Resource::Services),
        ("coordination.k8s.io", "leases") => Some(Resource::Leases),
        ("discovery.k8s.io", "endpointslices") => Some(Resource::Slices),
        ("purelb.io", "servicegroups") => Some(Resource::Groups),
        _ => None,
    }
}

fn put<T: serde::de::DeserializeOwned>(
    map: &mut BTreeMap<ObjectKey, T>,
    key: ObjectKey,
    object: Value,
    delete: bool,
) -> bool {
    if delete {
        map.remove(&key);
        return true;
    }
    match serde_json::from_value(object) {
        Ok(typed) => {
            map.insert(key, typed);
            true
        }
        Err(_) => false,
    }
}

impl ChangeLog {
    /// A mirror of the change log at `path` (which may not exist yet).
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            offset: 0,
            partial: Vec::new(),
            services: BTreeMap::new(),
            leases: BTreeMap::new(),
            slices: BTreeMap::new(),
            groups: BTreeMap::new(),
            revision: 0,
            unreadable: 0,
        }
    }

    /// The log file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads what was appended since the last call and applies every complete line; returns
    /// how many lines were applied.
    ///
    /// # Errors
    ///
    /// The file exists but cannot be read.
    pub fn poll(&mut self) -> Result<usize, LabError> {
        let path = self.path.clone();
        let error = |source| LabError::File { action: "read", path: path.clone(), source };
        let mut file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(error(e)),
        };
        let len = file.metadata().map_err(error)?.len();
        if len < self.offset {
            // A new log (another lab run): start over.
            *self = Self::new(path.clone());
        }
        file.seek(SeekFrom::Start(self.offset)).map_err(error)?;
        let mut fresh = Vec::new();
        file.read_to_end(&mut fresh).map_err(error)?;
        self.offset += fresh.len() as u64;
        self.partial.extend_from_slice(&fresh);
        let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') else { return Ok(0) };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        let mut applied = 0;
        for line in complete.split(|b| *b == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)) {
            if self.apply(line) {
                applied += 1;
            } else {
                self.unreadable += 1;
            }
        }
        Ok(applied)
    }

    fn apply(&mut self, line: &[u8]) -> bool {
        let Ok(mut change) = serde_json::from_slice::<Value>(line) else { return false };
        if let Some(rev) = change["rev"].as_u64() {
            self.revision = self.revision.max(rev);
        }
        let group = change["key"][0].as_str().unwrap_or_default().to_owned();
        let plural = change["key"][1].as_str().unwrap_or_default().to_owned();
        let Some(resource) = resource_of(&group, &plural) else { return true };
        let delete = change["type"].as_str() == Some("DELETED");
        let object = change["object"].take();
        let metadata = &object["metadata"];
        let key = (
            metadata["namespace"].as_str().unwrap_or_default().to_owned(),
            metadata["name"].as_str().unwrap_or_default().to_owned(),
        );
        match resource {
            Resource::Services => put(&mut self.services, key, object, delete),
            Resource::Leases => put(&mut self.leases, key, object, delete),
            Resource::Slices => put(&mut self.slices, key, object, delete),
            Resource::Groups => put(&mut self.groups, key, object, delete),
        }
    }

    /// Every Service.
    #[must_use]
    pub fn services(&self) -> Vec<Service> {
        self.services.values().cloned().collect()
    }

    /// Every Lease.
    #[must_use]
    pub fn leases(&self) -> Vec<Lease> {
        self.leases.values().cloned().collect()
    }

    /// Every EndpointSlice.
    #[must_use]
    pub fn slices(&self) -> Vec<EndpointSlice> {
        self.slices.values().cloned().collect()
    }

    /// Every ServiceGroup.
    #[must_use]
    pub fn groups(&self) -> Vec<ServiceGroup> {
        self.groups.values().cloned().collect()
    }
}

/// One rtnetlink socket per node namespace.
pub struct KernelSampler {
    nodes: Vec<(String, AddressManager)>,
}

impl std::fmt::Debug for KernelSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelSampler").field("nodes", &self.nodes.len()).finish_non_exhaustive()
    }
}

impl KernelSampler {
    /// Opens a socket inside every node namespace of `topology` (the socket stays bound to its
    /// namespace). Must run inside a Tokio runtime.
    ///
    /// # Errors
    ///
    /// A namespace cannot be entered or the socket cannot be opened.
    pub fn open(topology: &Topology) -> Result<Self, LabError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| LabError::InNetns {
            netns: topology.prefix.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let mut nodes = Vec::new();
        for host in &topology.nodes {
            let runtime = runtime.clone();
            let manager = netns::in_netns(&host.netns, move || {
                let _entered = runtime.enter();
                AddressManager::new().map_err(std::io::Error::other)
            })?;
            nodes.push((host.name.clone(), manager));
        }
        Ok(Self { nodes })
    }

    /// The addresses of every node (a node whose dump failed is left out).
    pub async fn sample(&self) -> Kernel {
        let dumps = self.nodes.iter().map(|(node, manager)| async move { (node.clone(), manager.addresses().await) });
        futures::future::join_all(dumps)
            .await
            .into_iter()
            .filter_map(|(node, result)| {
                let addresses = result
                    .ok()?
                    .into_iter()
                    .map(|a| KernelAddress {
                        owned: a.has_purelb_mark(),
                        ifname: a.ifname,
                        ip: a.ip,
                        prefix_len: a.prefix_len,
                    })
                    .collect();
                Some((node, addresses))
            })
            .collect()
    }
}

/// One observation of the lab, as the checker saw it.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    /// When (since the run's epoch).
    pub at: Duration,
    /// Kernel addresses by node.
    pub kernel: Kernel,
    /// Who should hold what.
    pub expectation: Expectation,
    /// The Services.
    pub services: Vec<ServiceView>,
}

/// The `renewTime` of each node's agent Lease (`purelb-node-<node>`, held by the node).
fn renewals(leases: &[Lease], nodes: &[String]) -> BTreeMap<String, Timestamp> {
    leases
        .iter()
        .filter_map(|lease| {
            let spec = lease.spec.as_ref()?;
            let node = spec.holder_identity.as_ref()?;
            (nodes.contains(node) && lease.metadata.name.as_deref() == Some(format!("purelb-node-{node}").as_str()))
                .then(|| Some((node.clone(), spec.renew_time.as_ref()?.0)))?
        })
        .collect()
}

/// What the sampler hands back when it stops.
#[derive(Debug)]
pub struct SamplerOutput {
    /// The checker's findings.
    pub report: CheckerReport,
    /// Change-log lines that did not parse.
    pub unreadable: u64,
    /// Errors reading the change log.
    pub log_errors: u64,
}

/// A running sampling loop.
#[derive(Debug)]
pub struct Sampler {
    epoch: Instant,
    notes: mpsc::UnboundedSender<(Duration, Note)>,
    stop: watch::Sender<bool>,
    latest: Arc<Mutex<Arc<Observation>>>,
    violations: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<SamplerOutput>,
}

impl Sampler {
    /// Starts sampling every `period`: reads `log`, dumps the nodes' addresses, computes the
    /// expectation for `nodes` and feeds `checker`. Times are measured from `epoch`.
    #[must_use]
    pub fn start(
        epoch: Instant,
        period: Duration,
        mut log: ChangeLog,
        kernel: KernelSampler,
        nodes: Vec<String>,
        mut checker: Checker,
    ) -> Self {
        let (notes, mut incoming) = mpsc::unbounded_channel::<(Duration, Note)>();
        let (stop, mut stopped) = watch::channel(false);
        let latest = Arc::new(Mutex::new(Arc::new(Observation::default())));
        let violations = Arc::new(AtomicUsize::new(0));
        let (shared, count) = (latest.clone(), violations.clone());
        let task = tokio::spawn(async move {
            let mut pending: VecDeque<(Duration, Note)> = VecDeque::new();
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut log_errors = 0;
            loop {
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = stopped.changed() => break,
                }
                if log.poll().is_err() {
                    log_errors += 1;
                }
                let kernel_now = kernel.sample().await;
                let at = epoch.elapsed();
                while let Ok(note) = incoming.try_recv() {
                    pending.push_back(note);
                }
                while pending.front().is_some_and(|(t, _)| *t <= at) {
                    if let Some((t, note)) = pending.pop_front() {
                        checker.note(t, &note);
                    }
                }
                let services = log.services();
                let (leases, slices) = (log.leases(), log.slices());
                let now = Timestamp::now();
                checker.renewals(at, now, &renewals(&leases, &nodes));
                let world = World { services: &services, leases: &leases, slices: &slices, nodes: &nodes, now };
                let expected = expectation(&world);
                let views: Vec<ServiceView> = services.iter().map(super::invariants::service_view).collect();
                checker.observe(at, &expected, &kernel_now, &views);
                count.store(checker.violations().len(), Ordering::Relaxed);
                let observation = Observation { at, kernel: kernel_now, expectation: expected, services: views };
                *shared.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(observation);
            }
            let at = epoch.elapsed();
            while let Some((t, note)) = pending.pop_front() {
                checker.note(t, &note);
            }
            SamplerOutput { report: checker.report(at), unreadable: log.unreadable, log_errors }
        });
        Self { epoch, notes, stop, latest, violations, task }
    }

    /// Time since the epoch.
    #[must_use]
    pub fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Tells the checker what just happened (timestamped now).
    pub fn note(&self, note: Note) {
        let _ = self.notes.send((self.now(), note));
    }

    /// The latest observation.
    #[must_use]
    pub fn latest(&self) -> Arc<Observation> {
        self.latest.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// A handle readers on other threads can use for [`Sampler::latest`].
    #[must_use]
    pub fn latest_handle(&self) -> Arc<Mutex<Arc<Observation>>> {
        self.latest.clone()
    }

    /// Violations recorded so far.
    #[must_use]
    pub fn violations(&self) -> usize {
        self.violations.load(Ordering::Relaxed)
    }

    /// Stops sampling and returns the findings.
    ///
    /// # Errors
    ///
    /// The sampling task panicked.
    pub async fn stop(self) -> Result<SamplerOutput, LabError> {
        let _ = self.stop.send(true);
        self.task.await.map_err(|e| LabError::InNetns {
            netns: "sampler".to_owned(),
            source: std::io::Error::other(format!("the sampling task failed: {e}")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_change_log_is_mirrored_as_it_grows() {
        let dir = std::env::temp_dir().join(format!("purelb-changelog-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("changes.jsonl");
        let svc = |rev: u64, kind: &str, ip: &str| {
            serde_json::json!({"rev": rev, "key": ["", "services"], "type": kind, "object": {
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "default", "resourceVersion": rev.to_string()},
                "spec": {"type": "LoadBalancer"},
                "status": {"loadBalancer": {"ingress": [{"ip": ip}]}}}})
            .to_string()
        };
        let lease = serde_json::json!({"rev": 3, "key": ["coordination.k8s.io", "leases"], "type": "ADDED",
            "object": {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "purelb-node-n1", "namespace": "purelb-system"}, "spec": {}}})
        .to_string();
        let other = serde_json::json!({"rev": 4, "key": ["", "events"], "type": "ADDED", "object": {}}).to_string();
        std::fs::write(
            &path,
            format!(
                "{}\n{lease}\n{other}\n{}",
                svc(2, "ADDED", "192.0.2.240"),
                &svc(5, "MODIFIED", "192.0.2.241")[..20]
            ),
        )
        .unwrap();
        let mut log = ChangeLog::new(&path);
        assert_eq!(log.poll().unwrap(), 3);
        assert_eq!(log.services().len(), 1);
        assert_eq!(log.leases().len(), 1);
        assert_eq!(log.revision, 4);
        // The rest of the half-written line arrives.
        let full = svc(5, "MODIFIED", "192.0.2.241");
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(
            &mut file,
            format!("{}\n{}\n", &full[20..], svc(6, "DELETED", "192.0.2.241")).as_bytes(),
        )
        .unwrap();
        assert_eq!(log.poll().unwrap(), 2);
        assert!(log.services().is_empty());
        assert_eq!((log.revision, log.unreadable), (6, 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
