//! The old, simple wrapper: one channel, one deadline for every call, no retries; kept for
//! the tests and tools that use it (new code uses [`Portcullis`](crate::Portcullis)).

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use portcullis_proto::{envoy, pb};
/// TLS settings for [`PortcullisClient::connect_with_tls`] (tonic's, on the ring provider).
pub use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// The deadline of a call unless [`PortcullisClient::with_timeout`] changes it.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);

/// What can go wrong in a call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not a valid endpoint.
    #[error("invalid Portcullis URL: {0}")]
    InvalidUrl(String),
    /// The connection could not be made.
    #[error("cannot connect to Portcullis: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The server answered with an error status.
    #[error("Portcullis call failed: {0}")]
    Status(#[from] tonic::Status),
    /// No answer within the deadline.
    #[error("Portcullis did not answer within {0:?}")]
    Timeout(Duration),
    /// The admin token cannot be sent as a header.
    #[error("the admin token is not a valid header value")]
    InvalidAdminToken,
}

/// A cheap-to-clone handle on one Portcullis deployment (clones share the HTTP/2 connection).
#[derive(Clone)]
pub struct PortcullisClient {
    /// The HTTP/2 channel all service clients share.
    channel: Channel,
    /// Deadline of each call.
    timeout: Duration,
    /// `Bearer <token>` for admin calls, when given.
    admin_authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl std::fmt::Debug for PortcullisClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortcullisClient")
            .field("timeout", &self.timeout)
            .field(
                "admin_token",
                &self.admin_authorization.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl PortcullisClient {
    /// Connects to `url`, e.g. `http://portcullis:50051`.
    pub async fn connect(url: impl Into<String>) -> Result<Self, ClientError> {
        let url = url.into();
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|_| ClientError::InvalidUrl(url))?
            .tcp_nodelay(true)
            .connect_timeout(DEFAULT_TIMEOUT);
        Ok(Self::from_channel(endpoint.connect().await?))
    }

    /// Connects over TLS to `url`, e.g. `https://portcullis:50051`, trusting only the CAs of
    /// `ca_pem` (PEM). With `client_identity` (certificate chain PEM, private key PEM) the
    /// client presents that certificate, for a server started with `--tls-client-ca` (mTLS).
    /// The server name checked against the certificate is the URL's host.
    pub async fn connect_tls(
        url: impl Into<String>,
        ca_pem: impl AsRef<[u8]>,
        client_identity: Option<(&[u8], &[u8])>,
    ) -> Result<Self, ClientError> {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        if let Some((cert_pem, key_pem)) = client_identity {
            tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
        }
        Self::connect_with_tls(url, tls).await
    }

    /// Connects over TLS to an `https://` `url` with tonic's TLS settings (CAs, client identity,
    /// server name); see [`connect_tls`](Self::connect_tls) for the common case.
    pub async fn connect_with_tls(
        url: impl Into<String>,
        tls: ClientTlsConfig,
    ) -> Result<Self, ClientError> {
        let url = url.into();
        if !url.starts_with("https://") {
            // tonic would silently speak plaintext to an http:// URL.
            return Err(ClientError::InvalidUrl(format!(
                "{url} (TLS needs an https:// URL)"
            )));
        }
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|_| ClientError::InvalidUrl(url))?
            .tcp_nodelay(true)
            .connect_timeout(DEFAULT_TIMEOUT)
            .tls_config(tls)?;
        Ok(Self::from_channel(endpoint.connect().await?))
    }

    /// Wraps an existing channel (for custom TLS or load balancing).
    pub fn from_channel(channel: Channel) -> Self {
        Self {
            channel,
            timeout: DEFAULT_TIMEOUT,
            admin_authorization: None,
        }
    }

    /// Sets the deadline of every call made through this handle.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets the admin bearer token used by the admin calls.
    pub fn with_admin_token(mut self, token: &str) -> Result<Self, ClientError> {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::InvalidAdminToken)?;
        self.admin_authorization = Some(value);
        Ok(self)
    }

    /// The generated `portcullis.v1.RateLimitService` client.
    pub fn rate_limit(&self) -> pb::rate_limit_service_client::RateLimitServiceClient<Channel> {
        pb::rate_limit_service_client::RateLimitServiceClient::new(self.channel.clone())
    }

    /// The generated Envoy rate limit service client.
    pub fn envoy(&self) -> envoy::rls::rate_limit_service_client::RateLimitServiceClient<Channel> {
        envoy::rls::rate_limit_service_client::RateLimitServiceClient::new(self.channel.clone())
    }

    /// The generated `portcullis.v1.AdminService` client (add the token yourself, or use the
    /// typed admin calls below).
    pub fn admin(&self) -> pb::admin_service_client::AdminServiceClient<Channel> {
        pb::admin_service_client::AdminServiceClient::new(self.channel.clone())
    }

    /// The generated `portcullis.v1.AuthService` client.
    pub fn auth(&self) -> pb::auth_service_client::AuthServiceClient<Channel> {
        pb::auth_service_client::AuthServiceClient::new(self.channel.clone())
    }

    /// Creates a user (admin). With `must_change_password` the first login only yields a
    /// password-change session; without it, the first login signs in.
    pub async fn create_user(
        &self,
        tenant: &str,
        username: &str,
        initial_password: &str,
        roles: &[&str],
        must_change_password: bool,
    ) -> Result<pb::User, ClientError> {
        let request = pb::CreateUserRequest {
            tenant_id: tenant.to_owned(),
            username: username.to_owned(),
            initial_password: initial_password.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            must_change_password: Some(must_change_password),
        };
        let mut client = self.admin();
        self.call(self.admin_request(request), |r| async move {
            client.create_user(r).await
        })
        .await
    }

    /// Takes `cost` units from (tenant, resource, key); see `CheckRequest` for the defaults.
    pub async fn check(
        &self,
        tenant: &str,
        resource: &str,
        key: &str,
        cost: u32,
    ) -> Result<pb::CheckResponse, ClientError> {
        let request = pb::CheckRequest {
            tenant_id: tenant.to_owned(),
            resource: resource.to_owned(),
            key: key.to_owned(),
            cost,
        };
        let mut client = self.rate_limit();
        self.call(
            self.request(request),
            |r| async move { client.check(r).await },
        )
        .await
    }

    /// Sets a runtime limit (admin).
    pub async fn set_tenant_limit(
        &self,
        tenant: &str,
        resource: &str,
        rate: u64,
        period: Duration,
        burst: u64,
    ) -> Result<pb::TenantLimit, ClientError> {
        let request = pb::SetTenantLimitRequest {
            tenant_id: tenant.to_owned(),
            resource: resource.to_owned(),
            rate,
            period: Some(prost_types::Duration {
                seconds: i64::try_from(period.as_secs()).unwrap_or(i64::MAX),
                nanos: i32::try_from(period.subsec_nanos()).unwrap_or_default(),
            }),
            burst,
        };
        let mut client = self.admin();
        self.call(self.admin_request(request), |r| async move {
            client.set_tenant_limit(r).await
        })
        .await
    }

    /// The limit that applies to (tenant, resource) (admin).
    pub async fn get_tenant_limit(
        &self,
        tenant: &str,
        resource: &str,
    ) -> Result<pb::TenantLimit, ClientError> {
        let request = pb::GetTenantLimitRequest {
            tenant_id: tenant.to_owned(),
            resource: resource.to_owned(),
        };
        let mut client = self.admin();
        self.call(self.admin_request(request), |r| async move {
            client.get_tenant_limit(r).await
        })
        .await
    }

    /// Deletes a runtime limit (admin); false when there was none.
    pub async fn delete_tenant_limit(
        &self,
        tenant: &str,
        resource: &str,
    ) -> Result<bool, ClientError> {
        let request = pb::DeleteTenantLimitRequest {
            tenant_id: tenant.to_owned(),
            resource: resource.to_owned(),
        };
        let mut client = self.admin();
        let response = self
            .call(self.admin_request(request), |r| async move {
                client.delete_tenant_limit(r).await
            })
            .await?;
        Ok(response.deleted)
    }

    /// Forgets the counters of `resource` of `tenant` (of one `key`, or with an empty `key` of
    /// every key); returns how many were forgotten.
    pub async fn reset_counters(
        &self,
        tenant: &str,
        resource: &str,
        key: &str,
    ) -> Result<u64, ClientError> {
        let request = pb::ResetCountersRequest {
            tenant_id: tenant.to_owned(),
            resource: resource.to_owned(),
            key: key.to_owned(),
        };
        let mut client = self.admin();
        let response = self
            .call(self.admin_request(request), |r| async move {
                client.reset_counters(r).await
            })
            .await?;
        Ok(response.counters_reset)
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        // Tells the server the deadline too, so it can give up in step with us.
        request.set_timeout(self.timeout);
        request
    }

    fn admin_request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = self.request(message);
        if let Some(value) = &self.admin_authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }

    async fn call<T, R, F>(
        &self,
        request: tonic::Request<T>,
        send: impl FnOnce(tonic::Request<T>) -> F,
    ) -> Result<R, ClientError>
    where
        F: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        match tokio::time::timeout(self.timeout, send(request)).await {
            Ok(result) => Ok(result?.into_inner()),
            Err(_) => Err(ClientError::Timeout(self.timeout)),
        }
    }
}
