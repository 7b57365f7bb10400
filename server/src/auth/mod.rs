//! The authentication domain: passwords, access tokens and their keys, the core that logs
//! users in over the auth store, user administration and the audit trail. Knows neither tonic
//! nor Redis.

pub mod admin_failures;
pub mod admin_guard;
pub mod audit;
pub mod audit_counting;
pub mod authenticator;
pub mod client_ip;
pub mod error;
pub mod login;
pub mod model;
pub mod password;
pub mod security_events;
pub mod sessions;
pub mod store;
pub mod token_demands;
pub mod tokens;
pub mod username;
pub mod users;
pub mod watch;

pub use self::authenticator::{AuthSettings, Authenticator, LoginLimits, NewUser};
pub use self::error::AuthError;
pub use self::login::LoginInput;
pub use self::security_events::PublishedKeys;
pub use self::sessions::Tokens;
pub use self::token_demands::{API_SCOPE, PASSWORD_CHANGE_SCOPE, TokenDemands};
