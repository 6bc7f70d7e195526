//! The notification hook: every pending request (a grant request, a held
//! command) is handed as one JSON object to `[approvals] notify_command`
//! (run without a shell, the JSON on stdin, a clean environment) and/or
//! POSTed to `[approvals] notify_url`. It runs in the background and never
//! delays or decides a hold; a failure is logged and recorded as a
//! `notify_failed` audit event.

use std::{process::Stdio, sync::Arc, time::Duration};

use openidconnect::url::Url;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{
    audit::events::{EventKind, Events, NewEvent, SYSTEM},
    config::approval::Approvals as Settings,
    identity::oidc::HttpClient,
};

/// `notify_url` may be plain http to a loopback host (a local relay to
/// chat or paging): a notification carries no secret, and nothing in the
/// answer is trusted, so a process squatting that port learns of pending
/// requests and decides nothing.
pub const NOTIFY_HTTP_LOOPBACK: bool = true;

/// How long the command may run.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// How much of the command's stderr is kept for the failure event.
const STDERR_KEPT: usize = 512;

pub struct Notifier {
    command: Option<Vec<String>>,
    url: Option<Url>,
    http: Option<HttpClient>,
    events: Arc<Events>,
}

impl Notifier {
    pub fn new(settings: &Settings, events: Arc<Events>) -> Notifier {
        Notifier {
            command: settings.notify_command.clone(),
            http: settings
                .notify_url
                .as_ref()
                .map(|_| HttpClient::new(None, NOTIFY_HTTP_LOOPBACK)),
            url: settings.notify_url.clone(),
            events,
        }
    }

    /// Starts the hook for `payload` in the background (without a tokio
    /// runtime, e.g. in unit tests, nothing is sent).
    pub fn send(&self, payload: serde_json::Value) {
        if self.command.is_none() && self.url.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no runtime: notification hook not run");
            return;
        };
        let target = payload
            .get("id")
            .and_then(|v| v.as_str())
            .unwrap_or("-")
            .to_owned();
        let body = payload.to_string().into_bytes();
        if let Some(cmd) = self.command.clone() {
            let events = self.events.clone();
            let body = body.clone();
            let target = target.clone();
            runtime.spawn(async move {
                if let Err(why) = run_command(&cmd, &body).await {
                    failed(&events, &target, "notify_command", &why);
                }
            });
        }
        if let (Some(url), Some(http)) = (self.url.clone(), self.http.clone()) {
            let events = self.events.clone();
            runtime.spawn(async move {
                if let Err(why) = post(&http, &url, body).await {
                    failed(&events, &target, "notify_url", &why);
                }
            });
        }
    }
}

fn failed(events: &Events, target: &str, hook: &str, why: &str) {
    tracing::warn!(hook, %target, %why, "notification hook failed");
    events.record_or_log(
        NewEvent::new(SYSTEM, EventKind::NotifyFailed, target)
            .details(serde_json::json!({ "hook": hook, "why": why })),
    );
}

async fn run_command(cmd: &[String], body: &[u8]) -> Result<(), String> {
    let Some((program, args)) = cmd.split_first() else {
        return Err("empty notify_command".into());
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LANG", "C.UTF-8")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    let mut stdin = child.stdin.take();
    let mut stderr = child.stderr.take();
    let work = async {
        if let Some(s) = stdin.as_mut() {
            // A hook that does not read its stdin is not a failure.
            let _ = s.write_all(body).await;
            let _ = s.shutdown().await;
        }
        drop(stdin.take());
        let mut err = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s
                .take(u64::try_from(STDERR_KEPT).unwrap_or(512))
                .read_to_end(&mut err)
                .await;
        }
        let status = child.wait().await;
        (status, err)
    };
    match tokio::time::timeout(COMMAND_TIMEOUT, work).await {
        Err(_) => Err(format!(
            "{program} did not finish within {} s (killed)",
            COMMAND_TIMEOUT.as_secs()
        )),
        Ok((Err(e), _)) => Err(format!("{program}: {e}")),
        Ok((Ok(status), _)) if status.success() => Ok(()),
        Ok((Ok(status), err)) => {
            let text = String::from_utf8_lossy(&err);
            let text: String = text
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect();
            Err(format!("{program} exited with {status}: {}", text.trim()))
        }
    }
}

async fn post(http: &HttpClient, url: &Url, body: Vec<u8>) -> Result<(), String> {
    let request = openidconnect::http::Request::builder()
        .method("POST")
        .uri(url.as_str())
        .header("content-type", "application/json")
        .body(body)
        .map_err(|e| e.to_string())?;
    let response = http.send(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("{url} answered HTTP {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_command_gets_the_json_and_failures_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("got.json");
        let script = format!("cat > {}", out.display());
        let ok = run_command(&["/bin/sh".into(), "-c".into(), script], br#"{"id":"h1"}"#).await;
        assert_eq!(ok, Ok(()));
        assert_eq!(std::fs::read_to_string(&out).unwrap(), r#"{"id":"h1"}"#);
        let e = run_command(
            &[
                "/bin/sh".into(),
                "-c".into(),
                "echo nope >&2; exit 3".into(),
            ],
            b"{}",
        )
        .await
        .unwrap_err();
        assert!(e.contains("exit status: 3") && e.contains("nope"), "{e}");
        let e = run_command(&["/nonexistent/hook".into()], b"{}")
            .await
            .unwrap_err();
        assert!(e.contains("cannot run"), "{e}");
    }
}
