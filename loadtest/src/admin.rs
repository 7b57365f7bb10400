//! Admin calls the harness makes before and after a run: the correctness mode's limits and
//! the login scenario's user.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use portcullis_client::{ClientError, PortcullisClient};
use tonic::transport::Channel;

use crate::correctness::{LimitSpec, policy_matches};
use crate::scenario::LoginSettings;
use crate::secret::Secret;

/// A failed admin call: setting or reading back the test limits, or creating the login user.
#[derive(Debug, thiserror::Error)]
#[error("{call} for tenant {tenant} on {target}: {source}")]
pub struct AdminError {
    /// The RPC.
    call: &'static str,
    /// The tenant it was for.
    tenant: String,
    /// The target URL.
    target: String,
    /// What went wrong (never contains the token).
    source: ClientError,
}

/// How many admin calls run at once per target.
const ADMIN_PARALLELISM: usize = 16;

/// Sets `limit` on (tenant, resource) for every tenant through every target (so each
/// replica applies it at once), then reads it back from every target.
pub async fn install_limits(
    targets: &[(String, Channel)],
    token: &Secret,
    tenants: &[String],
    resource: &str,
    limit: &LimitSpec,
    timeout: Duration,
) -> Result<(), AdminError> {
    for (url, channel) in targets {
        let client = admin_client(url, channel, token, timeout)?;
        futures::stream::iter(tenants.iter().map(|tenant| {
            let client = client.clone();
            async move {
                client
                    .set_tenant_limit(tenant, resource, limit.rate, limit.period, limit.burst)
                    .await
                    .map_err(|source| AdminError {
                        call: "SetTenantLimit",
                        tenant: tenant.clone(),
                        target: url.clone(),
                        source,
                    })
            }
        }))
        .buffer_unordered(ADMIN_PARALLELISM)
        .try_collect::<Vec<_>>()
        .await?;
    }
    for (url, channel) in targets {
        let client = admin_client(url, channel, token, timeout)?;
        for tenant in tenants {
            let got = client
                .get_tenant_limit(tenant, resource)
                .await
                .map_err(|source| AdminError {
                    call: "GetTenantLimit",
                    tenant: tenant.clone(),
                    target: url.clone(),
                    source,
                })?;
            let matches = got
                .policy
                .as_ref()
                .is_some_and(|p| policy_matches(limit, p.rate, p.period.as_ref(), p.burst));
            if !matches {
                return Err(AdminError {
                    call: "GetTenantLimit",
                    tenant: tenant.clone(),
                    target: url.clone(),
                    source: ClientError::Status(tonic::Status::failed_precondition(format!(
                        "the limit read back is {:?}, not the {limit} just set",
                        got.policy
                    ))),
                });
            }
        }
    }
    Ok(())
}

/// Deletes the runtime limits [`install_limits`] set, so test tenants leave nothing behind.
/// Best effort: returns how many deletions failed.
pub async fn remove_limits(
    targets: &[(String, Channel)],
    token: &Secret,
    tenants: &[String],
    resource: &str,
    timeout: Duration,
) -> usize {
    let mut failed = 0;
    for (url, channel) in targets {
        let Ok(client) = admin_client(url, channel, token, timeout) else {
            failed += tenants.len();
            continue;
        };
        failed += futures::stream::iter(tenants.iter().map(|tenant| {
            let client = client.clone();
            async move { client.delete_tenant_limit(tenant, resource).await.is_err() }
        }))
        .buffer_unordered(ADMIN_PARALLELISM)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    }
    failed
}

/// A client sending the admin token.
fn admin_client(
    url: &str,
    channel: &Channel,
    token: &Secret,
    timeout: Duration,
) -> Result<PortcullisClient, AdminError> {
    PortcullisClient::from_channel(channel.clone())
        .with_timeout(timeout)
        .with_admin_token(token.expose())
        .map_err(|source| AdminError {
            call: "admin token",
            tenant: String::new(),
            target: url.to_owned(),
            source,
        })
}

/// Creates the login scenario's user through the first target (replicas share the store),
/// with no password change required so each login signs in. An existing user is kept as it
/// is: a rerun logs in as before.
pub async fn create_login_user(
    targets: &[(String, Channel)],
    token: &Secret,
    login: &LoginSettings,
    timeout: Duration,
) -> Result<(), AdminError> {
    let Some((url, channel)) = targets.first() else {
        return Ok(());
    };
    let client = admin_client(url, channel, token, timeout)?;
    match client
        .create_user(
            &login.tenant,
            &login.username,
            login.password.expose(),
            &[],
            false,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(ClientError::Status(s)) if s.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(source) => Err(AdminError {
            call: "CreateUser",
            tenant: login.tenant.clone(),
            target: url.clone(),
            source,
        }),
    }
}
