//! Control requests that act as a human: `cordon request`, `approvals
//! list`, `approve`, `deny`, `grants list|revoke`, `audit list`, `whoami`,
//! `join` (`cordon run`) with a login, and `login`/`logout` themselves. Each
//! acts with the ID token it carries, else with the login the daemon holds
//! for the caller's uid (`identity::logins`), verified by
//! `identity::oidc::authenticate`: with a token, the caller is that human
//! (root included); without, local root is an administrator (`uid:0`) and
//! anyone else is refused. A caller who cannot be authenticated is recorded
//! as an `auth_failed` audit event (by uid; the token is never recorded).

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use super::{reply, Caller, Request, Response, WhoAmIReply, WireSecret};
use crate::{
    approvals::ApprovalError,
    audit::events::{Event, Filter},
    identity::oidc::{self, Actor},
    proxy::Gateway,
    vault::Secret,
};

/// `audit_list` reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct AuditPage {
    pub events: Vec<Event>,
}

/// The ID token a request acts with: the one it carries, else the login
/// the daemon holds for the caller's uid (refreshed first if due), else none.
async fn token_for(
    gw: &Gateway,
    caller: &Caller,
    id_token: Option<&WireSecret>,
) -> Result<Option<Secret>, String> {
    match id_token {
        Some(t) => Ok(Some(Secret::new(t.0.expose().to_vec()))),
        None => gw.logins.current(caller.uid, gw.config.oidc.as_ref()).await,
    }
}

/// The caller as an [`Actor`] (see [`token_for`] and
/// `oidc::authenticate`), or why not.
async fn identify(
    gw: &Gateway,
    verifier: Option<&oidc::Verifier>,
    caller: &Caller,
    id_token: Option<&WireSecret>,
) -> Result<Actor, String> {
    let token = token_for(gw, caller, id_token).await?;
    let text = token.as_ref().map(|t| t.expose_str().unwrap_or_default());
    oidc::authenticate(verifier, caller.uid, text).await
}

/// The caller as an [`Actor`], or the refusal (recorded).
async fn actor(
    gw: &Gateway,
    verifier: Option<&oidc::Verifier>,
    caller: &Caller,
    id_token: Option<&WireSecret>,
    op: &str,
) -> Result<Actor, Response> {
    match identify(gw, verifier, caller, id_token).await {
        Ok(a) => Ok(a),
        Err(why) => {
            tracing::info!(uid = caller.uid, op, %why, "control caller not identified");
            gw.approvals.auth_failed(caller.uid, op, &why);
            Err(Response::err(why))
        }
    }
}

fn refused(e: ApprovalError) -> Response {
    Response::err(e.to_string())
}

/// Answers the requests listed in the module documentation (except `join`).
pub(super) async fn handle(
    gw: &Arc<Gateway>,
    verifier: Option<&oidc::Verifier>,
    caller: &Caller,
    req: Request,
) -> Response {
    let hub = &gw.approvals;
    match req {
        Request::AskGrant {
            id_token,
            agent,
            resource,
            actions,
            pins,
            ttl_secs,
            reason,
        } => match actor(gw, verifier, caller, id_token.as_ref(), "request").await {
            Ok(a) => hub
                .request_grant(
                    &a,
                    crate::grants::jit::NewRequest {
                        agent,
                        resource,
                        actions,
                        pins,
                        ttl: Duration::from_secs(ttl_secs),
                        reason,
                        requested_by: String::new(),
                    },
                )
                .map_or_else(refused, |g| reply(&g)),
            Err(r) => r,
        },
        Request::ApprovalsList { id_token } => {
            match actor(gw, verifier, caller, id_token.as_ref(), "approvals_list").await {
                Ok(a) => hub.pending(&a).map_or_else(refused, |p| reply(&p)),
                Err(r) => r,
            }
        }
        Request::Approve { id_token, id } => {
            match actor(gw, verifier, caller, id_token.as_ref(), "approve").await {
                Ok(a) => hub
                    .approve_as(&a, Some(caller.uid), &id)
                    .map_or_else(refused, |d| reply(&d)),
                Err(r) => r,
            }
        }
        Request::Deny {
            id_token,
            id,
            reason,
        } => match actor(gw, verifier, caller, id_token.as_ref(), "deny").await {
            Ok(a) => hub
                .deny(&a, &id, &reason)
                .map_or_else(refused, |d| reply(&d)),
            Err(r) => r,
        },
        Request::GrantsList { id_token } => {
            match actor(gw, verifier, caller, id_token.as_ref(), "grants_list").await {
                Ok(_) => hub.grants().map_or_else(refused, |g| reply(&g)),
                Err(r) => r,
            }
        }
        Request::GrantsRevoke {
            id_token,
            id,
            reason,
        } => match actor(gw, verifier, caller, id_token.as_ref(), "revoke").await {
            Ok(a) => hub
                .revoke(&a, &id, &reason)
                .map_or_else(refused, |r| reply(&r)),
            Err(r) => r,
        },
        Request::AuditList {
            id_token,
            limit,
            target,
        } => match actor(gw, verifier, caller, id_token.as_ref(), "audit_list").await {
            Ok(a) if a.is_admin() || a.can_approve() => hub
                .events()
                .list(&Filter {
                    limit: limit.clamp(1, 100_000),
                    target,
                })
                .map_or_else(
                    |e| Response::err(e.to_string()),
                    |events| reply(&AuditPage { events }),
                ),
            Ok(a) => Response::err(format!(
                "permission denied: {} is neither an administrator nor an approver",
                a.audit_name()
            )),
            Err(r) => r,
        },
        other => Response::err(format!("{other:?} is not a human's request")),
    }
}

/// `whoami`: who the daemon takes the caller for.
pub(super) async fn whoami(
    gw: &Arc<Gateway>,
    verifier: Option<&oidc::Verifier>,
    caller: &Caller,
    id_token: Option<&WireSecret>,
) -> Response {
    match identify(gw, verifier, caller, id_token).await {
        Ok(actor) => {
            tracing::debug!(uid = caller.uid, actor = %actor.audit_name(), "control caller identified");
            reply(&WhoAmIReply {
                uid: caller.uid,
                is_admin: actor.is_admin(),
                can_approve: actor.can_approve(),
                actor,
            })
        }
        Err(why) => {
            tracing::info!(uid = caller.uid, %why, "control caller not identified");
            Response::err(why)
        }
    }
}

/// `login_hold` and `logout` (see `identity::logins`). A login is held only
/// once its ID token verifies, and only as a human: who it is, is the reply.
pub(super) async fn login(
    gw: &Arc<Gateway>,
    verifier: Option<&oidc::Verifier>,
    caller: &Caller,
    req: Request,
) -> Response {
    match req {
        Request::LoginHold {
            id_token,
            refresh_token,
        } => {
            let actor = match identify(gw, verifier, caller, Some(&id_token)).await {
                Ok(a @ Actor::Human(_)) => a,
                Ok(_) => return Response::err("only a human's ID token can be held as a login"),
                Err(why) => {
                    gw.approvals.auth_failed(caller.uid, "login", &why);
                    return Response::err(format!("the daemon refused the login: {why}"));
                }
            };
            let refresh = refresh_token.map(|r| r.0);
            if let Err(e) = gw.logins.hold(caller.uid, id_token.0, refresh).await {
                return Response::err(e);
            }
            tracing::info!(uid = caller.uid, human = %actor.audit_name(), "login held");
            reply(&WhoAmIReply {
                uid: caller.uid,
                is_admin: actor.is_admin(),
                can_approve: actor.can_approve(),
                actor,
            })
        }
        Request::Logout => {
            let forgotten = gw.logins.forget(caller.uid).await;
            tracing::info!(uid = caller.uid, forgotten, "logout");
            reply(&serde_json::json!({ "forgotten": forgotten }))
        }
        other => Response::err(format!("{other:?} is not a login request")),
    }
}

/// `join` (`cordon run`): with an ID token (carried, or the login the
/// daemon holds for the caller), the verified human is remembered as the
/// launcher of the joined process (a refused token refuses the join: a
/// login is never silently ignored); without one, the caller's uid is.
pub(super) async fn join(
    gw: &Arc<Gateway>,
    verifier: Option<&oidc::Verifier>,
    caller: &Caller,
    agent: &str,
    id_token: Option<&WireSecret>,
) -> Response {
    let token = match token_for(gw, caller, id_token).await {
        Ok(t) => t,
        Err(why) => return Response::err(format!("your login was refused ({why})")),
    };
    let presented = token
        .as_ref()
        .map(|t| WireSecret(Secret::new(t.expose().to_vec())));
    let launcher = match presented {
        Some(_) => match actor(gw, verifier, caller, presented.as_ref(), "join").await {
            Ok(a) => (a.audit_name(), matches!(a, Actor::Human(_))),
            Err(r) => {
                return Response::err(format!(
                    "your login was refused ({}); run `cordon login` again, or unset {}",
                    r.error.as_deref().unwrap_or("no reason given"),
                    crate::cli::login::TOKEN_ENV
                ))
            }
        },
        None => (format!("uid:{}", caller.uid), false),
    };
    let response = super::join(gw, caller, agent).unwrap_or_else(|e| e);
    if response.ok {
        if let Some(pid) = caller.pid {
            gw.approvals
                .launchers()
                .remember(pid, agent, launcher.0, launcher.1);
        }
    }
    response
}
