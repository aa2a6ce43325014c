//! The network-namespace lab: a small data centre built from Linux network namespaces, with
//! the API emulator, the real `purelb allocator` and one `purelb agent` per node.
//!
//! Topology ([`topology`]): a router namespace `<P>-net` holding the bridge `lab0`
//! (192.0.2.1/24, 2001:db8::1/64, forwarding on), a client `<P>-client` (192.0.2.100) and
//! nodes `<P>-n1` .. `<P>-nN` (192.0.2.11 .., Node objects `n1` ..), each with `eth0` on the
//! bridge, a default route via the router and a pre-created `kube-lb0` bridge. The emulator
//! (`purelb-lab apiserver`, RBAC enforced, `manifests/rbac.yaml` installed) listens on
//! 127.0.0.1 for the root namespace and on 192.0.2.1:6443 inside the lab; the allocator runs
//! in `<P>-net`, each agent in its node, each with its own service-account token.
//!
//! Entry points: [`Lab::start`] (the lab is torn down when the [`Lab`] is dropped, also on
//! panic), [`Lab::open`] / [`Lab::detach`] (the lab outlives the process, for `purelb-lab
//! up`), [`down`] (removes every namespace, link, process and file of a prefix, idempotent).

pub mod bgp;
pub mod capture;
pub mod cluster;
pub mod demo;
pub mod endpoints;
pub mod http;
pub mod invariants;
pub mod netns;
pub mod observer;
pub mod oracle;
pub mod processes;
pub mod scale;
pub mod soak;
pub mod topology;
pub mod workload;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Output,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

pub use endpoints::{Backend, ServiceBackends};
pub use http::HttpReply;
pub use processes::{FoundProcess, ProcessStatus};
use processes::{ManagedProcess, ProcessRecord, ProcessSpec};
use purelb::kube::Client;
use serde::{Deserialize, Serialize};
pub use topology::{Host, Role, Topology};
use topology::{INSTALL_NAMESPACE, METRICS_PORT};

use crate::apiserver::{FailMode, write_kubeconfig};

/// Name of the API emulator process.
pub const APISERVER: &str = "apiserver";
/// Name of the allocator process.
pub const ALLOCATOR: &str = "allocator";
/// The state file in the lab directory.
pub const STATE_FILE: &str = "state.json";
/// The admin kubeconfig in the lab directory (works from the root namespace).
pub const KUBECONFIG_FILE: &str = "kubeconfig";
/// The emulator's data directory inside the lab directory (labs built with
/// [`LabOptions::persist_api`]); it holds the emulator's change log `changes.jsonl`.
pub const API_DATA_DIR: &str = "apiserver-data";
/// The emulator's change log inside [`API_DATA_DIR`].
pub const API_CHANGE_LOG: &str = "changes.jsonl";
/// A directory inside the lab directory for files a test or command writes for the lab's run
/// ([`Lab::scratch_dir`]); it goes with the lab's logs.
pub const SCRATCH_DIR: &str = "scratch";

/// Name of the agent process of `node`.
#[must_use]
pub fn agent_name(node: &str) -> String {
    format!("agent-{node}")
}

/// Name of allocator replica `replica` (1-based): `allocator`, `allocator-2`, ..
#[must_use]
pub fn allocator_name(replica: usize) -> String {
    if replica <= 1 { ALLOCATOR.to_owned() } else { format!("{ALLOCATOR}-{replica}") }
}

/// Whether `name` is an allocator replica's process name.
fn is_allocator(name: &str) -> bool {
    name == ALLOCATOR || name.strip_prefix("allocator-").is_some_and(|n| n.parse::<usize>().is_ok())
}

/// The metrics/health port of a `purelb` process: [`METRICS_PORT`], and the next ports for
/// further allocator replicas (they share the router's namespace).
fn metrics_port_of(name: &str) -> u16 {
    let replica = name.strip_prefix("allocator-").and_then(|n| n.parse::<u16>().ok()).unwrap_or(1);
    METRICS_PORT.saturating_add(replica.saturating_sub(1))
}

/// Name of the HTTP server process of `node`.
#[must_use]
pub fn serve_name(node: &str) -> String {
    format!("serve-{node}")
}

/// The default lab directory for `prefix`: `$TMPDIR/purelb-lab-<prefix>`.
#[must_use]
pub fn default_dir(prefix: &str) -> PathBuf {
    std::env::temp_dir().join(format!("purelb-lab-{prefix}"))
}

/// A binary of this workspace's build, for tests and benches: `<target>/<profile>/<name>` for
/// the first of `profiles` where it exists (`<target>` is `$CARGO_TARGET_DIR`, else the
/// workspace's `target`).
#[must_use]
pub fn built_binary(name: &str, profiles: &[&str]) -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"), PathBuf::from);
    profiles.iter().map(|p| target.join(p).join(name)).find(|p| p.is_file())
}

/// A lab prefix unique to this process: `<stem><pid><tag>`. Also tears down labs named
/// `<stem><pid>…` whose process is gone (a test run that crashed).
#[must_use]
pub fn test_prefix(stem: &str, tag: &str) -> String {
    for netns in netns::list() {
        let Some((prefix, _)) = netns.split_once('-') else { continue };
        let Some(rest) = prefix.strip_prefix(stem) else { continue };
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if !digits.is_empty() && !Path::new(&format!("/proc/{digits}")).exists() {
            let _ = down(prefix, &default_dir(prefix), false);
        }
    }
    format!("{stem}{}{tag}", std::process::id())
}

/// Errors of the lab, each naming what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A lab option is out of range.
    #[error("invalid lab option: {0}")]
    InvalidOption(String),
    /// A command failed.
    #[error("`{command}` failed: {detail}")]
    Command {
        /// The command.
        command: String,
        /// Exit status and stderr.
        detail: String,
    },
    /// A command could not be started.
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// A network namespace could not be entered.
    #[error("cannot enter network namespace {netns}: {source}")]
    EnterNetns {
        /// The namespace.
        netns: String,
        /// Why.
        source: std::io::Error,
    },
    /// Something failed inside a network namespace.
    #[error("in network namespace {netns}: {source}")]
    InNetns {
        /// The namespace.
        netns: String,
        /// Why.
        source: std::io::Error,
    },
    /// A file could not be read or written.
    #[error("cannot {action} {path}: {source}")]
    File {
        /// `read`, `write`, `create`.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The API refused a request.
    #[error("Kubernetes API: cannot {action}: {source}")]
    Api {
        /// What the lab was doing.
        action: String,
        /// The client's error.
        source: Box<purelb::kube::Error>,
    },
    /// A kubeconfig could not be used.
    #[error("cannot use the kubeconfig {path}: {detail}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// Text could not be parsed.
    #[error("cannot parse {what}: {detail}")]
    Parse {
        /// What.
        what: String,
        /// Why.
        detail: String,
    },
    /// Something did not happen in time.
    #[error("{what} did not happen within {timeout:?}{hint}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the lab waited.
        timeout: Duration,
        /// Where to look (log paths), starting with "; " when present.
        hint: String,
    },
    /// No host, node or process of that name.
    #[error("this lab has no {kind} named {name:?}")]
    NoSuch {
        /// `host`, `node` or `process`.
        kind: &'static str,
        /// The name asked for.
        name: String,
    },
    /// An endpoint names a node the lab does not have.
    #[error("this lab has no node named {0:?}")]
    NoSuchHost(String),
    /// A binary was not found.
    #[error("the `{name}` binary was not found (tried {tried}); {hint}")]
    BinaryNotFound {
        /// Binary name.
        name: String,
        /// Paths tried.
        tried: String,
        /// How to get it.
        hint: String,
    },
    /// A process of the lab ended while the lab needed it.
    #[error("{name} stopped ({status}); its log {log} ends with:\n{tail}")]
    ProcessFailed {
        /// Process name.
        name: String,
        /// Its status.
        status: String,
        /// Its log file.
        log: PathBuf,
        /// The last lines of the log.
        tail: String,
    },
    /// An HTTP request from inside the lab failed.
    #[error("GET {target} from {netns}: {detail}")]
    Http {
        /// The namespace it was sent from.
        netns: String,
        /// The URL.
        target: String,
        /// Why.
        detail: String,
    },
}

/// How to build a lab.
#[derive(Clone, Debug)]
pub struct LabOptions {
    /// Prefix of every namespace name (unique per run, so labs can run in parallel).
    pub prefix: String,
    /// Number of nodes (1..=80).
    pub nodes: usize,
    /// Give hosts IPv6 addresses and routes too.
    pub dual_stack: bool,
    /// Lab directory (kubeconfigs, logs, state); default [`default_dir`].
    pub dir: Option<PathBuf>,
    /// The `purelb` binary; default `$PURELB_BIN`, then next to this executable, then the
    /// workspace's `target/{debug,release}`.
    pub purelb_bin: Option<PathBuf>,
    /// The `purelb-lab` binary (runs the emulator and the HTTP servers); default
    /// `$PURELB_LAB_BIN`, then this executable if it is `purelb-lab`, then as for `purelb`.
    pub lab_bin: Option<PathBuf>,
    /// Start `purelb allocator`.
    pub allocator: bool,
    /// Allocator replicas (leader election picks one writer); 1 unless set.
    pub allocators: usize,
    /// Run the emulator with a data directory ([`API_DATA_DIR`]) so that its state survives
    /// [`Lab::restart_apiserver`], and its change log can be read by observers.
    pub persist_api: bool,
    /// Start `purelb agent` on every node.
    pub agents: bool,
    /// Extra arguments for the allocator.
    pub allocator_args: Vec<String>,
    /// Extra arguments for every agent.
    pub agent_args: Vec<String>,
    /// How long `start` waits for the allocator and agents to report ready (or to exit).
    pub ready_timeout: Duration,
    /// Keep the log files when the lab is torn down.
    pub keep_logs: bool,
    /// Install PureLB with Helm's own engine (`charts/purelb` through `scripts/helm-emulator.py`)
    /// instead of applying the CRDs and `manifests/rbac.yaml`: the processes then run with the
    /// chart's CRDs, service accounts, RBAC and default LBNodeAgent.
    pub helm: bool,
    /// Routed announcements ([`bgp`]): FRR on the router, BIRD on every node, the agents with
    /// `--bird-socket`, and the BGPPeer `router`.
    pub bgp: bool,
}

impl LabOptions {
    /// A lab named `prefix` with `nodes` nodes, IPv4 only, allocator and agents on.
    #[must_use]
    pub fn new(prefix: &str, nodes: usize) -> Self {
        Self {
            prefix: prefix.to_owned(),
            nodes,
            dual_stack: false,
            dir: None,
            purelb_bin: None,
            lab_bin: None,
            allocator: true,
            allocators: 1,
            persist_api: false,
            agents: true,
            allocator_args: Vec::new(),
            agent_args: Vec::new(),
            ready_timeout: Duration::from_secs(20),
            keep_logs: false,
            helm: false,
            bgp: false,
        }
    }

    /// Sets dual-stack.
    #[must_use]
    pub fn dual_stack(mut self, on: bool) -> Self {
        self.dual_stack = on;
        self
    }

    /// Sets the lab directory.
    #[must_use]
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = Some(dir.into());
        self
    }

    /// Sets the `purelb` binary.
    #[must_use]
    pub fn purelb_bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.purelb_bin = Some(path.into());
        self
    }

    /// Sets the `purelb-lab` binary.
    #[must_use]
    pub fn lab_bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.lab_bin = Some(path.into());
        self
    }

    /// Whether to start the allocator and the agents.
    #[must_use]
    pub fn purelb(mut self, allocator: bool, agents: bool) -> Self {
        self.allocator = allocator;
        self.agents = agents;
        self
    }

    /// Sets the number of allocator replicas (at least 1 when the allocator runs).
    #[must_use]
    pub fn allocators(mut self, replicas: usize) -> Self {
        self.allocators = replicas.max(1);
        self
    }

    /// Whether the emulator keeps its state in [`API_DATA_DIR`] (see [`LabOptions::persist_api`]).
    #[must_use]
    pub fn persist_api(mut self, on: bool) -> Self {
        self.persist_api = on;
        self
    }

    /// Sets how long `start` waits for readiness.
    #[must_use]
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Keep the logs on teardown.
    #[must_use]
    pub fn keep_logs(mut self, keep: bool) -> Self {
        self.keep_logs = keep;
        self
    }

    /// Install with Helm ([`LabOptions::helm`]).
    #[must_use]
    pub fn helm(mut self, on: bool) -> Self {
        self.helm = on;
        self
    }

    /// Routed announcements with FRR and BIRD ([`LabOptions::bgp`]).
    #[must_use]
    pub fn bgp(mut self, on: bool) -> Self {
        self.bgp = on;
        self
    }
}

/// What the state file records, so that `purelb-lab down`, `serve` and `demo` find a lab
/// another process built.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LabState {
    /// Namespace prefix.
    pub prefix: String,
    /// Number of nodes.
    pub nodes: usize,
    /// Dual-stack.
    pub dual_stack: bool,
    /// Lab directory.
    pub dir: PathBuf,
    /// API URL from the root namespace.
    pub api_url: String,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// The `purelb-lab` binary.
    pub lab_bin: PathBuf,
    /// The `purelb` binary, when found.
    pub purelb_bin: Option<PathBuf>,
    /// Bearer token of each process that talks to the API.
    pub tokens: BTreeMap<String, String>,
    /// The processes.
    pub processes: Vec<ProcessRecord>,
}

/// What a teardown removed.
#[derive(Clone, Debug, Default)]
pub struct TeardownReport {
    /// Processes stopped.
    pub processes: Vec<FoundProcess>,
    /// Namespaces deleted.
    pub namespaces: Vec<String>,
}

/// Whether `name` is a file the lab writes into its directory.
fn is_lab_file(name: &str, with_logs: bool) -> bool {
    let log_owner = |stem: &str| {
        stem == APISERVER
            || is_allocator(stem)
            || ["agent-", "serve-", "bird-", "frr-"].iter().any(|owner| stem.starts_with(owner))
    };
    name == STATE_FILE
        || name == KUBECONFIG_FILE
        || name.ends_with(".kubeconfig")
        || (with_logs && name.strip_suffix(".log").is_some_and(log_owner))
}

/// Whether `name` is a directory the lab makes in its directory and removes with its logs:
/// BIRD's per node (configuration, control socket, passwords) and its Secret stand-in, FRR's,
/// and the scratch directory.
fn is_lab_dir(name: &str) -> bool {
    name == SCRATCH_DIR || name == "frr" || name.starts_with("bird-")
}

fn remove_lab_files(dir: &Path, keep_logs: bool) {
    // The emulator's data goes with the logs (it explains a failed run as well as they do).
    if !keep_logs {
        let data = dir.join(API_DATA_DIR);
        let _ = std::fs::remove_file(data.join(API_CHANGE_LOG));
        let _ = std::fs::remove_dir(data);
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if is_dir && !keep_logs && is_lab_dir(&name) {
                let _ = std::fs::remove_dir_all(entry.path());
            } else if !is_dir && is_lab_file(&name, !keep_logs) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    // Only when empty: never remove what the lab did not write.
    let _ = std::fs::remove_dir(dir);
}

/// Removes every process, namespace (with its links) and file of the lab with `prefix`,
/// also of a crashed run. Idempotent: nothing to remove is not an error.
///
/// # Errors
///
/// A namespace cannot be deleted.
pub fn down(prefix: &str, dir: &Path, keep_logs: bool) -> Result<TeardownReport, LabError> {
    topology::validate_prefix(prefix)?;
    let ids: Vec<(u64, u64)> = netns::lab_namespaces(prefix).iter().filter_map(|n| netns::netns_id(n)).collect();
    let processes = processes::stop_lab_processes(prefix, &ids, Duration::from_secs(2));
    let namespaces = netns::delete_lab_namespaces(prefix)?;
    remove_lab_files(dir, keep_logs);
    Ok(TeardownReport { processes, namespaces })
}

/// The lab's processes plus the duty to tear everything down (unless detached).
struct Resources {
    prefix: String,
    dir: PathBuf,
    processes: Mutex<BTreeMap<String, ManagedProcess>>,
    owned: bool,
    keep_logs: bool,
}

impl Resources {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, ManagedProcess>> {
        self.processes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn teardown(&mut self) -> Result<TeardownReport, LabError> {
        if !self.owned {
            return Ok(TeardownReport::default());
        }
        self.owned = false;
        let panicking = std::thread::panicking();
        let mut killed = Vec::new();
        let logs: Vec<PathBuf> = {
            let mut processes = self.lock();
            for process in processes.values_mut() {
                if let Some(pid) = process.pid() {
                    killed.push(FoundProcess { pid, member: true, command: process.spec.command_line() });
                }
                process.kill();
            }
            processes.values().map(|p| p.log.clone()).collect()
        };
        let keep = self.keep_logs || panicking;
        let report = down(&self.prefix, &self.dir, keep).map(|mut report| {
            killed.append(&mut report.processes);
            report.processes = killed;
            report
        });
        if panicking {
            eprintln!("purelb-lab: lab {} torn down after a panic; its logs:", self.prefix);
            for log in logs.iter().filter(|l| l.exists()) {
                eprintln!("  {}", log.display());
            }
        }
        report
    }
}

impl Drop for Resources {
    fn drop(&mut self) {
        if let Err(error) = self.teardown() {
            eprintln!("purelb-lab: tearing down lab {}: {error}", self.prefix);
        }
    }
}

/// A running lab. Dropping it kills its processes and deletes its namespaces and files (also
/// when a test panics), unless it was [detached](Lab::detach).
pub struct Lab {
    topology: Topology,
    dir: PathBuf,
    api_url: String,
    kubeconfig: PathBuf,
    client: Client,
    tokens: BTreeMap<String, String>,
    lab_bin: PathBuf,
    purelb_bin: Option<PathBuf>,
    resources: Resources,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab").field("prefix", &self.topology.prefix).field("dir", &self.dir).finish_non_exhaustive()
    }
}

fn token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn server_of(kubeconfig: &Path) -> Result<String, LabError> {
    let bad = |detail: String| LabError::Kubeconfig { path: kubeconfig.to_owned(), detail };
    let config = purelb::kube::config::Kubeconfig::read_from(kubeconfig).map_err(|e| bad(e.to_string()))?;
    config
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .and_then(|c| c.server.clone())
        .ok_or_else(|| bad("it names no server".to_owned()))
}

impl Lab {
    /// Builds a lab: removes leftovers of a run with the same prefix, creates the
    /// namespaces, starts the emulator and installs the CRDs, RBAC and Nodes, then starts the
    /// allocator and the agents and waits (up to `ready_timeout`) for each to be ready or to
    /// exit. A `purelb` process that exits (e.g. "not implemented yet") does not make this
    /// fail: see [`Lab::process_status`].
    ///
    /// # Errors
    ///
    /// The network cannot be built, the `purelb-lab` binary is missing, or the emulator does
    /// not come up. Everything created so far is removed again.
    pub async fn start(options: LabOptions) -> Result<Self, LabError> {
        let topology = Topology::new(&options.prefix, options.nodes, options.dual_stack)?;
        let prefix = topology.prefix.clone();
        let dir = options.dir.clone().unwrap_or_else(|| default_dir(&prefix));
        let lab_bin = processes::find_binary(
            "purelb-lab",
            options.lab_bin.as_deref(),
            "PURELB_LAB_BIN",
            "build it with `cargo build -p purelb-e2e`",
        )?;
        let purelb_bin = processes::find_binary(
            "purelb",
            options.purelb_bin.as_deref(),
            "PURELB_BIN",
            "build it with `cargo build -p purelb --bin purelb`",
        );

        down(&prefix, &dir, false)?;
        std::fs::create_dir_all(&dir).map_err(|source| LabError::File {
            action: "create",
            path: dir.clone(),
            source,
        })?;
        let resources = Resources {
            prefix: prefix.clone(),
            dir: dir.clone(),
            processes: Mutex::new(BTreeMap::new()),
            owned: true,
            // Until the lab is up: a failed start keeps the logs its error points to.
            keep_logs: true,
        };
        netns::build(&topology)?;

        let mut tokens = BTreeMap::new();
        for replica in 1..=options.allocators.max(1) {
            tokens.insert(allocator_name(replica), token());
        }
        for node in &topology.nodes {
            tokens.insert(agent_name(&node.name), token());
        }
        let kubeconfig = dir.join(KUBECONFIG_FILE);
        let mut args: Vec<String> = vec![
            "apiserver".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--listen-netns".into(),
            format!("{}={}", topology.router.netns, topology::api_addr_in_lab()),
            "--authorize".into(),
            "rbac".into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
        ];
        if options.persist_api {
            args.extend(["--data-dir".into(), dir.join(API_DATA_DIR).display().to_string()]);
        }
        for (process, token) in &tokens {
            let account = if is_allocator(process) { "purelb-allocator" } else { "purelb-agent" };
            args.push("--token".into());
            args.push(format!("{token}=system:serviceaccount:{INSTALL_NAMESPACE}:{account}"));
        }
        let spec = ProcessSpec { name: APISERVER.into(), netns: None, program: lab_bin.clone(), args };
        let apiserver = ManagedProcess::start(spec, &prefix, dir.join(format!("{APISERVER}.log")))?;
        resources.lock().insert(APISERVER.to_owned(), apiserver);
        wait_for_kubeconfig(&resources, &kubeconfig, Duration::from_secs(15)).await?;
        let api_url = server_of(&kubeconfig)?;
        pin_listen_port(&resources, &api_url);
        let client = cluster::connect(&kubeconfig).await?;
        if options.helm {
            cluster::install(&client, &topology, None).await?;
            cluster::helm_install(&kubeconfig).await?;
        } else {
            cluster::install(&client, &topology, Some(cluster::RBAC_YAML)).await?;
        }

        let found_purelb = purelb_bin.as_ref().ok().cloned();
        let mut lab =
            Self { topology, dir, api_url, kubeconfig, client, tokens, lab_bin, purelb_bin: found_purelb, resources };
        if options.bgp {
            lab.start_routing().await?;
        }
        lab.start_purelb(&options, purelb_bin)?;
        lab.wait_settled(options.ready_timeout).await;
        lab.save_state()?;
        lab.resources.keep_logs = options.keep_logs;
        Ok(lab)
    }

    fn start_purelb(&self, options: &LabOptions, purelb_bin: Result<PathBuf, LabError>) -> Result<(), LabError> {
        let lab_url = format!("http://{}", topology::api_addr_in_lab());
        let mut wanted: Vec<(String, String, Vec<String>)> = Vec::new();
        if options.allocator {
            for replica in 1..=options.allocators.max(1) {
                let mut args = vec!["allocator".to_owned()];
                args.extend(options.allocator_args.iter().cloned());
                wanted.push((allocator_name(replica), self.topology.router.netns.clone(), args));
            }
        }
        if options.agents {
            for node in &self.topology.nodes {
                let mut args = vec![
                    "agent".to_owned(),
                    "--node-name".to_owned(),
                    node.name.clone(),
                    "--pod-uid".to_owned(),
                    uuid::Uuid::new_v4().to_string(),
                    "--pod-name".to_owned(),
                    workload::pod_name(&node.name),
                ];
                if options.bgp {
                    args.extend([
                        "--bird-socket".to_owned(),
                        bgp::bird_socket(&self.dir, &node.name).display().to_string(),
                        "--bird-config".to_owned(),
                        bgp::bird_config(&self.dir, &node.name).display().to_string(),
                    ]);
                }
                args.extend(options.agent_args.iter().cloned());
                wanted.push((agent_name(&node.name), node.netns.clone(), args));
            }
        }
        let mut processes = self.resources.lock();
        for (name, netns, mut args) in wanted {
            let kubeconfig = self.dir.join(format!("{name}.kubeconfig"));
            let token = self.tokens.get(&name).map(String::as_str);
            write_kubeconfig(&kubeconfig, &lab_url, token, INSTALL_NAMESPACE).map_err(|source| LabError::File {
                action: "write",
                path: kubeconfig.clone(),
                source,
            })?;
            args.extend([
                "--kubeconfig".to_owned(),
                kubeconfig.display().to_string(),
                "--namespace".to_owned(),
                INSTALL_NAMESPACE.to_owned(),
                "--metrics-addr".to_owned(),
                format!("0.0.0.0:{}", metrics_port_of(&name)),
            ]);
            let log = self.dir.join(format!("{name}.log"));
            let program = purelb_bin.as_ref().map_or_else(|_| PathBuf::from("purelb"), Clone::clone);
            let spec = ProcessSpec { name: name.clone(), netns: Some(netns), program, args };
            let process = match &purelb_bin {
                Ok(_) => ManagedProcess::start(spec, &self.topology.prefix, log)?,
                Err(error) => ManagedProcess::not_started(spec, &self.topology.prefix, log, error.to_string()),
            };
            processes.insert(name, process);
        }
        drop(processes);
        Ok(())
    }

    /// FRR on the router and BIRD on every node (before the agents), and the BGPPeer `router`.
    async fn start_routing(&self) -> Result<(), LabError> {
        bgp::check_tools()?;
        let file_err = |path: &Path| {
            let path = path.to_owned();
            move |source| LabError::File { action: "write", path, source }
        };
        let router = &self.topology.router;
        netns::set_sysctls(&router.netns, &[("net.ipv4.fib_multipath_hash_policy", "1")])?;
        if self.topology.dual_stack {
            netns::set_sysctls(&router.netns, &[("net.ipv6.fib_multipath_hash_policy", "1")])?;
        }
        let frr = bgp::frr_dir(&self.dir);
        std::fs::create_dir_all(&frr).map_err(file_err(&frr))?;
        for (daemon, text) in bgp::frr_configs(&self.topology, 300, 3) {
            let conf = frr.join(format!("{daemon}.conf"));
            std::fs::write(&conf, text).map_err(file_err(&conf))?;
        }
        // FRR drops to the `frr` user (the package creates it), which must own its directory.
        let chown = std::process::Command::new("chown")
            .args(["-R", "frr:frr"])
            .arg(&frr)
            .output()
            .map_err(|source| LabError::Spawn { command: "chown frr:frr".to_owned(), source })?;
        if !chown.status.success() {
            return Err(LabError::Command {
                command: format!("chown -R frr:frr {}", frr.display()),
                detail: String::from_utf8_lossy(&chown.stderr).into_owned(),
            });
        }
        self.start_routing_daemons(&frr)?;
        self.apply_yaml(&bgp::peer_yaml("300ms", 3)).await?;
        if self.topology.dual_stack {
            self.apply_yaml(&bgp::peer_v6_yaml("300ms", 3)).await?;
            self.apply_yaml(&bgp::routed_dual_group_yaml(
                "routed",
                "203.0.113.10-203.0.113.19",
                "2001:db8:f::10-2001:db8:f::1f",
            ))
            .await?;
        } else {
            self.apply_yaml(&bgp::routed_group_yaml("routed", "203.0.113.10-203.0.113.19")).await?;
        }
        Ok(())
    }

    /// FRR's daemons on the router and BIRD on every node.
    fn start_routing_daemons(&self, frr: &Path) -> Result<(), LabError> {
        let file_err = |path: &Path| {
            let path = path.to_owned();
            move |source| LabError::File { action: "write", path, source }
        };
        let router = &self.topology.router;
        let mut processes = self.resources.lock();
        for daemon in bgp::FRR_DAEMONS {
            let f = frr.display().to_string();
            let args = vec![
                "-u".into(),
                "frr".into(),
                "-g".into(),
                "frr".into(),
                "-P".into(),
                "0".into(),
                "-f".into(),
                format!("{f}/{daemon}.conf"),
                "-i".into(),
                format!("{f}/{daemon}.pid"),
                "-z".into(),
                format!("{f}/zserv.api"),
                "--vty_socket".into(),
                f.clone(),
                "--log".into(),
                "stdout".into(),
            ];
            let name = bgp::frr_name(daemon);
            let spec = ProcessSpec {
                name: name.clone(),
                netns: Some(router.netns.clone()),
                program: Path::new(bgp::FRR_DIR).join(daemon),
                args,
            };
            let process = ManagedProcess::start(spec, &self.topology.prefix, self.dir.join(format!("{name}.log")))?;
            processes.insert(name, process);
            // bgpd and bfdd connect to zebra's socket; BIRD's first connection should find bgpd
            // listening (a refused one costs BIRD's error wait, 1 s doubling): wait for each
            // daemon's vty socket, which it opens once its configuration is read.
            let ready = if daemon == "zebra" { frr.join("zserv.api") } else { frr.join(format!("{daemon}.vty")) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while !ready.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        for node in &self.topology.nodes {
            let dir = bgp::bird_dir(&self.dir, &node.name);
            std::fs::create_dir_all(&dir).map_err(file_err(&dir))?;
            // BIRD is started by the BIRD image's own entrypoint (scripts/bird-entrypoint.sh):
            // the bootstrap configuration and the password snippets are its work, as in a pod.
            let secrets = bgp::bird_secrets(&self.dir);
            std::fs::create_dir_all(&secrets).map_err(file_err(&secrets))?;
            let password = secrets.join(bgp::PASSWORD_KEY);
            std::fs::write(&password, bgp::PASSWORD).map_err(file_err(&password))?;
            let name = bgp::bird_name(&node.name);
            let spec = ProcessSpec {
                name: name.clone(),
                netns: Some(node.netns.clone()),
                program: PathBuf::from("env"),
                args: vec![
                    format!("PURELB_BIRD_DIR={}", dir.display()),
                    format!("PURELB_BIRD_SECRETS={}", secrets.display()),
                    format!("HOST_IP={}", node.ipv4),
                    "sh".into(),
                    bgp::entrypoint().display().to_string(),
                ],
            };
            let process = ManagedProcess::start(spec, &self.topology.prefix, self.dir.join(format!("{name}.log")))?;
            processes.insert(name, process);
        }
        Ok(())
    }

    /// Runs `vtysh -c <command>` against the router's FRR; its output.
    ///
    /// # Errors
    ///
    /// vtysh fails.
    pub fn vtysh(&self, command: &str) -> Result<String, LabError> {
        self.vtysh_run(&[command])
    }

    /// Runs `configure terminal` and then `lines` on the router's FRR.
    ///
    /// # Errors
    ///
    /// vtysh fails.
    pub fn vtysh_config(&self, lines: &[&str]) -> Result<String, LabError> {
        let mut commands = vec!["configure terminal"];
        commands.extend_from_slice(lines);
        self.vtysh_run(&commands)
    }

    /// One vtysh call with `-c` per command.
    fn vtysh_run(&self, commands: &[&str]) -> Result<String, LabError> {
        let mut command = std::process::Command::new("vtysh");
        command.arg("--vty_socket").arg(bgp::frr_dir(&self.dir));
        for c in commands {
            command.args(["-c", c]);
        }
        let shown = format!("vtysh {commands:?}");
        let out = command.output().map_err(|source| LabError::Spawn { command: shown.clone(), source })?;
        if !out.status.success() {
            return Err(LabError::Command {
                command: shown,
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The router's BFD sessions that are up with nodes' IPv4 addresses.
    ///
    /// # Errors
    ///
    /// vtysh fails.
    pub fn bfd_sessions_up(&self) -> Result<usize, LabError> {
        let out = self.vtysh("show bfd peers brief")?;
        Ok(out.lines().filter(|l| l.contains(" 192.0.2.") && l.trim_end().ends_with(" up")).count())
    }

    /// The nodes the router's FIB sends `addr` to (ECMP next hops), by name.
    ///
    /// # Errors
    ///
    /// `ip` fails.
    pub fn routed_via(&self, addr: IpAddr) -> Result<Vec<String>, LabError> {
        let gateways = bgp::fib_nexthops(&self.topology.router.netns, addr)?;
        Ok(bgp::nodes_of(&self.topology, &gateways))
    }

    /// Waits up to `timeout` until every `purelb` process is ready (`/readyz` answers 200)
    /// or no longer running; returns the names of those that are ready.
    pub async fn wait_settled(&self, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<(String, String)> = {
                let mut processes = self.resources.lock();
                processes
                    .iter_mut()
                    .filter(|(name, _)| is_allocator(name) || name.starts_with("agent-"))
                    .filter_map(|(name, p)| {
                        let netns = p.spec.netns.clone()?;
                        p.status().is_running().then(|| (name.clone(), netns))
                    })
                    .collect()
            };
            let mut ready = Vec::new();
            let mut waiting = false;
            for (name, netns) in running {
                let target = SocketAddr::from(([127, 0, 0, 1], metrics_port_of(&name)));
                match http::get(&netns, target, "/readyz", Duration::from_millis(500)).await {
                    Ok(reply) if reply.status == 200 => ready.push(name),
                    _ => waiting = true,
                }
            }
            if !waiting || Instant::now() >= deadline {
                return ready;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Opens a lab another process built and [detached](Lab::detach) (`purelb-lab up`),
    /// from its state file. Dropping the returned `Lab` leaves the lab running.
    ///
    /// # Errors
    ///
    /// There is no readable state file in `dir`, or its kubeconfig cannot be used.
    pub async fn open(dir: &Path) -> Result<Self, LabError> {
        let path = dir.join(STATE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| LabError::File {
            action: "read",
            path: path.clone(),
            source,
        })?;
        let state: LabState = serde_json::from_str(&text)
            .map_err(|e| LabError::Parse { what: path.display().to_string(), detail: e.to_string() })?;
        let topology = Topology::new(&state.prefix, state.nodes, state.dual_stack)?;
        let client = cluster::connect(&state.kubeconfig).await?;
        let processes = state
            .processes
            .into_iter()
            .map(|record| (record.spec.name.clone(), ManagedProcess::adopt(record, &state.prefix)))
            .collect();
        let resources = Resources {
            prefix: state.prefix.clone(),
            dir: state.dir.clone(),
            processes: Mutex::new(processes),
            owned: false,
            keep_logs: true,
        };
        Ok(Self {
            topology,
            dir: state.dir,
            api_url: state.api_url,
            kubeconfig: state.kubeconfig,
            client,
            tokens: state.tokens,
            lab_bin: state.lab_bin,
            purelb_bin: state.purelb_bin,
            resources,
        })
    }

    /// The state to record in the state file.
    #[must_use]
    pub fn state(&self) -> LabState {
        let processes = self.resources.lock().values_mut().map(ManagedProcess::record).collect();
        let purelb_bin = self.purelb_bin.clone();
        LabState {
            prefix: self.topology.prefix.clone(),
            nodes: self.topology.nodes.len(),
            dual_stack: self.topology.dual_stack,
            dir: self.dir.clone(),
            api_url: self.api_url.clone(),
            kubeconfig: self.kubeconfig.clone(),
            lab_bin: self.lab_bin.clone(),
            purelb_bin,
            tokens: self.tokens.clone(),
            processes,
        }
    }

    /// Writes `DIR/state.json`.
    ///
    /// # Errors
    ///
    /// The file cannot be written.
    pub fn save_state(&self) -> Result<(), LabError> {
        let path = self.dir.join(STATE_FILE);
        let text = serde_json::to_string_pretty(&self.state())
            .map_err(|e| LabError::Parse { what: "the lab state".to_owned(), detail: e.to_string() })?;
        let temp = self.dir.join(format!("{STATE_FILE}.tmp"));
        std::fs::write(&temp, text).and_then(|()| std::fs::rename(&temp, &path)).map_err(|source| LabError::File {
            action: "write",
            path,
            source,
        })
    }

    /// Leaves the lab running after this value is dropped (for `purelb-lab up`): the
    /// processes are no longer our children and the state file records them.
    ///
    /// # Errors
    ///
    /// The state file cannot be written (the lab is left running anyway).
    pub fn detach(mut self) -> Result<LabState, LabError> {
        self.resources.owned = false;
        for process in self.resources.lock().values_mut() {
            process.detach();
        }
        self.save_state()?;
        Ok(self.state())
    }

    /// Tears the lab down now (what dropping it does), and says what was removed.
    ///
    /// # Errors
    ///
    /// A namespace cannot be deleted.
    pub fn shutdown(mut self) -> Result<TeardownReport, LabError> {
        self.resources.teardown()
    }

    /// Whether teardown keeps the log files (e.g. after a failure).
    pub fn set_keep_logs(&mut self, keep: bool) {
        self.resources.keep_logs = keep;
    }

    /// The namespace prefix.
    #[must_use]
    pub fn prefix(&self) -> &str {
        &self.topology.prefix
    }

    /// Names and addresses of every host.
    #[must_use]
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// Node names, `n1` first.
    #[must_use]
    pub fn node_names(&self) -> Vec<String> {
        self.topology.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// The lab directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A directory for files a test or command writes for this lab's run (a backup, a plugin
    /// link), made on first use; the lab removes it with its logs, so nothing is left behind.
    ///
    /// # Errors
    ///
    /// The directory cannot be made.
    pub fn scratch_dir(&self) -> std::io::Result<PathBuf> {
        let dir = self.dir.join(SCRATCH_DIR);
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// The admin kubeconfig (token-less, works from the root namespace).
    #[must_use]
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The API URL from the root namespace.
    #[must_use]
    pub fn api_url(&self) -> &str {
        &self.api_url
    }

    /// An admin client.
    #[must_use]
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The bearer token of a process (`allocator`, `agent-n1`, ..).
    #[must_use]
    pub fn token(&self, process: &str) -> Option<&str> {
        self.tokens.get(process).map(String::as_str)
    }

    fn process_token(&self, process: &str) -> Result<&str, LabError> {
        self.token(process).ok_or_else(|| LabError::NoSuch { kind: "process", name: process.to_owned() })
    }

    /// The `purelb-lab` binary the lab runs.
    #[must_use]
    pub fn lab_bin(&self) -> &Path {
        &self.lab_bin
    }

    /// The `purelb` binary the lab runs, if it was found.
    #[must_use]
    pub fn purelb_bin(&self) -> Option<&Path> {
        self.purelb_bin.as_deref()
    }

    /// Every process and its status, by name.
    #[must_use]
    pub fn process_status(&self) -> Vec<(String, ProcessStatus)> {
        self.resources.lock().iter_mut().map(|(name, p)| (name.clone(), p.status())).collect()
    }

    /// The status of one process.
    ///
    /// # Errors
    ///
    /// No process has that name.
    pub fn status_of(&self, name: &str) -> Result<ProcessStatus, LabError> {
        self.with_process(name, ManagedProcess::status)
    }

    /// Log files, by process name.
    #[must_use]
    pub fn log_paths(&self) -> Vec<(String, PathBuf)> {
        self.resources.lock().iter().map(|(name, p)| (name.clone(), p.log.clone())).collect()
    }

    /// The last `lines` lines of a process's log.
    ///
    /// # Errors
    ///
    /// No process has that name.
    pub fn log_tail(&self, name: &str, lines: usize) -> Result<String, LabError> {
        self.with_process(name, |p| p.log_tail(lines))
    }

    fn with_process<T>(&self, name: &str, f: impl FnOnce(&mut ManagedProcess) -> T) -> Result<T, LabError> {
        let mut processes = self.resources.lock();
        let process =
            processes.get_mut(name).ok_or_else(|| LabError::NoSuch { kind: "process", name: name.to_owned() })?;
        Ok(f(process))
    }

    /// Kills a process with SIGKILL (a crash) and waits for it to end.
    ///
    /// # Errors
    ///
    /// No process has that name.
    pub fn kill(&self, name: &str) -> Result<ProcessStatus, LabError> {
        self.with_process(name, ManagedProcess::kill)
    }

    /// Stops a process with SIGTERM (a graceful shutdown), killing it after `grace`.
    ///
    /// # Errors
    ///
    /// No process has that name.
    pub fn terminate(&self, name: &str, grace: Duration) -> Result<ProcessStatus, LabError> {
        self.with_process(name, |p| p.terminate(grace))
    }

    /// Kills a process if it runs and starts it again with the same command line (the log
    /// continues).
    ///
    /// # Errors
    ///
    /// No process has that name, or it cannot be started.
    pub fn restart(&self, name: &str) -> Result<(), LabError> {
        self.with_process(name, ManagedProcess::restart)?
    }

    /// Kills the agent of `node` with SIGKILL.
    ///
    /// # Errors
    ///
    /// No such agent.
    pub fn kill_agent(&self, node: &str) -> Result<ProcessStatus, LabError> {
        self.kill(&agent_name(node))
    }

    /// Stops the agent of `node` with SIGTERM (graceful handover), killing it after `grace`.
    ///
    /// # Errors
    ///
    /// No such agent.
    pub fn terminate_agent(&self, node: &str, grace: Duration) -> Result<ProcessStatus, LabError> {
        self.terminate(&agent_name(node), grace)
    }

    /// Restarts the agent of `node`.
    ///
    /// # Errors
    ///
    /// No such agent, or it cannot be started.
    pub fn restart_agent(&self, node: &str) -> Result<(), LabError> {
        self.restart(&agent_name(node))
    }

    /// Starts the agent of `node` again as a new pod would (a new `--pod-uid`), killing the
    /// old process if it still runs.
    ///
    /// # Errors
    ///
    /// No such agent, or it cannot be started.
    pub fn replace_agent(&self, node: &str) -> Result<(), LabError> {
        self.with_process(&agent_name(node), |p| {
            p.set_arg("--pod-uid", &uuid::Uuid::new_v4().to_string());
            p.restart()
        })?
    }

    /// Names of the allocator replicas the lab started (`allocator`, `allocator-2`, ..).
    #[must_use]
    pub fn allocator_names(&self) -> Vec<String> {
        self.resources.lock().keys().filter(|n| is_allocator(n)).cloned().collect()
    }

    /// Waits up to `timeout` until the `purelb` process `name` answers `/readyz` with 200;
    /// returns whether it did.
    pub async fn wait_ready(&self, name: &str, timeout: Duration) -> bool {
        let Some(netns) = self.resources.lock().get(name).and_then(|p| p.spec.netns.clone()) else { return false };
        let target = SocketAddr::from(([127, 0, 0, 1], metrics_port_of(name)));
        wait_for(timeout, || {
            let netns = netns.clone();
            async move {
                let reply = http::get(&netns, target, "/readyz", Duration::from_millis(500)).await.ok()?;
                (reply.status == 200).then_some(())
            }
        })
        .await
        .is_some()
    }

    /// Restarts the API emulator (SIGKILL, then the same command line: the same port and, for a
    /// lab built with [`LabOptions::persist_api`], the same data) and waits up to `timeout`
    /// until it answers again. Returns how long it was unreachable.
    ///
    /// # Errors
    ///
    /// It cannot be started, or does not answer within `timeout`.
    pub async fn restart_apiserver(&self, timeout: Duration) -> Result<Duration, LabError> {
        let started = Instant::now();
        self.restart(APISERVER)?;
        if self.wait_api(timeout).await {
            Ok(started.elapsed())
        } else {
            Err(LabError::Timeout {
                what: "the restarted API emulator answering".to_owned(),
                timeout,
                hint: format!("; see {}", self.dir.join(format!("{APISERVER}.log")).display()),
            })
        }
    }

    /// Waits up to `timeout` until the API answers `/version`; returns whether it did.
    pub async fn wait_api(&self, timeout: Duration) -> bool {
        wait_for(timeout, || async {
            let request = ::http::Request::get("/version").body(Vec::new()).ok()?;
            let probe = self.client.request_text(request);
            tokio::time::timeout(Duration::from_secs(2), probe).await.ok()?.ok().map(|_| ())
        })
        .await
        .is_some()
    }

    /// Kills the allocator with SIGKILL.
    ///
    /// # Errors
    ///
    /// The lab runs no allocator.
    pub fn kill_allocator(&self) -> Result<ProcessStatus, LabError> {
        self.kill(ALLOCATOR)
    }

    /// Stops the allocator with SIGTERM, killing it after `grace`.
    ///
    /// # Errors
    ///
    /// The lab runs no allocator.
    pub fn terminate_allocator(&self, grace: Duration) -> Result<ProcessStatus, LabError> {
        self.terminate(ALLOCATOR, grace)
    }

    /// Restarts the allocator.
    ///
    /// # Errors
    ///
    /// The lab runs no allocator, or it cannot be started.
    pub fn restart_allocator(&self) -> Result<(), LabError> {
        self.restart(ALLOCATOR)
    }

    async fn post_fault(&self, body: serde_json::Value) -> Result<(), LabError> {
        let action = format!("set fault {body}");
        let request = ::http::Request::post("/_emulator/faults")
            .header(::http::header::CONTENT_TYPE, "application/json")
            .body(body.to_string().into_bytes())
            .map_err(|e| LabError::Parse { what: action.clone(), detail: e.to_string() })?;
        self.client.request_text(request).await.map_err(|source| LabError::Api { action, source: Box::new(source) })?;
        Ok(())
    }

    /// How often the emulator's faults actually struck so far (`/_emulator/state`): fault
    /// tests assert that their fault happened.
    ///
    /// # Errors
    ///
    /// The emulator does not answer.
    pub async fn injected(&self) -> Result<crate::apiserver::Injected, LabError> {
        let action = "read /_emulator/state".to_owned();
        let request = ::http::Request::get("/_emulator/state")
            .body(Vec::new())
            .map_err(|e| LabError::Parse { what: action.clone(), detail: e.to_string() })?;
        let text = self
            .client
            .request_text(request)
            .await
            .map_err(|source| LabError::Api { action: action.clone(), source: Box::new(source) })?;
        let state: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| LabError::Parse { what: action.clone(), detail: e.to_string() })?;
        serde_json::from_value(state["injected"].clone())
            .map_err(|e| LabError::Parse { what: action, detail: e.to_string() })
    }

    /// The value of an unlabelled metric `name` of a `purelb` process (`allocator-2`,
    /// `agent-n1`, ..), scraped from its `/metrics` inside its namespace.
    pub async fn metric(&self, process: &str, name: &str) -> Option<f64> {
        let page = self.scrape(process).await?;
        page.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// The whole `/metrics` page of a `purelb` process (`allocator`, `agent-n1`, ..).
    pub async fn scrape(&self, process: &str) -> Option<String> {
        let netns = self.resources.lock().get(process).and_then(|p| p.spec.netns.clone())?;
        let target = SocketAddr::from(([127, 0, 0, 1], metrics_port_of(process)));
        let reply = http::get(&netns, target, "/metrics", Duration::from_secs(2)).await.ok()?;
        Some(reply.body)
    }

    /// Freezes a process with SIGSTOP (until [`Lab::resume`]).
    ///
    /// # Errors
    ///
    /// No process has that name.
    pub fn pause(&self, name: &str) -> Result<(), LabError> {
        self.with_process(name, ManagedProcess::pause)
    }

    /// Lets a paused process run on (SIGCONT).
    ///
    /// # Errors
    ///
    /// No process has that name.
    pub fn resume(&self, name: &str) -> Result<(), LabError> {
        self.with_process(name, ManagedProcess::resume)
    }

    /// Makes the emulator answer every request `delay` late (`Duration::ZERO` ends it).
    ///
    /// # Errors
    ///
    /// The emulator refuses.
    pub async fn api_latency(&self, delay: Duration) -> Result<(), LabError> {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.post_fault(serde_json::json!({"action": "latency", "millis": millis})).await
    }

    /// Makes the emulator hold every write of `process` for `delay` before applying it, also
    /// when the process gave up waiting (`Duration::ZERO` ends it).
    ///
    /// # Errors
    ///
    /// The process has no token, or the emulator refuses.
    pub async fn late_writes(&self, process: &str, delay: Duration) -> Result<(), LabError> {
        let token = self.process_token(process)?;
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.post_fault(serde_json::json!({"action": "lateWrites", "token": token, "millis": millis})).await
    }

    /// Cuts a process (`allocator`, `agent-n1`, ..) off the API: its requests are refused,
    /// answered 503 or never answered (`mode`), and its watches end, until [`Lab::heal`].
    ///
    /// # Errors
    ///
    /// The process has no token, or the emulator refuses.
    pub async fn partition(&self, process: &str, mode: FailMode) -> Result<(), LabError> {
        let token = self.process_token(process)?;
        let mode = match mode {
            FailMode::Refuse => "refuse",
            FailMode::Unavailable => "unavailable",
            FailMode::Hang => "hang",
        };
        self.post_fault(serde_json::json!({"action": "cutClient", "token": token, "mode": mode})).await
    }

    /// Makes the emulator fail the next `count` requests of `verb` (`watch`, `list`, ..) on
    /// `resource` (`endpointslices`, `services/status`, ..) from `process` with HTTP `code`;
    /// other clients are served.
    ///
    /// # Errors
    ///
    /// The process has no token, or the emulator refuses.
    pub async fn fail_requests(
        &self,
        process: &str,
        verb: &str,
        resource: &str,
        code: u16,
        count: u32,
    ) -> Result<(), LabError> {
        let token = self.process_token(process)?;
        self.post_fault(serde_json::json!({
            "action": "fail", "verb": verb, "resource": resource, "code": code, "count": count, "token": token
        }))
        .await
    }

    /// Ends the open watches of `process` (it starts them again, as after a dropped connection).
    ///
    /// # Errors
    ///
    /// The process has no token, or the emulator refuses.
    pub async fn close_watches_of(&self, process: &str) -> Result<(), LabError> {
        let token = self.process_token(process)?;
        self.post_fault(serde_json::json!({"action": "closeWatches", "token": token})).await
    }

    /// Ends a [partition](Lab::partition).
    ///
    /// # Errors
    ///
    /// The process has no token, or the emulator refuses.
    pub async fn heal(&self, process: &str) -> Result<(), LabError> {
        let token = self.process_token(process)?;
        self.post_fault(serde_json::json!({"action": "restoreClient", "token": token})).await
    }

    /// Cuts the agent of `node` off the API (see [`Lab::partition`]).
    ///
    /// # Errors
    ///
    /// As [`Lab::partition`].
    pub async fn partition_agent(&self, node: &str, mode: FailMode) -> Result<(), LabError> {
        self.partition(&agent_name(node), mode).await
    }

    /// Reconnects the agent of `node`.
    ///
    /// # Errors
    ///
    /// As [`Lab::heal`].
    pub async fn heal_agent(&self, node: &str) -> Result<(), LabError> {
        self.heal(&agent_name(node)).await
    }

    /// The host named `name` (`router`, `client`, `n1`, ..).
    ///
    /// # Errors
    ///
    /// No such host.
    pub fn host(&self, name: &str) -> Result<&Host, LabError> {
        self.topology.host(name).ok_or_else(|| LabError::NoSuch { kind: "host", name: name.to_owned() })
    }

    /// Runs a command inside a host (`ip netns exec`) and returns its output, whatever its
    /// exit status.
    ///
    /// # Errors
    ///
    /// No such host, or the command cannot be started.
    pub fn exec(&self, host: &str, program: &str, args: &[&str]) -> Result<Output, LabError> {
        netns::exec(&self.host(host)?.netns, program, args)
    }

    /// Runs a command inside a host and returns its stdout; a non-zero exit is an error.
    ///
    /// # Errors
    ///
    /// No such host, or the command cannot be started or fails.
    pub fn exec_ok(&self, host: &str, program: &str, args: &[&str]) -> Result<String, LabError> {
        let output = self.exec(host, program, args)?;
        if !output.status.success() {
            return Err(LabError::Command {
                command: format!("{program} {} (in {host})", args.join(" ")),
                detail: format!("{}: {}", output.status, String::from_utf8_lossy(&output.stderr).trim()),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// The nodes whose namespace holds `addr` on some link (who announces it, as the kernel
    /// sees it).
    ///
    /// # Errors
    ///
    /// `ip` fails.
    pub fn holders(&self, addr: IpAddr) -> Result<Vec<String>, LabError> {
        let mut holders = Vec::new();
        for node in &self.topology.nodes {
            if netns::addresses(&node.netns)?.iter().any(|(_, a)| *a == addr) {
                holders.push(node.name.clone());
            }
        }
        Ok(holders)
    }

    /// Fetches `http://<target><path>` from inside a host (timeout 3 s).
    ///
    /// # Errors
    ///
    /// No such host, or the request fails.
    pub async fn http_get(&self, from: &str, target: SocketAddr, path: &str) -> Result<HttpReply, LabError> {
        let netns = self.host(from)?.netns.clone();
        http::get(&netns, target, path, Duration::from_secs(3)).await
    }

    /// Starts (or restarts) the HTTP server of `node` on `port`, listening on every address of
    /// the node, and waits until it answers.
    ///
    /// # Errors
    ///
    /// No such node, or the server does not come up within 5 s.
    pub async fn serve(&self, node: &str, port: u16) -> Result<(), LabError> {
        let host = self.topology.node(node).ok_or_else(|| LabError::NoSuch { kind: "node", name: node.to_owned() })?;
        let name = serve_name(&host.name);
        let spec = ProcessSpec {
            name: name.clone(),
            netns: Some(host.netns.clone()),
            program: self.lab_bin.clone(),
            args: vec!["serve-node".into(), "--name".into(), host.name.clone(), "--port".into(), port.to_string()],
        };
        {
            let mut processes = self.resources.lock();
            if let Some(old) = processes.get_mut(&name) {
                old.kill();
            }
            let process = ManagedProcess::start(spec, &self.topology.prefix, self.dir.join(format!("{name}.log")))?;
            processes.insert(name.clone(), process);
        }
        let target = SocketAddr::from((host.ipv4, port));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if http::get(&host.netns, target, "/", Duration::from_millis(500)).await.is_ok_and(|r| r.status == 200) {
                return Ok(());
            }
            let status = self.status_of(&name)?;
            if !status.is_running() {
                return Err(LabError::ProcessFailed {
                    log: self.dir.join(format!("{name}.log")),
                    tail: self.log_tail(&name, 10)?,
                    name,
                    status: status.to_string(),
                });
            }
            if Instant::now() >= deadline {
                return Err(LabError::Timeout {
                    what: format!("the HTTP server of {node} answering on {target}"),
                    timeout: Duration::from_secs(5),
                    hint: format!("; see {}", self.dir.join(format!("{name}.log")).display()),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the HTTP server of `node`.
    ///
    /// # Errors
    ///
    /// No server runs there.
    pub fn stop_serving(&self, node: &str) -> Result<ProcessStatus, LabError> {
        self.kill(&serve_name(node))
    }

    /// Writes the EndpointSlices of a Service (replacing what the lab wrote before).
    ///
    /// # Errors
    ///
    /// A backend names an unknown node, or the server refuses.
    pub async fn set_endpoints(&self, backends: &ServiceBackends) -> Result<(), LabError> {
        endpoints::apply(&self.client, &self.topology, backends).await
    }

    /// Deletes the EndpointSlices the lab wrote for a Service.
    ///
    /// # Errors
    ///
    /// The server refuses.
    pub async fn delete_endpoints(&self, namespace: &str, service: &str) -> Result<(), LabError> {
        endpoints::delete(&self.client, namespace, service).await
    }

    /// Applies YAML documents (server-side apply as admin), returning `kind/name` of each.
    ///
    /// # Errors
    ///
    /// As [`cluster::apply_yaml`].
    pub async fn apply_yaml(&self, yaml: &str) -> Result<Vec<String>, LabError> {
        cluster::apply_yaml(&self.client, yaml).await
    }
}

/// Makes later restarts of the emulator listen on the port it picked at start (so clients and
/// the kubeconfig stay valid across [`Lab::restart_apiserver`]).
fn pin_listen_port(resources: &Resources, api_url: &str) {
    let Some(addr) = api_url.strip_prefix("http://") else { return };
    let mut processes = resources.lock();
    let Some(apiserver) = processes.get_mut(APISERVER) else { return };
    let args = &mut apiserver.spec.args;
    if let Some(i) = args.iter().position(|a| a == "--listen")
        && let Some(value) = args.get_mut(i + 1)
    {
        addr.clone_into(value);
    }
}

async fn wait_for_kubeconfig(resources: &Resources, kubeconfig: &Path, timeout: Duration) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    loop {
        if server_of(kubeconfig).is_ok() {
            return Ok(());
        }
        let failed = resources.lock().get_mut(APISERVER).and_then(|p| {
            let status = p.status();
            (!status.is_running()).then(|| (status.to_string(), p.log.clone(), p.log_tail(10)))
        });
        if let Some((status, log, tail)) = failed {
            return Err(LabError::ProcessFailed { name: APISERVER.to_owned(), status, log, tail });
        }
        if Instant::now() >= deadline {
            let log = resources.dir.join(format!("{APISERVER}.log"));
            return Err(LabError::Timeout {
                what: "the API emulator writing its kubeconfig".to_owned(),
                timeout,
                hint: format!("; see {}", log.display()),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `probe` every 20 ms until it returns a value or `timeout` passes (`None`).
pub async fn wait_for<T, F, Fut>(timeout: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lab_files_are_removed() {
        for name in ["state.json", "kubeconfig", "agent-n1.kubeconfig", "allocator.kubeconfig"] {
            assert!(is_lab_file(name, false), "{name}");
        }
        for name in ["apiserver.log", "agent-n2.log", "serve-n1.log", "allocator.log", "allocator-2.log"] {
            assert!(is_lab_file(name, true) && !is_lab_file(name, false), "{name}");
        }
        for name in ["bird-n1.log", "frr-bgpd.log"] {
            assert!(is_lab_file(name, true) && !is_lab_file(name, false), "{name}");
        }
        for name in ["notes.txt", "other.log", "kubeconfig.bak", "state.json.bak", "allocator-x.log"] {
            assert!(!is_lab_file(name, true), "{name}");
        }
    }

    /// A BGP lab's directory after a run: its daemons' directories and logs, a test's scratch
    /// files. Without logs everything the lab made goes, and with it the directory; a file the
    /// lab did not write stays (and keeps the directory).
    #[test]
    fn a_bgp_labs_directory_is_removed_with_everything_the_lab_made() {
        struct Gone(PathBuf);
        impl Drop for Gone {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let dir = std::env::temp_dir().join(format!("purelb-lab-unit-rm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let _gone = Gone(dir.clone());
        let files = [
            "state.json",
            "kubeconfig",
            "apiserver.log",
            "agent-n1.log",
            "bird-n1/bird.conf",
            "bird-n1/passwords/router.conf",
            "bird-n1.log",
            "bird-secrets/router",
            "frr/bgpd.conf",
            "frr-bgpd.log",
            "scratch/go-purelb-v1.yaml",
            "apiserver-data/changes.jsonl",
        ];
        let make = |names: &[&str]| {
            for name in names {
                let path = dir.join(name);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                std::fs::write(path, "x").unwrap();
            }
        };
        make(&files);
        remove_lab_files(&dir, true);
        for kept in ["bird-n1/bird.conf", "bird-n1.log", "frr/bgpd.conf", "frr-bgpd.log", "scratch/go-purelb-v1.yaml"] {
            assert!(dir.join(kept).exists(), "{kept} is kept with the logs");
        }
        assert!(!dir.join("state.json").exists());
        make(&["notes.txt"]);
        remove_lab_files(&dir, false);
        let left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(left, ["notes.txt"]);
        std::fs::remove_file(dir.join("notes.txt")).unwrap();
        make(&files);
        remove_lab_files(&dir, false);
        assert!(!dir.exists(), "the lab's directory is removed");
    }

    #[test]
    fn allocator_replicas_have_their_own_names_and_ports() {
        assert_eq!(allocator_name(1), "allocator");
        assert_eq!(allocator_name(2), "allocator-2");
        assert!(is_allocator("allocator") && is_allocator("allocator-2") && !is_allocator("agent-n1"));
        assert_eq!(metrics_port_of("allocator"), METRICS_PORT);
        assert_eq!(metrics_port_of("agent-n1"), METRICS_PORT);
        assert_eq!(metrics_port_of("allocator-2"), METRICS_PORT + 1);
    }
}
