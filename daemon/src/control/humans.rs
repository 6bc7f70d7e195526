//! Control requests that act as a human: `cordon request`, `approvals
//! list`, `approve`, `deny`, `grants list|revoke`, `audit list`, and `join`
//! (`cordon run`) with a login. Each carries an optional ID token, verified
//! by `identity::oidc::authenticate`: with one, the caller is that human
//! (root included); without, local root is an administrator (`uid:0`) and
//! anyone else is refused. A caller who cannot be authenticated is recorded
//! as an `auth_failed` audit event (by uid; the token is never recorded).

use std::{sync::Arc, time::Duration};

use serde::{Deserialize, Serialize};

use super::{reply, Caller, Request, Response, WireSecret};
use crate::{
    approvals::ApprovalError,
    audit::events::{Event, Filter},
    identity::oidc::{self, Actor},
    proxy::Gateway,
};

/// `audit_list` reply.
#[derive(Debug, Serialize, Deserialize)]
pub struct AuditPage {
    pub events: Vec<Event>,
}

fn token(id_token: Option<&WireSecret>) -> Option<&str> {
    id_token.map(|t| t.0.expose_str().unwrap_or_default())
}

/// The caller as an [`Actor`], or the refusal (recorded).
async fn actor(
    gw: &Gateway,
    verifier: Option<&oidc::Verifier>,
    caller: &Caller,
    id_token: Option<&WireSecret>,
    op: &str,
) -> Result<Actor, Response> {
    match oidc::authenticate(verifier, caller.uid, token(id_token)).await {
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

/// `join` (`cordon run`): with an ID token, the verified human is
/// remembered as the launcher of the joined process (a refused token
/// refuses the join: a login is never silently ignored); without one, the
/// caller's uid is.
pub(super) async fn join(
    gw: &Arc<Gateway>,
    verifier: Option<&oidc::Verifier>,
    caller: &Caller,
    agent: &str,
    id_token: Option<&WireSecret>,
) -> Response {
    let launcher = match id_token {
        Some(_) => match actor(gw, verifier, caller, id_token, "join").await {
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
