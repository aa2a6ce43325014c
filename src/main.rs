//! The `purelb` binary: parses the command line and runs one subcommand.

use std::{io::Write, process::ExitCode};

use clap::Parser;
use purelb::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("purelb: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Status for a subcommand whose issue has not landed yet: it never pretends to work.
const NOT_BUILT: u8 = 2;

fn not_built(name: &str) -> ExitCode {
    eprintln!("purelb {name}: not implemented yet in this build; nothing was done");
    ExitCode::from(NOT_BUILT)
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
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
        Command::Agent(_) => Ok(not_built("agent")),
        Command::Reconcile(_) => Ok(not_built("reconcile")),
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
            api_timeout: std::time::Duration::from_secs(10),
        };
        let gate = if args.leader_elect {
            anyhow::bail!(
                "leader election is not built yet in this build: run with --leader-elect=false (one replica)"
            );
        } else {
            controller::WriteGate::always()
        };
        controller::run(client, settings, gate, readiness, process::shutdown_signal()).await?;
        Ok(ExitCode::SUCCESS)
    })
}
