//! The `purelb` binary: parses the command line and runs one subcommand.

use std::{io::Write, process::ExitCode};

use clap::Parser;
use purelb::cli::{Cli, Command};

/// mimalloc, not the C library's allocator: docs/design.md, "The memory allocator".
#[global_allocator]
static ALLOCATOR: purelb::GlobalAllocator = purelb::GlobalAllocator;

fn main() -> ExitCode {
    let cli = parse();
    // Combinations clap cannot see: exit 2 with clap's usage, before anything starts.
    let checked = match &cli.command {
        Command::Agent(args) => args.check().map_err(|m| ("agent", m)),
        Command::Allocator(args) => args.check().map_err(|m| ("allocator", m)),
        _ => Ok(()),
    };
    if let Err((sub, message)) = checked {
        use clap::CommandFactory;
        let mut command = Cli::command();
        command.build();
        let mut command = command.find_subcommand_mut(sub).cloned().unwrap_or_else(Cli::command);
        command.error(clap::error::ErrorKind::ArgumentConflict, message).exit();
    }
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("purelb: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The command line. Started as `kubectl-purelb` (a kubectl plugin: `kubectl purelb status`),
/// the binary is the same `purelb`; only its help says `kubectl purelb`.
fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let plugin = std::path::Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("kubectl-purelb"));
    if !plugin {
        return Cli::parse();
    }
    let matches = Cli::command().bin_name("kubectl purelb").name("kubectl-purelb").get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Status(args) => ops::status(&args),
        Command::Explain(args) => ops::explain(&args),
        Command::Validate(args) => ops::validate(&args),
        Command::Migrate(args) => ops::migrate(&args),
        Command::Crds => {
            let yaml = purelb::api::crd_yaml()?;
            std::io::stdout().lock().write_all(yaml.as_bytes())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Version => {
            println!("purelb {}", purelb::VERSION);
            Ok(ExitCode::SUCCESS)
        }
        Command::Allocator(args) => run_allocator(&args),
        Command::Agent(args) => run_agent(&args),
        Command::Reconcile(args) => run_reconcile(&args),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

fn run_allocator(args: &purelb::cli::AllocatorArgs) -> anyhow::Result<ExitCode> {
    use purelb::{allocator::controller, process, telemetry::catalog::Component};
    runtime()?.block_on(async {
        let (readiness, _server) = process::start(&args.common, Component::Allocator).await?;
        let client = process::kube_client(&args.common).await?;
        let settings = controller::Settings {
            namespace: args.common.namespace.clone(),
            lb_class: args.lb_class.clone(),
            default_announcer: args.default_announcer,
            instance: process::instance_name(),
            // Also the takeover fence (LeaderConfig::write_timeout): keep it short.
            api_timeout: std::time::Duration::from_secs(5),
        };
        let netbox = purelb::allocator::netbox::NetboxSettings {
            token_dir: args.netbox_token_dir.clone(),
            token_secret: Some(args.netbox_token_secret.clone()).filter(|s| !s.is_empty()),
            timeout: args.netbox_timeout,
            ..Default::default()
        };
        if !args.leader_elect {
            controller::run_with_netbox(
                client,
                settings,
                netbox,
                controller::WriteGate::always(),
                readiness,
                process::shutdown_signal(),
            )
            .await?;
            return Ok(ExitCode::SUCCESS);
        }
        let config = purelb::leader::LeaderConfig {
            // A new leader decides nothing until the old one's writes, each bounded by this
            // client timeout, can no longer land (fencing by time, docs/design.md).
            write_timeout: settings.api_timeout,
            ..purelb::leader::LeaderConfig::new(args.lease_duration, args.renew_interval)
        };
        let identity = format!("{}_{}", process::instance_name(), std::process::id());
        let elector = purelb::leader::LeaderElector::new(
            client.clone(),
            &args.common.namespace,
            purelb::api::contract::ALLOCATOR_LEASE_NAME,
            &identity,
            config,
        )?;
        let leadership = elector.leadership();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let election = tokio::spawn(elector.run(async {
            let _ = release_rx.await;
        }));
        let gate = controller::WriteGate::from(leadership);
        let result =
            controller::run_with_netbox(client, settings, netbox, gate, readiness, process::shutdown_signal()).await;
        // Stop writing first, then hand the Lease over so a standby takes over at once.
        let _ = release_tx.send(());
        match election.await {
            Ok(Err(error)) => tracing::warn!(%error, "could not release the leader Lease"),
            Err(error) => tracing::warn!(%error, "leader election task failed"),
            Ok(Ok(())) => {}
        }
        result?;
        Ok(ExitCode::SUCCESS)
    })
}

fn run_agent(args: &purelb::cli::AgentArgs) -> anyhow::Result<ExitCode> {
    use purelb::{agent, process, telemetry::catalog::Component};
    runtime()?.block_on(async {
        let (readiness, _server) = process::start(&args.common, Component::Agent).await?;
        let client = process::kube_client(&args.common).await?;
        let settings = agent::Settings {
            namespace: args.common.namespace.clone(),
            node: args.node_name.clone(),
            instance: args.pod_uid.clone(),
            lease_duration: args.lease_duration,
            renew_interval: args.renew_interval,
            handover_timeout: args.handover_timeout,
            orphan_sweep_interval: args.orphan_sweep_interval,
            api_timeout: std::time::Duration::from_secs(5)
                .min(args.lease_duration.max(std::time::Duration::from_secs(1))),
            reporter_instance: process::instance_name(),
            settle_time: args.settle_time,
            pod_name: args.pod_name.clone(),
            shutdown_mode: args.shutdown_mode,
            successor_timeout: args.successor_timeout,
            bgp: args.bird_socket.clone().map(|socket| purelb::bgp::BgpSettings {
                socket,
                config: args.bird_config.clone(),
                drain_time: args.drain_time,
                poll: std::time::Duration::from_secs(1),
                timeout: std::time::Duration::from_secs(5),
            }),
        };
        agent::run(client, settings, readiness, process::shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    })
}

/// `purelb reconcile`: one shot; prints the report on stdout (logs go to stderr). Exit status:
/// 0, or 3 with `--exit-code` when orphans were found; 1 on any error (also when a removal
/// failed, after printing the report).
fn run_reconcile(args: &purelb::cli::ReconcileArgs) -> anyhow::Result<ExitCode> {
    use purelb::{cli::OutputFormat, process, reconcile};
    purelb::telemetry::init_tracing(args.common.log_level.as_deref(), args.common.log_format)?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let settings = reconcile::Settings {
        namespace: args.common.namespace.clone(),
        dry_run: args.dry_run,
        api_timeout: std::time::Duration::from_secs(10),
    };
    let report = runtime.block_on(async {
        if args.all {
            return Ok::<_, anyhow::Error>(reconcile::run_all(&settings).await?);
        }
        let node = args.node_name.as_deref().ok_or_else(|| anyhow::anyhow!("--node-name is required without --all"))?;
        let client = process::kube_client(&args.common).await.map_err(|error| {
            anyhow::anyhow!(
                "{error}; nothing was removed; to remove every PureLB-owned address without API access (uninstall), use --all"
            )
        })?;
        Ok(reconcile::run_node(&client, &settings, node).await?)
    })?;
    let text = match args.output {
        OutputFormat::Text => report.text(),
        OutputFormat::Json => report.json()?,
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    let failed = report.failures();
    if failed > 0 {
        anyhow::bail!(
            "could not remove {failed} of {} orphaned addresses and interfaces (see the report above)",
            report.found()
        );
    }
    Ok(if args.exit_code && report.found() > 0 {
        ExitCode::from(reconcile::EXIT_ORPHANS_FOUND)
    } else {
        ExitCode::SUCCESS
    })
}

/// The operator commands: read, judge, print; exit codes per `api.md` §8.
mod ops {
    use std::{io::Read as _, process::ExitCode};

    use anyhow::Context as _;
    use purelb::{
        cli::{ClusterArgs, ExplainArgs, ExplainWhat, MigrateArgs, StatusArgs, ValidateArgs},
        ops::{explain, model::Handling, output, snapshot, status, validate},
    };

    fn handling(cluster: &ClusterArgs) -> Handling {
        Handling { lb_class: cluster.lb_class.clone(), default_announcer: true }
    }

    fn print(text: &str) {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }

    /// A status or cluster validation that cannot read the cluster cannot say OK: it exits 2
    /// (FAIL), so that scripts reading the exit code do not take it for a WARNING.
    fn or_fail(result: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
        result.or_else(|error| {
            eprintln!("purelb: error: {error:#}");
            Ok(ExitCode::from(2))
        })
    }

    pub fn status(args: &StatusArgs) -> anyhow::Result<ExitCode> {
        or_fail(status_inner(args))
    }

    fn status_inner(args: &StatusArgs) -> anyhow::Result<ExitCode> {
        super::runtime()?.block_on(async {
            let client = snapshot::client(&args.cluster.target()).await?;
            let mut last = String::new();
            loop {
                let snap = snapshot::Snapshot::read(&client, &args.cluster.namespace).await?;
                let report = status::report(&snap, &handling(&args.cluster));
                let text = output::render(args.output, &report, status::Report::text).map_err(anyhow::Error::msg)?;
                if !args.watch {
                    print(&text);
                    return Ok(ExitCode::from(report.verdict.exit_code()));
                }
                // Printed again when something changed, not because a Lease was renewed.
                let mut steady = report.clone();
                steady.allocator.renewed_seconds_ago = None;
                let key = serde_json::to_string(&steady).unwrap_or_default();
                if key != last {
                    if !last.is_empty() && args.output == output::Format::Text {
                        print("\n");
                    }
                    print(&text);
                    last = key;
                }
                tokio::time::sleep(args.interval).await;
            }
        })
    }

    pub fn explain(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
        let ExplainWhat::Service { name, cluster, output: format } = &args.what;
        let key = explain::parse_key(name)?;
        super::runtime()?.block_on(async {
            let client = snapshot::client(&cluster.target()).await?;
            let mut snap = snapshot::Snapshot::read(&client, &cluster.namespace).await?;
            for sharer in explain::sharers(&snap, &key) {
                let more = snapshot::Snapshot::read_slices(&client, &sharer).await?;
                snap.slices.extend(more);
            }
            let explanation = explain::explain(&snap, &handling(cluster), &key)?;
            print(&output::render(*format, &explanation, explain::Explanation::text).map_err(anyhow::Error::msg)?);
            Ok(ExitCode::SUCCESS)
        })
    }

    fn read_inputs(paths: &[std::path::PathBuf]) -> anyhow::Result<Vec<(String, String)>> {
        let mut expanded = Vec::new();
        for path in paths {
            if path.is_dir() {
                let mut found: Vec<std::path::PathBuf> = std::fs::read_dir(path)
                    .with_context(|| format!("cannot read directory {}", path.display()))?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
                    .collect();
                found.sort();
                expanded.extend(found);
            } else {
                expanded.push(path.clone());
            }
        }
        let mut files = Vec::new();
        for path in &expanded {
            let text = if path.as_os_str() == "-" {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text).context("cannot read standard input")?;
                text
            } else {
                std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?
            };
            files.push((path.display().to_string(), text));
        }
        Ok(files)
    }

    /// Exit code of `migrate` when Services are at risk or the input has errors and the user did
    /// not pass --allow-changes: nothing was applied.
    const REFUSED: u8 = 3;

    pub fn migrate(args: &MigrateArgs) -> anyhow::Result<ExitCode> {
        use purelb::migrate::{self, Input, Options, cluster};
        let options = Options {
            namespace: args.cluster.namespace.clone(),
            subnets: args.subnets.clone(),
            lb_class: args.cluster.lb_class.clone(),
        };
        let source_ns = args.source_namespace.clone().unwrap_or_else(|| args.from.default_namespace().to_owned());
        let mut input = Input::default();
        for (path, text) in read_inputs(&args.files)? {
            for doc in validate::parse_documents(&path, &text).map_err(|e| anyhow::anyhow!("{path}: {e}"))? {
                match doc.object.get("kind").and_then(serde_json::Value::as_str) {
                    Some("Service") => input.services.push(
                        serde_json::from_value(doc.object).with_context(|| format!("{}: not a Service", doc.origin))?,
                    ),
                    Some("Node") => input.nodes.push(
                        serde_json::from_value(doc.object).with_context(|| format!("{}: not a Node", doc.origin))?,
                    ),
                    _ => input.objects.push(doc.object),
                }
            }
        }
        let runtime = super::runtime()?;
        let needs_cluster = args.files.is_empty() || args.apply;
        let client =
            if needs_cluster { Some(runtime.block_on(snapshot::client(&args.cluster.target()))?) } else { None };
        if let Some(client) = &client {
            runtime.block_on(async {
                if args.files.is_empty() {
                    input.objects = cluster::read_source(client, args.from, &source_ns).await?;
                }
                if input.services.is_empty() && input.nodes.is_empty() {
                    let (services, nodes) = cluster::read_cluster(client).await?;
                    input.services = services;
                    input.nodes = nodes;
                }
                anyhow::Ok(())
            })?;
        }
        let mut plan = migrate::convert(args.from, &input, &options);
        if input.services.is_empty() {
            plan.report.findings.push(migrate::Finding::new(
                migrate::report::Level::Warning,
                "Services",
                "none read: the report cannot say which addresses are kept (run against the cluster, or add the Services to the files: kubectl get svc -A -o yaml)",
            ));
        }
        if let Some(path) = &args.report {
            let json = serde_json::to_string_pretty(&plan.report)?;
            std::fs::write(path, json + "\n").with_context(|| format!("cannot write {}", path.display()))?;
        }
        eprint!("{}", plan.report.text());
        let blocked = plan.report.at_risk() > 0 || plan.report.errors() > 0;
        if !args.apply {
            let docs = plan.documents();
            let text = match args.output {
                purelb::cli::MigrateFormat::Yaml => docs
                    .iter()
                    .map(|d| serde_yaml_ng::to_string(d).map(|y| format!("---\n{y}")))
                    .collect::<Result<String, _>>()?,
                purelb::cli::MigrateFormat::Json => {
                    serde_json::to_string_pretty(
                        &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": docs}),
                    )? + "\n"
                }
            };
            print(&text);
            return Ok(ExitCode::from(if blocked && !args.allow_changes { REFUSED } else { 0 }));
        }
        if blocked && !args.allow_changes {
            eprintln!(
                "purelb migrate: nothing applied: {} Service(s) at risk, {} error(s); fix them, or pass --allow-changes to apply anyway",
                plan.report.at_risk(),
                plan.report.errors()
            );
            return Ok(ExitCode::from(REFUSED));
        }
        let Some(client) = client else { anyhow::bail!("--apply needs a cluster") };
        let applied = runtime.block_on(cluster::apply(&client, &plan, &options.namespace))?;
        let changed = applied.iter().filter(|a| a.changed).count();
        for a in &applied {
            println!("{} {}", if a.changed { "applied  " } else { "unchanged" }, a.object);
        }
        println!("{changed} changed, {} unchanged", applied.len() - changed);
        Ok(ExitCode::SUCCESS)
    }

    pub fn validate(args: &ValidateArgs) -> anyhow::Result<ExitCode> {
        let report = if args.files.is_empty() {
            let read = super::runtime().and_then(|rt| {
                rt.block_on(async {
                    let client = snapshot::client(&args.cluster.target()).await?;
                    let snap = snapshot::Snapshot::read(&client, &args.cluster.namespace).await?;
                    anyhow::Ok(validate::validate_cluster(&snap, &args.cluster.lb_class))
                })
            });
            match read {
                Ok(report) => report,
                Err(error) => return or_fail(Err(error)),
            }
        } else {
            let files = read_inputs(&args.files)?;
            validate::validate_files(&files, &args.cluster.namespace, &args.cluster.lb_class)
        };
        print(&output::render(args.output, &report, validate::Report::text).map_err(anyhow::Error::msg)?);
        Ok(ExitCode::from(report.exit_code(args.strict)))
    }
}
