//! End-to-end test support for Portcullis: real `redis-server` and `portcullis` processes
//! ([`harness`]), and an in-process server on any store ([`server`]).

pub mod harness;
pub mod server;
