//! `cordon`: parse the command line, set up tracing, dispatch to `cli/`.

mod approvals;
mod audit;
mod capture;
mod cli;
mod config;
mod control;
mod grants;
mod identity;
mod masking;
mod pins;
mod policy;
mod proxy;
mod vault;

pub(crate) use audit::rfc3339;

use std::{ffi::OsString, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};

/// mimalloc: the proxy's per-statement allocations (parse trees, decisions,
/// audit records) cost a tenth of the daemon's CPU in glibc malloc under
/// `cargo xtask bench postgres`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "cordon",
    version,
    about = "Kernel-enforced egress gateway for AI agents and other workloads"
)]
struct Cli {
    /// Config file of the daemon to run or talk to.
    #[arg(long, global = true, env = "CORDON_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (or remove everything it pinned, with --uninstall).
    Daemon {
        /// Detach and unpin every program and map, remove agent cgroups, exit.
        #[arg(long)]
        uninstall: bool,
    },
    /// Run a command inside an agent's cgroup (it joins before exec).
    Run {
        #[arg(long)]
        agent: String,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<OsString>,
    },
    /// Pin an existing cgroup (e.g. a systemd unit's) as an agent's.
    Pin {
        #[arg(long)]
        agent: String,
        #[arg(long)]
        cgroup: PathBuf,
    },
    /// Show the daemon's programs, agents, listener and counts.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Recorded sessions.
    Sessions {
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// Play a recorded session back: SSH terminal output, or a transcript.
    ///
    /// An SSH session: its terminal output (the channel with a pty, else the
    /// first with output) is written raw to stdout (stderr output to
    /// stderr) with its original timing; idle gaps longer than 2 s are
    /// shortened to 2 s (before --speed applies). Other sessions: the
    /// transcript of statements, verdicts, rules, timing, rows and masked
    /// columns.
    Replay {
        id: String,
        /// Playback speed factor: 2 plays twice as fast, 0.5 half as fast.
        #[arg(long, default_value_t = 1.0, value_parser = cli::replay::parse_speed)]
        speed: f64,
        /// Write all output at once, without the pauses.
        #[arg(long)]
        no_wait: bool,
    },
    /// Write a recorded SSH session as asciicast v2 or JSON lines.
    ///
    /// asciicast: the terminal channel (as `replay` picks it), for asciinema
    /// and other players. jsonl: every event of every channel, one JSON
    /// object a line, bytes in base64.
    Export {
        id: String,
        #[arg(long, value_enum)]
        format: cli::export::Format,
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// What an agent's ssh client needs: an ssh_config snippet, or (with
    /// --known-hosts) the known_hosts lines for Cordon's host key.
    SshConfig {
        #[arg(long)]
        agent: String,
        /// Print only the known_hosts lines.
        #[arg(long)]
        known_hosts: bool,
        /// The known_hosts file the snippet names (default ~/.ssh/cordon_known_hosts).
        #[arg(long)]
        known_hosts_file: Option<PathBuf>,
    },
    /// Record the host key an ssh resource's upstream presents (trust on first use).
    SshTrust {
        resource: String,
        /// Replace a different key recorded before (a deliberate host key rotation).
        #[arg(long)]
        replace: bool,
    },
    /// Policy files.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Log in as a human with the OpenID Connect provider of [identity.oidc]:
    /// device authorization flow, or auth code + PKCE with --browser. The
    /// daemon holds the login for your uid (nothing is written to disk).
    Login {
        /// Use this issuer instead of the config's.
        #[arg(long)]
        issuer: Option<String>,
        /// Use this client id instead of the config's.
        #[arg(long)]
        client_id: Option<String>,
        /// Log in through a browser redirected to a 127.0.0.1 listener.
        #[arg(long)]
        browser: bool,
        /// Accept a plain-http provider on a loopback address (tests only;
        /// as `allow_http_loopback = true` in [identity.oidc]).
        #[arg(long)]
        allow_http_loopback: bool,
    },
    /// Drop the login the daemon holds for you.
    Logout,
    /// Who the daemon takes you for: your `cordon login`, or local root.
    Whoami {
        #[arg(long)]
        json: bool,
    },
    /// Credentials the proxy injects upstream (values are never shown).
    Vault {
        #[command(subcommand)]
        command: VaultCommand,
    },
    /// Ask for a just-in-time grant; it goes live once reviewers approve it.
    /// Needs `cordon login` (or root).
    Request {
        #[arg(long)]
        agent: String,
        #[arg(long)]
        resource: String,
        /// What the grant allows, mapped onto the resource's policy
        /// (comma-separated; default read).
        #[arg(long, value_enum, value_delimiter = ',')]
        actions: Vec<grants::GrantAction>,
        /// How long the grant lives once approved: 90s, 30m, 1h30m, 2d.
        #[arg(long, value_parser = cli::request::parse_ttl)]
        ttl: std::time::Duration,
        /// Why; reviewers judge the request by it.
        #[arg(long)]
        reason: String,
        /// postgres: the only role the grant lets the agent ask for.
        #[arg(long)]
        role: Option<String>,
        /// postgres: the only database the grant lets the agent ask for.
        #[arg(long)]
        database: Option<String>,
        /// ssh: the only user name the grant lets the agent log in as.
        /// Without --role/--database/--login, the pins of the agent's
        /// configured grants on the resource apply.
        #[arg(long)]
        login: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Pending grant requests and held commands you may decide.
    Approvals {
        #[command(subcommand)]
        command: ApprovalsCommand,
    },
    /// Approve a grant request (g...) or a held command (h...).
    Approve {
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Deny a grant request (g...) or a held command (h...).
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Static and just-in-time grants.
    Grants {
        #[command(subcommand)]
        command: GrantsCommand,
    },
    /// Audit events: requests, approvals, denials, expiries, revocations,
    /// held commands.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
enum ApprovalsCommand {
    /// Pending grant requests and held commands (with their full text).
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum GrantsCommand {
    /// Static grants and every just-in-time grant with its state.
    List {
        #[arg(long)]
        json: bool,
    },
    /// End a live just-in-time grant and cut the sessions it admitted.
    Revoke {
        id: String,
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Events, newest first.
    List {
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Only events about this grant, held command or session.
        #[arg(long)]
        target: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SessionsCommand {
    /// List sessions, newest first.
    List {
        #[arg(long)]
        agent: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Show one session.
    Show {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate policy files (errors name the file and line).
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum VaultCommand {
    /// Store or replace an entry; the secret is read from stdin.
    Set {
        name: String,
        #[arg(long, value_enum, default_value_t = VaultKind::Password)]
        kind: VaultKind,
    },
    /// List entries: name, kind and last change, never values.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove an entry.
    Rm { name: String },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum VaultKind {
    Password,
    SshKey,
    Token,
}

impl From<VaultKind> for vault::SecretKind {
    fn from(k: VaultKind) -> Self {
        match k {
            VaultKind::Password => Self::Password,
            VaultKind::SshKey => Self::SshKey,
            VaultKind::Token => Self::Token,
        }
    }
}

fn init_tracing(daemon: bool) {
    let default = if daemon { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CORDON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = config::locate(cli.config);
    init_tracing(matches!(cli.command, Command::Daemon { .. }));
    let result = match cli.command {
        Command::Daemon { uninstall } => cli::daemon::run(&config, uninstall),
        Command::Run { agent, command } => cli::run::run(&config, &agent, &command),
        Command::Pin { agent, cgroup } => cli::pin::run(&config, &agent, &cgroup),
        Command::Status { json } => cli::status::run(&config, json),
        Command::Sessions { command } => match command {
            SessionsCommand::List { agent, limit, json } => {
                cli::sessions::list(&config, agent, limit, json)
            }
            SessionsCommand::Show { id, json } => cli::sessions::show(&config, &id, json),
        },
        Command::Replay { id, speed, no_wait } => cli::replay::run(&config, &id, speed, no_wait),
        Command::Export { id, format, output } => {
            cli::export::run(&config, &id, format, output.as_deref())
        }
        Command::Policy { command } => match command {
            PolicyCommand::Check { files } => cli::policy::check(&files),
        },
        Command::Login {
            issuer,
            client_id,
            browser,
            allow_http_loopback,
        } => cli::login::login(&config, issuer, client_id, browser, allow_http_loopback),
        Command::Logout => cli::login::logout(&config),
        Command::Whoami { json } => cli::login::whoami(&config, json),
        Command::SshConfig {
            agent,
            known_hosts,
            known_hosts_file,
        } => cli::ssh::config(&config, &agent, known_hosts, known_hosts_file.as_deref()),
        Command::SshTrust { resource, replace } => cli::ssh::trust(&config, &resource, replace),
        Command::Vault { command } => match command {
            VaultCommand::Set { name, kind } => cli::vault::set(&config, &name, kind.into()),
            VaultCommand::List { json } => cli::vault::list(&config, json),
            VaultCommand::Rm { name } => cli::vault::rm(&config, &name),
        },
        Command::Request {
            agent,
            resource,
            actions,
            ttl,
            reason,
            role,
            database,
            login,
            json,
        } => cli::request::run(
            &config,
            grants::jit::NewRequest {
                agent,
                resource,
                actions,
                pins: grants::Pins {
                    role,
                    database,
                    login,
                },
                ttl,
                reason,
                requested_by: String::new(),
            },
            json,
        ),
        Command::Approvals { command } => match command {
            ApprovalsCommand::List { json } => cli::approvals::list(&config, json),
        },
        Command::Approve { id, json } => cli::approvals::approve(&config, &id, json),
        Command::Deny { id, reason, json } => cli::approvals::deny(&config, &id, &reason, json),
        Command::Grants { command } => match command {
            GrantsCommand::List { json } => cli::grants::list(&config, json),
            GrantsCommand::Revoke { id, reason, json } => {
                cli::grants::revoke(&config, &id, &reason, json)
            }
        },
        Command::Audit { command } => match command {
            AuditCommand::List {
                limit,
                target,
                json,
            } => cli::audit::list(&config, limit, target, json),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cordon: {e:#}");
            ExitCode::FAILURE
        }
    }
}
