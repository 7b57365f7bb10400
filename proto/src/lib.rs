//! Portcullis's gRPC API: generated messages, clients and servers.
//!
//! The generated modules are private and re-exported under stable names:
//! [`pb`] for `portcullis.v1` and [`envoy`] for the Envoy rate limit service.

#![allow(missing_debug_implementations, unused_qualifications)]

mod generated {
    pub mod portcullis {
        pub mod v1 {
            tonic::include_proto!("portcullis.v1");
        }
    }
    pub mod envoy {
        pub mod r#type {
            pub mod v3 {
                tonic::include_proto!("envoy.r#type.v3");
            }
        }
        pub mod config {
            pub mod core {
                pub mod v3 {
                    tonic::include_proto!("envoy.config.core.v3");
                }
            }
        }
        pub mod extensions {
            pub mod common {
                pub mod ratelimit {
                    pub mod v3 {
                        tonic::include_proto!("envoy.extensions.common.ratelimit.v3");
                    }
                }
            }
        }
        pub mod service {
            pub mod ratelimit {
                pub mod v3 {
                    tonic::include_proto!("envoy.service.ratelimit.v3");
                }
            }
        }
    }
}

/// `portcullis.v1`: the rate limit, admin and auth services.
pub use generated::portcullis::v1 as pb;

/// The subset of Envoy's API that Portcullis speaks, under Envoy's package names.
pub mod envoy {
    pub use crate::generated::envoy::config::core::v3 as core;
    pub use crate::generated::envoy::extensions::common::ratelimit::v3 as common;
    pub use crate::generated::envoy::service::ratelimit::v3 as rls;
    pub use crate::generated::envoy::r#type::v3 as types;
}

/// The encoded `FileDescriptorSet` of every Portcullis and Envoy proto, for
/// gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/portcullis_descriptor.bin"));
