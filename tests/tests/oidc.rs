//! Humans in the loop, OIDC part: a real provider (`oidc-provider` under
//! node, tests/oidc) and the real `cordon` binary. The daemon verifies the ID
//! tokens itself: real tokens are accepted and mapped to approver/admin
//! rights by their groups; expired, wrong-audience, wrong-issuer, tampered,
//! unsigned (`alg: none`) and unknown-key tokens are refused with a reason;
//! key rotation at the provider is picked up. `cordon login` runs the device
//! flow (and auth code + PKCE with --browser) end to end and hands the login
//! to the daemon, which holds it for the uid (nothing is written under the
//! human's home, where a same-uid agent could read it), refreshes an
//! expiring ID token, and drops it at `cordon logout`.
//!
//! The daemon needs root (it loads eBPF); without root these tests skip,
//! except in CI where they fail. Without node and tests/oidc/node_modules
//! (`cargo xtask setup`) they skip likewise.

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use cordon_tests::oidc::{
    jwt_header, jwt_payload, unsigned, with_payload, OidcOptions, OidcProvider,
};
use cordon_tests::serde_json::{json, Value};
use cordon_tests::{
    cordon_bin, pretty, require_oidc_provider, require_root, run_with_limit, Daemon, Setup, NOBODY,
    PROBE_TIME_LIMIT,
};

const TABLE: &str = "approver_groups = [\"approvers\"]\nadmin_groups = [\"admins\"]";

fn daemon_for(idp: &OidcProvider) -> Daemon {
    let mut setup = Setup::new();
    setup.extra = idp.config_table(TABLE);
    Daemon::start(setup)
}

/// Who runs a `cordon` command.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum User {
    Root,
    Nobody,
}

/// `cordon --config F ARGS` as `user`, with `env` (and nothing of the test
/// process's XDG_CACHE_HOME / CORDON_ID_TOKEN unless given).
fn cordon_cmd(d: &Daemon, user: User, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = match user {
        User::Root => Command::new(cordon_bin()),
        User::Nobody => {
            let mut c = Command::new("setpriv");
            let id = NOBODY.to_string();
            c.args(["--reuid", &id, "--regid", &id, "--clear-groups"])
                .arg(cordon_bin());
            c
        }
    };
    cmd.arg("--config").arg(d.config()).args(args);
    cmd.env_remove("CORDON_ID_TOKEN")
        .env_remove("XDG_CACHE_HOME")
        .env("HOME", "/nonexistent");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// `cordon whoami --json` presenting `token` (via CORDON_ID_TOKEN): the
/// reply, or the error the CLI printed.
fn whoami(d: &Daemon, user: User, token: Option<&str>) -> Result<Value, String> {
    let mut env = vec![];
    if let Some(t) = token {
        env.push(("CORDON_ID_TOKEN", t));
    }
    let out = run_with_limit(
        &mut cordon_cmd(d, user, &["whoami", "--json"], &env),
        PROBE_TIME_LIMIT,
    );
    parse_whoami(&out)
}

fn parse_whoami(out: &Output) -> Result<Value, String> {
    if out.status.success() {
        serde_json::from_slice(&out.stdout).map_err(|e| {
            format!(
                "whoami printed bad JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn refused(result: Result<Value, String>, what: &str, wanted: &[&str], d: &Daemon) {
    match result {
        Ok(v) => d.fail(&format!("{what} was accepted: {}", pretty(&v))),
        Err(e) => {
            for w in wanted {
                assert!(
                    e.contains(w),
                    "{what}: expected `{w}` in the refusal, got: {e}"
                );
            }
        }
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[test]
fn real_tokens_are_accepted_and_forgeries_refused() {
    require_root!();
    require_oidc_provider!();
    let idp = OidcProvider::start();
    let d = daemon_for(&idp);

    // Local root without a token: administrator, by SO_PEERCRED.
    let root = whoami(&d, User::Root, None).unwrap_or_else(|e| d.fail(&e));
    assert_eq!(
        root["actor"],
        json!({"kind": "local_root", "uid": 0}),
        "{root}"
    );
    assert_eq!(
        (root["is_admin"].clone(), root["uid"].clone()),
        (json!(true), json!(0))
    );
    // Anyone else without a token: refused, told to log in.
    refused(
        whoami(&d, User::Nobody, None),
        "nobody without a token",
        &["uid 65534", "cordon login"],
        &d,
    );

    // A real approver's token, presented by an unprivileged user.
    let alice = idp.id_token("alice", &["approvers", "dev"]);
    let v = whoami(&d, User::Nobody, Some(&alice)).unwrap_or_else(|e| d.fail(&e));
    let human = &v["actor"];
    assert_eq!(human["kind"], "human", "{v}");
    assert_eq!(human["subject"], "alice");
    assert_eq!(human["issuer"], idp.issuer.as_str());
    assert_eq!(human["email"], "alice@example.test");
    assert_eq!(human["groups"], json!(["approvers", "dev"]));
    assert_eq!(
        (v["can_approve"].clone(), v["is_admin"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(v["uid"], json!(NOBODY));
    // An admin's token, presented by root: root acts as that human.
    let carol = idp.id_token("carol", &["admins"]);
    let v = whoami(&d, User::Root, Some(&carol)).unwrap_or_else(|e| d.fail(&e));
    assert_eq!(v["actor"]["subject"], "carol");
    assert_eq!(
        (v["can_approve"].clone(), v["is_admin"].clone()),
        (json!(true), json!(true))
    );
    // No groups: neither.
    let bob = idp.id_token("bob", &[]);
    let v = whoami(&d, User::Nobody, Some(&bob)).unwrap_or_else(|e| d.fail(&e));
    assert_eq!(
        (v["can_approve"].clone(), v["is_admin"].clone()),
        (json!(false), json!(false))
    );

    // Expired (signed by the provider's real key; beyond the 60 s skew).
    let expired = idp.sign(
        json!({"sub": "alice", "iat": now() - 900, "exp": now() - 600}),
        false,
    );
    refused(
        whoami(&d, User::Nobody, Some(&expired)),
        "an expired token",
        &["expired at"],
        &d,
    );
    // For another audience.
    let aud = idp.sign(json!({"sub": "alice", "aud": "someone-else"}), false);
    refused(
        whoami(&d, User::Nobody, Some(&aud)),
        "a token for another audience",
        &["wrong audience", "someone-else"],
        &d,
    );
    // From another issuer.
    let iss = idp.sign(
        json!({"sub": "alice", "iss": "http://127.0.0.1:1/evil"}),
        false,
    );
    refused(
        whoami(&d, User::Nobody, Some(&iss)),
        "a token from another issuer",
        &["wrong issuer", "/evil"],
        &d,
    );
    // Tampered: alice's real token with admin groups spliced in.
    let mut payload = jwt_payload(&alice);
    payload["groups"] = json!(["admins"]);
    let tampered = with_payload(&alice, &payload);
    refused(
        whoami(&d, User::Nobody, Some(&tampered)),
        "a tampered token",
        &["bad signature"],
        &d,
    );
    // Tampered subject, same signature.
    let mut payload = jwt_payload(&alice);
    payload["sub"] = json!("carol");
    refused(
        whoami(&d, User::Root, Some(&with_payload(&alice, &payload))),
        "a token with a swapped subject",
        &["bad signature"],
        &d,
    );
    // Unsigned.
    refused(
        whoami(&d, User::Nobody, Some(&unsigned(&carol))),
        "an alg:none token",
        &["unsigned", "none"],
        &d,
    );
    // Signed by a key the provider never published: refused after a refetch.
    let rogue = idp.sign(json!({"sub": "alice", "groups": ["admins"]}), true);
    refused(
        whoami(&d, User::Nobody, Some(&rogue)),
        "a token signed by an unknown key",
        &[
            jwt_header(&rogue)["kid"].as_str().unwrap_or("?"),
            "does not publish",
            "not even after refetching",
        ],
        &d,
    );
    // Garbage.
    refused(
        whoami(&d, User::Nobody, Some("not.a.jwt")),
        "garbage",
        &["not a JWT"],
        &d,
    );
    // A bad token is refused for root too (never silently ignored).
    refused(
        whoami(&d, User::Root, Some(&expired)),
        "root with an expired token",
        &["expired"],
        &d,
    );

    // Nothing the daemon logged contains a token.
    let logs = d.stderr();
    for t in [&alice, &carol, &tampered, &rogue] {
        let sig = t.rsplit('.').next().unwrap_or_default();
        assert!(
            !sig.is_empty() && !logs.contains(sig),
            "a token signature is in the daemon's log"
        );
    }
}

#[test]
fn key_rotation_at_the_provider_is_picked_up() {
    require_root!();
    require_oidc_provider!();
    let idp = OidcProvider::start();
    let d = daemon_for(&idp);
    let before = idp.id_token("alice", &["approvers"]);
    let old_kid = jwt_header(&before)["kid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let v = whoami(&d, User::Nobody, Some(&before)).unwrap_or_else(|e| d.fail(&e));
    assert_eq!(v["actor"]["subject"], "alice");

    // The provider rotates: new tokens carry the new kid, unknown to the
    // daemon's cached key set until it refetches.
    let new_kid = idp.rotate_keys(true);
    assert_ne!(new_kid, old_kid);
    assert_eq!(idp.kids(), [new_kid.clone(), old_kid.clone()]);
    let after = idp.id_token("alice", &["approvers"]);
    assert_eq!(jwt_header(&after)["kid"], json!(new_kid));
    let v = whoami(&d, User::Nobody, Some(&after)).unwrap_or_else(|e| d.fail(&e));
    assert_eq!(v["actor"]["subject"], "alice", "{v}");
    assert!(
        d.stderr().contains("OIDC signing keys refetched"),
        "the daemon did not log the key refetch\n{}",
        d.context()
    );
    // The old key is still published, so tokens it signed still pass.
    whoami(&d, User::Nobody, Some(&before)).unwrap_or_else(|e| d.fail(&e));

    // A token naming yet another unknown key right after that refetch is
    // refused without hammering the provider (one refetch per 10 s).
    let rogue = idp.sign(json!({"sub": "alice"}), true);
    refused(
        whoami(&d, User::Nobody, Some(&rogue)),
        "an unknown key right after a refetch",
        &["does not publish", "refetched less than"],
        &d,
    );
}

/// A private cache directory for `user` (its parent 0755, itself created by
/// `cordon login`).
fn cache_home(user: User) -> (tempfile::TempDir, String) {
    let dir = tempfile::Builder::new()
        .prefix("cordon-test-cache-")
        .tempdir()
        .expect("tempdir");
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
    let home = dir.path().join("home");
    fs::create_dir(&home).expect("mkdir");
    if user == User::Nobody {
        std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).expect("chown");
    }
    let xdg = home.join("cache").to_string_lossy().into_owned();
    (dir, xdg)
}

/// Runs `cordon login ARGS` in the background; hands each stdout line to
/// `on_line` until it returns true, then waits for the exit.
fn login(
    d: &Daemon,
    user: User,
    xdg: &str,
    args: &[&str],
    mut on_line: impl FnMut(&str) -> bool,
) -> Output {
    let mut all = vec!["login"];
    all.extend_from_slice(args);
    let mut child = cordon_cmd(d, user, &all, &[("XDG_CACHE_HOME", xdg)])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cordon login");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = thread::spawn(move || {
        use std::io::BufRead as _;
        let mut seen = String::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            seen.push_str(&line);
            seen.push('\n');
            let _ = tx.send(line);
        }
        seen
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if on_line(&line) => break,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let (mut out, timed_out) = cordon_tests::wait_output(child, Duration::from_secs(60));
    out.stdout = reader.join().unwrap_or_default().into_bytes();
    assert!(
        !timed_out,
        "cordon login did not finish: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every file under `dir` (none is what a login must leave).
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path.display().to_string());
            }
        }
    }
    out
}

/// No JWT (they all start `eyJ`, base64 of `{"`) in `text`.
fn no_token_in(what: &str, text: &str) {
    assert!(!text.contains("eyJ"), "{what} shows a token: {text}");
}

#[test]
fn cordon_login_hands_the_login_to_the_daemon_which_refreshes_and_drops_it() {
    require_root!();
    require_oidc_provider!();
    // ID tokens live 30 s: less than the daemon's 60 s refresh margin, so
    // every use of the held login refreshes it first.
    let idp = OidcProvider::start_with(OidcOptions {
        id_token_ttl: Some(30),
        ..OidcOptions::default()
    });
    let d = daemon_for(&idp);
    let (_dir, xdg) = cache_home(User::Nobody);
    // A plaintext token file as an earlier Cordon left it: the login removes it.
    let legacy = Path::new(&xdg).join("cordon");
    fs::create_dir_all(&legacy).expect("mkdir");
    fs::write(legacy.join("token.json"), "{\"tokens\":[]}").expect("write");
    for p in [Path::new(&xdg), &legacy, &legacy.join("token.json")] {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).expect("chown");
    }

    let mut code = None;
    let out = login(&d, User::Nobody, &xdg, &[], |line| {
        if let Some(c) = line.trim().strip_prefix("code: ") {
            code = Some(c.to_owned());
            idp.approve_device(c, "dave", &["approvers"]);
            return true;
        }
        false
    });
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "cordon login failed: {stderr}\nstdout: {stdout}\n{}",
        idp.stderr()
    );
    assert!(code.is_some(), "no user code printed: {stdout}");
    assert!(
        stdout.contains(&format!("page: {}/device", idp.issuer)),
        "{stdout}"
    );
    assert!(stdout.contains("Logged in as dave"), "{stdout}");
    assert!(
        stdout.contains(&format!("the daemon holds the login for uid {NOBODY}")),
        "{stdout}"
    );
    assert!(stdout.contains("Removed the token file"), "{stdout}");
    // Nothing a same-uid agent could read: no file, no token on the terminal.
    assert_eq!(files_under(Path::new(&xdg)), Vec::<String>::new());
    no_token_in("cordon login's stdout", &stdout);
    no_token_in("cordon login's stderr", &stderr);

    // Without a token of its own, `whoami` acts with the held login; it
    // expires within the margin, so the daemon refreshes it each time.
    let whoami_nobody = || {
        let out = run_with_limit(
            &mut cordon_cmd(
                &d,
                User::Nobody,
                &["whoami", "--json"],
                &[("XDG_CACHE_HOME", &xdg)],
            ),
            PROBE_TIME_LIMIT,
        );
        parse_whoami(&out)
    };
    let first = whoami_nobody().unwrap_or_else(|e| d.fail(&e));
    assert_eq!(first["actor"]["subject"], "dave", "{first}");
    assert_eq!(first["can_approve"], json!(true));
    thread::sleep(Duration::from_millis(1100));
    let second = whoami_nobody().unwrap_or_else(|e| d.fail(&e));
    assert_eq!(second["actor"]["subject"], "dave", "{second}");
    let until = |v: &Value| {
        v["actor"]["token_expires"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    assert!(
        until(&second) > until(&first),
        "the held ID token was not refreshed: {first} then {second}"
    );

    // Another uid (root) does not get dave's login.
    let (_other, other_xdg) = cache_home(User::Root);
    let out = run_with_limit(
        &mut cordon_cmd(
            &d,
            User::Root,
            &["whoami", "--json"],
            &[("XDG_CACHE_HOME", &other_xdg)],
        ),
        PROBE_TIME_LIMIT,
    );
    assert_eq!(
        parse_whoami(&out).unwrap_or_else(|e| d.fail(&e))["actor"]["kind"],
        "local_root"
    );

    // `cordon logout` drops it: nobody is then refused, told to log in.
    let out = run_with_limit(
        &mut cordon_cmd(&d, User::Nobody, &["logout"], &[("XDG_CACHE_HOME", &xdg)]),
        PROBE_TIME_LIMIT,
    );
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Logged out"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    refused(
        whoami_nobody(),
        "nobody after logout",
        &["uid 65534", "cordon login"],
        &d,
    );
    no_token_in("the daemon's log", &d.stderr());
}

#[test]
fn cordon_login_device_flow_denied_at_the_provider_fails() {
    require_root!();
    require_oidc_provider!();
    let idp = OidcProvider::start();
    let d = daemon_for(&idp);
    let (_dir, xdg) = cache_home(User::Root);
    let out = login(&d, User::Root, &xdg, &[], |line| {
        if let Some(c) = line.trim().strip_prefix("code: ") {
            idp.post_json("/test/device/deny", &json!({"user_code": c}));
            return true;
        }
        false
    });
    assert!(!out.status.success(), "a denied login succeeded");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("access_denied"), "{err}");
    assert!(!Path::new(&xdg).join("cordon/token.json").exists());
}

#[test]
fn cordon_login_browser_flow_with_pkce() {
    require_root!();
    require_oidc_provider!();
    let idp = OidcProvider::start();
    let d = daemon_for(&idp);
    let (_dir, xdg) = cache_home(User::Root);
    let mut walked = Value::Null;
    let out = login(&d, User::Root, &xdg, &["--browser"], |line| {
        if let Some(url) = line.trim().strip_prefix("page: ") {
            assert!(url.contains("code_challenge_method=S256"), "{url}");
            assert!(
                url.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A"),
                "{url}"
            );
            walked = idp.authorize(url, "erin", &["admins"]);
            return true;
        }
        false
    });
    assert!(
        out.status.success(),
        "cordon login --browser failed: {}\nprovider walk: {walked}\n{}",
        String::from_utf8_lossy(&out.stderr),
        idp.stderr()
    );
    assert_eq!(walked["status"], json!(200), "{walked}");
    assert_eq!(files_under(Path::new(&xdg)), Vec::<String>::new());
    // Root with a held login acts as that human, not as local root.
    let out = run_with_limit(
        &mut cordon_cmd(
            &d,
            User::Root,
            &["whoami", "--json"],
            &[("XDG_CACHE_HOME", &xdg)],
        ),
        PROBE_TIME_LIMIT,
    );
    let v = parse_whoami(&out).unwrap_or_else(|e| d.fail(&e));
    assert_eq!(v["actor"]["subject"], "erin", "{v}");
    assert_eq!(v["is_admin"], json!(true));
}

/// `cordon login --issuer ISSUER --client-id x` with no config file: it
/// must fail before any connection is made; its stderr.
fn login_refused(issuer: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = run_with_limit(
        Command::new(cordon_bin())
            .arg("--config")
            .arg(dir.path().join("absent.toml"))
            .args(["login", "--issuer", issuer, "--client-id", "x"])
            .env("XDG_CACHE_HOME", dir.path()),
        PROBE_TIME_LIMIT,
    );
    assert!(!out.status.success(), "login with {issuer} must fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn cordon_login_refuses_plain_http_off_loopback() {
    // No daemon and no provider needed: the issuer is refused before any
    // connection is made.
    let err = login_refused("http://idp.example.com");
    assert!(err.contains("only https"), "{err}");
}

#[test]
fn cordon_login_refuses_plain_http_on_loopback_without_the_opt_in() {
    // A local process can squat a loopback port the provider is not
    // holding and serve its own keys: plain http there is opt-in.
    let err = login_refused("http://127.0.0.1:9");
    assert!(err.contains("allow_http_loopback"), "{err}");
}

#[test]
fn the_test_provider_serves_discovery_and_rotates_keys() {
    // The harness itself, without the daemon (no root needed).
    require_oidc_provider!();
    let idp = OidcProvider::start();
    let (status, body) = idp.get("/.well-known/openid-configuration");
    assert_eq!(status, 200, "{body}");
    let meta: Value = serde_json::from_str(&body).expect("discovery JSON");
    assert_eq!(meta["issuer"], idp.issuer.as_str());
    assert!(meta["device_authorization_endpoint"].is_string(), "{meta}");
    let t = idp.tokens("frank", &["approvers"]);
    let claims = jwt_payload(&t.id_token);
    assert_eq!(claims["sub"], "frank");
    assert_eq!(claims["aud"], idp.client_id.as_str());
    assert_eq!(claims["groups"], json!(["approvers"]));
    assert!(t.refresh_token.is_some());
    let first = idp.kids();
    let kid = idp.rotate_keys(false);
    assert_eq!(idp.kids(), std::slice::from_ref(&kid));
    assert!(!first.contains(&kid));
    assert_eq!(jwt_header(&idp.id_token("frank", &[]))["kid"], json!(kid));
}
