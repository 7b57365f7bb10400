//! The deployment artefacts under deploy/ keep the invariants docs/operations.md relies on.
//!
//! Every YAML document under deploy/k8s is parsed into its typed Kubernetes object
//! (k8s-openapi), and a field that type does not have (a typo, a wrong indent, a field newer
//! than the oldest API the crate models) fails instead of being dropped unseen. The checks run
//! on three views of the manifests: as written, each overlay with its patches merged in, and,
//! where `kubectl` is installed, what `kubectl kustomize` renders. The loader that reads them
//! is `portcullis_tests::k8s`; this file holds the checks.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Probe;
use k8s_openapi::api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use portcullis_tests::k8s::{
    MIB, NAME_LABEL, Object, args, bytes, env_example_keys, env_value, flag, is_empty_selector,
    k8s_dir, millicores, mounted_at, port_number, portcullis_config, read, repo, secret_looking,
    secret_of_volume, secret_word, selects, sets, shown, split_image, strings, tree,
};
use serde_json::Value;

/// The process's own memory besides Argon2 (about 20 MiB idle; the rest is headroom for
/// connections, caches and the allocator).
const BASE_MEMORY_MIB: f64 = 128.0;

// ---------------------------------------------------------------------------------------------
// Tests: the files

#[test]
fn every_manifest_parses_into_its_typed_kind() {
    let t = tree();
    let kinds: BTreeSet<&str> = t
        .files
        .values()
        .flatten()
        .map(|d| d.raw["kind"].as_str().unwrap())
        .collect();
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "ServiceAccount",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "StatefulSet",
        "Job",
        "Certificate",
    ] {
        assert!(kinds.contains(kind), "no {kind} under deploy/k8s");
    }
    // Patches parse into their kinds too (the tree loader did it); they patch by name.
    for docs in t.patch_files.values() {
        for d in docs {
            assert!(d.raw["metadata"]["name"].is_string(), "{}", d.origin);
        }
    }
    assert!(!sets().is_empty());
}

#[test]
fn kustomizations_list_existing_files_and_every_manifest_is_listed() {
    let t = tree();
    let mut listed = BTreeSet::new();
    for k in &t.kustomizations {
        for path in k.named_paths() {
            assert!(
                path.exists(),
                "{}/kustomization.yaml names {}, which does not exist",
                shown(&k.dir),
                shown(&path)
            );
            if path.is_dir() {
                assert!(
                    path.join("kustomization.yaml").exists(),
                    "{} is a folder without kustomization.yaml",
                    shown(&path)
                );
            }
            listed.insert(path.canonicalize().unwrap());
        }
    }
    // A manifest nobody lists is never applied: it would rot unseen.
    for file in &t.yaml_files {
        assert!(
            listed.contains(&file.canonicalize().unwrap()),
            "{} is listed by no kustomization.yaml",
            shown(file)
        );
    }
}

#[test]
fn the_secret_placeholders_are_placeholders() {
    let keys = env_example_keys();
    assert!(
        !keys.is_empty(),
        "a secrets.example.env lists the secret keys"
    );
    for (k, v) in &keys {
        // Too short for any secret Portcullis accepts (JWT 32 bytes, admin token 16), so a
        // placeholder left in place stops the server instead of running with it.
        assert!(
            v.contains("CHANGE-ME") && v.len() < 16,
            "secrets.example.env {k}: placeholders only, like CHANGE-ME"
        );
    }
    let ignore = read(&k8s_dir().join("overlays/example/.gitignore"));
    assert!(ignore.lines().any(|l| l.trim() == "secrets.env"));
}

// ---------------------------------------------------------------------------------------------
// Tests: every view

#[test]
fn portcullis_is_replicated_spread_and_probed() {
    for set in sets() {
        let w = set.portcullis();
        let at = format!("{}: {}", set.name, w.origin);
        assert!(w.replicas.unwrap_or(1) >= 3, "{at}: at least 3 replicas");
        let spec = w.spec();
        let anti = spec
            .affinity
            .as_ref()
            .and_then(|a| a.pod_anti_affinity.as_ref())
            .unwrap_or_else(|| panic!("{at}: podAntiAffinity"));
        let terms: Vec<_> = anti
            .preferred_during_scheduling_ignored_during_execution
            .iter()
            .flatten()
            .map(|t| &t.pod_affinity_term)
            .chain(
                anti.required_during_scheduling_ignored_during_execution
                    .iter()
                    .flatten(),
            )
            .collect();
        assert!(
            terms
                .iter()
                .any(|t| t.topology_key == "kubernetes.io/hostname"
                    && t.label_selector
                        .as_ref()
                        .is_some_and(|s| selects(s, &w.labels()))),
            "{at}: anti-affinity by hostname against its own pods"
        );
        let spread = spec
            .topology_spread_constraints
            .as_deref()
            .unwrap_or_default();
        assert!(
            !spread.is_empty()
                && spread.iter().all(|s| s
                    .label_selector
                    .as_ref()
                    .is_some_and(|l| selects(l, &w.labels()))),
            "{at}: topologySpreadConstraints over its own pods"
        );

        let c = &spec.containers[0];
        let image = c.image.as_deref().unwrap_or_default();
        let (_, tag) = split_image(image);
        assert!(
            tag.is_some_and(|t| t != ":latest"),
            "{at}: image {image:?} is pinned to a tag or digest"
        );
        let args = args(c);
        let tls = flag(&args, "--tls-cert").is_some();
        let probes: [(&str, Option<&Probe>); 2] = [
            ("readiness", c.readiness_probe.as_ref()),
            ("liveness", c.liveness_probe.as_ref()),
        ];
        for (what, probe) in probes {
            let probe = probe.unwrap_or_else(|| panic!("{at}: {what} probe"));
            if let Some(h) = &probe.http_get {
                let port = port_number(c, &h.port)
                    .unwrap_or_else(|| panic!("{at}: {what} probe port is not a container port"));
                let metrics = env_value(c, "PORTCULLIS_METRICS_LISTEN")
                    .unwrap_or_else(|| panic!("{at}: HTTP probes need PORTCULLIS_METRICS_LISTEN"));
                assert_eq!(
                    metrics,
                    format!("0.0.0.0:{port}"),
                    "{at}: the {what} probe's port is where metrics listen, on the pod address"
                );
            } else if let Some(g) = &probe.grpc {
                // Kubelet's gRPC probe has no TLS: it cannot pass against a TLS listener.
                assert!(!tls, "{at}: {what} probe is gRPC but the listener has TLS");
                assert!(port_number(c, &IntOrString::Int(g.port)).is_some(), "{at}");
            } else {
                panic!("{at}: {what} probe is neither HTTP nor gRPC");
            }
        }
        let listen = flag(&args, "--listen").unwrap_or_else(|| panic!("{at}: --listen"));
        let grpc_port: i32 = listen
            .strip_prefix("0.0.0.0:")
            .unwrap_or_else(|| panic!("{at}: --listen {listen} is reachable on the pod address"))
            .parse()
            .unwrap();
        assert!(
            port_number(c, &IntOrString::Int(grpc_port)).is_some(),
            "{at}"
        );
    }
}

#[test]
fn resources_cover_the_argon2_bound() {
    for set in sets() {
        let w = set.portcullis();
        let at = format!("{}: {}", set.name, w.origin);
        let config = portcullis_config(set, &w);
        let bound =
            config.permits as f64 * config.memory_kib as f64 * 1024.0 + BASE_MEMORY_MIB * MIB;
        for c in w.containers() {
            let r = c
                .resources
                .as_ref()
                .unwrap_or_else(|| panic!("{at}: {} has resources", c.name));
            for (what, list) in [("requests", &r.requests), ("limits", &r.limits)] {
                let list = list.as_ref().unwrap_or_else(|| panic!("{at}: {what}"));
                for resource in ["cpu", "memory"] {
                    assert!(list.contains_key(resource), "{at}: {what}.{resource}");
                }
                let memory = bytes(&list["memory"]);
                assert!(
                    memory >= bound,
                    "{at}: memory {what} {} MiB is below the Argon2 bound: {} permits x {} KiB \
                     + {BASE_MEMORY_MIB} MiB = {} MiB",
                    memory / MIB,
                    config.permits,
                    config.memory_kib,
                    bound / MIB
                );
            }
            let (req, lim) = (r.requests.as_ref().unwrap(), r.limits.as_ref().unwrap());
            assert!(bytes(&req["memory"]) <= bytes(&lim["memory"]), "{at}");
            assert!(millicores(&req["cpu"]) <= millicores(&lim["cpu"]), "{at}");
            // Each permit keeps one core busy hashing; fewer cores than permits only queues.
            assert!(
                millicores(&lim["cpu"]) >= config.permits as f64 * 1000.0,
                "{at}: cpu limit below one core per Argon2 permit"
            );
        }
    }
}

#[test]
fn shutdown_fits_in_the_termination_grace_period() {
    for set in sets() {
        let w = set.portcullis();
        let at = format!("{}: {}", set.name, w.origin);
        let config = portcullis_config(set, &w);
        let c = &w.spec().containers[0];
        let pre_stop = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref());
        // The image is distroless: there is nothing to exec.
        assert!(
            pre_stop.is_none_or(|p| p.exec.is_none()),
            "{at}: an exec preStop hook cannot run in a distroless image"
        );
        let sleep = pre_stop
            .and_then(|p| p.sleep.as_ref())
            .map_or(0, |s| s.seconds);
        let grace = w.spec().termination_grace_period_seconds.unwrap_or(30);
        assert!(
            grace > sleep + config.shutdown_grace_secs as i64,
            "{at}: terminationGracePeriodSeconds {grace} must exceed the preStop sleep {sleep} s \
             plus shutdown_grace {} s, or calls in flight are killed",
            config.shutdown_grace_secs
        );
    }
}

#[test]
fn pods_run_locked_down() {
    for set in sets() {
        for w in set.workloads() {
            let at = format!("{}: {} {}", set.name, w.kind, w.name);
            let spec = w.spec();
            let pod = spec.security_context.clone().unwrap_or_default();
            let pod_seccomp = pod.seccomp_profile.as_ref().map(|s| s.type_.as_str());
            assert!(
                spec.host_network != Some(true)
                    && spec.host_pid != Some(true)
                    && spec.host_ipc != Some(true),
                "{at}: host namespaces"
            );
            let sa_token = spec.automount_service_account_token.or_else(|| {
                let sa = spec.service_account_name.as_deref()?;
                set.docs.iter().find_map(|d| match &d.object {
                    Object::ServiceAccount(s) if s.metadata.name.as_deref() == Some(sa) => {
                        s.automount_service_account_token
                    }
                    _ => None,
                })
            });
            assert_eq!(
                sa_token,
                Some(false),
                "{at}: no Kubernetes API token in the pod"
            );
            for c in w.containers() {
                let at = format!("{at}, container {}", c.name);
                let sc = c.security_context.clone().unwrap_or_default();
                assert!(
                    sc.run_as_non_root.or(pod.run_as_non_root) == Some(true),
                    "{at}: runAsNonRoot"
                );
                let uid = sc.run_as_user.or(pod.run_as_user);
                assert!(
                    uid.is_some_and(|u| u > 0),
                    "{at}: a numeric non-root runAsUser"
                );
                assert_eq!(
                    sc.read_only_root_filesystem,
                    Some(true),
                    "{at}: readOnlyRootFilesystem"
                );
                assert_eq!(
                    sc.allow_privilege_escalation,
                    Some(false),
                    "{at}: allowPrivilegeEscalation false"
                );
                assert_ne!(sc.privileged, Some(true), "{at}: privileged");
                let drop = sc.capabilities.as_ref().and_then(|c| c.drop.clone());
                assert!(
                    drop.is_some_and(|d| d.iter().any(|c| c == "ALL")),
                    "{at}: capabilities drop ALL"
                );
                assert!(
                    sc.capabilities
                        .as_ref()
                        .and_then(|c| c.add.as_ref())
                        .is_none_or(Vec::is_empty),
                    "{at}: adds no capability"
                );
                let seccomp = sc
                    .seccomp_profile
                    .as_ref()
                    .map(|s| s.type_.as_str())
                    .or(pod_seccomp);
                assert_eq!(
                    seccomp,
                    Some("RuntimeDefault"),
                    "{at}: seccomp RuntimeDefault"
                );
            }
        }
        let w = set.portcullis();
        let spec = w.spec();
        let pod = spec.security_context.as_ref().expect("pod securityContext");
        assert_eq!(
            pod.run_as_user,
            Some(65532),
            "{}: the image's user",
            set.name
        );
        assert!(
            pod.fs_group.is_some(),
            "{}: fsGroup, for the secret files",
            set.name
        );
        // Service links would define PORTCULLIS_SERVICE_HOST, PORTCULLIS_PORT, ...
        assert_eq!(
            spec.enable_service_links,
            Some(false),
            "{}: enableServiceLinks",
            set.name
        );
        // Where the set brings its namespace, the API server enforces all of the above.
        for d in &set.docs {
            if let Object::Namespace(ns) = &d.object {
                let labels = ns.metadata.labels.clone().unwrap_or_default();
                assert_eq!(
                    labels
                        .get("pod-security.kubernetes.io/enforce")
                        .map(String::as_str),
                    Some("restricted"),
                    "{}: Pod Security Standard restricted",
                    d.origin
                );
            }
        }
    }
}

#[test]
fn secrets_reach_pods_only_as_files() {
    let example_keys = env_example_keys();
    for set in sets() {
        for w in set.workloads() {
            let spec = w.spec();
            for c in w.containers() {
                let at = format!("{}: {} {}, container {}", set.name, w.kind, w.name, c.name);
                for e in c.env.iter().flatten() {
                    let from_secret = e
                        .value_from
                        .as_ref()
                        .is_some_and(|v| v.secret_key_ref.is_some());
                    assert!(
                        !from_secret,
                        "{at}: {} takes a Secret as a variable; mount it and use {}_FILE",
                        e.name, e.name
                    );
                    if secret_word(&e.name) {
                        let value = e.value.as_deref().unwrap_or_default();
                        assert!(
                            value.is_empty() || value.starts_with('/'),
                            "{at}: {} holds a literal value instead of a file path",
                            e.name
                        );
                    }
                    if let (Some(path), true) = (e.value.as_deref(), e.name.ends_with("_FILE")) {
                        if !secret_word(&e.name) {
                            continue;
                        }
                        let (volume, _) = mounted_at(c, path)
                            .unwrap_or_else(|| panic!("{at}: {} = {path} is not mounted", e.name));
                        assert!(
                            secret_of_volume(spec, &volume).is_some(),
                            "{at}: {} = {path} is not on a secret volume",
                            e.name
                        );
                    }
                }
                for from in c.env_from.iter().flatten() {
                    assert!(from.secret_ref.is_none(), "{at}: envFrom a Secret");
                }
            }
            for v in spec.volumes.iter().flatten() {
                let Some(s) = &v.secret else { continue };
                let at = format!("{}: {} {}, volume {}", set.name, w.kind, w.name, v.name);
                // 0440 written as 440 in YAML 1.2 would be 0o670: writable by the group.
                let mode = s.default_mode.unwrap_or_else(|| {
                    panic!("{at}: defaultMode (the default 0644 lets every user read)")
                });
                assert!(
                    (0..=0o777).contains(&mode) && mode & 0o027 == 0,
                    "{at}: defaultMode {mode:#o} must give others nothing and the group no write"
                );
            }
        }

        // The agreed variable names, each naming a key of portcullis-secrets.
        let w = set.portcullis();
        let c = &w.spec().containers[0];
        for name in [
            "JWT_SECRET_KEY_FILE",
            "PORTCULLIS_ADMIN_TOKEN_FILE",
            "PORTCULLIS_REDIS_PASSWORD_FILE",
        ] {
            let at = format!("{}: {name}", set.name);
            let path = env_value(c, name).unwrap_or_else(|| panic!("{at} is set"));
            let (volume, key) = mounted_at(c, path).unwrap();
            assert_eq!(
                secret_of_volume(w.spec(), &volume).as_deref(),
                Some("portcullis-secrets"),
                "{at}"
            );
            assert!(
                example_keys.contains_key(key),
                "{at}: key {key} is missing from secrets.example.env"
            );
        }
        let args = args(c);
        for tls_flag in ["--tls-cert", "--tls-key", "--tls-client-ca"] {
            let path = flag(&args, tls_flag).unwrap_or_else(|| panic!("{}: {tls_flag}", set.name));
            let (volume, _) = mounted_at(c, path).unwrap();
            assert!(
                secret_of_volume(w.spec(), &volume).is_some(),
                "{}: {tls_flag}",
                set.name
            );
        }
        // Losing the TLS flags must stop the server, not open a plaintext port.
        assert!(
            args.iter().any(|a| a == "--require-tls"),
            "{}: --require-tls",
            set.name
        );
    }
}

#[test]
fn no_manifest_carries_a_secret_value() {
    for set in sets() {
        for d in &set.docs {
            if let Object::ConfigMap(c) = &d.object {
                assert!(c.binary_data.is_none(), "{}: binaryData", d.origin);
                for (key, value) in c.data.iter().flatten() {
                    if let Some(why) = secret_looking(value) {
                        panic!(
                            "{}: ConfigMap key {key} looks like it holds a secret: {why}",
                            d.origin
                        );
                    }
                }
            }
            let mut all = Vec::new();
            strings(&d.raw, &mut all);
            for s in all {
                if let Some(why) = secret_looking(s) {
                    panic!("{}: {why}", d.origin);
                }
            }
        }
    }
    // Secrets are created out of band (docs/operations.md), never committed as objects.
    for docs in tree().files.values().chain(tree().patch_files.values()) {
        for d in docs {
            assert_ne!(
                d.raw["kind"], "Secret",
                "{}: a Secret in the repository",
                d.origin
            );
        }
    }
}

#[test]
fn the_secret_patterns_catch_secrets() {
    // The detector itself, so a pattern that stopped matching cannot pass the test above.
    let hex = "8f1d0c4b9a7e6d5c4b3a29180f1e2d3c4b5a69788f1d0c4b9a7e6d5c4b3a2918";
    for leaked in [
        "password = \"hunter2hunter2\"".to_owned(),
        "admin_token: abcdefabcdef".to_owned(),
        "requirepass s3cr3t".to_owned(),
        "redis_url = \"rediss://default:pw@redis:6380\"".to_owned(),
        format!("jwt = {hex}"),
    ] {
        assert!(secret_looking(&leaked).is_some(), "{leaked}");
    }
    for fine in [
        "password_policy = \"guide\"",
        "secret_file = \"/run/secrets/jwt\"",
        "include /run/redis/runtime.conf",
        "printf 'requirepass \"%s\"\\n' \"$pw\"",
        "rediss://redis-cluster-0.redis-cluster:6380",
    ] {
        assert_eq!(secret_looking(fine), None, "{fine}");
    }
}

#[test]
fn pdb_and_hpa_target_the_deployment() {
    for set in sets() {
        let w = set.portcullis();
        let replicas = w.replicas.unwrap_or(1);
        let mut pdbs = 0;
        let mut hpas = 0;
        for d in &set.docs {
            match &d.object {
                Object::Pdb(p) => {
                    let spec = p.spec.as_ref().unwrap();
                    let sel = spec.selector.as_ref().expect("PDB selector");
                    assert!(
                        !is_empty_selector(sel),
                        "{}: a PDB selecting everything",
                        d.origin
                    );
                    let targets: Vec<_> = set
                        .workloads()
                        .into_iter()
                        .filter(|w| w.kind != "Job" && selects(sel, &w.labels()))
                        .collect();
                    assert_eq!(
                        targets.len(),
                        1,
                        "{}: selects exactly one workload",
                        d.origin
                    );
                    if targets[0].name != w.name {
                        continue;
                    }
                    pdbs += 1;
                    // Drains proceed one pod at a time and can proceed at all.
                    match (&spec.max_unavailable, &spec.min_available) {
                        (Some(IntOrString::Int(1)), None) => {}
                        (None, Some(IntOrString::Int(n))) => assert!(
                            (2..replicas).contains(n),
                            "{}: minAvailable {n} with {replicas} replicas",
                            d.origin
                        ),
                        other => panic!(
                            "{}: maxUnavailable 1 or minAvailable 2: {other:?}",
                            d.origin
                        ),
                    }
                }
                Object::Hpa(h) => {
                    let spec = h.spec.as_ref().unwrap();
                    let target = &spec.scale_target_ref;
                    assert_eq!(
                        (
                            target.api_version.as_deref(),
                            target.kind.as_str(),
                            target.name.as_str()
                        ),
                        (Some("apps/v1"), "Deployment", w.name.as_str()),
                        "{}: scaleTargetRef",
                        d.origin
                    );
                    hpas += 1;
                    let min = spec.min_replicas.unwrap_or(1);
                    assert!(
                        min >= 3 && min >= replicas && spec.max_replicas >= min,
                        "{}: minReplicas {min} keeps at least the Deployment's {replicas}",
                        d.origin
                    );
                    assert!(
                        spec.metrics
                            .iter()
                            .flatten()
                            .any(|m| m.resource.as_ref().is_some_and(|r| r.name == "cpu")),
                        "{}: scales on CPU",
                        d.origin
                    );
                }
                _ => {}
            }
        }
        assert_eq!(
            (pdbs, hpas),
            (1, 1),
            "{}: one PDB and one HPA for Portcullis",
            set.name
        );
    }
}

fn ports_of(rule_ports: Option<&Vec<NetworkPolicyPort>>) -> BTreeSet<i32> {
    rule_ports
        .into_iter()
        .flatten()
        .map(|p| match &p.port {
            Some(IntOrString::Int(n)) => *n,
            other => panic!("NetworkPolicy ports are numbers here, not {other:?}"),
        })
        .collect()
}

fn peer_is(
    peer: &NetworkPolicyPeer,
    namespace: Option<(&str, &str)>,
    pod: Option<(&str, &str)>,
) -> bool {
    let matches = |sel: Option<&LabelSelector>, want: Option<(&str, &str)>| match (sel, want) {
        (None, None) => true,
        (Some(s), Some((k, v))) => {
            s.match_labels
                .as_ref()
                .and_then(|m| m.get(k))
                .map(String::as_str)
                == Some(v)
        }
        _ => false,
    };
    peer.ip_block.is_none()
        && matches(peer.namespace_selector.as_ref(), namespace)
        && matches(peer.pod_selector.as_ref(), pod)
}

#[test]
fn network_policies_select_their_pods_and_restrict_both_directions() {
    for set in sets() {
        let workloads = set.workloads();
        let redis = workloads
            .iter()
            .find(|w| w.kind == "StatefulSet" && w.is("redis-cluster"))
            .expect("the Redis StatefulSet");
        let portcullis = set.portcullis();
        let mut seen = BTreeSet::new();
        for (origin, np) in set.network_policies() {
            let spec = np.spec.as_ref().unwrap();
            let sel = spec.pod_selector.clone().unwrap_or_default();
            assert!(
                !is_empty_selector(&sel),
                "{origin}: selects every pod of the namespace"
            );
            let selected: Vec<_> = workloads
                .iter()
                .filter(|w| w.kind != "Job" && selects(&sel, &w.labels()))
                .collect();
            assert_eq!(selected.len(), 1, "{origin}: selects one workload's pods");
            let types = spec.policy_types.clone().unwrap_or_default();
            assert!(
                types.iter().any(|t| t == "Ingress") && types.iter().any(|t| t == "Egress"),
                "{origin}: policyTypes Ingress and Egress"
            );
            for rule in spec.ingress.iter().flatten() {
                assert!(
                    !ports_of(rule.ports.as_ref()).is_empty(),
                    "{origin}: an ingress rule without ports"
                );
                assert!(
                    rule.from.as_ref().is_some_and(|f| !f.is_empty()),
                    "{origin}: ingress from anywhere"
                );
            }
            for rule in spec.egress.iter().flatten() {
                assert!(
                    !ports_of(rule.ports.as_ref()).is_empty(),
                    "{origin}: an egress rule without ports"
                );
                assert!(
                    rule.to.as_ref().is_some_and(|t| !t.is_empty()),
                    "{origin}: egress to anywhere"
                );
            }
            seen.insert(selected[0].name.clone());

            if selected[0].name == portcullis.name {
                let ingress = spec.ingress.as_deref().unwrap_or_default();
                let grpc: Vec<_> = ingress
                    .iter()
                    .filter(|r| ports_of(r.ports.as_ref()).contains(&50051))
                    .collect();
                let metrics: Vec<_> = ingress
                    .iter()
                    .filter(|r| ports_of(r.ports.as_ref()).contains(&9090))
                    .collect();
                assert!(
                    !grpc.is_empty() && !metrics.is_empty(),
                    "{origin}: gRPC and metrics ingress"
                );
                for r in &grpc {
                    assert!(
                        r.from.iter().flatten().all(|p| peer_is(
                            p,
                            Some(("portcullis-client", "true")),
                            None
                        )),
                        "{origin}: gRPC only from namespaces labelled portcullis-client=true"
                    );
                }
                for r in &metrics {
                    assert!(
                        r.from.iter().flatten().all(|p| peer_is(
                            p,
                            Some(("kubernetes.io/metadata.name", "monitoring")),
                            Some((NAME_LABEL, "prometheus"))
                        )),
                        "{origin}: metrics only from Prometheus in monitoring"
                    );
                }
                for r in ingress {
                    let ports = ports_of(r.ports.as_ref());
                    assert!(
                        ports.is_subset(&BTreeSet::from([50051, 9090])),
                        "{origin}: ingress {ports:?}"
                    );
                }
                for r in spec.egress.iter().flatten() {
                    let ports = ports_of(r.ports.as_ref());
                    let to_redis = r.to.iter().flatten().all(|p| {
                        p.namespace_selector.is_none()
                            && p.pod_selector
                                .as_ref()
                                .is_some_and(|s| selects(s, &redis.labels()))
                    });
                    let to_dns = r.to.iter().flatten().all(|p| {
                        peer_is(
                            p,
                            Some(("kubernetes.io/metadata.name", "kube-system")),
                            Some(("k8s-app", "kube-dns")),
                        )
                    });
                    assert!(
                        (to_redis && ports.is_subset(&BTreeSet::from([6379, 6380])))
                            || (to_dns && ports == BTreeSet::from([53])),
                        "{origin}: egress only to the Redis pods (6379/6380) and DNS: {ports:?}"
                    );
                }
            }
            if selected[0].name == redis.name {
                for r in spec.ingress.iter().flatten() {
                    for p in r.from.iter().flatten() {
                        // Same namespace, and only Portcullis or the Redis nodes themselves.
                        assert!(
                            p.namespace_selector.is_none() && p.ip_block.is_none(),
                            "{origin}"
                        );
                        let s = p.pod_selector.as_ref().expect("a pod selector");
                        let app = s.match_labels.as_ref().and_then(|m| m.get(NAME_LABEL));
                        assert!(
                            matches!(
                                app.map(String::as_str),
                                Some("portcullis" | "redis-cluster")
                            ),
                            "{origin}: admits {app:?}"
                        );
                    }
                }
                // Portcullis pods are in fact admitted on the port they dial.
                let admits_portcullis = spec.ingress.iter().flatten().any(|r| {
                    ports_of(r.ports.as_ref()).contains(&6380)
                        && r.from.iter().flatten().any(|p| {
                            p.pod_selector
                                .as_ref()
                                .is_some_and(|s| selects(s, &portcullis.labels()))
                        })
                });
                assert!(
                    admits_portcullis,
                    "{origin}: Portcullis pods reach Redis on 6380"
                );
            }
        }
        assert!(
            seen.contains(&portcullis.name) && seen.contains(&redis.name),
            "{}: NetworkPolicies for Portcullis and Redis",
            set.name
        );
    }
}

#[test]
fn service_ports_target_ports_the_pods_expose() {
    for set in sets() {
        let workloads = set.workloads();
        let mut portcullis_services = Vec::new();
        for (origin, svc) in set.services() {
            let spec = svc.spec.as_ref().unwrap();
            let selector = spec.selector.clone().unwrap_or_default();
            assert!(!selector.is_empty(), "{origin}: a Service without selector");
            let backing: Vec<_> = workloads
                .iter()
                .filter(|w| {
                    w.kind != "Job" && selector.iter().all(|(k, v)| w.labels().get(k) == Some(v))
                })
                .collect();
            assert!(!backing.is_empty(), "{origin}: selects no pods");
            for port in spec.ports.iter().flatten() {
                let target = port
                    .target_port
                    .clone()
                    .unwrap_or(IntOrString::Int(port.port));
                for w in &backing {
                    assert!(
                        w.containers().any(|c| port_number(c, &target).is_some()),
                        "{origin}: port {} targets {target:?}, which {} {} does not expose",
                        port.port,
                        w.kind,
                        w.name
                    );
                }
            }
            if backing.iter().any(|w| w.is("portcullis")) {
                portcullis_services.push(spec.cluster_ip.clone());
            }
        }
        // One ClusterIP Service and one headless for per-call balancing.
        assert!(
            portcullis_services
                .iter()
                .any(|ip| ip.as_deref() != Some("None"))
                && portcullis_services
                    .iter()
                    .any(|ip| ip.as_deref() == Some("None")),
            "{}: Portcullis has a ClusterIP and a headless Service",
            set.name
        );
    }
}

/// `redis.conf` directives: the first word of each line and the rest.
fn redis_conf(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(char::is_whitespace))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

#[test]
fn redis_persists_with_aof_and_requires_tls_and_auth() {
    for set in sets() {
        let workloads = set.workloads();
        let redis = workloads
            .iter()
            .find(|w| w.kind == "StatefulSet" && w.is("redis-cluster"))
            .expect("the Redis StatefulSet");
        let at = format!("{}: {}", set.name, redis.origin);
        let c = &redis.spec().containers[0];
        // Its configuration: the ConfigMap it mounts.
        let map_name = redis
            .spec()
            .volumes
            .iter()
            .flatten()
            .find_map(|v| v.config_map.as_ref().map(|c| c.name.clone()))
            .expect("a ConfigMap volume");
        let data = set.config_map(&map_name).data.clone().unwrap_or_default();
        let conf = redis_conf(
            data.iter()
                .find(|(k, _)| k.ends_with(".conf"))
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("{at}: no redis.conf")),
        );
        let get = |k: &str| conf.get(k).map(String::as_str);
        assert_eq!(get("appendonly"), Some("yes"), "{at}: AOF persistence");
        assert_eq!(get("port"), Some("0"), "{at}: no plaintext port");
        let tls_port: i32 = get("tls-port")
            .unwrap_or_else(|| panic!("{at}: tls-port"))
            .parse()
            .unwrap();
        assert!(
            port_number(c, &IntOrString::Int(tls_port)).is_some(),
            "{at}: exposes tls-port"
        );
        for tls in ["tls-replication", "tls-cluster"] {
            assert_eq!(get(tls), Some("yes"), "{at}: {tls}");
        }
        // The AOF lives on the claim, not in the container.
        let dir = get("dir").unwrap_or_else(|| panic!("{at}: dir"));
        let claims: Vec<String> = set
            .docs
            .iter()
            .find_map(|d| match &d.object {
                Object::StatefulSet(s)
                    if s.metadata.name.as_deref() == Some(redis.name.as_str()) =>
                {
                    Some(
                        s.spec
                            .as_ref()
                            .unwrap()
                            .volume_claim_templates
                            .clone()
                            .unwrap_or_default(),
                    )
                }
                _ => None,
            })
            .unwrap()
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        let (volume, _) = mounted_at(c, &format!("{dir}/appendonly.aof"))
            .unwrap_or_else(|| panic!("{at}: {dir} is mounted"));
        assert!(
            claims.contains(&volume),
            "{at}: {dir} is on a volumeClaimTemplate"
        );
        // AUTH: the password comes from a mounted Secret into the included file at start.
        let include = get("include").unwrap_or_else(|| panic!("{at}: include of the runtime file"));
        let writer = data
            .values()
            .find(|v| v.contains("requirepass") && v.contains(include))
            .unwrap_or_else(|| panic!("{at}: no script writes requirepass into {include}"));
        let secret_mounts: Vec<&str> = c
            .volume_mounts
            .iter()
            .flatten()
            .filter(|m| secret_of_volume(redis.spec(), &m.name).is_some())
            .map(|m| m.mount_path.as_str())
            .collect();
        assert!(
            secret_mounts.iter().any(|m| writer.contains(m)),
            "{at}: requirepass is read from a mounted Secret"
        );
        assert!(
            args(c).iter().all(|a| !a.contains("requirepass")),
            "{at}: no password on the command line"
        );

        // A cluster: 3 masters with a replica each, made by the Job.
        assert_eq!(get("cluster-enabled"), Some("yes"), "{at}");
        let replicas = redis.replicas.unwrap_or(1);
        assert!(
            replicas >= 6,
            "{at}: 6 nodes for 3 masters with a replica each"
        );
        let job_text: String = workloads
            .iter()
            .filter(|w| w.kind == "Job" && w.is("redis-cluster"))
            .flat_map(|w| w.containers().flat_map(args).collect::<Vec<_>>())
            .chain(data.values().cloned())
            .collect::<Vec<_>>()
            .join("\n");
        assert!(
            job_text.contains("--cluster create") && job_text.contains("--cluster-replicas 1"),
            "{at}: a Job creates the cluster"
        );

        // Portcullis dials the nodes by names the headless Service gives them, over TLS on
        // tls-port, and the Redis certificate covers those names.
        let p = set.portcullis();
        let seeds = flag(&args(&p.spec().containers[0]), "--redis-cluster")
            .unwrap_or_else(|| panic!("{}: --redis-cluster", set.name))
            .to_owned();
        let service_name = set
            .docs
            .iter()
            .find_map(|d| match &d.object {
                Object::StatefulSet(s)
                    if s.metadata.name.as_deref() == Some(redis.name.as_str()) =>
                {
                    s.spec.as_ref().unwrap().service_name.clone()
                }
                _ => None,
            })
            .expect("serviceName");
        let (_, headless) = set
            .services()
            .find(|(_, s)| s.metadata.name.as_deref() == Some(service_name.as_str()))
            .unwrap_or_else(|| panic!("{at}: no Service {service_name}"));
        assert_eq!(
            headless.spec.as_ref().unwrap().cluster_ip.as_deref(),
            Some("None"),
            "{at}: headless"
        );
        let tls_secret = redis
            .spec()
            .volumes
            .iter()
            .flatten()
            .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
            .find(|s| s.ends_with("-tls"))
            .expect("a TLS secret volume");
        let cert_names: Vec<String> = set
            .certificates()
            .filter(|c| c["spec"]["secretName"] == tls_secret.as_str())
            .flat_map(|c| {
                c["spec"]["dnsNames"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        for seed in seeds.split(',') {
            let host_port = seed
                .strip_prefix("rediss://")
                .unwrap_or_else(|| panic!("{}: seed {seed} is not rediss://", set.name));
            let (host, port) = host_port.rsplit_once(':').unwrap();
            assert_eq!(
                port.parse::<i32>().unwrap(),
                tls_port,
                "{}: {seed}",
                set.name
            );
            let (pod, domain) = host.split_once('.').unwrap();
            let ordinal: i32 = pod
                .strip_prefix(&format!("{}-", redis.name))
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{}: {seed} names no pod of {}", set.name, redis.name));
            assert!(ordinal < replicas, "{}: {seed}", set.name);
            assert!(
                domain.split('.').next() == Some(service_name.as_str()),
                "{}: {seed}",
                set.name
            );
            if set.certificates().next().is_some() {
                assert!(
                    cert_names.iter().any(|n| n == host),
                    "{}: the Redis certificate lacks {host}",
                    set.name
                );
            }
        }
    }
}

#[test]
fn tls_secrets_are_issued_by_certificates() {
    for set in sets() {
        if set.certificates().next().is_none() {
            continue; // a view without the overlay that supplies them
        }
        let issued: BTreeSet<&str> = set
            .certificates()
            .filter_map(|c| c["spec"]["secretName"].as_str())
            .collect();
        for w in set.workloads() {
            for v in w.spec().volumes.iter().flatten() {
                let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) else {
                    continue;
                };
                if name.ends_with("-tls") {
                    assert!(
                        issued.contains(name),
                        "{}: {} {} mounts {name}, which no Certificate issues",
                        set.name,
                        w.kind,
                        w.name
                    );
                }
            }
        }
        // The server certificate covers the names of the Services in front of it.
        let p = set.portcullis();
        let tls = flag(&args(&p.spec().containers[0]), "--tls-cert")
            .unwrap()
            .to_owned();
        let (volume, _) = mounted_at(&p.spec().containers[0], &tls).unwrap();
        let secret = secret_of_volume(p.spec(), &volume).unwrap();
        let names: Vec<&str> = set
            .certificates()
            .filter(|c| c["spec"]["secretName"] == secret.as_str())
            .flat_map(|c| c["spec"]["dnsNames"].as_array().into_iter().flatten())
            .filter_map(Value::as_str)
            .collect();
        for (origin, svc) in set.services() {
            let name = svc.metadata.name.as_deref().unwrap();
            let selector = svc
                .spec
                .as_ref()
                .unwrap()
                .selector
                .clone()
                .unwrap_or_default();
            if selector.get(NAME_LABEL).map(String::as_str) == Some("portcullis") {
                assert!(
                    names.contains(&name),
                    "{origin}: the certificate lacks {name}"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests: compose and the image

fn compose() -> serde_yaml_ng::Value {
    let path = repo().join("deploy/compose.yaml");
    let mut v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read(&path)).unwrap();
    v.apply_merge().unwrap(); // the replicas share an anchor
    v
}

fn yaml_strings(v: &serde_yaml_ng::Value) -> Vec<String> {
    let json = serde_json::to_value(v).unwrap();
    let mut out = Vec::new();
    strings(&json, &mut out);
    out.into_iter().map(str::to_owned).collect()
}

#[test]
fn compose_runs_three_replicas_behind_envoy_without_inline_secrets() {
    let compose = compose();
    let services = compose["services"].as_mapping().expect("services");
    let name = |k: &serde_yaml_ng::Value| k.as_str().unwrap().to_owned();
    let portcullis: Vec<String> = services
        .iter()
        .filter(|(_, s)| {
            s["build"]["dockerfile"].as_str() == Some("deploy/Dockerfile")
                || s["image"]
                    .as_str()
                    .is_some_and(|i| i.starts_with("portcullis"))
        })
        .map(|(k, _)| name(k))
        .collect();
    assert_eq!(
        portcullis.len(),
        3,
        "three Portcullis replicas: {portcullis:?}"
    );
    let envoy = services
        .iter()
        .find(|(_, s)| {
            s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("envoyproxy/envoy"))
        })
        .map(|(_, s)| s)
        .expect("an envoy service");
    assert!(
        services
            .iter()
            .any(|(_, s)| s["image"].as_str().is_some_and(|i| i.starts_with("redis"))),
        "a redis service"
    );

    // Secrets: files under deploy/secrets (git-ignored), only paths in the environment.
    let secrets = compose["secrets"].as_mapping().expect("top-level secrets");
    for (k, s) in secrets {
        let keys: Vec<String> = s.as_mapping().unwrap().keys().map(name).collect();
        assert_eq!(keys, ["file"], "secret {}: from a file only", name(k));
        assert!(
            s["file"].as_str().unwrap().starts_with("./secrets/"),
            "secret {}",
            name(k)
        );
    }
    let ignore = read(&repo().join("deploy/secrets/.gitignore"));
    let lines: Vec<&str> = ignore.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        ["*", "!.gitignore"],
        "deploy/secrets/.gitignore ignores all but itself"
    );
    for (k, s) in services {
        let env: Vec<(String, String)> = match &s["environment"] {
            serde_yaml_ng::Value::Mapping(m) => m
                .iter()
                .map(|(k, v)| {
                    (
                        name(k),
                        v.as_str().map_or_else(|| format!("{v:?}"), str::to_owned),
                    )
                })
                .collect(),
            serde_yaml_ng::Value::Sequence(l) => l
                .iter()
                .map(|e| {
                    let (k, v) = e
                        .as_str()
                        .unwrap()
                        .split_once('=')
                        .unwrap_or((e.as_str().unwrap(), ""));
                    (k.to_owned(), v.to_owned())
                })
                .collect(),
            _ => Vec::new(),
        };
        for (var, value) in env {
            if secret_word(&var) {
                assert!(
                    value.starts_with('/'),
                    "service {}: {var} is a literal, not a file path",
                    name(k)
                );
            }
        }
        for text in yaml_strings(s) {
            if let Some(why) = secret_looking(&text) {
                panic!("service {}: {why}", name(k));
            }
        }
    }
    for p in &portcullis {
        let s = &services[p.as_str()];
        let listed: Vec<String> = s["secrets"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        for secret in ["jwt-secret", "admin-token"] {
            assert!(listed.iter().any(|l| l == secret), "{p}: secret {secret}");
        }
        assert_eq!(
            s["environment"]["JWT_SECRET_KEY_FILE"].as_str(),
            Some("/run/secrets/jwt-secret"),
            "{p}"
        );
        assert_eq!(
            s["environment"]["PORTCULLIS_ADMIN_TOKEN_FILE"].as_str(),
            Some("/run/secrets/admin-token"),
            "{p}"
        );
    }

    // Envoy's portcullis cluster is exactly the three replicas.
    let mount = envoy["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_str())
        .find(|v| v.contains(":/etc/envoy/envoy.yaml"))
        .expect("the Envoy config is mounted");
    let file = repo().join("deploy").join(mount.split(':').next().unwrap());
    let config: Value = serde_yaml_ng::from_str(&read(&file)).unwrap();
    let cluster = config["static_resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "portcullis")
        .expect("cluster portcullis");
    let endpoints: BTreeSet<String> = cluster["load_assignment"]["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["lb_endpoints"].as_array().unwrap())
        .map(|e| {
            let a = &e["endpoint"]["address"]["socket_address"];
            assert_eq!(a["port_value"], 50051);
            a["address"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(
        endpoints,
        portcullis.iter().cloned().collect(),
        "{}",
        shown(&file)
    );
    assert!(
        cluster["typed_extension_protocol_options"]
            .to_string()
            .contains("http2_protocol_options"),
        "gRPC needs HTTP/2 to the replicas"
    );
}

#[test]
fn the_image_builds_locked_and_runs_as_non_root() {
    let dockerfile = read(&repo().join("deploy/Dockerfile"));
    let froms: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.trim_start().to_ascii_uppercase().starts_with("FROM "))
        .collect();
    assert!(froms.len() >= 2, "multi-stage");
    assert!(
        froms[0].contains("rust:"),
        "builds in a Rust image: {}",
        froms[0]
    );
    let last = froms.last().unwrap();
    assert!(
        last.contains("distroless") || last.contains("slim"),
        "a small final image: {last}"
    );
    assert!(dockerfile.contains("cargo build --release -p portcullis-server --locked"));
    let users: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("USER "))
        .collect();
    assert_eq!(
        users.last(),
        Some(&"USER 65532:65532"),
        "runs as the numeric non-root user"
    );
    assert!(dockerfile.lines().any(|l| l == "EXPOSE 50051 9090"));
    assert!(dockerfile.contains("ENTRYPOINT [\"/usr/local/bin/portcullis\"]"));
    let ignore = read(&repo().join(".dockerignore"));
    for entry in ["target/", ".git/", "deploy/secrets/"] {
        assert!(ignore.lines().any(|l| l == entry), ".dockerignore: {entry}");
    }
    // The user the Deployment runs as is the image's.
    for set in sets() {
        let w = set.portcullis();
        let pod = w.spec().security_context.as_ref().unwrap();
        assert_eq!(
            (pod.run_as_user, pod.run_as_group),
            (Some(65532), Some(65532)),
            "{}",
            set.name
        );
    }
}
