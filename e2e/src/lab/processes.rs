//! The lab's processes: the API emulator, the allocator, one agent per node and the HTTP
//! servers. Each runs with its output in `DIR/<name>.log` and carries the environment marker
//! `PURELB_LAB_MEMBER=<prefix>`, so that teardown finds every process of a lab (also of a
//! crashed run) without trusting recorded process ids. Processes in a node run there through
//! `ip netns exec`, which `exec`s, so the recorded pid is the real process.
//!
//! Entry points: [`ManagedProcess::start`], [`find_lab_processes`], [`stop_lab_processes`].

use std::{
    collections::BTreeSet,
    fmt,
    fs::File,
    io::Write,
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use serde::{Deserialize, Serialize};

use super::LabError;

/// The environment variable that marks a process as a member of a lab (`<name>=<prefix>`).
pub const MEMBER_ENV: &str = "PURELB_LAB_MEMBER";

/// Exit status of a `purelb` subcommand whose issue has not landed yet.
const NOT_BUILT_STATUS: i32 = 2;

/// How to run one process of the lab.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessSpec {
    /// Name in the lab: `apiserver`, `allocator`, `agent-n1`, `serve-n1`.
    pub name: String,
    /// Network namespace to run in (`None`: the root namespace).
    pub netns: Option<String>,
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

impl ProcessSpec {
    /// The command line, for logs and messages.
    #[must_use]
    pub fn command_line(&self) -> String {
        let mut parts = Vec::new();
        if let Some(ns) = &self.netns {
            parts.extend(["ip".to_owned(), "netns".to_owned(), "exec".to_owned(), ns.clone()]);
        }
        parts.push(self.program.display().to_string());
        parts.extend(self.args.iter().cloned());
        parts.join(" ")
    }
}

/// What a process of the lab is doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProcessStatus {
    /// Running with this pid.
    Running {
        /// Process id.
        pid: u32,
    },
    /// It ended.
    Exited {
        /// Exit code, when it exited normally.
        code: Option<i32>,
        /// Signal that ended it.
        signal: Option<i32>,
        /// It said "not implemented yet" and exited 2: its issue has not landed.
        not_built: bool,
    },
    /// A process of a detached lab that is no longer there (its exit status is unknown).
    Gone,
    /// It was never started.
    NotStarted {
        /// Why.
        reason: String,
    },
}

impl ProcessStatus {
    /// Whether the process is running.
    #[must_use]
    pub fn is_running(&self) -> bool {
        matches!(self, Self::Running { .. })
    }

    /// Whether the process exited saying its subcommand is not built yet.
    #[must_use]
    pub fn is_not_built(&self) -> bool {
        matches!(self, Self::Exited { not_built: true, .. })
    }
}

impl fmt::Display for ProcessStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Running { pid } => write!(f, "running (pid {pid})"),
            Self::Exited { not_built: true, .. } => write!(f, "not built yet (exited 2: \"not implemented yet\")"),
            Self::Exited { code: Some(code), .. } => write!(f, "exited with status {code}"),
            Self::Exited { signal: Some(signal), .. } => write!(f, "killed by signal {signal}"),
            Self::Exited { .. } => write!(f, "exited"),
            Self::Gone => write!(f, "gone"),
            Self::NotStarted { reason } => write!(f, "not started: {reason}"),
        }
    }
}

/// A process of the lab: our child, or (for a lab opened from its state file) a pid.
#[derive(Debug)]
pub struct ManagedProcess {
    /// How it is run.
    pub spec: ProcessSpec,
    /// Its log file.
    pub log: PathBuf,
    prefix: String,
    child: Option<Child>,
    pid: Option<u32>,
    last: Option<ProcessStatus>,
}

/// A process as recorded in the lab's state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// How it is run.
    pub spec: ProcessSpec,
    /// Its log file.
    pub log: PathBuf,
    /// Its pid when it was last seen running.
    pub pid: Option<u32>,
    /// Why it was not started, if it was not.
    pub not_started: Option<String>,
}

fn spawn(spec: &ProcessSpec, prefix: &str, log: &Path) -> Result<Child, LabError> {
    let file_error = |source| LabError::File { action: "write", path: log.to_owned(), source };
    let mut out = File::options().create(true).append(true).open(log).map_err(file_error)?;
    let _ = writeln!(out, "--- purelb-lab: starting {}: {}", spec.name, spec.command_line());
    let err = out.try_clone().map_err(file_error)?;
    let mut command = match &spec.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(&spec.program);
            c
        }
        None => Command::new(&spec.program),
    };
    command
        .args(&spec.args)
        .env(MEMBER_ENV, prefix)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        // Its own process group: a Ctrl-C in the terminal that ran `up` does not reach it.
        .process_group(0);
    command.spawn().map_err(|source| LabError::Spawn { command: spec.command_line(), source })
}

fn signal(pid: u32, sig: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(Pid::from_raw(raw), sig);
    }
}

/// Whether `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X'])),
        Err(_) => false,
    }
}

/// Whether `pid` carries the marker of the lab with `prefix`.
fn is_member(pid: u32, prefix: &str) -> bool {
    let want = format!("{MEMBER_ENV}={prefix}");
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|b| *b == 0).any(|entry| entry == want.as_bytes()))
}

fn tail(log: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl ManagedProcess {
    /// Starts `spec` with its output appended to `log`.
    ///
    /// # Errors
    ///
    /// The log cannot be opened or the program cannot be started.
    pub fn start(spec: ProcessSpec, prefix: &str, log: PathBuf) -> Result<Self, LabError> {
        let child = spawn(&spec, prefix, &log)?;
        let pid = Some(child.id());
        Ok(Self { spec, log, prefix: prefix.to_owned(), child: Some(child), pid, last: None })
    }

    /// A process that could not be started (e.g. its binary is missing).
    #[must_use]
    pub fn not_started(spec: ProcessSpec, prefix: &str, log: PathBuf, reason: String) -> Self {
        Self {
            spec,
            log,
            prefix: prefix.to_owned(),
            child: None,
            pid: None,
            last: Some(ProcessStatus::NotStarted { reason }),
        }
    }

    /// A process recorded in a state file by another `purelb-lab` run.
    #[must_use]
    pub fn adopt(record: ProcessRecord, prefix: &str) -> Self {
        let last = record.not_started.map(|reason| ProcessStatus::NotStarted { reason });
        Self { spec: record.spec, log: record.log, prefix: prefix.to_owned(), child: None, pid: record.pid, last }
    }

    /// The record for the state file.
    #[must_use]
    pub fn record(&mut self) -> ProcessRecord {
        let status = self.status();
        ProcessRecord {
            spec: self.spec.clone(),
            log: self.log.clone(),
            pid: match status {
                ProcessStatus::Running { pid } => Some(pid),
                _ => None,
            },
            not_started: match status {
                ProcessStatus::NotStarted { reason } => Some(reason),
                _ => None,
            },
        }
    }

    /// The current status (reaps the process if it ended).
    pub fn status(&mut self) -> ProcessStatus {
        if let Some(child) = self.child.as_mut() {
            match child.try_wait() {
                Ok(None) => return ProcessStatus::Running { pid: child.id() },
                Ok(Some(exit)) => {
                    use std::os::unix::process::ExitStatusExt;
                    let not_built =
                        exit.code() == Some(NOT_BUILT_STATUS) && tail(&self.log, 5).contains("not implemented yet");
                    self.last = Some(ProcessStatus::Exited { code: exit.code(), signal: exit.signal(), not_built });
                    self.child = None;
                    self.pid = None;
                }
                Err(_) => {
                    self.last = Some(ProcessStatus::Gone);
                    self.child = None;
                    self.pid = None;
                }
            }
        } else if let Some(pid) = self.pid {
            if alive(pid) && is_member(pid, &self.prefix) {
                return ProcessStatus::Running { pid };
            }
            self.pid = None;
            self.last = Some(ProcessStatus::Gone);
        }
        self.last.clone().unwrap_or(ProcessStatus::Gone)
    }

    /// The pid while running.
    pub fn pid(&mut self) -> Option<u32> {
        match self.status() {
            ProcessStatus::Running { pid } => Some(pid),
            _ => None,
        }
    }

    /// Sends `sig` if the process runs.
    pub fn signal(&mut self, sig: Signal) {
        if let Some(pid) = self.pid() {
            signal(pid, sig);
        }
    }

    /// Waits up to `timeout` for the process to end; returns whether it did.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.status().is_running() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process (SIGKILL) and waits for it.
    pub fn kill(&mut self) -> ProcessStatus {
        self.signal(Signal::SIGKILL);
        self.wait_for_exit(Duration::from_secs(5));
        self.status()
    }

    /// Freezes the process (SIGSTOP: a GC pause, a stalled VM) until [`Self::resume`].
    pub fn pause(&mut self) {
        self.signal(Signal::SIGSTOP);
    }

    /// Lets a paused process run on (SIGCONT).
    pub fn resume(&mut self) {
        self.signal(Signal::SIGCONT);
    }

    /// Asks the process to stop (SIGTERM), waits up to `grace`, then kills it.
    pub fn terminate(&mut self, grace: Duration) -> ProcessStatus {
        self.signal(Signal::SIGTERM);
        if !self.wait_for_exit(grace) {
            return self.kill();
        }
        self.status()
    }

    /// Kills the process if it runs and starts it again with the same command line.
    ///
    /// # Errors
    ///
    /// It cannot be started.
    pub fn restart(&mut self) -> Result<(), LabError> {
        self.kill();
        let child = spawn(&self.spec, &self.prefix, &self.log)?;
        self.pid = Some(child.id());
        self.child = Some(child);
        self.last = None;
        Ok(())
    }

    /// Sets the value following `flag` in the command line (for the next start).
    pub fn set_arg(&mut self, flag: &str, value: &str) {
        if let Some(i) = self.spec.args.iter().position(|a| a == flag)
            && let Some(v) = self.spec.args.get_mut(i + 1)
        {
            value.clone_into(v);
        } else {
            self.spec.args.extend([flag.to_owned(), value.to_owned()]);
        }
    }

    /// Forgets the child handle so the process outlives us (for `purelb-lab up`).
    pub fn detach(&mut self) {
        if let Some(child) = self.child.take() {
            self.pid = Some(child.id());
        }
    }

    /// The last lines of its log.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

/// The pids of this process and its ancestors (never stopped by a sweep).
fn own_lineage() -> BTreeSet<u32> {
    let mut pids = BTreeSet::new();
    let mut pid = std::process::id();
    while pid > 1 && pids.insert(pid) {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { break };
        let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        match parent {
            Some(p) => pid = p,
            None => break,
        }
    }
    pids
}

/// A process found by [`find_lab_processes`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundProcess {
    /// Process id.
    pub pid: u32,
    /// Carries the lab's marker (it is ours); otherwise it merely lives in a lab namespace.
    pub member: bool,
    /// Its command line.
    pub command: String,
}

/// Every live process of the lab with `prefix`: those carrying its marker and those living in
/// one of the namespaces `netns_ids` (see [`super::netns::netns_id`]). Never this process or
/// its ancestors.
#[must_use]
pub fn find_lab_processes(prefix: &str, netns_ids: &[(u64, u64)]) -> Vec<FoundProcess> {
    let skip = own_lineage();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if skip.contains(&pid) || !alive(pid) {
            continue;
        }
        let member = is_member(pid, prefix);
        let in_lab_netns = std::fs::metadata(format!("/proc/{pid}/ns/net"))
            .is_ok_and(|m| netns_ids.iter().any(|id| *id == (m.dev(), m.ino())));
        if member || in_lab_netns {
            let command = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " ").trim().to_owned())
                .unwrap_or_default();
            found.push(FoundProcess { pid, member, command });
        }
    }
    found
}

/// Stops every process of the lab: its own (marked) ones at once with SIGKILL, strangers in
/// its namespaces with SIGTERM and, after `grace`, SIGKILL. Returns what was stopped.
#[must_use]
pub fn stop_lab_processes(prefix: &str, netns_ids: &[(u64, u64)], grace: Duration) -> Vec<FoundProcess> {
    let found = find_lab_processes(prefix, netns_ids);
    for p in &found {
        signal(p.pid, if p.member { Signal::SIGKILL } else { Signal::SIGTERM });
    }
    let deadline = Instant::now() + grace;
    while found.iter().any(|p| alive(p.pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for p in found.iter().filter(|p| alive(p.pid)) {
        signal(p.pid, Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while found.iter().any(|p| alive(p.pid)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Whatever a killed process started meanwhile.
    let late = find_lab_processes(prefix, netns_ids);
    for p in &late {
        signal(p.pid, Signal::SIGKILL);
    }
    found.into_iter().chain(late).collect()
}

/// Finds a binary: `explicit`, then `$env_var`, then next to this executable (and one level
/// up, for test binaries in `target/<profile>/deps`), then in this workspace's
/// `target/debug` and `target/release`.
///
/// # Errors
///
/// [`LabError::BinaryNotFound`] naming every place tried.
pub fn find_binary(name: &str, explicit: Option<&Path>, env_var: &str, hint: &str) -> Result<PathBuf, LabError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(path) = explicit {
        candidates.push(path.to_owned());
    } else {
        if let Some(path) = std::env::var_os(env_var) {
            candidates.push(PathBuf::from(path));
        }
        if let Ok(exe) = std::env::current_exe()
            && let Some(dir) = exe.parent()
        {
            candidates.push(dir.join(name));
            if let Some(up) = dir.parent() {
                candidates.push(up.join(name));
            }
        }
        if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
            let target = PathBuf::from(target);
            candidates.extend([target.join("debug").join(name), target.join("release").join(name)]);
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join("target");
        candidates.extend([workspace.join("debug").join(name), workspace.join("release").join(name)]);
    }
    if let Some(found) = candidates.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let tried = candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ");
    Err(LabError::BinaryNotFound { name: name.to_owned(), tried, hint: hint.to_owned() })
}
