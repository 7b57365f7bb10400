//! Test harness: starts redis-server (single or Cluster) and portcullis processes on free loopback ports, and stops them even when a test panics or the test process dies.

pub mod h2;
mod http;
mod portcullis;
mod process;
mod redis;
mod stall_proxy;

pub use http::{http_get, sample};
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
