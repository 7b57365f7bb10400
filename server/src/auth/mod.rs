//! The authentication domain: passwords, access tokens and their keys. Knows neither tonic nor
//! Redis. Not served yet: the RPCs arrive when sessions, lockout and the audit log are built.

pub mod model;
pub mod password;
pub mod tokens;
