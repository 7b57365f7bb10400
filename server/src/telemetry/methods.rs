//! The gRPC method names that metrics and spans may carry: those of the served descriptor
//! sets, so no caller can grow the label space with made-up paths.

use std::collections::HashSet;
use std::sync::OnceLock;

use prost::Message;

/// The label of a path that names no served method, so unknown paths cannot grow the labels.
const OTHER: &str = "other";

/// Every method path (`/package.Service/Method`) in the served descriptor sets, built once.
fn known_methods() -> &'static HashSet<&'static str> {
    static METHODS: OnceLock<HashSet<&'static str>> = OnceLock::new();
    METHODS.get_or_init(|| {
        let sets = [
            portcullis_proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ];
        let mut methods = HashSet::new();
        for set in sets {
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in &set.file {
                for service in &file.service {
                    for method in &service.method {
                        let path =
                            format!("/{}.{}/{}", file.package(), service.name(), method.name());
                        // Leaked once per process: a fixed set of label values lives as long
                        // as the recorder that holds them.
                        methods.insert(&*Box::leak(path.into_boxed_str()));
                    }
                }
            }
        }
        methods
    })
}

/// The method label of a request path.
pub(crate) fn method_label(path: &str) -> &'static str {
    known_methods().get(path).copied().unwrap_or(OTHER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_served_methods_become_labels() {
        assert_eq!(
            method_label("/portcullis.v1.RateLimitService/Check"),
            "/portcullis.v1.RateLimitService/Check"
        );
        assert_eq!(
            method_label("/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"),
            "/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit"
        );
        assert_eq!(
            method_label("/grpc.health.v1.Health/Check"),
            "/grpc.health.v1.Health/Check"
        );
        assert_eq!(method_label("/portcullis.v1.RateLimitService/Nope"), OTHER);
        assert_eq!(method_label("/x"), OTHER);
    }
}
