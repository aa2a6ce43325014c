//! `purelb-lab`: the Kubernetes API emulator and the network-namespace lab.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};
use purelb_e2e::apiserver::{Emulator, EmulatorOptions};

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

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the Kubernetes API emulator over HTTP.
    Apiserver {
        /// Address to listen on, e.g. 127.0.0.1:6443.
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
        /// Keep state in this directory so it survives a restart.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Authorization mode.
        #[arg(long, value_enum)]
        authorize: Option<Authorize>,
        /// Kubernetes version to report.
        #[arg(long, default_value = "v1.33.0")]
        version: String,
        /// Map a bearer token to a user: TOKEN=USER (repeatable), e.g. t1=system:serviceaccount:purelb-system:agent.
        #[arg(long = "token", value_name = "TOKEN=USER")]
        tokens: Vec<String>,
        /// Write a kubeconfig for this server (admin, no token) to this path.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
    /// Build the lab (not built yet).
    Up,
    /// Tear the lab down (not built yet).
    Down,
    /// Show PureLB working end to end (not built yet).
    Demo,
    /// Serve HTTP in lab nodes (not built yet).
    Serve,
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
    match cli.command {
        Command::Apiserver { listen, data_dir, authorize, version, tokens, kubeconfig } => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("purelb-lab: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(async move {
                let options =
                    EmulatorOptions { data_dir, authorize: authorize.is_some(), version, ..EmulatorOptions::default() };
                let emulator = match Emulator::start(options) {
                    Ok(e) => e,
                    Err(e) => {
                        eprintln!("purelb-lab apiserver: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                for pair in tokens {
                    let Some((token, user)) = pair.split_once('=') else {
                        eprintln!("purelb-lab apiserver: --token {pair:?} must be TOKEN=USER");
                        return ExitCode::from(2);
                    };
                    emulator.add_token(token, user);
                }
                let server = match emulator.serve(listen).await {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("purelb-lab apiserver: {e}");
                        return ExitCode::FAILURE;
                    }
                };
                if let Some(path) = kubeconfig
                    && let Err(e) = purelb_e2e::apiserver::write_kubeconfig(&path, &server.url(), None, "default")
                {
                    eprintln!("purelb-lab apiserver: cannot write {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
                eprintln!("purelb-lab apiserver: serving the Kubernetes API on {}", server.url());
                tokio::select! {
                    () = server.wait() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
                ExitCode::SUCCESS
            })
        }
        Command::Up | Command::Down | Command::Demo | Command::Serve => {
            eprintln!(
                "purelb-lab: the network-namespace lab is not built yet; only `purelb-lab apiserver` works in this build"
            );
            ExitCode::from(2)
        }
    }
}
