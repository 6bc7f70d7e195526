//! Verification table tests with locally signed tokens and a fixed key set
//! (no provider; the real one is exercised by tests/tests/oidc.rs).

use std::sync::Arc;

use hmac::Mac as _;
use openidconnect::{core::CoreEdDsaPrivateSigningKey, JsonWebKeyId, PrivateSigningKey as _};
use serde_json::{json, Value};

use super::*;

const ISSUER: &str = "https://idp.example.test/realms/ops";
const CLIENT: &str = "cordon";

fn config() -> Oidc {
    Oidc {
        issuer: ISSUER.into(),
        client_id: CLIENT.into(),
        client_secret_file: None,
        groups_claim: "groups".into(),
        approver_groups: vec!["sre".into()],
        admin_groups: vec!["security".into()],
        clock_skew: Duration::from_secs(60),
        scopes: vec!["openid".into()],
        ca_file: None,
        allow_http_loopback: false,
    }
}

struct Key(CoreEdDsaPrivateSigningKey);

impl Key {
    fn new(kid: &str) -> Key {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let pem = pair.serialize_pem();
        Key(
            CoreEdDsaPrivateSigningKey::from_ed25519_pem(&pem, Some(JsonWebKeyId::new(kid.into())))
                .unwrap(),
        )
    }

    /// A compact JWS of `payload` with `header` (alg EdDSA unless set).
    fn sign(&self, header: Value, payload: &Value) -> String {
        let mut h = json!({"alg": "EdDSA", "kid": self.kid()});
        if let (Some(base), Some(extra)) = (h.as_object_mut(), header.as_object()) {
            base.extend(extra.clone());
        }
        let input = format!("{}.{}", b64(&h), b64(payload));
        let sig = self
            .0
            .sign(&CoreJwsSigningAlgorithm::EdDsa, input.as_bytes())
            .unwrap();
        format!("{input}.{}", b64_bytes(&sig))
    }

    fn kid(&self) -> String {
        self.0
            .as_verification_key()
            .key_id()
            .map(|k| k.to_string())
            .unwrap()
    }
}

use openidconnect::JsonWebKey as _;

fn b64(v: &Value) -> String {
    b64_bytes(&serde_json::to_vec(v).unwrap())
}

fn b64_bytes(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn now() -> i64 {
    Utc::now().timestamp()
}

/// Claims of a good token for `sub`, valid for five minutes.
fn claims(sub: &str, groups: Value) -> Value {
    json!({
        "iss": ISSUER, "aud": CLIENT, "sub": sub,
        "iat": now(), "exp": now() + 300,
        "email": format!("{sub}@example.test"), "name": sub.to_uppercase(),
        "groups": groups,
    })
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.insert(key.into(), value);
    }
    v
}

fn verifier(cfg: Oidc, keys: &[&Key]) -> Verifier {
    let set = KeySet::new(keys.iter().map(|k| k.0.as_verification_key()).collect());
    Verifier {
        issuer: IssuerUrl::new(cfg.issuer.clone()).unwrap(),
        http: HttpClient::new(None, true),
        config: cfg,
        state: tokio::sync::Mutex::new(State {
            keys: Some((Arc::new(set), Instant::now())),
            ..State::default()
        }),
        fixed_keys: true,
    }
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn good_tokens_map_groups_to_rights() {
    let key = Key::new("k1");
    let v = verifier(config(), &[&key]);
    let alice = run(v.verify(&key.sign(json!({}), &claims("alice", json!(["sre", "x"]))))).unwrap();
    assert_eq!(alice.subject, "alice");
    assert_eq!(alice.issuer, ISSUER);
    assert_eq!(alice.email.as_deref(), Some("alice@example.test"));
    assert_eq!(alice.name.as_deref(), Some("ALICE"));
    assert_eq!(alice.groups, ["sre", "x"]);
    assert!(alice.can_approve && !alice.is_admin);
    let root = run(v.verify(&key.sign(json!({}), &claims("sec", json!(["security"]))))).unwrap();
    assert!(root.can_approve && root.is_admin, "admins approve too");
    let plain = run(v.verify(&key.sign(json!({}), &claims("bob", json!([]))))).unwrap();
    assert!(!plain.can_approve && !plain.is_admin);
    // No groups claim at all, or a single string.
    let mut none = claims("carol", json!(null));
    none.as_object_mut().map(|o| o.remove("groups"));
    assert_eq!(
        run(v.verify(&key.sign(json!({}), &none))).unwrap().groups,
        Vec::<String>::new()
    );
    let one = run(v.verify(&key.sign(json!({}), &claims("dan", json!("sre"))))).unwrap();
    assert!(one.can_approve);
    // A multi-audience token is fine when the other audience is... not: untrusted.
    let multi = with(
        claims("eve", json!([])),
        "aud",
        json!([CLIENT, "other-app"]),
    );
    let e = run(v.verify(&key.sign(json!({}), &multi))).unwrap_err();
    assert!(matches!(e, OidcError::WrongAudience(_)), "{e}");
    // The actor helpers.
    assert_eq!(
        Actor::Human(alice.clone()).audit_name(),
        format!("oidc:{ISSUER}#alice")
    );
    assert!(Actor::LocalRoot { uid: 0 }.is_admin());
    assert!(!Actor::Human(plain).can_approve());
}

#[test]
fn a_custom_groups_claim_is_read() {
    let key = Key::new("k1");
    let cfg = Oidc {
        groups_claim: "https://example.test/roles".into(),
        ..config()
    };
    let v = verifier(cfg, &[&key]);
    let c = with(
        claims("alice", json!(["ignored"])),
        "https://example.test/roles",
        json!(["security"]),
    );
    let h = run(v.verify(&key.sign(json!({}), &c))).unwrap();
    assert_eq!(h.groups, ["security"]);
    assert!(h.is_admin);
}

#[test]
fn forged_expired_and_misdirected_tokens_are_refused() {
    let key = Key::new("k1");
    let other = Key::new("k2");
    let v = verifier(config(), &[&key]);
    let good = key.sign(json!({}), &claims("alice", json!(["sre"])));
    let verify = |t: &str| run(v.verify(t));

    // Expired beyond the skew; just expired but within the skew passes.
    let old = with(claims("alice", json!([])), "exp", json!(now() - 600));
    let e = verify(&key.sign(json!({}), &old)).unwrap_err();
    assert!(
        matches!(e, OidcError::Expired { ago, skew: 60, .. } if ago >= 600),
        "{e}"
    );
    assert!(e.to_string().contains("expired at"), "{e}");
    let recent = with(claims("alice", json!([])), "exp", json!(now() - 30));
    assert!(verify(&key.sign(json!({}), &recent)).is_ok());
    // Issued in the future beyond the skew.
    let future = with(claims("alice", json!([])), "iat", json!(now() + 600));
    let e = verify(&key.sign(json!({}), &future)).unwrap_err();
    assert!(matches!(e, OidcError::IssuedInFuture(_)), "{e}");

    // Wrong audience, wrong issuer.
    let aud = with(claims("alice", json!([])), "aud", json!("someone-else"));
    let e = verify(&key.sign(json!({}), &aud)).unwrap_err();
    assert!(matches!(e, OidcError::WrongAudience(_)), "{e}");
    assert!(e.to_string().contains("someone-else"), "{e}");
    let iss = with(
        claims("alice", json!([])),
        "iss",
        json!("https://evil.example"),
    );
    let e = verify(&key.sign(json!({}), &iss)).unwrap_err();
    assert!(matches!(e, OidcError::WrongIssuer(_)), "{e}");
    assert!(e.to_string().contains("evil.example"), "{e}");

    // Tampered payload: same header and signature, groups changed.
    let parts: Vec<&str> = good.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(&claims("alice", json!(["security"]))),
        parts[2]
    );
    assert_eq!(verify(&forged).unwrap_err(), OidcError::BadSignature);
    // Signed by another key that claims the known kid.
    let impostor = other.sign(json!({"kid": "k1"}), &claims("alice", json!([])));
    assert_eq!(verify(&impostor).unwrap_err(), OidcError::BadSignature);
    // Signed by a key the provider does not publish.
    let e = verify(&other.sign(json!({}), &claims("alice", json!([])))).unwrap_err();
    assert!(
        matches!(&e, OidcError::UnknownKey { kid, .. } if kid == "k2"),
        "{e}"
    );

    // Unsigned: alg none (any case), empty or kept signature.
    for alg in ["none", "None", "NONE"] {
        let h = b64(&json!({"alg": alg}));
        for sig in ["", parts[2]] {
            let t = format!("{h}.{}.{sig}", parts[1]);
            assert_eq!(
                verify(&t).unwrap_err(),
                OidcError::Unsigned,
                "{alg} {sig:?}"
            );
        }
    }
    // HMAC with the (public) client id as the key.
    let h = b64(&json!({"alg": "HS256"}));
    let input = format!("{h}.{}", parts[1]);
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(CLIENT.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    let t = format!("{input}.{}", b64_bytes(&mac.finalize().into_bytes()));
    let e = verify(&t).unwrap_err();
    assert!(
        matches!(&e, OidcError::DisallowedAlg(a) if a == "HS256"),
        "{e}"
    );

    // Not a JWT at all.
    for junk in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "!!.??.x",
        &format!("{}.bm90IGpzb24.x", parts[0]),
    ] {
        let e = verify(junk).unwrap_err();
        assert!(matches!(e, OidcError::Malformed(_)), "{junk}: {e}");
    }
    // Groups of the wrong shape.
    let bad = claims("alice", json!({"admin": true}));
    let e = verify(&key.sign(json!({}), &bad)).unwrap_err();
    assert!(
        matches!(&e, OidcError::BadClaim { claim, .. } if claim == "groups"),
        "{e}"
    );
    let e = verify(&key.sign(json!({}), &claims("alice", json!(["a", 1])))).unwrap_err();
    assert!(matches!(e, OidcError::BadClaim { .. }), "{e}");

    // The good token still passes, and no message repeats a token.
    assert!(verify(&good).is_ok());
    for e in [verify(&forged).unwrap_err(), verify(&impostor).unwrap_err()] {
        assert!(!e.to_string().contains(parts[1]), "{e}");
    }
}

#[test]
fn zero_skew_means_expiry_is_exact() {
    let key = Key::new("k1");
    let v = verifier(
        Oidc {
            clock_skew: Duration::ZERO,
            ..config()
        },
        &[&key],
    );
    let just = with(claims("alice", json!([])), "exp", json!(now() - 2));
    let e = run(v.verify(&key.sign(json!({}), &just))).unwrap_err();
    assert!(matches!(e, OidcError::Expired { skew: 0, .. }), "{e}");
}

#[test]
fn expiry_can_be_read_without_verifying() {
    let key = Key::new("k1");
    let t = key.sign(
        json!({}),
        &with(claims("a", json!([])), "exp", json!(12345)),
    );
    assert_eq!(unverified_expiry(&t), Some(12345));
    assert_eq!(unverified_expiry("nope"), None);
}

#[test]
fn error_chains_are_joined_once() {
    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);
    let e = Outer(std::io::Error::other("inner"));
    assert_eq!(chain(&e), "outer: inner");
}
