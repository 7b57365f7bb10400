//! Audit events: who did what, when, from where, and how it ended; written to the log (target
//! `audit`) and to the tenant's stream in the store.

use std::time::Instant;

use super::error::AuthError;
use super::model::AuditEvent;
use crate::clock::unix_time;
use crate::keys;
use crate::telemetry::metrics::AUTH_EVENTS;

/// The audit stream of events that concern the platform rather than one tenant (failed admin
/// authentication); `ListAuditEvents` reads it under this tenant id, which no tenant should use.
pub const PLATFORM_TENANT: &str = "_platform";

/// The audit action of an admin call refused for its token.
pub const ADMIN_AUTH_ACTION: &str = "admin.authenticate";

/// Who is calling, as far as the transport knows: for the audit log only.
#[derive(Debug, Clone, Default)]
pub struct CallContext {
    /// The caller's trace id (`traceparent` or `x-trace-id`), empty when untraced.
    pub trace_id: String,
    /// The end user's address as given by the calling service, when the call names one.
    pub client_ip: String,
}

/// An event being recorded: opened when a call starts, filled in as facts become known,
/// written once when the call ends.
#[derive(Debug)]
pub struct PendingAudit {
    started: Instant,
    /// The finished event, less its outcome and latency.
    pub event: AuditEvent,
    /// Replaces the outcome the result implies; e.g. a locked account that answers
    /// "invalid credentials" to the caller is `locked` in the log.
    pub outcome: Option<&'static str>,
}

impl PendingAudit {
    /// Opens an event for `action` in `tenant`.
    pub fn new(ctx: &CallContext, tenant: &str, action: &'static str) -> Self {
        Self {
            started: Instant::now(),
            event: AuditEvent {
                id: String::new(),
                time_unix_ms: u64::try_from(unix_time().as_millis()).unwrap_or(u64::MAX),
                tenant_id: bounded(tenant),
                user_id: None,
                action: action.to_owned(),
                outcome: String::new(),
                client_ip: bounded(&ctx.client_ip),
                username_hash: String::new(),
                trace_id: ctx.trace_id.clone(),
                latency_ms: 0,
                count: 1,
                sample_client_ips: Vec::new(),
            },
            outcome: None,
        }
    }

    /// The caller, as this event records it.
    pub fn context(&self) -> CallContext {
        CallContext {
            trace_id: self.event.trace_id.clone(),
            client_ip: self.event.client_ip.clone(),
        }
    }

    /// Names the user the call concerns.
    pub fn user(&mut self, user_id: &str) {
        self.event.user_id = Some(user_id.to_owned());
    }

    /// Closes an event that has no call result of its own (a lock taking effect, an admin
    /// call made elsewhere) with `outcome`.
    pub fn finish_as(mut self, outcome: &'static str) -> AuditEvent {
        self.outcome = Some(outcome);
        self.finish::<()>(&Ok(()))
    }

    /// Closes the event with the outcome `result` implies (unless one was set).
    pub fn finish<T>(mut self, result: &Result<T, AuthError>) -> AuditEvent {
        let outcome = self.outcome.unwrap_or_else(|| match result {
            Ok(_) => "success",
            Err(e) => outcome_of(e),
        });
        self.event.outcome = outcome.to_owned();
        self.event.latency_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(0);
        self.event
    }
}

/// Caller-supplied text as it may enter the log: at most [`keys::MAX_ID_LEN`] bytes, control
/// characters replaced. Invalid ids are refused, but their refusal is logged too, and a
/// multi-megabyte or newline-laden id must not become a log line.
fn bounded(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(keys::MAX_ID_LEN));
    for c in text.chars() {
        if out.len() + c.len_utf8() > keys::MAX_ID_LEN {
            break;
        }
        out.push(if c.is_control() { '\u{fffd}' } else { c });
    }
    out
}

/// The outcome word of a failed call.
pub fn outcome_of(e: &AuthError) -> &'static str {
    match e {
        AuthError::InvalidArgument { .. } => "invalid_argument",
        AuthError::InvalidCredentials => "invalid_credentials",
        AuthError::AccountLocked { .. } => "locked",
        AuthError::Throttled { .. } => "throttled",
        AuthError::Overloaded { .. } => "overloaded",
        AuthError::WeakPassword { .. } => "weak_password",
        AuthError::PasswordReused => "password_reused",
        AuthError::InvalidToken(_) | AuthError::WrongRefreshSecret => "invalid_token",
        AuthError::InsufficientScope => "insufficient_scope",
        AuthError::InsufficientRole => "insufficient_role",
        AuthError::SessionEnded => "session_ended",
        AuthError::RevocationsNotLoaded { .. } => "revocations_not_loaded",
        AuthError::TooManySubscribers { .. } => "too_many_subscribers",
        AuthError::SubscriberTooSlow { .. } => "subscriber_too_slow",
        AuthError::RefreshTokenReused => "reused",
        AuthError::UsernameTaken => "username_taken",
        AuthError::NotFound => "not_found",
        AuthError::Store(_) => "store_error",
        AuthError::Internal => "internal_error",
    }
}

/// Checks a paging cursor (`after_id`) before any store sees it: an audit event id as the
/// stores give them out, `<n>` (memory) or `<n>-<n>` (a Redis stream id), each part a u64.
/// Anything else is the caller's mistake, answered naming the field.
pub fn check_event_id(field: &str, id: &str) -> Result<(), AuthError> {
    let part = |p: &str| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u64>().is_ok()
    };
    let valid = match id.split_once('-') {
        None => part(id),
        Some((ms, seq)) => part(ms) && part(seq),
    };
    if valid {
        return Ok(());
    }
    Err(AuthError::InvalidArgument {
        field: field.to_owned(),
        reason: "must be an event id as a previous page's next_after_id gave it".to_owned(),
    })
}

/// True for an event id nothing can come before (`0`, `0-0`): its page is empty.
pub fn is_first_event_id(id: &str) -> bool {
    id.split('-').all(|p| p.parse::<u64>() == Ok(0))
}

/// Whether `event` proves nothing about any account: a failure a caller without a valid
/// credential can repeat at will (an unknown user, a forged or ended token, a refusal before
/// any check such as a throttle or a lock). Such events are counted rather than stored one by
/// one. A success, a reuse of a real refresh token, and a failure about a real account that
/// the lockout bounds (a wrong password for an existing user) each stay an event of its own,
/// as do lock events and admin calls (but not admin calls refused for their token).
pub fn proves_nothing(event: &AuditEvent) -> bool {
    // An admin call refused for its token: anyone who can reach the port can repeat it.
    if event.action == ADMIN_AUTH_ACTION {
        return event.outcome != "success";
    }
    if event.outcome == "success"
        || event.outcome == "reused"
        || event.outcome == "replayed"
        || event.action == "account.lock"
        || event.action.starts_with("admin.")
    {
        return false;
    }
    let refused_before_any_check = matches!(
        event.outcome.as_str(),
        "locked" | "throttled" | "overloaded" | "invalid_argument"
    );
    event.user_id.is_none() || refused_before_any_check
}

/// Writes `event` to the log, as structured fields under target `audit`, and counts it (a
/// counted event as the calls it stands for).
pub fn log(event: &AuditEvent) {
    // Both are words from fixed sets chosen by the code, so the label space stays bounded.
    metrics::counter!(
        AUTH_EVENTS,
        "action" => event.action.clone(),
        "outcome" => event.outcome.clone()
    )
    .increment(event.count);
    tracing::info!(
        target: "audit",
        action = %event.action,
        outcome = %event.outcome,
        tenant = %event.tenant_id,
        user_id = event.user_id.as_deref().unwrap_or(""),
        client_ip = %event.client_ip,
        username_hash = %event.username_hash,
        trace_id = %event.trace_id,
        latency_ms = event.latency_ms,
        time_unix_ms = event.time_unix_ms,
        count = event.count,
        sample_client_ips = ?event.sample_client_ips,
        "audit"
    );
}

/// Whether the event can go to a tenant stream: an invalid tenant id has none (the log line
/// is then the only record).
pub fn has_stream(event: &AuditEvent) -> bool {
    keys::validate_id("tenant_id", &event.tenant_id, true).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caller_text_is_bounded_before_it_is_logged() {
        let ctx = CallContext {
            trace_id: String::new(),
            client_ip: "10.0.0.1\nforged: line".into(),
        };
        let huge = "t".repeat(10_000);
        let event = PendingAudit::new(&ctx, &huge, "login").finish::<()>(&Ok(()));
        assert_eq!(event.tenant_id.len(), keys::MAX_ID_LEN);
        assert!(!event.client_ip.contains('\n'), "{}", event.client_ip);
        assert_eq!(event.outcome, "success");
    }

    #[test]
    fn event_ids_are_checked_before_the_store_sees_them() {
        for good in [
            "0",
            "17",
            "1733300000000-5",
            "18446744073709551615-18446744073709551615",
        ] {
            assert!(check_event_id("after_id", good).is_ok(), "{good}");
        }
        for bad in [
            "abc",
            "",
            "-",
            "1-",
            "-1",
            "1-2-3",
            " 1",
            "+1",
            "18446744073709551616",
            "1-18446744073709551616",
            "(1-0",
            "1\n0",
        ] {
            let e = check_event_id("after_id", bad).unwrap_err();
            assert!(
                matches!(&e, AuthError::InvalidArgument { field, .. } if field == "after_id"),
                "{bad:?}: {e:?}"
            );
        }
        assert!(is_first_event_id("0") && is_first_event_id("0-0"));
        assert!(!is_first_event_id("0-1") && !is_first_event_id("1"));
    }
}
