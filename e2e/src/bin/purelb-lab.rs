//! `purelb-lab`: the Kubernetes API emulator and the network-namespace lab.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use purelb_e2e::{
    apiserver::{Emulator, EmulatorOptions, HttpServer},
    lab::{self, Backend, Lab, LabOptions, ServiceBackends, demo, scale, soak},
};

/// PureLB's test ground: an API emulator and a network-namespace lab.
#[derive(Debug, Parser)]
#[command(name = "purelb-lab", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Authorize {
    /// Enforce the RBAC objects stored in the emulator for requests with a bearer token.
    Rbac,
}

/// Prefix used when none is given.
const DEFAULT_PREFIX: &str = "plab";

#[derive(Debug, Clone, clap::Args)]
struct Where {
    /// Prefix of the lab's namespace names (`<P>-net`, `<P>-client`, `<P>-n1` ..).
    #[arg(long)]
    prefix: Option<String>,
    /// Lab directory (kubeconfig, logs, state); default $TMPDIR/purelb-lab-<prefix>.
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl Where {
    /// The prefix (given, else the one recorded in DIR/state.json, else `plab`) and the dir.
    fn resolve(&self) -> (String, PathBuf) {
        let recorded = || {
            let dir = self.dir.as_ref()?;
            let text = std::fs::read_to_string(dir.join(lab::STATE_FILE)).ok()?;
            serde_json::from_str::<serde_json::Value>(&text).ok()?["prefix"].as_str().map(str::to_owned)
        };
        let prefix = self.prefix.clone().or_else(recorded).unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
        let dir = self.dir.clone().unwrap_or_else(|| lab::default_dir(&prefix));
        (prefix, dir)
    }
}

#[derive(Debug, Clone, clap::Args)]
struct ExtraArgs {
    /// Extra argument for `purelb allocator` (repeatable), e.g. --allocator-arg=--leader-elect=false.
    #[arg(long = "allocator-arg", value_name = "ARG", allow_hyphen_values = true)]
    allocator: Vec<String>,
    /// Extra argument for every `purelb agent` (repeatable), e.g. --agent-arg=--log-level=debug.
    #[arg(long = "agent-arg", value_name = "ARG", allow_hyphen_values = true)]
    agent: Vec<String>,
}

impl ExtraArgs {
    fn apply(self, mut options: LabOptions) -> LabOptions {
        options.allocator_args = self.allocator;
        options.agent_args = self.agent;
        options
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Kubernetes API emulator over HTTP.
    Apiserver {
        /// Address to listen on, e.g. 127.0.0.1:6443.
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
        /// Also listen inside a network namespace: NETNS=ADDR (repeatable), e.g. plab-net=192.0.2.1:6443.
        #[arg(long = "listen-netns", value_name = "NETNS=ADDR", hide = true)]
        listen_netns: Vec<String>,
        /// Keep state in this directory so it survives a restart.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Authorization mode.
        #[arg(long, value_enum)]
        authorize: Option<Authorize>,
        /// Kubernetes version to emulate: what /version says, fields behind feature gates
        /// (ipMode from 1.30), streaming lists (1.32+).
        #[arg(long, default_value = "v1.33.0")]
        version: String,
        /// Map a bearer token to a user: TOKEN=USER (repeatable), e.g. t1=system:serviceaccount:purelb-system:agent.
        #[arg(long = "token", value_name = "TOKEN=USER")]
        tokens: Vec<String>,
        /// Write a kubeconfig for this server (admin, no token) to this path.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Build the lab and leave it running: namespaces, the API emulator, allocator and agents.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Give every host an IPv6 address (2001:db8::/64) and route too.
        #[arg(long)]
        dual_stack: bool,
        #[command(flatten)]
        place: Where,
        /// The `purelb` binary (default: $PURELB_BIN, next to purelb-lab, target/{debug,release}).
        #[arg(long)]
        purelb_bin: Option<PathBuf>,
        /// Do not start the allocator.
        #[arg(long)]
        no_allocator: bool,
        /// Do not start the agents.
        #[arg(long)]
        no_agents: bool,
        /// Seconds to wait for the allocator and agents to report ready (or exit).
        #[arg(long, default_value_t = 20)]
        ready_timeout: u64,
        /// Install PureLB with Helm's own engine (charts/purelb; needs helm-python-sdk) instead of
        /// applying the CRDs and manifests/rbac.yaml.
        #[arg(long)]
        helm: bool,
        /// Routed announcements: FRR on the router (ECMP, BFD), BIRD 2 on every node managed by
        /// its agent, the BGPPeer `router` (docs/bgp.md; needs `apt-get install bird2 frr`).
        #[arg(long)]
        bgp: bool,
        #[command(flatten)]
        extra: ExtraArgs,
    },
    /// Remove every namespace, link, process and file of a lab (idempotent).
    Down {
        #[command(flatten)]
        place: Where,
        /// Keep the log files.
        #[arg(long)]
        keep_logs: bool,
    },
    /// Show PureLB working end to end in a fresh lab, with measured times; exits 0 only if every step worked.
    Demo {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Prefix of the demo lab's namespaces.
        #[arg(long, default_value = "pldemo")]
        prefix: String,
        /// Lab directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The `purelb` binary.
        #[arg(long)]
        purelb_bin: Option<PathBuf>,
        /// Routed addresses over BGP instead: FRR on the router, BIRD on every node; shows the
        /// router's ECMP route, the spread of connections and a BFD failover (docs/bgp.md).
        #[arg(long)]
        bgp: bool,
        #[command(flatten)]
        extra: ExtraArgs,
    },
    /// Serve HTTP in lab nodes (on every address, port --port) and write a Service's EndpointSlices.
    Serve {
        #[command(flatten)]
        place: Where,
        /// Nodes to serve on (comma-separated; default every node).
        #[arg(long, value_delimiter = ',')]
        nodes: Vec<String>,
        /// Port.
        #[arg(long, default_value_t = 80)]
        port: u16,
        /// Write the EndpointSlices of this Service (NAMESPACE/NAME) listing the served nodes.
        #[arg(long, value_name = "NAMESPACE/NAME")]
        service: Option<String>,
        /// Name of the Service port, if it has one.
        #[arg(long)]
        port_name: Option<String>,
        /// Nodes whose endpoint is not ready (repeatable or comma-separated).
        #[arg(long, value_delimiter = ',')]
        not_ready: Vec<String>,
        /// Nodes whose endpoint is terminating (still serving).
        #[arg(long, value_delimiter = ',')]
        terminating: Vec<String>,
    },
    /// Scale (issue 20): many simulated nodes (Nodes and node Leases renewed like real agents)
    /// and Services with EndpointSlices around three real agents; prints per size and lease
    /// timing what each real agent pays (CPU, Lease events and decision passes per second, RSS)
    /// and the SIGKILL failover of a real agent's address.
    Scale {
        /// Simulated node counts, comma-separated, measured in this order.
        #[arg(long, default_value = "10,100,1000", value_delimiter = ',')]
        nodes: Vec<usize>,
        /// Services with ten endpoints each on the simulated nodes.
        #[arg(long, default_value_t = 1000)]
        services: usize,
        /// Lease timings LEASE/RENEW in seconds, comma-separated (e.g. 6/2,2/1).
        #[arg(long, default_value = "6/2,2/1", value_delimiter = ',', value_parser = parse_timing)]
        leases: Vec<scale::Timing>,
        /// Idle measurement window per point, seconds.
        #[arg(long, default_value_t = 20)]
        window: u64,
        /// SIGKILL failovers of a real agent per point.
        #[arg(long, default_value_t = 2)]
        failovers: usize,
        /// Prefix of the labs' namespaces (one lab per timing).
        #[arg(long, default_value = "plscale")]
        prefix: String,
        /// The `purelb` binary.
        #[arg(long)]
        purelb_bin: Option<PathBuf>,
        /// Also write the report as JSON to this file.
        #[arg(long, value_name = "PATH")]
        json_file: Option<PathBuf>,
    },
    /// Chaos soak: seeded random Service churn and faults in a dual-stack lab with two allocator
    /// replicas, every invariant checked every 25 ms, a client sending requests throughout.
    /// Exits 0 only with zero violations and zero failed requests outside the allowed windows.
    Soak {
        /// How long churn and faults run: seconds, or a duration such as 90s, 30m.
        #[arg(long, value_parser = parse_soak_duration)]
        duration: Duration,
        /// Seed of the schedules (default: random, printed at the start).
        #[arg(long)]
        seed: Option<u64>,
        /// Number of nodes (3 or 4).
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(3..=4))]
        nodes: u8,
        /// Prefix of the soak lab's namespaces.
        #[arg(long, default_value = "plsoak")]
        prefix: String,
        /// Lab directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// The `purelb` binary.
        #[arg(long)]
        purelb_bin: Option<PathBuf>,
        /// Print the report as JSON on stdout (progress stays on stderr).
        #[arg(long)]
        json: bool,
        /// Also write the report as JSON to this file (e.g. for BENCHMARKS.md).
        #[arg(long, value_name = "PATH")]
        json_file: Option<PathBuf>,
        /// Keep the logs (they are kept anyway when the soak fails).
        #[arg(long)]
        keep_logs: bool,
        /// Quiet time at the end, checks still running (seconds).
        #[arg(long, default_value_t = 10)]
        settle: u64,
        /// Leave out what triggers the open product bugs listed in e2e/README.md ("Soak"): no
        /// sharing between Services with externalTrafficPolicy Local, no agent cut-off by hanging
        /// connections.
        #[arg(long)]
        avoid_open_bugs: bool,
    },
    /// The HTTP server itself, run inside a node's namespace by `serve`.
    #[command(hide = true)]
    ServeNode {
        /// Node name to report.
        #[arg(long)]
        name: String,
        /// Port.
        #[arg(long, default_value_t = 80)]
        port: u16,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("purelb-lab: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let name = command_name(&cli.command);
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("purelb-lab {name}: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn command_name(command: &Command) -> &'static str {
    match command {
        Command::Apiserver { .. } => "apiserver",
        Command::Up { .. } => "up",
        Command::Down { .. } => "down",
        Command::Demo { .. } => "demo",
        Command::Serve { .. } => "serve",
        Command::Soak { .. } => "soak",
        Command::Scale { .. } => "scale",
        Command::ServeNode { .. } => "serve-node",
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Apiserver { listen, listen_netns, data_dir, authorize, version, tokens, kubeconfig } => {
            let options =
                EmulatorOptions { data_dir, authorize: authorize.is_some(), version, ..EmulatorOptions::default() };
            apiserver(options, listen, &listen_netns, &tokens, kubeconfig.as_deref()).await
        }
        Command::Up {
            nodes,
            dual_stack,
            place,
            purelb_bin,
            no_allocator,
            no_agents,
            ready_timeout,
            helm,
            bgp,
            extra,
        } => {
            let (prefix, dir) = place.resolve();
            let mut options = LabOptions::new(&prefix, nodes)
                .dual_stack(dual_stack)
                .dir(&dir)
                .purelb(!no_allocator, !no_agents)
                .ready_timeout(Duration::from_secs(ready_timeout))
                .helm(helm)
                .bgp(bgp);
            options.purelb_bin = purelb_bin;
            up(extra.apply(options)).await
        }
        Command::Down { place, keep_logs } => {
            let (prefix, dir) = place.resolve();
            let started = Instant::now();
            let report = lab::down(&prefix, &dir, keep_logs)?;
            if report.processes.is_empty() && report.namespaces.is_empty() {
                println!("lab {prefix}: nothing to remove");
            } else {
                println!(
                    "lab {prefix} removed in {} ms: {} processes stopped, namespaces deleted: {}",
                    started.elapsed().as_millis(),
                    report.processes.len(),
                    report.namespaces.join(" ")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { nodes, prefix, dir, purelb_bin, bgp, extra } => {
            let mut options = extra.apply(LabOptions::new(&prefix, nodes).dual_stack(true).bgp(bgp));
            options.dir = dir;
            options.purelb_bin = purelb_bin;
            let mut stdout = std::io::stdout();
            let report = demo::run(options, demo::DemoTimeouts::default(), &mut stdout).await;
            Ok(ExitCode::from(report.exit_code()))
        }
        Command::Serve { place, nodes, port, service, port_name, not_ready, terminating } => {
            let (_, dir) = place.resolve();
            serve(&dir, nodes, port, service, port_name, &not_ready, &terminating).await
        }
        Command::Soak {
            duration,
            seed,
            nodes,
            prefix,
            dir,
            purelb_bin,
            json,
            json_file,
            keep_logs,
            settle,
            avoid_open_bugs,
        } => {
            let seed = seed.unwrap_or_else(soak::random_seed);
            let mut options = soak::SoakOptions::new(&prefix, duration, seed);
            options.nodes = usize::from(nodes);
            options.dir = dir;
            options.purelb_bin = purelb_bin;
            options.keep_logs = keep_logs;
            options.settle = Duration::from_secs(settle);
            options.avoid_open_bugs = avoid_open_bugs;
            eprintln!("purelb-lab soak: seed {seed} (rerun with --seed {seed})");
            let mut progress = std::io::stderr();
            let report = soak::run(options, &mut progress).await?;
            if let Some(path) = &json_file {
                std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                report.print(&mut std::io::stdout())?;
            }
            Ok(if report.passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Scale { nodes, services, leases, window, failovers, prefix, purelb_bin, json_file } => {
            let options = scale::ScaleOptions {
                sizes: nodes,
                timings: leases,
                services,
                window: Duration::from_secs(window),
                failovers,
                prefix,
                purelb_bin,
                lab_bin: std::env::current_exe().ok(),
            };
            let mut progress = std::io::stderr();
            let report = scale::run(&options, &mut progress).await?;
            if let Some(path) = &json_file {
                std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
            report.print(&mut std::io::stdout())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ServeNode { name, port } => {
            lab::http::serve(name, port).await.context("serving HTTP")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `LEASE/RENEW` in seconds, e.g. `6/2`.
fn parse_timing(text: &str) -> Result<scale::Timing, String> {
    let (lease, renew) =
        text.split_once('/').ok_or_else(|| format!("{text:?}: want LEASE/RENEW in seconds, e.g. 6/2"))?;
    let secs = |v: &str| v.trim().parse::<f64>().map_err(|e| format!("{v:?}: {e}")).map(Duration::from_secs_f64);
    let (lease, renew) = (secs(lease)?, secs(renew)?);
    if renew.is_zero() || renew * 2 > lease {
        return Err(format!("{text:?}: the renew interval must be positive and at most half the lease"));
    }
    Ok(scale::Timing { lease, renew })
}

/// `180` (seconds) or a duration such as `90s`, `30m`.
fn parse_soak_duration(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.trim().parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    purelb::duration::parse_duration(text).map_err(|e| e.to_string())
}

async fn apiserver(
    options: EmulatorOptions,
    listen: SocketAddr,
    listen_netns: &[String],
    tokens: &[String],
    kubeconfig: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let emulator = Emulator::start(options)?;
    for pair in tokens {
        let Some((token, user)) = pair.split_once('=') else {
            eprintln!("purelb-lab apiserver: --token {pair:?} must be TOKEN=USER");
            return Ok(ExitCode::from(2));
        };
        emulator.add_token(token, user);
    }
    let mut servers: Vec<HttpServer> = Vec::new();
    for pair in listen_netns {
        let Some((netns, addr)) = pair.split_once('=') else {
            eprintln!("purelb-lab apiserver: --listen-netns {pair:?} must be NETNS=ADDR");
            return Ok(ExitCode::from(2));
        };
        let addr: SocketAddr = addr.parse().with_context(|| format!("--listen-netns {pair:?}: bad address"))?;
        let netns = netns.to_owned();
        let listener =
            lab::netns::bind_tcp(&netns, addr).with_context(|| format!("cannot listen on {addr} in {netns}"))?;
        let server = emulator.serve_listener(listener, move || lab::netns::bind_tcp(&netns, addr))?;
        eprintln!("purelb-lab apiserver: serving the Kubernetes API on {} in network namespace {pair}", server.url());
        servers.push(server);
    }
    let server = emulator.serve(listen).await?;
    if let Some(path) = kubeconfig {
        purelb_e2e::apiserver::write_kubeconfig(path, &server.url(), None, "default")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    eprintln!("purelb-lab apiserver: serving the Kubernetes API on {}", server.url());
    tokio::select! {
        () = server.wait() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    drop(servers);
    Ok(ExitCode::SUCCESS)
}

async fn up(options: LabOptions) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let lab = Lab::start(options).await?;
    let elapsed = started.elapsed();
    let topology = lab.topology().clone();
    let statuses = lab.process_status();
    let logs = lab.log_paths();
    let state = lab.detach()?;
    let nodes: Vec<String> = topology.nodes.iter().map(|n| format!("{} {}", n.name, n.ipv4)).collect();
    println!("lab {} is up in {} ms ({})", state.prefix, elapsed.as_millis(), state.dir.display());
    println!("  router  {} {} (bridge lab0, API on 192.0.2.1:6443)", topology.router.netns, topology.router.ipv4);
    println!("  client  {} {}", topology.client.netns, topology.client.ipv4);
    println!("  nodes   {}", nodes.join(", "));
    println!("processes:");
    for (name, status) in &statuses {
        let log = logs.iter().find(|(n, _)| n == name).map(|(_, l)| l.display().to_string()).unwrap_or_default();
        println!("  {name:<12} {:<50} {log}", status.to_string());
    }
    println!("try:");
    println!("  kubectl --kubeconfig {} get nodes", state.kubeconfig.display());
    println!("  purelb-lab serve --prefix {} --service default/web", state.prefix);
    println!("  ip netns exec {} curl http://192.0.2.240/", topology.client.netns);
    if statuses.iter().any(|(name, _)| name.starts_with("bird-")) {
        println!("BGP (routed addresses from {}, through the router):", lab::bgp::ROUTED_SUBNET);
        println!("  ServiceGroup purelb-system/routed (203.0.113.10-203.0.113.19, host routes) is there: give a");
        println!("  Service the annotation purelb.io/service-group: routed");
        println!("  vtysh --vty_socket {} -c 'show bgp summary'", lab::bgp::frr_dir(&state.dir).display());
        println!("  ip -n {} route show {}", topology.router.netns, lab::bgp::ROUTED_SUBNET);
    }
    println!("  purelb-lab down --prefix {}", state.prefix);
    Ok(ExitCode::SUCCESS)
}

async fn serve(
    dir: &Path,
    nodes: Vec<String>,
    port: u16,
    service: Option<String>,
    port_name: Option<String>,
    not_ready: &[String],
    terminating: &[String],
) -> anyhow::Result<ExitCode> {
    let lab = Lab::open(dir)
        .await
        .with_context(|| format!("no lab found in {} (run `purelb-lab up` first)", dir.display()))?;
    let nodes = if nodes.is_empty() { lab.node_names() } else { nodes };
    let mut backends = None;
    if let Some(service) = &service {
        let Some((namespace, name)) = service.split_once('/') else {
            bail!("--service {service:?} must be NAMESPACE/NAME")
        };
        let mut b = ServiceBackends::new(namespace, name).port(port);
        if let Some(port_name) = &port_name {
            b = b.port_name(port_name);
        }
        backends = Some(b);
    }
    for node in &nodes {
        lab.serve(node, port).await?;
        let backend = if terminating.contains(node) {
            Backend::terminating(node)
        } else if not_ready.contains(node) {
            Backend::not_ready(node)
        } else {
            Backend::ready(node)
        };
        backends = backends.map(|b| b.backend(backend));
        println!(
            "serving http on port {port} of every address of {node} (log {})",
            lab.dir().join(lab::serve_name(node) + ".log").display()
        );
    }
    if let Some(backends) = &backends {
        lab.set_endpoints(backends).await?;
        println!(
            "wrote the EndpointSlices of {}/{} ({} endpoints)",
            backends.namespace,
            backends.service,
            backends.backends.len()
        );
    }
    lab.detach()?;
    Ok(ExitCode::SUCCESS)
}
