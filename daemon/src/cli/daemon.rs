//! `cordon daemon --config FILE [--uninstall]`: start-up order matters:
//! audit store (and the vault, in the same database), listeners, programs
//! (pointed at the listener), agent cgroups, control socket, then serve
//! until SIGTERM/SIGINT. Pins stay in place on exit, so agents stay
//! cordoned (refused) while the daemon is down.

use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, RwLock,
    },
    time::Duration,
};

use anyhow::Context as _;
use tracing::{info, warn};

use crate::{
    audit,
    capture::{cgroup, Capture, PinLayout},
    config::Config,
    control, identity, pins,
    proxy::{self, Gateway, Stats},
    vault,
};

/// The daemon's own cgroup under `cgroup_root` when it was started in the
/// root cgroup (agent names cannot start with `_`).
const DAEMON_CGROUP: &str = "_daemon";

/// Everything under the state directory lives here.
fn audit_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("audit")
}

pub fn run(config_path: &Path, uninstall: bool) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    if uninstall {
        return self::uninstall(&config);
    }
    // One thread: a connection never hops between workers, which on small
    // hosts costs more wakeups than the parallelism gains (measured with
    // `cargo xtask bench connect`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

fn cgroup_root(config: &Config, mount: &Path) -> PathBuf {
    config
        .daemon
        .cgroup_root
        .clone()
        .unwrap_or_else(|| mount.join("cordon"))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let state_dir = config.daemon.state_dir.clone();
    create_private_dir(&state_dir)?;
    let audit =
        Arc::new(audit::Store::open(&audit_dir(&state_dir)).context("opening the session store")?);
    let vault = Arc::new(
        vault::Vault::open(audit.db(), &state_dir).context("opening the credential vault")?,
    );
    info!(key = %vault.key_path().display(), "credential vault open");
    let postgres = proxy::postgres::Shared::new(&config, audit.db())
        .context("preparing the postgres handler")?;
    let ssh = proxy::ssh::Shared::new(&config, audit.db()).context("preparing the ssh handler")?;
    let stop = Arc::new(AtomicBool::new(false));
    let checkpointer = spawn_checkpointer(audit.clone(), stop.clone());

    let mount = cgroup::cgroup2_mount()?;
    let root = cgroup_root(&config, &mount);
    if !root.starts_with(&mount) {
        anyhow::bail!(
            "{}: key `daemon.cgroup_root`: {} is not inside the cgroup2 mount {}",
            config.file.display(),
            root.display(),
            mount.display()
        );
    }
    cgroup::create(&root)?;

    let listen = config.daemon.listen;
    let listeners = proxy::bind(listen)
        .with_context(|| format!("binding the proxy on {listen} and [::1]:{}", listen.port()))?;

    let layout = PinLayout {
        root: config.daemon.bpffs.clone(),
    };
    let mut capture = Capture::load(layout, listen)?;
    capture.set_dns(&config.daemon.dns_resolvers)?;
    let unix: Vec<Vec<u8>> = config
        .daemon
        .unix_allow
        .iter()
        .map(|n| n.sun_path())
        .collect();
    capture.set_unix_allow(&unix)?;
    if !unix.is_empty() && !capture.unix_enforced() {
        anyhow::bail!(
            "{}: key `daemon.unix_allow`: this kernel has neither BPF LSM nor cgroup unix-socket hooks (>= 6.7), so a unix-socket allow list cannot be enforced; remove the key (agents started with `cordon run` then get no unix sockets at all)",
            config.file.display()
        );
    }

    // The kernel programs exempt nobody, so a daemon inside an agent cgroup
    // would capture its own upstream connections.
    let own_cgroup = cgroup::of_process(&mount, std::process::id())
        .context("finding the daemon's own cgroup")?;
    let identity = identity::Registry::default();
    let runtime_pins = pins::load(&state_dir);
    for (index, agent) in config.agents.iter().enumerate() {
        let name = agent.name.as_str();
        // A remembered `cordon pin` whose cgroup has since gone (its unit
        // stopped) falls back to the configured cgroup.
        let pinned = runtime_pins.get(name).filter(|p| {
            let alive = p.join("cgroup.procs").exists();
            if !alive {
                warn!(agent = name, cgroup = %p.display(), "pinned cgroup is gone; using the configured one");
            }
            alive
        });
        let path = match (pinned, &agent.cgroup) {
            (Some(p), _) | (None, Some(p)) => {
                cgroup::check_inside(&mount, p).with_context(|| format!("agent `{name}`"))?;
                p.clone()
            }
            (None, None) => {
                let p = root.join(name);
                cgroup::create(&p)?;
                p
            }
        };
        cgroup::check_ancestors_locked(&mount, &path).with_context(|| format!("agent `{name}`"))?;
        if own_cgroup.starts_with(&path) {
            anyhow::bail!(
                "the daemon runs inside agent `{name}`'s cgroup {}: start it outside every agent cgroup",
                path.display()
            );
        }
        let attached = capture
            .attach_agent(name, index as u32, &path)
            .with_context(|| format!("attaching agent `{name}` to {}", path.display()))?;
        identity.register(attached.id, agent.name.clone(), path);
    }
    let keep: Vec<&str> = config.agents.iter().map(|a| a.name.as_str()).collect();
    for gone in capture.detach_others(&keep)? {
        info!(agent = %gone, "detached an agent no longer in the config");
    }
    // SO_ORIGINAL_DST for code in the daemon's cgroup. Started by hand (no
    // systemd), the daemon sits in the host's root cgroup: hooking every
    // getsockopt on the host is not ours to do, so it moves to a cgroup of
    // its own next to the agents'.
    let daemon_cgroup = if own_cgroup == mount {
        let dir = root.join(DAEMON_CGROUP);
        cgroup::create(&dir)?;
        cgroup::add_process(&dir, std::process::id())?;
        dir
    } else {
        own_cgroup
    };
    if let Err(e) = capture.attach_daemon_cgroup(&daemon_cgroup) {
        warn!(error = %e, "SO_ORIGINAL_DST support unavailable");
    }

    let control = control::bind(&config.daemon.control_socket)?;
    // After `proxy::bind`, which raised the open-file limit the slots are
    // sized against.
    let stats = Stats {
        allowed: Default::default(),
        denied: Default::default(),
        active: Default::default(),
        slots: proxy::Slots::new(&config),
    };
    let live = crate::grants::LiveSessions::default();
    let approvals = Arc::new(
        crate::approvals::Approvals::open(&config, audit.clone(), live.clone())
            .context("opening the approvals and grants store")?,
    );
    let gw = Arc::new(Gateway {
        config,
        capture: RwLock::new(capture),
        identity,
        audit: audit.clone(),
        vault,
        postgres,
        ssh,
        stats,
        pipes: proxy::splice::PipePool::default(),
        deferred: audit.deferred(),
        live,
        approvals: approvals.clone(),
        logins: Default::default(),
        refusals: Default::default(),
    });
    tokio::spawn(proxy::write_rate_limited_summaries(gw.clone()));
    tokio::spawn(crate::approvals::run_expiry(approvals));
    for listener in listeners {
        tokio::spawn(proxy::serve(gw.clone(), listener));
    }
    tokio::spawn(control::serve(gw.clone(), control));
    info!(
        listen = %listen,
        agents = gw.config.agents.len(),
        control = %gw.config.daemon.control_socket.display(),
        "cordon daemon ready"
    );

    wait_for_shutdown().await?;
    info!("shutting down; agent cgroups stay cordoned (pins kept)");
    proxy::flush_rate_limited_summaries(&gw);
    stop.store(true, Ordering::Relaxed);
    let _ = checkpointer.join();
    audit.checkpoint().context("final audit checkpoint")?;
    Ok(())
}

async fn wait_for_shutdown() -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    Ok(())
}

fn spawn_checkpointer(
    audit: Arc<audit::Store>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(500));
            if let Err(e) = audit.checkpoint() {
                warn!(error = %e, "audit checkpoint failed");
            }
        }
    })
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting mode 0700 on {}", dir.display()))
}

/// Removes every pin (so nothing stays attached), the agent cgroups this
/// daemon created, and the control socket.
fn uninstall(config: &Config) -> anyhow::Result<()> {
    let layout = PinLayout {
        root: config.daemon.bpffs.clone(),
    };
    let removed = crate::capture::uninstall(&layout)?;
    println!(
        "removed pins under {} ({} agent link sets)",
        layout.root.display(),
        removed.len()
    );
    let mount = cgroup::cgroup2_mount()?;
    let root = cgroup_root(config, &mount);
    let mut problems = Vec::new();
    for agent in &config.agents {
        if agent.cgroup.is_some() {
            continue; // not ours to remove
        }
        let path = root.join(agent.name.as_str());
        if let Err(e) = cgroup::remove(&path) {
            problems.push(format!("{e} (processes still inside?)"));
        }
    }
    // Empty once the daemon has stopped.
    let _ = std::fs::remove_dir(root.join(DAEMON_CGROUP));
    if config.daemon.cgroup_root.is_none() || root.exists() {
        let _ = std::fs::remove_dir(&root);
    }
    let _ = std::fs::remove_file(&config.daemon.control_socket);
    if problems.is_empty() {
        println!("removed agent cgroups under {}", root.display());
        Ok(())
    } else {
        anyhow::bail!("uninstall incomplete: {}", problems.join("; "))
    }
}
