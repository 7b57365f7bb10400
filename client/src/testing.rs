//! [`TestPortcullis`]: a real Portcullis in-process on the memory store, for applications' tests.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;

use crate::{Error, Portcullis};

/// A Portcullis server run in this process on `127.0.0.1:0` (memory store, HS256 tokens, a
/// generated admin token), stopped when dropped.
pub struct TestPortcullis {
    /// Where it listens.
    addr: SocketAddr,
    /// Its admin token (generated per server).
    admin_token: String,
    /// A handle on it with the admin token set.
    handle: Portcullis,
    /// Dropping this stops the server.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for TestPortcullis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPortcullis")
            .field("addr", &self.addr)
            .field("admin_token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// 32 hex digits no other server of this process uses (not a cryptographic secret: test use).
fn random_hex() -> String {
    let state = RandomState::new();
    format!("{:016x}{:016x}", state.hash_one(1u8), state.hash_one(2u8))
}

impl TestPortcullis {
    /// Starts the server; panics when it cannot (a test setup failure).
    pub async fn start() -> TestPortcullis {
        match Self::try_start().await {
            Ok(server) => server,
            Err(e) => panic!("cannot start the test Portcullis: {e}"),
        }
    }

    /// Starts the server.
    pub async fn try_start() -> Result<TestPortcullis, Error> {
        let admin_token = random_hex();
        let env: HashMap<String, String> = [
            ("PORTCULLIS_ADMIN_TOKEN".to_owned(), admin_token.clone()),
            (
                "JWT_SECRET_KEY".to_owned(),
                format!("{}{}", random_hex(), random_hex()),
            ),
        ]
        .into();
        // No admin HTTP port: many test servers may share the process.
        let args = ["portcullis", "--metrics-listen", "off"];
        let config = portcullis_server::config::Config::load(args, &env)
            .map_err(|e| Error::InvalidConfig(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| Error::InvalidConfig(format!("bind 127.0.0.1:0: {e}")))?;
        let addr = listener
            .local_addr()
            .map_err(|e| Error::InvalidConfig(e.to_string()))?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let shutdown = async {
                let _ = stopped.await;
            };
            if let Err(e) = portcullis_server::run(config, listener, shutdown).await {
                panic!("test Portcullis failed: {e}");
            }
        });
        let handle = Portcullis::builder()
            .endpoints([format!("http://{addr}")])
            .admin_token(admin_token.clone())
            .build()?;
        Ok(TestPortcullis {
            addr,
            admin_token,
            handle,
            _stop: stop,
        })
    }

    /// A handle on the server with the admin token set.
    pub fn portcullis(&self) -> Portcullis {
        self.handle.clone()
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its admin token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn starts_and_logs_in_a_created_user() {
        let server = TestPortcullis::start().await;
        let portcullis = server.portcullis();
        let user = portcullis
            .create_user("acme", "alice", "Vq7#mLx2!pRz9w", &["reader"], false)
            .await
            .expect("create user");
        let login = portcullis
            .login("acme", "alice", "Vq7#mLx2!pRz9w")
            .await
            .expect("login");
        assert_eq!(login.user_id, user.user_id);
        let claims = portcullis
            .verify_token(&login.access_token, Some("acme"), &[], &["reader"])
            .await
            .expect("verify");
        assert_eq!(claims.user_id, user.user_id);
        let wrong = portcullis
            .login("acme", "alice", "Wrong-Guess-42!x")
            .await
            .expect_err("wrong password");
        assert_eq!(wrong.reason(), Some(&crate::Reason::InvalidCredentials));
        assert!(!format!("{server:?}").contains(server.admin_token()));
    }
}
