//! One session channel: the agent's channel and the upstream's, relayed by two tasks.
//!
//! - agent -> upstream ([`from_agent`]): every request is decided here. pty-req, env (LANG and
//!   LC_* only), window-change and signals are passed on; exec, shell and subsystem go through
//!   the SSH policy; X11 and agent forwarding are refused. Data reaches the upstream only after
//!   a command was allowed, through the sftp inspector for sftp channels, through the scp
//!   stream inspector for legacy `scp -t` uploads, and through the typed-line check for
//!   interactive shells with a pty (best effort: see README).
//! - upstream -> agent ([`from_upstream`]): output, stderr, exit status and signals, replies to
//!   the requests passed on (in order), EOF and close.
//!
//! A denied request is answered on the channel: success, a `cordon: denied ...` line on stderr,
//! exit status [`DENIED_STATUS`], EOF and close. The connection stays usable for other channels.

use std::{
    collections::VecDeque,
    sync::{atomic::Ordering, Arc, Mutex},
};

use bytes::Bytes;
use russh::{client, server, Channel, ChannelId, ChannelMsg, ChannelReadHalf, ChannelWriteHalf};
use tokio::sync::oneshot;
use tracing::{debug, info};

use super::{scp, sftp, Conn};
use crate::{
    audit::recording::EventKind,
    policy::{
        ssh::{FileAccess, SshDecision, SshPolicy},
        Action,
    },
};

/// Exit status of a command Cordon refused (as a shell reports a command it cannot execute).
pub const DENIED_STATUS: u32 = 126;

/// Longest line the typed-line check keeps; a longer one cannot be checked and is refused.
const MAX_TYPED_LINE: usize = 4096;

/// What the channel runs, once a request was allowed.
enum Mode {
    /// No exec/shell/subsystem yet: agent data is not passed on.
    Idle,
    /// A command or a shell without a pty: data passes as it is.
    Plain,
    /// An interactive shell with a pty: typed lines are checked.
    Typed(LineWatch),
    /// A shell without a pty: it reads commands from stdin, line by line; every line is
    /// checked before the shell sees it (a denied line never reaches the host).
    Lines(Vec<u8>),
    /// The sftp subsystem: every packet is inspected.
    Sftp,
    /// A legacy scp upload (`scp -t TARGET`): every file and directory name in the
    /// client's stream is checked against the file rules.
    ScpSink(scp::Sink),
}

struct Shared {
    conn: Arc<Conn>,
    agent_id: ChannelId,
    rec: u32,
    handle: server::Handle,
    agent_tx: ChannelWriteHalf<server::Msg>,
    /// Replies the upstream owes, in order: true = success.
    replies: Mutex<VecDeque<oneshot::Sender<bool>>>,
    sftp: Mutex<Option<sftp::Inspector>>,
}

pub(super) async fn run(
    conn: Arc<Conn>,
    handle: server::Handle,
    agent: Channel<server::Msg>,
    upstream: Channel<client::Msg>,
) {
    let agent_id = agent.id();
    let (agent_rx, agent_tx) = agent.split();
    let (up_rx, up_tx) = upstream.split();
    let shared = Arc::new(Shared {
        conn: conn.clone(),
        agent_id,
        rec: agent_id.into(),
        handle,
        agent_tx,
        replies: Mutex::new(VecDeque::new()),
        sftp: Mutex::new(None),
    });
    let down = tokio::spawn(from_upstream(shared.clone(), up_rx));
    from_agent(shared.clone(), agent_rx, up_tx).await;
    let _ = down.await;
    if let Ok(Some(mut inspector)) = shared.sftp.lock().map(|mut s| s.take()) {
        record_file_events(&shared, inspector.finish());
    }
    shared.conn.recorder.event(shared.rec, EventKind::Close);
    conn.channels.fetch_sub(1, Ordering::AcqRel);
}

async fn from_agent(sh: Arc<Shared>, mut rx: ChannelReadHalf, up: ChannelWriteHalf<client::Msg>) {
    let policy = sh
        .conn
        .policy
        .get()
        .cloned()
        .unwrap_or_else(|| sh.conn.ssh.policy.clone());
    let mut mode = Mode::Idle;
    let mut pty = false;
    while let Some(msg) = rx.wait().await {
        if stop_unrecorded(&sh).await {
            break;
        }
        let keep = match msg {
            ChannelMsg::Data { data } => agent_data(&sh, &up, &mut mode, &policy, data).await,
            ChannelMsg::ExtendedData { .. } => true,
            ChannelMsg::Eof => {
                // A last line without a newline is a command too.
                if let Mode::Lines(rest) = &mut mode {
                    if !rest.is_empty() {
                        let line = std::mem::take(rest);
                        if let Some(pass) = stdin_line(&sh, &policy, line).await {
                            let _ = up.data_bytes(pass).await;
                        }
                    }
                }
                sh.conn.recorder.event(sh.rec, EventKind::Eof);
                up.eof().await.is_ok()
            }
            ChannelMsg::Close => false,
            ChannelMsg::RequestPty {
                term,
                col_width,
                row_height,
                pix_width,
                pix_height,
                terminal_modes,
                ..
            } => {
                sh.conn.recorder.event(
                    sh.rec,
                    EventKind::Pty {
                        term: term.clone(),
                        cols: col_width,
                        rows: row_height,
                    },
                );
                let modes = pty_modes(&terminal_modes);
                let ok = forward(&sh, || {
                    up.request_pty(
                        true, &term, col_width, row_height, pix_width, pix_height, &modes,
                    )
                })
                .await;
                pty |= ok;
                reply(&sh, ok).await
            }
            ChannelMsg::SetEnv {
                want_reply,
                variable_name,
                variable_value,
            } => {
                let ok = env_allowed(&variable_name, &variable_value);
                record_request(
                    &sh,
                    "env",
                    &variable_name,
                    if ok { Action::Allow } else { Action::Deny },
                    "builtin/env",
                    (!ok).then(|| "only LANG and LC_* are passed to the host".to_owned()),
                );
                if ok {
                    let _ = up.set_env(false, variable_name, variable_value).await;
                }
                if want_reply {
                    reply(&sh, ok).await
                } else {
                    true
                }
            }
            ChannelMsg::WindowChange {
                col_width,
                row_height,
                pix_width,
                pix_height,
            } => {
                sh.conn.recorder.event(
                    sh.rec,
                    EventKind::Resize {
                        cols: col_width,
                        rows: row_height,
                    },
                );
                up.window_change(col_width, row_height, pix_width, pix_height)
                    .await
                    .is_ok()
            }
            ChannelMsg::Signal { signal } => {
                record_request(
                    &sh,
                    "signal",
                    &format!("{signal:?}"),
                    Action::Allow,
                    "builtin/signal",
                    None,
                );
                up.signal(signal).await.is_ok()
            }
            ChannelMsg::RequestX11 { .. } => {
                record_request(
                    &sh,
                    "x11",
                    "",
                    Action::Deny,
                    "builtin/x11-forwarding",
                    Some("X11 forwarding is not allowed through cordon".into()),
                );
                reply(&sh, false).await
            }
            // Answered by the handler (refused); recorded there.
            ChannelMsg::AgentForward { .. } => true,
            ChannelMsg::RequestShell { .. } => {
                if !matches!(mode, Mode::Idle) {
                    reply(&sh, false).await
                } else {
                    let d = policy.decide_shell();
                    record_decision(&sh, "shell", "", &d);
                    let d = held(&sh, "shell", "interactive shell", d).await;
                    if d.action == Action::Allow {
                        let ok = forward(&sh, || up.request_shell(true)).await;
                        if ok {
                            mode = if pty {
                                Mode::Typed(LineWatch::default())
                            } else {
                                Mode::Lines(Vec::new())
                            };
                        }
                        reply(&sh, ok).await
                    } else {
                        refuse(&sh, &up, &d, "an interactive shell").await;
                        false
                    }
                }
            }
            ChannelMsg::Exec { command, .. } => {
                if !matches!(mode, Mode::Idle) {
                    reply(&sh, false).await
                } else {
                    let d = match std::str::from_utf8(&command) {
                        Ok(text) => policy.decide_exec(text),
                        Err(_) => SshDecision {
                            action: Action::Deny,
                            rule: "builtin/encoding".into(),
                            reason: "the command is not valid UTF-8".into(),
                        },
                    };
                    let text = String::from_utf8_lossy(&command).into_owned();
                    let scp_target = SshPolicy::scp_upload_target(&text);
                    let d = if d.action != Action::Deny && pty && scp_target.is_some() {
                        // Through a terminal the host's line discipline rewrites the
                        // stream, so the names the scp inspector reads are not the ones
                        // the host's scp would.
                        SshDecision {
                            action: Action::Deny,
                            rule: "builtin/scp-terminal".into(),
                            reason: "a legacy scp upload with a terminal cannot be inspected"
                                .into(),
                        }
                    } else {
                        d
                    };
                    record_decision(&sh, "exec", &text, &d);
                    let d = held(&sh, "exec", &text, d).await;
                    if d.action == Action::Allow {
                        let ok = forward(&sh, || up.exec(true, command.clone())).await;
                        if ok {
                            // With a terminal, a command can read lines and run them (a
                            // pager's `!cmd`, an editor's shell escape): they are checked
                            // like lines typed in a shell.
                            mode = if pty {
                                Mode::Typed(LineWatch::default())
                            } else if let Some(target) = scp_target {
                                // Legacy scp upload: the client names the files in the
                                // stream; each name is checked before the host sees it.
                                Mode::ScpSink(scp::Sink::new(target))
                            } else {
                                Mode::Plain
                            };
                        }
                        reply(&sh, ok).await
                    } else {
                        refuse(&sh, &up, &d, "this command").await;
                        false
                    }
                }
            }
            ChannelMsg::RequestSubsystem { name, .. } => {
                if !matches!(mode, Mode::Idle) {
                    reply(&sh, false).await
                } else {
                    let d = policy.decide_subsystem(&name);
                    record_decision(&sh, "subsystem", &name, &d);
                    let d = held(&sh, "subsystem", &name, d).await;
                    if d.action == Action::Allow {
                        let ok = forward(&sh, || up.request_subsystem(true, name.clone())).await;
                        if ok && name == "sftp" {
                            if let Ok(mut s) = sh.sftp.lock() {
                                *s = Some(sftp::Inspector::new(Box::new(Rules(policy.clone()))));
                            }
                            mode = Mode::Sftp;
                        } else if ok {
                            mode = Mode::Plain;
                        }
                        reply(&sh, ok).await
                    } else {
                        refuse(&sh, &up, &d, &format!("the `{name}` subsystem")).await;
                        false
                    }
                }
            }
            other => {
                debug!(msg = ?other, "ssh: ignored channel message from the agent");
                true
            }
        };
        if !keep {
            break;
        }
    }
    let _ = up.close().await;
}

/// Agent data: passed on according to the channel's mode. False ends the channel.
async fn agent_data(
    sh: &Shared,
    up: &ChannelWriteHalf<client::Msg>,
    mode: &mut Mode,
    policy: &SshPolicy,
    data: Bytes,
) -> bool {
    sh.conn
        .bytes_up
        .fetch_add(data.len() as u64, Ordering::Relaxed);
    match mode {
        Mode::Idle => {
            debug!("ssh: data before any command; dropped");
            true
        }
        Mode::Plain => {
            record_input(sh, &data);
            up.data_bytes(data).await.is_ok()
        }
        Mode::Lines(partial) => {
            record_input(sh, &data);
            let mut pass = Vec::with_capacity(data.len());
            for &b in data.iter() {
                partial.push(b);
                if b == b'\n' {
                    let line = std::mem::take(partial);
                    if let Some(ok) = stdin_line(sh, policy, line).await {
                        pass.extend_from_slice(&ok);
                    }
                } else if partial.len() > MAX_TYPED_LINE {
                    // Not a command line any checker could follow: refuse it whole.
                    partial.clear();
                    let d = SshDecision {
                        action: Action::Deny,
                        rule: "builtin/typed-line".into(),
                        reason: format!("a line longer than {MAX_TYPED_LINE} bytes"),
                    };
                    record_decision(sh, "stdin-line", "", &d);
                    say_stderr(sh, &denial_text(&d, "this line")).await;
                    return false;
                }
            }
            pass.is_empty() || up.data_bytes(pass).await.is_ok()
        }
        Mode::Typed(watch) => {
            record_input(sh, &data);
            let mut pass = Vec::with_capacity(data.len());
            for &b in data.iter() {
                match watch.push(b) {
                    Typed::Pass => pass.push(b),
                    Typed::Drop => pass.push(0x07),
                    Typed::Line(line) => {
                        let d = match line {
                            Ok(line) => {
                                let d = policy.decide_typed_line(&line);
                                record_decision(sh, "typed-line", &line, &d);
                                held(sh, "typed-line", &line, d).await
                            }
                            Err(why) => {
                                let d = SshDecision {
                                    action: Action::Deny,
                                    rule: "builtin/typed-line".into(),
                                    reason: why,
                                };
                                record_decision(sh, "typed-line", "", &d);
                                d
                            }
                        };
                        if d.action == Action::Allow {
                            pass.push(b);
                        } else {
                            // Kill the line on the host (the cursor is always at its end:
                            // keys that move it are never passed on) and say why; the
                            // Enter is not sent.
                            pass.push(0x15);
                            let msg = format!("\r\n{}\r\n", denial_text(&d, "this line"));
                            // Recorded as output: it is part of what the agent's terminal shows.
                            sh.conn.recorder.event(
                                sh.rec,
                                EventKind::Output {
                                    data: msg.clone().into_bytes(),
                                },
                            );
                            let _ = sh.agent_tx.data_bytes(msg.into_bytes()).await;
                        }
                    }
                }
            }
            up.data_bytes(pass).await.is_ok()
        }
        Mode::ScpSink(sink) => {
            record_input(sh, &data);
            let check = |path: &str| -> Result<(), String> {
                let d = policy.decide_file(FileAccess::Write, path);
                match d.action {
                    Action::Allow => Ok(()),
                    _ => Err(format!("denied by {}: {}", d.rule, d.reason)),
                }
            };
            match sink.feed(&data, &check) {
                Ok(pass) => pass.is_empty() || up.data_bytes(pass).await.is_ok(),
                Err(why) => {
                    info!(reason = %why, "ssh: scp upload stopped");
                    record_request(
                        sh,
                        "scp-upload",
                        "",
                        Action::Deny,
                        "builtin/scp-stream",
                        Some(why.clone()),
                    );
                    // scp's fatal-error record (the client prints it and stops), then
                    // the channel ends here: the host's scp never saw the header.
                    let _ = sh
                        .agent_tx
                        .data_bytes(format!("\u{2}cordon: {why}\n").into_bytes())
                        .await;
                    end_channel(sh, up, &format!("cordon: scp upload stopped: {why}")).await;
                    false
                }
            }
        }
        Mode::Sftp => {
            let flow = match sh.sftp.lock() {
                Ok(mut guard) => match guard.as_mut() {
                    Some(inspector) => {
                        let flow = inspector.from_client(&data);
                        let events = inspector.take_events();
                        record_file_events(sh, events);
                        flow
                    }
                    None => return false,
                },
                Err(_) => return false,
            };
            match flow {
                Ok(flow) => {
                    if !flow.to_client.is_empty()
                        && sh.agent_tx.data_bytes(flow.to_client).await.is_err()
                    {
                        return false;
                    }
                    flow.to_server.is_empty() || up.data_bytes(flow.to_server).await.is_ok()
                }
                Err(e) => {
                    info!(error = %e, "ssh: malformed sftp stream; closing the channel");
                    record_request(
                        sh,
                        "sftp",
                        "",
                        Action::Deny,
                        "builtin/sftp-protocol",
                        Some(e.to_string()),
                    );
                    end_channel(sh, up, &format!("cordon: sftp stream refused: {e}")).await;
                    false
                }
            }
        }
    }
}

async fn from_upstream(sh: Arc<Shared>, mut rx: ChannelReadHalf) {
    while let Some(msg) = rx.wait().await {
        if stop_unrecorded(&sh).await {
            break;
        }
        let ok = match msg {
            ChannelMsg::Data { data } => {
                sh.conn
                    .bytes_down
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                let sftp = match sh.sftp.lock() {
                    Ok(mut guard) => guard.as_mut().map(|i| {
                        let out = i.from_server(&data);
                        (out, i.take_events())
                    }),
                    // The inspector's state is unusable: nothing passes uninspected.
                    Err(_) => break,
                };
                match sftp {
                    Some((Ok(out), events)) => {
                        record_file_events(&sh, events);
                        sh.agent_tx.data_bytes(out).await.is_ok()
                    }
                    Some((Err(e), _)) => {
                        info!(error = %e, "ssh: malformed sftp reply from the host");
                        false
                    }
                    None => {
                        sh.conn.recorder.event(
                            sh.rec,
                            EventKind::Output {
                                data: data.to_vec(),
                            },
                        );
                        sh.agent_tx.data_bytes(data).await.is_ok()
                    }
                }
            }
            ChannelMsg::ExtendedData { data, ext } => {
                sh.conn
                    .bytes_down
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                sh.conn.recorder.event(
                    sh.rec,
                    EventKind::Stderr {
                        data: data.to_vec(),
                    },
                );
                sh.agent_tx.extended_data_bytes(ext, data).await.is_ok()
            }
            ChannelMsg::Eof => sh.agent_tx.eof().await.is_ok(),
            ChannelMsg::ExitStatus { exit_status } => {
                sh.conn.recorder.event(
                    sh.rec,
                    EventKind::Exit {
                        status: exit_status,
                    },
                );
                sh.handle
                    .exit_status_request(sh.agent_id, exit_status)
                    .await
                    .is_ok()
            }
            ChannelMsg::ExitSignal {
                signal_name,
                core_dumped,
                error_message,
                lang_tag,
            } => {
                sh.conn.recorder.event(
                    sh.rec,
                    EventKind::Signal {
                        name: format!("{signal_name:?}"),
                        core_dumped,
                        message: error_message.clone(),
                    },
                );
                sh.handle
                    .exit_signal_request(
                        sh.agent_id,
                        signal_name,
                        core_dumped,
                        error_message,
                        lang_tag,
                    )
                    .await
                    .is_ok()
            }
            ChannelMsg::Success | ChannelMsg::Failure => {
                let waiter = sh.replies.lock().ok().and_then(|mut q| q.pop_front());
                if let Some(w) = waiter {
                    let _ = w.send(matches!(msg, ChannelMsg::Success));
                }
                true
            }
            ChannelMsg::Close => false,
            _ => true,
        };
        if !ok {
            break;
        }
    }
    // Whatever ended the upstream side: fail pending requests, close the agent's channel.
    if let Ok(mut q) = sh.replies.lock() {
        q.clear();
    }
    let _ = sh.agent_tx.close().await;
}

/// A channel of a connection Cordon refused (login not granted, upstream unreachable or its
/// host key not the pinned one): the first exec, shell or subsystem request is answered with
/// `cordon: <why>` on stderr and exit status 255, as ssh reports its own failures. Nothing
/// reaches any upstream.
pub(super) async fn refused(
    conn: Arc<Conn>,
    handle: server::Handle,
    agent: Channel<server::Msg>,
    why: String,
) {
    let id = agent.id();
    let (mut rx, tx) = agent.split();
    while let Some(msg) = rx.wait().await {
        match msg {
            ChannelMsg::RequestPty { .. }
            | ChannelMsg::SetEnv {
                want_reply: true, ..
            } => {
                let _ = handle.channel_success(id).await;
            }
            ChannelMsg::Exec { .. }
            | ChannelMsg::RequestShell { .. }
            | ChannelMsg::RequestSubsystem { .. } => {
                let _ = handle.channel_success(id).await;
                let line = format!("cordon: {why}\r\n");
                let _ = tx.extended_data_bytes(1, line.into_bytes()).await;
                let _ = handle.exit_status_request(id, 255).await;
                let _ = tx.eof().await;
                break;
            }
            ChannelMsg::RequestX11 { .. } => {
                let _ = handle.channel_failure(id).await;
            }
            ChannelMsg::Close => break,
            _ => {}
        }
    }
    let _ = tx.close().await;
    conn.channels.fetch_sub(1, Ordering::AcqRel);
}

/// Fail closed: when the recording has lost events, the channel ends (the agent reads why)
/// instead of relaying what cannot be recorded. True = stop.
async fn stop_unrecorded(sh: &Shared) -> bool {
    let Some(why) = sh.conn.recorder.failure() else {
        return false;
    };
    tracing::error!(reason = %why, "ssh: recording failed; closing the channel");
    sh.conn.set_end(format!("recording failed: {why}"));
    let line = format!("cordon: the session cannot be recorded ({why}); it is closed\r\n");
    let _ = sh.agent_tx.extended_data_bytes(1, line.into_bytes()).await;
    true
}

/// Sends a request upstream with want_reply and waits for the upstream's answer.
async fn forward<F, Fut>(sh: &Shared, send: F) -> bool
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), russh::Error>>,
{
    let (tx, rx) = oneshot::channel();
    match sh.replies.lock() {
        Ok(mut q) => q.push_back(tx),
        Err(_) => return false,
    }
    if send().await.is_err() {
        return false;
    }
    rx.await.unwrap_or(false)
}

/// Answers the agent's request. False if the connection is gone.
async fn reply(sh: &Shared, ok: bool) -> bool {
    let r = if ok {
        sh.handle.channel_success(sh.agent_id).await
    } else {
        sh.handle.channel_failure(sh.agent_id).await
    };
    r.is_ok()
}

/// One line a pty-less shell would read from stdin: checked like a typed line. Some(bytes) to
/// pass on; None when it was refused (the agent reads why on stderr; the shell never sees it).
async fn stdin_line(sh: &Shared, policy: &SshPolicy, line: Vec<u8>) -> Option<Vec<u8>> {
    let text = String::from_utf8(line.clone()).ok();
    let trimmed = text
        .as_deref()
        .map(|t| t.trim_end_matches(['\n', '\r']).to_owned());
    let d = match &trimmed {
        Some(t) if t.trim().is_empty() => return Some(line),
        Some(t) => {
            let d = policy.decide_typed_line(t);
            record_decision(sh, "stdin-line", t, &d);
            held(sh, "stdin-line", t, d).await
        }
        None => {
            let d = SshDecision {
                action: Action::Deny,
                rule: "builtin/typed-line".into(),
                reason: "the line is not valid UTF-8".into(),
            };
            record_decision(sh, "stdin-line", "", &d);
            d
        }
    };
    if d.action == Action::Allow {
        Some(line)
    } else {
        say_stderr(sh, &denial_text(&d, "this line")).await;
        None
    }
}

/// A line of Cordon's on the channel's stderr, recorded as what the agent saw.
/// The agent's bytes as the recording keeps them.
fn record_input(sh: &Shared, data: &[u8]) {
    sh.conn.recorder.event(
        sh.rec,
        EventKind::Input {
            data: data.to_vec(),
        },
    );
}

/// Ends a channel Cordon stopped mid-stream: the host's side is closed, the
/// agent reads `text` on stderr, exit status [`DENIED_STATUS`], EOF and close
/// (without them its client would wait on a channel nobody serves).
async fn end_channel(sh: &Shared, up: &ChannelWriteHalf<client::Msg>, text: &str) {
    let _ = up.close().await;
    say_stderr(sh, text).await;
    let _ = sh
        .handle
        .exit_status_request(sh.agent_id, DENIED_STATUS)
        .await;
    sh.conn.recorder.event(
        sh.rec,
        EventKind::Exit {
            status: DENIED_STATUS,
        },
    );
    let _ = sh.agent_tx.eof().await;
    let _ = sh.agent_tx.close().await;
}

async fn say_stderr(sh: &Shared, text: &str) {
    let line = format!("{text}\n");
    sh.conn.recorder.event(
        sh.rec,
        EventKind::Stderr {
            data: line.clone().into_bytes(),
        },
    );
    let _ = sh.agent_tx.extended_data_bytes(1, line.into_bytes()).await;
}

/// A decision that needs approval: the request waits (the agent's client just waits) until a
/// reviewer approves or denies it, or the hold times out. Anything else passes through.
async fn held(sh: &Shared, what: &str, command: &str, d: SshDecision) -> SshDecision {
    if d.action != Action::Approve {
        return d;
    }
    let req = crate::approvals::HoldRequest {
        session: sh.conn.session,
        agent: sh.conn.agent.to_string(),
        resource: sh.conn.resource.name.clone(),
        protocol: "ssh",
        command: if what == "exec" || what == "typed-line" {
            command.to_owned()
        } else {
            format!("[{what}] {command}")
        },
        rule: d.rule.clone(),
        reason: d.reason.clone(),
    };
    let mut cutoff = sh.conn.cutoff.watcher();
    // The grant ending (expiry, revocation) ends the wait; the connection then closes.
    let outcome = tokio::select! {
        o = sh.conn.gw.approvals.hold(req) => o,
        why = cutoff.fired() => crate::approvals::Outcome::Unavailable(why),
    };
    let (action, reason) = match outcome {
        crate::approvals::Outcome::Approved { by } => (Action::Allow, format!("approved by {by}")),
        crate::approvals::Outcome::Denied { by, reason } => (
            Action::Deny,
            format!("a reviewer ({by}) denied it: {reason}"),
        ),
        crate::approvals::Outcome::TimedOut { after } => (
            Action::Deny,
            format!("no reviewer approved it within {} s", after.as_secs()),
        ),
        crate::approvals::Outcome::Unavailable(why) => (
            Action::Deny,
            format!("it could not be held for approval: {why}"),
        ),
    };
    let d = SshDecision {
        action,
        rule: d.rule,
        reason,
    };
    record_request(
        sh,
        &format!("{what}-approval"),
        command,
        d.action,
        &d.rule,
        Some(d.reason.clone()),
    );
    d
}

fn denial_text(d: &SshDecision, what: &str) -> String {
    match d.action {
        Action::Approve => format!("cordon: {what} needs approval ({}): {}", d.rule, d.reason),
        _ => format!("cordon: denied by {}: {}", d.rule, d.reason),
    }
}

/// Refuses the channel's command: the agent's request succeeds, then it reads why on stderr,
/// gets a non-zero exit status and the channel closes.
async fn refuse(sh: &Shared, up: &ChannelWriteHalf<client::Msg>, d: &SshDecision, what: &str) {
    info!(rule = %d.rule, reason = %d.reason, "ssh: request denied");
    let _ = sh.handle.channel_success(sh.agent_id).await;
    end_channel(sh, up, &format!("{}\r", denial_text(d, what))).await;
}

fn verdict(a: Action) -> &'static str {
    match a {
        Action::Allow => "allow",
        Action::Deny => "deny",
        Action::Approve => "approve",
    }
}

fn record_decision(sh: &Shared, what: &str, detail: &str, d: &SshDecision) {
    record_request(
        sh,
        what,
        detail,
        d.action,
        &d.rule,
        (d.action != Action::Allow).then(|| d.reason.clone()),
    );
}

/// Records a request; a refusal is stored durably before the agent hears of it.
fn record_request(
    sh: &Shared,
    what: &str,
    detail: &str,
    action: Action,
    rule: &str,
    reason: Option<String>,
) {
    let kind = EventKind::Request {
        what: what.to_owned(),
        detail: detail.to_owned(),
        verdict: verdict(action).to_owned(),
        rule: rule.to_owned(),
        reason,
    };
    if action == Action::Allow {
        sh.conn.recorder.event(sh.rec, kind);
    } else if let Err(e) = sh.conn.recorder.event_durable(sh.rec, kind) {
        tracing::error!(error = %e, "ssh: cannot record a denial");
    }
}

fn record_file_events(sh: &Shared, events: Vec<sftp::FileEvent>) {
    for ev in events {
        let denied = matches!(&ev, sftp::FileEvent::Op { allowed: false, .. });
        let Ok(value) = serde_json::to_value(&ev) else {
            continue;
        };
        let kind = EventKind::File { event: value };
        if denied {
            if let Err(e) = sh.conn.recorder.event_durable(sh.rec, kind) {
                tracing::error!(error = %e, "ssh: cannot record a file denial");
            }
        } else {
            sh.conn.recorder.event(sh.rec, kind);
        }
    }
}

/// The policy's [sftp] section, as the inspector asks it.
struct Rules(Arc<SshPolicy>);

impl sftp::FileRules for Rules {
    fn check(&self, access: sftp::Access, path: &str) -> Result<(), String> {
        let access = match access {
            sftp::Access::Read => FileAccess::Read,
            sftp::Access::List => FileAccess::List,
            sftp::Access::Write => FileAccess::Write,
        };
        let d = self.0.decide_file(access, path);
        match d.action {
            Action::Allow => Ok(()),
            _ => Err(format!("denied by {}: {}", d.rule, d.reason)),
        }
    }
}

/// What one typed byte means for the typed-line check.
enum Typed {
    /// Pass it on.
    Pass,
    /// Not passed on (the agent's terminal gets a bell instead): a key that would make the
    /// host's line differ from Cordon's copy of it.
    Drop,
    /// Enter: the line to check (or why it cannot be checked). The Enter byte itself is held.
    Line(Result<String, String>),
}

/// Cordon's copy of the line being typed in a terminal, kept equal to the host's: only
/// printable UTF-8, erase (DEL, the forced VERASE), kill (^U, the forced VKILL: with no
/// cursor movement passed on, it always kills the whole line), ^C and ^D on an empty line
/// are passed on. Cursor and history keys (escape sequences), tab completion, ^A/^E/^O/^V/^W/^X
/// and every other control key are dropped, so the host cannot hold text Cordon has not seen.
/// A line that is not valid UTF-8 is refused at Enter.
#[derive(Default)]
struct LineWatch {
    line: Vec<u8>,
    uncheckable: Option<&'static str>,
}

impl LineWatch {
    fn push(&mut self, b: u8) -> Typed {
        match b {
            b'\r' | b'\n' => {
                let line = std::mem::take(&mut self.line);
                let why = self.uncheckable.take();
                if line.iter().all(|c| *c == b' ') && why.is_none() {
                    return Typed::Pass;
                }
                Typed::Line(match why {
                    Some(why) => Err(format!("{why} make this line uncheckable; type it again")),
                    None => String::from_utf8(line)
                        .map_err(|_| "the line is not valid UTF-8".to_owned()),
                })
            }
            0x7f => {
                // Erase removes one character (a whole UTF-8 sequence, IUTF8 is forced on).
                while let Some(c) = self.line.pop() {
                    if c & 0xC0 != 0x80 {
                        break;
                    }
                }
                Typed::Pass
            }
            0x15 => {
                self.line.clear();
                self.uncheckable = None;
                Typed::Pass
            }
            // ^C abandons the line (SIGINT); ^D on an empty line is end of input.
            0x03 => {
                self.line.clear();
                self.uncheckable = None;
                Typed::Pass
            }
            0x04 if self.line.is_empty() => Typed::Pass,
            0x00..=0x1f => Typed::Drop,
            _ => {
                if self.line.len() >= MAX_TYPED_LINE {
                    self.uncheckable = Some("very long lines");
                    Typed::Drop
                } else {
                    self.line.push(b);
                    Typed::Pass
                }
            }
        }
    }
}

/// The terminal modes passed to the host: the agent's, with the editing characters forced
/// to what [`LineWatch`] follows (erase DEL, kill ^U, interrupt ^C, end of file ^D) and the
/// others disabled (word erase, literal next, reprint, extra end-of-line characters,
/// discard, status), canonical input and UTF-8 on.
fn pty_modes(agent: &[(russh::Pty, u32)]) -> Vec<(russh::Pty, u32)> {
    use russh::Pty;
    /// POSIX `_POSIX_VDISABLE` as SSH carries it.
    const DISABLED: u32 = 255;
    let forced: [(Pty, u32); 13] = [
        (Pty::VERASE, 0x7f),
        (Pty::VKILL, 0x15),
        (Pty::VINTR, 0x03),
        (Pty::VEOF, 0x04),
        (Pty::VWERASE, DISABLED),
        (Pty::VLNEXT, DISABLED),
        (Pty::VREPRINT, DISABLED),
        (Pty::VEOL, DISABLED),
        (Pty::VEOL2, DISABLED),
        (Pty::VDISCARD, DISABLED),
        (Pty::VSTATUS, DISABLED),
        (Pty::ICANON, 1),
        (Pty::IUTF8, 1),
    ];
    let mut out: Vec<(Pty, u32)> = agent
        .iter()
        .filter(|(m, _)| !forced.iter().any(|(f, _)| f == m))
        .cloned()
        .collect();
    out.extend(forced);
    out
}

/// Environment the agent may pass to the host: LANG and the standard LC_* categories, with
/// plain locale names as values (a path would make the C library load locale data from a
/// file the agent may have uploaded).
fn env_allowed(name: &str, value: &str) -> bool {
    const NAMES: [&str; 14] = [
        "LANG",
        "LC_ALL",
        "LC_CTYPE",
        "LC_NUMERIC",
        "LC_TIME",
        "LC_COLLATE",
        "LC_MONETARY",
        "LC_MESSAGES",
        "LC_PAPER",
        "LC_NAME",
        "LC_ADDRESS",
        "LC_TELEPHONE",
        "LC_MEASUREMENT",
        "LC_IDENTIFICATION",
    ];
    NAMES.contains(&name)
        && (1..=64).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(w: &mut LineWatch, s: &[u8]) -> (Vec<Result<String, String>>, Vec<u8>) {
        let mut lines = Vec::new();
        let mut passed = Vec::new();
        for b in s {
            match w.push(*b) {
                Typed::Line(l) => lines.push(l),
                Typed::Pass => passed.push(*b),
                Typed::Drop => {}
            }
        }
        (lines, passed)
    }

    #[test]
    fn typed_lines_are_reconstructed_and_keys_that_desync_are_dropped() {
        let mut w = LineWatch::default();
        assert_eq!(feed(&mut w, b"uptime\r").0, vec![Ok("uptime".to_owned())]);
        assert_eq!(
            feed(&mut w, b"rmx\x7f -rf /\r").0,
            vec![Ok("rm -rf /".to_owned())]
        );
        assert_eq!(feed(&mut w, b"junk\x15ls\r").0, vec![Ok("ls".to_owned())]);
        assert!(feed(&mut w, b"   \r").0.is_empty());
        // Cursor movement, history, completion, operate-and-get-next, literal-next: never
        // reach the host, so its line stays what Cordon checks.
        let (lines, passed) = feed(&mut w, b"rm -rf /tmp/z\x01\x15\r");
        assert_eq!(
            lines,
            Vec::<Result<String, String>>::new(),
            "^A dropped, ^U kills all"
        );
        assert!(!passed.contains(&0x01));
        let (lines, passed) = feed(&mut w, b"up\x1b[A\x0f\x16\t\x18\x05time\r");
        assert_eq!(lines, vec![Ok("up[Atime".to_owned())]);
        assert!(
            passed.iter().all(|b| *b >= 0x20 || *b == b'\r'),
            "{passed:?}"
        );
        // ^H is not erase (DEL is, forced on the host): dropped, not counted.
        assert_eq!(feed(&mut w, b"ab\x08c\r").0, vec![Ok("abc".to_owned())]);
        // Erase removes a whole UTF-8 character; invalid UTF-8 is refused.
        assert_eq!(
            feed(&mut w, "é\x7fa\r".as_bytes()).0,
            vec![Ok("a".to_owned())]
        );
        let got = feed(&mut w, b"echo \x80\r").0;
        assert!(
            matches!(&got[..], [Err(e)] if e.contains("UTF-8")),
            "{got:?}"
        );
        assert_eq!(feed(&mut w, b"df -h\n").0, vec![Ok("df -h".to_owned())]);
    }

    #[test]
    fn terminal_modes_are_forced_and_env_is_narrow() {
        use russh::Pty;
        let agent = vec![
            (Pty::VKILL, u32::from(b'@')),
            (Pty::VERASE, 8),
            (Pty::ECHO, 1),
        ];
        let modes = pty_modes(&agent);
        assert!(modes.contains(&(Pty::VKILL, 0x15)));
        assert!(modes.contains(&(Pty::VERASE, 0x7f)));
        assert!(modes.contains(&(Pty::ECHO, 1)));
        assert!(!modes.contains(&(Pty::VKILL, u32::from(b'@'))));
        assert!(env_allowed("LANG", "C.UTF-8"));
        assert!(env_allowed("LC_ALL", "en_US.UTF-8"));
        assert!(!env_allowed("LC_ALL", "/tmp/x"));
        assert!(!env_allowed("LC_FOO", "C"));
        assert!(!env_allowed("LD_PRELOAD", "x"));
    }
}
