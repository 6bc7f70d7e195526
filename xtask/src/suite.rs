//! `cargo xtask test`: setup, then every check CI makes, in order, stopping at
//! the first failure.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::util::{run as run_cmd, target_dir, workspace_root};

pub fn run() -> Result<()> {
    let root = workspace_root();
    let bin_dir = target_dir().join("debug");
    let started = Instant::now();
    let mut done: Vec<(&str, Duration)> = Vec::new();

    let result = (|| -> Result<()> {
        let step = "setup";
        let t = Instant::now();
        println!("==> {step}");
        crate::setup::run().with_context(|| format!("step `{step}` failed"))?;
        done.push((step, t.elapsed()));

        let mut test = cargo(&[
            "test",
            "--workspace",
            "--exclude",
            "cordon-ebpf",
            "--",
            "--test-threads=1",
        ]);
        test.env("CORDON_TEST_BIN_DIR", &bin_dir);
        let steps = [
            ("fmt", cargo(&["fmt", "--all", "--", "--check"])),
            (
                "clippy",
                cargo(&[
                    "clippy",
                    "--workspace",
                    "--exclude",
                    "cordon-ebpf",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ]),
            ),
            (
                "build",
                cargo(&["build", "--workspace", "--exclude", "cordon-ebpf", "--bins"]),
            ),
            ("test", test),
        ];
        for (step, mut cmd) in steps {
            let t = Instant::now();
            println!("==> {step}: {}", crate::util::describe(&cmd));
            run_cmd(cmd.current_dir(&root)).with_context(|| format!("step `{step}` failed"))?;
            done.push((step, t.elapsed()));
        }
        Ok(())
    })();

    let passed: Vec<String> = done
        .iter()
        .map(|(s, d)| format!("{s} {:.1}s", d.as_secs_f64()))
        .collect();
    let total = started.elapsed().as_secs_f64();
    match &result {
        Ok(()) => println!(
            "xtask test: PASSED ({}; total {total:.1}s)",
            passed.join(", ")
        ),
        Err(e) => println!(
            "xtask test: FAILED: {e} (passed before it: {}; total {total:.1}s)",
            if passed.is_empty() {
                "none".to_owned()
            } else {
                passed.join(", ")
            }
        ),
    }
    result
}

fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.args(args);
    cmd
}
