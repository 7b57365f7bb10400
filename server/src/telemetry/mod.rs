//! What operators see: Prometheus metrics, the RPC metrics layer, and the admin HTTP port
//! with `/metrics`, `/livez` and `/readyz`.

pub mod http;
pub mod metrics;
pub mod rpc;
