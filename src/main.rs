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
        Command::Allocator(_) => Ok(not_built("allocator")),
        Command::Agent(_) => Ok(not_built("agent")),
        Command::Reconcile(_) => Ok(not_built("reconcile")),
    }
}
