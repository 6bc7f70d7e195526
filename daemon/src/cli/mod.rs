//! One file per subcommand. Everything but `daemon` talks to a running
//! daemon over its control socket.

pub mod approvals;
pub mod audit;
pub mod daemon;
pub mod export;
pub mod grants;
pub mod login;
pub mod pin;
pub mod policy;
pub mod replay;
pub mod request;
pub mod run;
pub mod sessions;
pub mod ssh;
pub mod status;
pub mod vault;

use std::path::Path;

use anyhow::Context as _;

use crate::{config::Config, control};

/// Loads the config only to find the daemon's control socket.
fn socket(config: &Path) -> anyhow::Result<std::path::PathBuf> {
    let cfg = Config::load(config).context("loading config to find the daemon")?;
    Ok(cfg.daemon.control_socket)
}

fn call(config: &Path, request: &control::Request) -> anyhow::Result<serde_json::Value> {
    let sock = socket(config)?;
    Ok(control::client::call(&sock, request)?)
}

fn call_typed<T: serde::de::DeserializeOwned>(
    config: &Path,
    request: &control::Request,
) -> anyhow::Result<T> {
    let data = call(config, request)?;
    serde_json::from_value(data).context("the daemon's reply has an unexpected shape")
}
