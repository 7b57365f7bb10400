//! What operators see: Prometheus metrics, the RPC metrics layer, and the admin HTTP port
//! with `/metrics`, `/livez` and `/readyz`; the log format; OpenTelemetry traces with a span
//! per RPC.

pub mod http;
pub mod logs;
mod methods;
pub mod metrics;
pub mod rpc;
pub mod traces;
