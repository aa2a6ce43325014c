//! `purelb-lab demo`, the README's "see it work": builds a lab, applies a ServiceGroup and a
//! Service, waits for the address, shows `kubectl get svc` and which node holds it, fetches a
//! page through it from the client host, kills the holding agent, shows the address move,
//! fetches again, prints the measured times and tears the lab down.
//!
//! While `purelb allocator` or `purelb agent` are not built yet (they exit 2 with "not
//! implemented yet"), the demo runs every step it can, skips those that need them, and says
//! what is missing. Entry point: [`run`].

use super::wait_for;
use std::{
    io::Write,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use purelb::{k8s_openapi::api::core::v1::Service, kube::Api};

use super::{ALLOCATOR, Backend, Lab, LabOptions, ProcessStatus, ServiceBackends, agent_name};

/// The ServiceGroup the demo applies (the documented dual-stack sample).
pub const SERVICE_GROUP_YAML: &str = include_str!("../../../docs/samples/servicegroup-local-dualstack.yaml");

/// The Service the demo applies.
pub const SERVICE_YAML: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: default
  annotations:
    purelb.io/service-group: default
spec:
  type: LoadBalancer
  selector:
    app: web
  ports:
  - name: http
    port: 80
    targetPort: 80
";

/// How long each waiting step may take.
#[derive(Clone, Copy, Debug)]
pub struct DemoTimeouts {
    /// Until the allocator writes the address.
    pub address: Duration,
    /// Until a node holds the address.
    pub announce: Duration,
    /// Until another node holds it after the holder's agent is killed.
    pub failover: Duration,
}

impl Default for DemoTimeouts {
    fn default() -> Self {
        Self { address: Duration::from_secs(30), announce: Duration::from_secs(30), failover: Duration::from_secs(45) }
    }
}

/// How a step ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It worked.
    Ok,
    /// It failed, with why.
    Failed(String),
    /// It could not run, with why (a missing component or an earlier failure).
    Skipped(String),
}

/// One step of the demo and how long it took.
#[derive(Clone, Debug)]
pub struct Step {
    /// What the step does.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it took.
    pub elapsed: Duration,
}

/// What the demo did.
#[derive(Clone, Debug, Default)]
pub struct DemoReport {
    /// Every step, in order.
    pub steps: Vec<Step>,
    /// Components that are not built yet (or not found).
    pub missing: Vec<String>,
    /// The measured times, by what they measure.
    pub times: Vec<(String, Duration)>,
}

impl DemoReport {
    /// 0 when every step worked, 2 when only missing components stopped it, 1 on a failure.
    #[must_use]
    pub fn exit_code(&self) -> u8 {
        if self.steps.iter().any(|s| matches!(s.outcome, Outcome::Failed(_))) {
            1
        } else if !self.missing.is_empty() || self.steps.iter().any(|s| matches!(s.outcome, Outcome::Skipped(_))) {
            2
        } else {
            0
        }
    }
}

struct Printer<'a> {
    out: &'a mut dyn Write,
    report: DemoReport,
}

impl Printer<'_> {
    fn line(&mut self, text: &str) {
        let _ = writeln!(self.out, "{text}");
        let _ = self.out.flush();
    }

    fn step(&mut self, name: &str, outcome: Outcome, elapsed: Duration) {
        let text = match &outcome {
            Outcome::Ok => format!("ok    {name} ({})", ms(elapsed)),
            Outcome::Failed(why) => format!("FAIL  {name} ({}): {why}", ms(elapsed)),
            Outcome::Skipped(why) => format!("skip  {name}: {why}"),
        };
        self.line(&text);
        self.report.steps.push(Step { name: name.to_owned(), outcome, elapsed });
    }

    fn time(&mut self, what: &str, took: Duration) {
        self.report.times.push((what.to_owned(), took));
    }

    fn skip(&mut self, name: &str, why: &str) {
        self.step(name, Outcome::Skipped(why.to_owned()), Duration::ZERO);
    }
}

fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(10) { format!("{:.1} s", d.as_secs_f64()) } else { format!("{} ms", d.as_millis()) }
}

/// Why a `purelb` process cannot take part: not built or not found (the demo is incomplete).
fn missing_reason(name: &str, status: &ProcessStatus) -> Option<String> {
    match status {
        s if s.is_not_built() => {
            Some(format!("`purelb {}` is not built yet (it exits 2: not implemented yet)", kind(name)))
        }
        ProcessStatus::NotStarted { reason } => Some(format!("{name} was not started: {reason}")),
        _ => None,
    }
}

/// The `purelb` processes that stopped although nothing stopped them (`expected_down`: the
/// agent the demo killed), with their last log line: each is a failure of the demo.
fn crashed(lab: &Lab, expected_down: Option<&str>) -> Vec<String> {
    lab.process_status()
        .into_iter()
        .filter(|(n, _)| n == ALLOCATOR || n.starts_with("agent-"))
        .filter(|(n, s)| !s.is_running() && missing_reason(n, s).is_none() && Some(n.as_str()) != expected_down)
        .map(|(name, status)| {
            let last = lab.log_tail(&name, 3).unwrap_or_default();
            format!("{name} is not running ({status}): {}", last.trim())
        })
        .collect()
}

fn kind(name: &str) -> &str {
    if name == ALLOCATOR { "allocator" } else { "agent" }
}

async fn service_address(lab: &Lab) -> Option<IpAddr> {
    let services: Api<Service> = Api::namespaced(lab.client(), "default");
    let service = services.get("web").await.ok()?;
    let ingress = service.status?.load_balancer?.ingress?;
    ingress.iter().find_map(|i| i.ip.as_deref()?.parse().ok())
}

fn show_services(lab: &Lab, p: &mut Printer<'_>) {
    let kubeconfig = lab.kubeconfig().display().to_string();
    let args = ["--kubeconfig", kubeconfig.as_str(), "get", "svc", "-o", "wide"];
    p.line(&format!("$ kubectl {}", args.join(" ")));
    match std::process::Command::new("kubectl").args(args).output() {
        Ok(out) => {
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            for line in text.lines() {
                p.line(&format!("  {line}"));
            }
        }
        Err(error) => p.line(&format!("  (kubectl is not available: {error})")),
    }
}

/// Runs an operator command (`purelb explain ...`, `purelb status`) against the lab and prints
/// its output; the step works when the output contains both `needles`.
fn operator_tool(lab: &Lab, p: &mut Printer<'_>, args: &[&str], needle: &str, also: &str) {
    let name = format!("purelb {}", args.join(" "));
    let Some(bin) = lab.purelb_bin() else {
        return p.skip(&name, "no purelb binary");
    };
    // A stand-in for purelb (the demo's own test runs one) has no operator tools: a note, not
    // a step. The real binary must run them.
    let has_tool = std::process::Command::new(bin).args([args[0], "--help"]).output().is_ok_and(|o| o.status.success());
    if !has_tool {
        return p.line(&format!("      ({} has no `{}` command: not shown)", bin.display(), args[0]));
    }
    let started = Instant::now();
    match std::process::Command::new(bin).args(args).arg("--kubeconfig").arg(lab.kubeconfig()).output() {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            for line in text.lines() {
                if line.is_empty() { p.line("") } else { p.line(&format!("      {line}")) }
            }
            let outcome = if text.contains(needle) && text.contains(also) {
                Outcome::Ok
            } else {
                Outcome::Failed(format!(
                    "expected {needle:?} and {also:?}; stderr: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            };
            p.step(&name, outcome, started.elapsed());
        }
        Err(error) => p.step(&name, Outcome::Failed(error.to_string()), started.elapsed()),
    }
}

/// Runs the demo, printing as it goes, and tears the lab down at the end.
pub async fn run(options: LabOptions, timeouts: DemoTimeouts, out: &mut dyn Write) -> DemoReport {
    let mut p = Printer { out, report: DemoReport::default() };
    let nodes = options.nodes;
    let bgp = options.bgp;
    p.line(&format!(
        "purelb-lab demo: {nodes} nodes, a client and a router in network namespaces {}-*",
        options.prefix
    ));

    let started = Instant::now();
    let mut lab = match Lab::start(options).await {
        Ok(lab) => lab,
        Err(error) => {
            p.step("build the lab", Outcome::Failed(error.to_string()), started.elapsed());
            return p.report;
        }
    };
    p.step(
        &format!("build the lab (namespaces, API emulator with RBAC, CRDs, {nodes} Nodes, allocator, agents)"),
        Outcome::Ok,
        started.elapsed(),
    );
    p.time("lab up", started.elapsed());
    p.line(&format!("      kubeconfig: {}   logs: {}", lab.kubeconfig().display(), lab.dir().display()));
    let purelb = lab.purelb_bin().map_or_else(|| "not found".to_owned(), |p| p.display().to_string());
    p.line(&format!("      purelb binary: {purelb}"));

    let statuses = lab.process_status();
    for (name, status) in &statuses {
        p.line(&format!("      {name:<12} {status}"));
    }
    let purelb: Vec<&(String, ProcessStatus)> =
        statuses.iter().filter(|(n, _)| n == ALLOCATOR || n.starts_with("agent-")).collect();
    let mut missing: Vec<String> = purelb.iter().filter_map(|(n, s)| missing_reason(n, s)).collect();
    missing.dedup();
    p.report.missing = missing;
    let allocator_runs = statuses.iter().any(|(n, s)| n == ALLOCATOR && s.is_running());
    let agents_run = statuses.iter().any(|(n, s)| n.starts_with("agent-") && s.is_running());

    let checked = Instant::now();
    let killed = if bgp {
        if allocator_runs && agents_run {
            bgp_steps(&lab, &mut p, timeouts).await;
        } else {
            p.skip("routed addresses over BGP", "the allocator or the agents are not running (see below)");
        }
        None
    } else {
        run_steps(&lab, &mut p, timeouts, allocator_runs, agents_run).await
    };
    // A process that crashed at any point fails the demo, even if every step still worked.
    let down = crashed(&lab, killed.as_deref());
    if down.is_empty() {
        p.step("no purelb process crashed", Outcome::Ok, checked.elapsed());
    } else {
        p.step("no purelb process crashed", Outcome::Failed(down.join("; ")), checked.elapsed());
    }

    let failed = p.report.exit_code() != 0;
    if failed {
        lab.set_keep_logs(true);
        p.line("logs:");
        for (name, path) in lab.log_paths() {
            p.line(&format!("  {name:<12} {}", path.display()));
        }
    }
    let started = Instant::now();
    match lab.shutdown() {
        Ok(report) => {
            p.step(
                &format!("tear down ({} processes, {} namespaces)", report.processes.len(), report.namespaces.len()),
                Outcome::Ok,
                started.elapsed(),
            );
            p.time("lab down", started.elapsed());
        }
        Err(error) => p.step("tear down", Outcome::Failed(error.to_string()), started.elapsed()),
    }

    let report = p.report.clone();
    p.line("measured times:");
    for (what, took) in &report.times {
        p.line(&format!("  {what:<45} {}", ms(*took)));
    }
    if !report.missing.is_empty() {
        p.line("not built yet / missing:");
        for what in &report.missing {
            p.line(&format!("  - {what}"));
        }
    }
    p.line(match report.exit_code() {
        0 => "demo: every step worked",
        2 => "demo: incomplete: the steps above were skipped because components are missing",
        _ => "demo: FAILED",
    });
    p.report
}

/// Serves HTTP on every node and writes the EndpointSlices of default/web; whether it worked
/// (the step is reported either way).
async fn serve_everywhere(lab: &Lab, p: &mut Printer<'_>) -> bool {
    let started = Instant::now();
    let mut backends = ServiceBackends::new("default", "web").port_name("http");
    for node in lab.node_names() {
        if let Err(error) = lab.serve(&node, 80).await {
            p.step("start the HTTP servers", Outcome::Failed(error.to_string()), started.elapsed());
            return false;
        }
        backends = backends.backend(Backend::ready(&node));
    }
    match lab.set_endpoints(&backends).await {
        Ok(()) => {
            p.step(
                "serve HTTP on every node and write the EndpointSlices of default/web",
                Outcome::Ok,
                started.elapsed(),
            );
            true
        }
        Err(error) => {
            p.step("write the EndpointSlices", Outcome::Failed(error.to_string()), started.elapsed());
            false
        }
    }
}

/// The BGP demo (`demo --bgp`): a Service of the lab's routed group, its ECMP route on the
/// router, connections spread over the nodes, and a node frozen until BFD takes its route out.
async fn bgp_steps(lab: &Lab, p: &mut Printer<'_>, timeouts: DemoTimeouts) {
    let router = lab.topology().router.netns.clone();
    let started = Instant::now();
    let sessions = wait_for(Duration::from_secs(30), || async {
        (lab.bfd_sessions_up().ok()? == lab.node_names().len()).then_some(())
    })
    .await;
    if sessions.is_none() {
        return p.step(
            "BGP and BFD sessions from every node's BIRD to the router's FRR",
            Outcome::Failed(lab.vtysh("show bgp summary").unwrap_or_default()),
            started.elapsed(),
        );
    }
    p.step("BGP and BFD sessions from every node's BIRD to the router's FRR", Outcome::Ok, started.elapsed());
    p.time("lab up -> every BGP and BFD session up", started.elapsed());
    if !serve_everywhere(lab, p).await {
        return;
    }
    let applied_at = Instant::now();
    if let Err(error) = lab
        .apply_yaml(&SERVICE_YAML.replace("purelb.io/service-group: default", "purelb.io/service-group: routed"))
        .await
    {
        return p.step("apply the Service", Outcome::Failed(error.to_string()), applied_at.elapsed());
    }
    let Some(address) = wait_for(timeouts.address, || service_address(lab)).await else {
        return p.step(
            "wait for the address",
            Outcome::Failed(format!("none within {:?}", timeouts.address)),
            applied_at.elapsed(),
        );
    };
    p.step(
        &format!("the allocator assigned {address} (ServiceGroup routed) to default/web"),
        Outcome::Ok,
        applied_at.elapsed(),
    );
    show_services(lab, p);
    let nodes = lab.node_names();
    let all: Vec<&str> = nodes.iter().map(String::as_str).collect();
    let routed = wait_for(timeouts.announce, || async { (lab.routed_via(address).ok()? == all).then_some(()) }).await;
    if routed.is_none() {
        return p.step(
            "the router's FIB has a route to the address via every node",
            Outcome::Failed(format!("routed via {:?}", lab.routed_via(address).unwrap_or_default())),
            applied_at.elapsed(),
        );
    }
    p.step(
        &format!("the router's FIB sends {address} to {} (ECMP; `ip -n {router} route`)", all.join(", ")),
        Outcome::Ok,
        applied_at.elapsed(),
    );
    p.time("Service applied -> route via every node", applied_at.elapsed());
    let target = SocketAddr::new(address, 80);
    let started = Instant::now();
    let mut served: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for _ in 0..60 {
        match lab.http_get("client", target, "/").await {
            Ok(reply) if reply.status == 200 => *served.entry(reply.node.unwrap_or_default()).or_default() += 1,
            Ok(reply) => {
                return p.step("fetch pages", Outcome::Failed(format!("HTTP {}", reply.status)), started.elapsed());
            }
            Err(error) => return p.step("fetch pages", Outcome::Failed(error.to_string()), started.elapsed()),
        }
    }
    let spread: Vec<String> = served.iter().map(|(n, c)| format!("{n}: {c}")).collect();
    let outcome =
        if served.len() == nodes.len() { Outcome::Ok } else { Outcome::Failed("not every node served".into()) };
    p.step(
        &format!("60 new connections from the client through the router: {}", spread.join(", ")),
        outcome,
        started.elapsed(),
    );
    let Some(first) = nodes.first().cloned() else { return };
    let frozen: Vec<String> = vec![super::bgp::bird_name(&first), agent_name(&first), super::serve_name(&first)];
    let frozen_at = Instant::now();
    for name in &frozen {
        if let Err(error) = lab.pause(name) {
            return p.step("freeze a node", Outcome::Failed(error.to_string()), frozen_at.elapsed());
        }
    }
    p.line(&format!("      froze {first}: its BIRD, agent and HTTP server (SIGSTOP)"));
    let rest: Vec<&str> = all.iter().copied().filter(|n| *n != first).collect();
    let withdrawn =
        wait_for(Duration::from_secs(20), || async { (lab.routed_via(address).ok()? == rest).then_some(()) }).await;
    let took = frozen_at.elapsed();
    let outcome = match withdrawn {
        Some(()) => Outcome::Ok,
        None => Outcome::Failed(format!("still routed via {:?}", lab.routed_via(address).unwrap_or_default())),
    };
    p.step(&format!("BFD (3 × 300 ms) took {first}'s route out of the router"), outcome, took);
    p.time("node frozen -> route withdrawn (BFD)", took);
    let started = Instant::now();
    let reply = lab.http_get("client", target, "/").await;
    for name in &frozen {
        let _ = lab.resume(name);
    }
    match reply {
        Ok(reply) if reply.status == 200 => {
            p.step(&format!("client fetched again: {}", reply.body.trim()), Outcome::Ok, started.elapsed())
        }
        Ok(reply) => p.step("fetch again", Outcome::Failed(format!("HTTP {}", reply.status)), started.elapsed()),
        Err(error) => p.step("fetch again", Outcome::Failed(error.to_string()), started.elapsed()),
    }
}

/// The steps after "build the lab" that can be skipped.
const LATER_STEPS: [&str; 4] = [
    "find the node holding the address",
    "fetch a page from the client host",
    "kill the holding agent and see the address move",
    "fetch again",
];

fn skip_from(p: &mut Printer<'_>, first: usize, why: &str) {
    for step in LATER_STEPS.iter().skip(first) {
        p.skip(step, why);
    }
}

/// Runs the steps after "build the lab"; returns the agent it killed on purpose, if any.
async fn run_steps(
    lab: &Lab,
    p: &mut Printer<'_>,
    timeouts: DemoTimeouts,
    allocator_runs: bool,
    agents_run: bool,
) -> Option<String> {
    let mut killed = None;
    steps(lab, p, timeouts, allocator_runs, agents_run, &mut killed).await;
    killed
}

async fn steps(
    lab: &Lab,
    p: &mut Printer<'_>,
    timeouts: DemoTimeouts,
    allocator_runs: bool,
    agents_run: bool,
    killed: &mut Option<String>,
) {
    let started = Instant::now();
    match lab.apply_yaml(SERVICE_GROUP_YAML).await {
        Ok(applied) => p.step(&format!("apply {}", applied.join(", ")), Outcome::Ok, started.elapsed()),
        Err(error) => return p.step("apply the ServiceGroup", Outcome::Failed(error.to_string()), started.elapsed()),
    }

    if !serve_everywhere(lab, p).await {
        return;
    }

    let applied_at = Instant::now();
    match lab.apply_yaml(SERVICE_YAML).await {
        Ok(applied) => p.step(&format!("apply {}", applied.join(", ")), Outcome::Ok, applied_at.elapsed()),
        Err(error) => return p.step("apply the Service", Outcome::Failed(error.to_string()), applied_at.elapsed()),
    }

    let address = if allocator_runs {
        let found = wait_for(timeouts.address, || service_address(lab)).await;
        match found {
            Some(ip) => {
                p.step(&format!("the allocator assigned {ip} to default/web"), Outcome::Ok, applied_at.elapsed());
                p.time("Service applied -> address assigned", applied_at.elapsed());
            }
            None => p.step(
                "wait for the address",
                Outcome::Failed(format!("no address within {:?}", timeouts.address)),
                applied_at.elapsed(),
            ),
        }
        found
    } else {
        p.skip("wait for the address", "the allocator is not running (see below)");
        None
    };
    show_services(lab, p);
    let Some(address) = address else { return skip_from(p, 0, "there is no address") };
    if !agents_run {
        p.skip(LATER_STEPS[0], "no agent is running (see below)");
        return skip_from(p, 1, "no node holds the address");
    }

    let holder = wait_for(timeouts.announce, || async { lab.holders(address).ok()?.into_iter().next() }).await;
    let Some(holder) = holder else {
        p.step(
            LATER_STEPS[0],
            Outcome::Failed(format!("no node has {address} within {:?}", timeouts.announce)),
            applied_at.elapsed(),
        );
        return skip_from(p, 1, "no node holds the address");
    };
    let netns = lab.host(&holder).map(|h| h.netns.clone()).unwrap_or_default();
    p.step(&format!("{holder} holds {address} (seen with `ip -n {netns} addr`)"), Outcome::Ok, applied_at.elapsed());
    p.time("Service applied -> address on a node", applied_at.elapsed());
    operator_tool(lab, p, &["explain", "service", "default/web"], &format!("Held by:    {holder} "), "(as predicted)");

    let target = SocketAddr::new(address, 80);
    let started = Instant::now();
    match lab.http_get("client", target, "/").await {
        Ok(reply) if reply.status == 200 => {
            p.step(&format!("client fetched http://{target}/: {}", reply.body.trim()), Outcome::Ok, started.elapsed());
            p.time("first page from the client", reply.elapsed);
        }
        Ok(reply) => {
            p.step(LATER_STEPS[1], Outcome::Failed(format!("HTTP {}", reply.status)), started.elapsed());
            return skip_from(p, 2, "the first fetch failed");
        }
        Err(error) => {
            p.step(LATER_STEPS[1], Outcome::Failed(error.to_string()), started.elapsed());
            return skip_from(p, 2, "the first fetch failed");
        }
    }

    let killed_at = Instant::now();
    if let Err(error) = lab.kill_agent(&holder) {
        p.step(LATER_STEPS[2], Outcome::Failed(error.to_string()), killed_at.elapsed());
        return skip_from(p, 3, "the agent could not be killed");
    }
    *killed = Some(agent_name(&holder));
    p.line(&format!("      killed {} (SIGKILL)", agent_name(&holder)));
    let successor =
        wait_for(timeouts.failover, || async { lab.holders(address).ok()?.into_iter().find(|n| *n != holder) }).await;
    let Some(successor) = successor else {
        p.step(
            LATER_STEPS[2],
            Outcome::Failed(format!("no other node took {address} within {:?}", timeouts.failover)),
            killed_at.elapsed(),
        );
        return skip_from(p, 3, "the address did not move");
    };
    p.step(&format!("{address} moved from {holder} to {successor}"), Outcome::Ok, killed_at.elapsed());
    p.time("agent killed -> address on another node", killed_at.elapsed());

    let fetched_at = Instant::now();
    let reply = wait_for(Duration::from_secs(10), || async {
        let reply = lab.http_get("client", target, "/").await.ok()?;
        (reply.status == 200 && reply.node.as_deref() == Some(successor.as_str())).then_some(reply)
    })
    .await;
    match reply {
        Some(reply) => {
            p.step(&format!("client fetched again: {}", reply.body.trim()), Outcome::Ok, fetched_at.elapsed());
            p.line(&format!(
                "      failover, from the kill to the first page served by {successor}: {}",
                ms(killed_at.elapsed())
            ));
            p.time("agent killed -> page served by the new node", killed_at.elapsed());
            operator_tool(
                lab,
                p,
                &["status"],
                &format!("the agent of node {holder} is not live"),
                "PureLB in namespace purelb-system: WARNING",
            );
        }
        None => p.step(
            LATER_STEPS[3],
            Outcome::Failed(format!("no page from {successor} within 10 s")),
            fetched_at.elapsed(),
        ),
    }
}
