//! `cargo xtask`: project chores (setup, the whole test suite, demo, bench).
//!
//! Every subcommand prints progress to stdout; on error the full context chain
//! is printed to stderr and the process exits with status 1.

mod bench;
mod bench_pg;
mod bench_ssh;
mod demo;
mod gateway;
mod setup;
mod suite;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use util::workspace_root;

#[derive(Parser)]
#[command(name = "xtask", about = "Cordon project tasks", version)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what is missing: nightly + rust-src, bpf-linker, Debian packages, bpffs.
    Setup,
    /// Run setup, then fmt --check, clippy, build and the whole test suite.
    Test,
    /// Run the end-to-end demo.
    Demo,
    /// Run a benchmark.
    Bench {
        /// Which benchmark to run.
        kind: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Test => suite::run(),
        Task::Demo => setup::run().and_then(|()| demo::run()),
        Task::Bench { kind } => setup::run().and_then(|()| bench::run(&kind)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
