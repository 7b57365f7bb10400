//! Test harness: starts redis-server (single or Cluster) and portcullis processes on free loopback ports, and stops them even when a test panics or the test process dies.

mod example_service;
pub mod h2;
mod http;
mod portcullis;
mod process;
mod redis;
mod stall_proxy;

pub use example_service::{ExampleService, example_binary};
pub use http::{HttpResponse, http_get, http_request, sample};
pub use portcullis::{KEEP_LOGS_ENV, PortcullisProcess, portcullis_binary};
pub use process::{ManagedChild, free_cluster_port, free_port};
pub use redis::{RedisCluster, RedisServer, RedisTarget};
pub use stall_proxy::StallProxy;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_types_can_live_in_statics() {
        fn shareable<T: Send + Sync>() {}
        shareable::<ManagedChild>();
        shareable::<RedisServer>();
        shareable::<RedisTarget>();
        shareable::<RedisCluster>();
        shareable::<PortcullisProcess>();
    }
}
