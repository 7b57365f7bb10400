//! End-to-end test support for Portcullis: real `redis-server` and `portcullis` processes
//! ([`harness`]), an in-process server on any store ([`server`]), a client of the
//! authentication API with helpers for its error details ([`auth`]), JWT key-set files
//! ([`key_files`]), and the deploy/k8s manifests read into typed objects ([`k8s`]).

pub mod auth;
pub mod harness;
pub mod k8s;
pub mod key_files;
pub mod server;

/// Runs each named `async fn case(backend: Backend)` of the calling test file as three tests,
/// one per store: `memory::case`, `redis::case` and `cluster::case`.
#[macro_export]
macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case($crate::server::Backend::Memory).await })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case($crate::server::Backend::Redis).await })*
        }
        mod cluster {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() { super::$case($crate::server::Backend::Cluster).await })*
        }
    };
}
