//! The authentication domain: passwords, access tokens and their keys, the core that logs
//! users in over the auth store, user administration and the audit trail. Knows neither tonic
//! nor Redis.

pub mod audit;
pub mod model;
pub mod password;
pub mod service;
pub mod store;
pub mod tokens;
pub mod users;
