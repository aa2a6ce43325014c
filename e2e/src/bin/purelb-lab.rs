//! `purelb-lab`: the API emulator and the network-namespace lab. Not built yet; it says so
//! and exits 2 rather than pretending to work.

use std::process::ExitCode;

fn main() -> ExitCode {
    let sub = std::env::args().nth(1).unwrap_or_default();
    eprintln!(
        "purelb-lab {sub}: the API emulator and network-namespace lab are not built yet (issue \"Test ground\"); nothing was done"
    );
    ExitCode::from(2)
}
