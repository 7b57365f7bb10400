//! The authentication domain: passwords, access tokens and their keys, and the core that logs
//! users in over the auth store. Knows neither tonic nor Redis. Not served over gRPC yet.

pub mod model;
pub mod password;
pub mod service;
pub mod tokens;
