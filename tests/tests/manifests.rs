//! The deployment artefacts under deploy/ keep the invariants docs/operations.md relies on.
//!
//! Every YAML document under deploy/k8s is parsed into its typed Kubernetes object
//! (k8s-openapi), and a field that type does not have (a typo, a wrong indent, a field newer
//! than the oldest API the crate models) fails instead of being dropped unseen. The checks run
//! on three views of the manifests: as written, each overlay with its patches merged in, and,
//! where `kubectl` is installed, what `kubectl kustomize` renders.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, PodTemplateSpec, Probe, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::serde::Deserialize;
use k8s_openapi::serde::Serialize;
use k8s_openapi::serde::de::DeserializeOwned;
use portcullis_server::config::Config;
use serde_json::Value;

const MIB: f64 = 1024.0 * 1024.0;
/// The process's own memory besides Argon2 (about 20 MiB idle; the rest is headroom for
/// connections, caches and the allocator).
const BASE_MEMORY_MIB: f64 = 128.0;
const NAME_LABEL: &str = "app.kubernetes.io/name";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn k8s_dir() -> PathBuf {
    repo().join("deploy/k8s")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn shown(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Reading manifests into typed objects

/// One Kubernetes object.
#[derive(Debug, Clone)]
enum Object {
    Deployment(Box<Deployment>),
    StatefulSet(Box<StatefulSet>),
    Job(Box<Job>),
    Service(Box<Service>),
    ConfigMap(Box<ConfigMap>),
    ServiceAccount(Box<ServiceAccount>),
    Namespace(Box<Namespace>),
    Pdb(Box<PodDisruptionBudget>),
    Hpa(Box<HorizontalPodAutoscaler>),
    NetworkPolicy(Box<NetworkPolicy>),
    /// cert-manager's CRD: k8s-openapi has no type for it, so its fields are checked by name.
    Certificate(Value),
}

#[derive(Debug, Clone)]
struct Doc {
    /// File and document number, or the render it came from.
    origin: String,
    raw: Value,
    object: Object,
}

fn documents(origin: &str, text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{origin}: not YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// Keys of `raw` that did not survive the trip through the typed object.
fn unknown_fields(raw: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (raw, typed) {
        (Value::Object(r), Value::Object(t)) => {
            for (k, v) in r {
                let here = format!("{path}.{k}");
                match t.get(k) {
                    Some(tv) => unknown_fields(v, tv, &here, out),
                    None if !v.is_null() => out.push(here),
                    None => {}
                }
            }
        }
        (Value::Array(r), Value::Array(t)) => {
            if r.len() != t.len() {
                out.push(format!("{path}[] (length {} became {})", r.len(), t.len()));
            }
            for (i, (rv, tv)) in r.iter().zip(t).enumerate() {
                unknown_fields(rv, tv, &format!("{path}[{i}]"), out);
            }
        }
        (Value::Object(r), _) if !r.is_empty() => out.push(path.to_owned()),
        _ => {}
    }
}

fn typed<T: DeserializeOwned + Serialize>(origin: &str, raw: &Value) -> Box<T> {
    let object: T = serde_json::from_value(raw.clone())
        .unwrap_or_else(|e| panic!("{origin}: does not parse as its kind: {e}"));
    let back = serde_json::to_value(&object).unwrap();
    let mut unknown = Vec::new();
    unknown_fields(raw, &back, "", &mut unknown);
    assert!(
        unknown.is_empty(),
        "{origin}: fields its type does not have (typo or wrong indentation?): {unknown:?}"
    );
    Box::new(object)
}

fn parse(origin: String, raw: Value) -> Doc {
    let kind = raw["kind"]
        .as_str()
        .unwrap_or_else(|| panic!("{origin}: no kind"))
        .to_owned();
    let o = origin.as_str();
    let object = match kind.as_str() {
        "Deployment" => Object::Deployment(typed(o, &raw)),
        "StatefulSet" => Object::StatefulSet(typed(o, &raw)),
        "Job" => Object::Job(typed(o, &raw)),
        "Service" => Object::Service(typed(o, &raw)),
        "ConfigMap" => Object::ConfigMap(typed(o, &raw)),
        "ServiceAccount" => Object::ServiceAccount(typed(o, &raw)),
        "Namespace" => Object::Namespace(typed(o, &raw)),
        "PodDisruptionBudget" => Object::Pdb(typed(o, &raw)),
        "HorizontalPodAutoscaler" => Object::Hpa(typed(o, &raw)),
        "NetworkPolicy" => Object::NetworkPolicy(typed(o, &raw)),
        "Certificate" => {
            assert_eq!(raw["apiVersion"], "cert-manager.io/v1", "{origin}");
            for field in ["secretName", "issuerRef", "dnsNames"] {
                assert!(!raw["spec"][field].is_null(), "{origin}: spec.{field}");
            }
            Object::Certificate(raw.clone())
        }
        other => panic!("{origin}: kind {other} has no check in this test; add one"),
    };
    Doc {
        origin,
        raw,
        object,
    }
}

/// A folder's kustomization.yaml.
#[derive(Debug)]
struct Kustomization {
    dir: PathBuf,
    raw: Value,
}

impl Kustomization {
    fn list(&self, key: &str) -> Vec<&Value> {
        self.raw[key]
            .as_array()
            .map_or(Vec::new(), |a| a.iter().collect())
    }

    fn resources(&self) -> Vec<PathBuf> {
        self.list("resources")
            .into_iter()
            .map(|r| self.dir.join(r.as_str().expect("resources are paths")))
            .collect()
    }

    fn patches(&self) -> Vec<PathBuf> {
        self.list("patches")
            .into_iter()
            .map(|p| {
                assert!(
                    p.get("target").is_none() && p.get("patch").is_none(),
                    "{}: only file patches targeting by kind and name are understood here",
                    shown(&self.dir)
                );
                self.dir.join(p["path"].as_str().expect("patches[].path"))
            })
            .collect()
    }

    /// Every path the kustomization names (resources, patches, components, generator files).
    fn named_paths(&self) -> Vec<PathBuf> {
        let mut paths = self.resources();
        paths.extend(self.patches());
        for c in self.list("components") {
            paths.push(self.dir.join(c.as_str().unwrap()));
        }
        for generator in ["configMapGenerator", "secretGenerator"] {
            for g in self.list(generator) {
                for key in ["files", "envs"] {
                    for f in g[key].as_array().into_iter().flatten() {
                        let f = f.as_str().unwrap();
                        // files: [name=path] or [path]
                        let path = f.split_once('=').map_or(f, |(_, p)| p);
                        paths.push(self.dir.join(path));
                    }
                }
            }
        }
        assert!(
            self.raw.get("patchesStrategicMerge").is_none()
                && self.raw.get("patchesJson6902").is_none()
                && self.raw.get("bases").is_none(),
            "{}: use resources and patches (the deprecated fields are gone in kustomize v5)",
            shown(&self.dir)
        );
        paths
    }
}

/// All of deploy/k8s: kustomizations, resource documents and patch documents.
#[derive(Debug)]
struct Tree {
    kustomizations: Vec<Kustomization>,
    /// Resource documents by file.
    files: BTreeMap<PathBuf, Vec<Doc>>,
    /// Patch documents by file.
    patch_files: BTreeMap<PathBuf, Vec<Doc>>,
    /// YAML files that are not kustomization.yaml.
    yaml_files: Vec<PathBuf>,
    /// secrets.example.env files.
    env_examples: Vec<PathBuf>,
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

fn tree() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    TREE.get_or_init(|| {
        let mut all = Vec::new();
        walk(&k8s_dir(), &mut all);
        let is_yaml =
            |p: &Path| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
        let is_kustomization = |p: &Path| {
            p.file_name()
                .is_some_and(|n| n == "kustomization.yaml" || n == "kustomization.yml")
        };
        let kustomizations: Vec<Kustomization> = all
            .iter()
            .filter(|p| is_kustomization(p))
            .map(|p| {
                let mut docs = documents(&shown(p), &read(p));
                assert_eq!(docs.len(), 1, "{}", shown(p));
                Kustomization {
                    dir: p.parent().unwrap().to_owned(),
                    raw: docs.remove(0),
                }
            })
            .collect();
        let patch_paths: BTreeSet<PathBuf> = kustomizations
            .iter()
            .flat_map(Kustomization::patches)
            .map(|p| p.canonicalize().unwrap_or(p))
            .collect();
        let yaml_files: Vec<PathBuf> = all
            .iter()
            .filter(|p| is_yaml(p) && !is_kustomization(p))
            .cloned()
            .collect();
        let mut files = BTreeMap::new();
        let mut patch_files = BTreeMap::new();
        for path in &yaml_files {
            let docs: Vec<Doc> = documents(&shown(path), &read(path))
                .into_iter()
                .enumerate()
                .map(|(i, raw)| parse(format!("{} (document {})", shown(path), i + 1), raw))
                .collect();
            if patch_paths.contains(&path.canonicalize().unwrap()) {
                patch_files.insert(path.clone(), docs);
            } else {
                files.insert(path.clone(), docs);
            }
        }
        let env_examples = all
            .iter()
            .filter(|p| p.file_name().is_some_and(|n| n == "secrets.example.env"))
            .cloned()
            .collect();
        Tree {
            kustomizations,
            files,
            patch_files,
            yaml_files,
            env_examples,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// Views: as written, overlays with their patches, kubectl's render

/// A set of objects that is deployed together.
#[derive(Debug)]
struct Set {
    name: String,
    docs: Vec<Doc>,
}

/// A strategic-merge patch as far as these manifests need it: maps merge, lists of objects
/// with a `name` (containers, env, volumes, ports) merge by name, anything else is replaced.
fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                match b.get_mut(k) {
                    Some(bv) => merge(bv, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(p))
            if !p.is_empty() && p.iter().all(|i| i.get("name").is_some()) =>
        {
            for item in p {
                match b.iter_mut().find(|x| x.get("name") == item.get("name")) {
                    Some(existing) => merge(existing, item),
                    None => b.push(item.clone()),
                }
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// The resource files a kustomization includes, following folders.
fn included_files(k: &Kustomization, out: &mut Vec<PathBuf>) {
    for r in k.resources() {
        if r.is_dir() {
            let inner = tree()
                .kustomizations
                .iter()
                .find(|k| k.dir.canonicalize().unwrap() == r.canonicalize().unwrap())
                .unwrap_or_else(|| panic!("{}: no kustomization.yaml", shown(&r)));
            included_files(inner, out);
        } else {
            out.push(r);
        }
    }
}

fn overlay_set(k: &Kustomization) -> Set {
    let mut files = Vec::new();
    included_files(k, &mut files);
    let mut raws: Vec<(String, Value)> = files
        .iter()
        .flat_map(|f| {
            let f = f.canonicalize().unwrap();
            tree()
                .files
                .iter()
                .find(|(p, _)| p.canonicalize().unwrap() == f)
                .unwrap_or_else(|| panic!("{} is not a resource file", shown(&f)))
                .1
                .iter()
                .map(|d| (d.origin.clone(), d.raw.clone()))
        })
        .collect();
    for patch_file in k.patches() {
        for patch in documents(&shown(&patch_file), &read(&patch_file)) {
            let target = raws
                .iter_mut()
                .find(|(_, r)| {
                    r["kind"] == patch["kind"] && r["metadata"]["name"] == patch["metadata"]["name"]
                })
                .unwrap_or_else(|| {
                    panic!(
                        "{}: patches {} {}, which the overlay does not include",
                        shown(&patch_file),
                        patch["kind"],
                        patch["metadata"]["name"]
                    )
                });
            merge(&mut target.1, &patch);
            target.0.push_str(&format!(" + {}", shown(&patch_file)));
        }
    }
    for image in k.list("images") {
        let name = image["name"].as_str().unwrap();
        for (_, raw) in &mut raws {
            for c in containers_raw(raw) {
                let current = c["image"].as_str().unwrap_or_default().to_owned();
                let (repo_part, tag) = split_image(&current);
                if repo_part != name {
                    continue;
                }
                let new_name = image["newName"].as_str().unwrap_or(repo_part);
                let new = match (image["digest"].as_str(), image["newTag"].as_str()) {
                    (Some(d), _) => format!("{new_name}@{d}"),
                    (None, Some(t)) => format!("{new_name}:{t}"),
                    (None, None) => format!("{new_name}{}", tag.map_or(String::new(), |t| t)),
                };
                c["image"] = Value::String(new);
            }
        }
    }
    Set {
        name: format!("{} with its patches", shown(&k.dir)),
        docs: raws.into_iter().map(|(o, r)| parse(o, r)).collect(),
    }
}

fn containers_raw(raw: &mut Value) -> Vec<&mut Value> {
    let spec = match raw["kind"].as_str() {
        Some("Deployment" | "StatefulSet" | "Job") => &mut raw["spec"]["template"]["spec"],
        _ => return Vec::new(),
    };
    let Value::Object(spec) = spec else {
        return Vec::new();
    };
    spec.iter_mut()
        .filter(|(k, _)| *k == "containers" || *k == "initContainers")
        .flat_map(|(_, v)| v.as_array_mut().into_iter().flatten())
        .collect()
}

/// `repo[:tag]` or `repo@digest` into the repository and the `:tag`/`@digest` suffix.
fn split_image(image: &str) -> (&str, Option<String>) {
    if let Some((r, d)) = image.split_once('@') {
        return (r, Some(format!("@{d}")));
    }
    match image.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') => (r, Some(format!(":{t}"))),
        _ => (image, None),
    }
}

fn kubectl_renders() -> Vec<Set> {
    let roots: Vec<&Kustomization> = tree()
        .kustomizations
        .iter()
        .filter(|k| {
            let dir = k.dir.canonicalize().unwrap();
            !tree().kustomizations.iter().any(|other| {
                other
                    .resources()
                    .iter()
                    .any(|r| r.canonicalize().ok().as_ref() == Some(&dir))
            })
        })
        .collect();
    let mut sets = Vec::new();
    for k in roots {
        let out = match Command::new("kubectl")
            .arg("kustomize")
            .arg(&k.dir)
            .output()
        {
            Ok(out) => out,
            Err(_) => {
                eprintln!("kubectl not installed: the kustomize renders are not checked");
                return sets;
            }
        };
        assert!(
            out.status.success(),
            "kubectl kustomize {} failed:\n{}",
            shown(&k.dir),
            String::from_utf8_lossy(&out.stderr)
        );
        let name = format!("kubectl kustomize {}", shown(&k.dir));
        let text = String::from_utf8(out.stdout).unwrap();
        let docs = documents(&name, &text)
            .into_iter()
            .enumerate()
            .map(|(i, raw)| {
                let what = format!("{}/{}", raw["kind"], raw["metadata"]["name"]).replace('"', "");
                parse(format!("{name} (document {}, {what})", i + 1), raw)
            })
            .collect();
        sets.push(Set { name, docs });
    }
    sets
}

/// Every view whose objects are deployed together: the folders as written, then each overlay
/// with its patches, then kubectl's renders.
fn sets() -> &'static [Set] {
    static SETS: OnceLock<Vec<Set>> = OnceLock::new();
    SETS.get_or_init(|| {
        let mut sets = vec![Set {
            name: "deploy/k8s as written".to_owned(),
            docs: tree().files.values().flatten().cloned().collect(),
        }];
        for k in &tree().kustomizations {
            if !k.list("patches").is_empty() || !k.list("images").is_empty() {
                sets.push(overlay_set(k));
            }
        }
        sets.extend(kubectl_renders());
        sets
    })
}

// ---------------------------------------------------------------------------------------------
// Accessors

/// A pod-creating object.
#[derive(Debug)]
struct Workload<'a> {
    origin: &'a str,
    kind: &'static str,
    name: String,
    replicas: Option<i32>,
    pod: &'a PodTemplateSpec,
}

impl Workload<'_> {
    fn spec(&self) -> &PodSpec {
        self.pod.spec.as_ref().expect("pod spec")
    }

    fn labels(&self) -> BTreeMap<String, String> {
        self.pod
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default()
    }

    fn containers(&self) -> impl Iterator<Item = &Container> {
        let s = self.spec();
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
    }

    fn is(&self, app: &str) -> bool {
        self.labels().get(NAME_LABEL).map(String::as_str) == Some(app)
    }
}

impl Set {
    fn workloads(&self) -> Vec<Workload<'_>> {
        let mut w = Vec::new();
        for d in &self.docs {
            let (kind, meta, replicas, pod) = match &d.object {
                Object::Deployment(o) => {
                    let s = o.spec.as_ref().expect("spec");
                    ("Deployment", &o.metadata, s.replicas, &s.template)
                }
                Object::StatefulSet(o) => {
                    let s = o.spec.as_ref().expect("spec");
                    ("StatefulSet", &o.metadata, s.replicas, &s.template)
                }
                Object::Job(o) => {
                    let s = o.spec.as_ref().expect("spec");
                    ("Job", &o.metadata, None, &s.template)
                }
                _ => continue,
            };
            w.push(Workload {
                origin: &d.origin,
                kind,
                name: meta.name.clone().unwrap_or_default(),
                replicas,
                pod,
            });
        }
        w
    }

    /// The Portcullis Deployment: exactly one per set.
    fn portcullis(&self) -> Workload<'_> {
        let mut found: Vec<_> = self
            .workloads()
            .into_iter()
            .filter(|w| w.kind == "Deployment" && w.is("portcullis"))
            .collect();
        assert_eq!(found.len(), 1, "{}: one Portcullis Deployment", self.name);
        found.remove(0)
    }

    fn config_maps(&self) -> impl Iterator<Item = (&str, &ConfigMap)> {
        self.docs.iter().filter_map(|d| match &d.object {
            Object::ConfigMap(c) => Some((d.origin.as_str(), &**c)),
            _ => None,
        })
    }

    fn config_map(&self, name: &str) -> &ConfigMap {
        self.config_maps()
            .find(|(_, c)| c.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{}: no ConfigMap {name}", self.name))
            .1
    }

    fn services(&self) -> impl Iterator<Item = (&str, &Service)> {
        self.docs.iter().filter_map(|d| match &d.object {
            Object::Service(s) => Some((d.origin.as_str(), &**s)),
            _ => None,
        })
    }

    fn network_policies(&self) -> impl Iterator<Item = (&str, &NetworkPolicy)> {
        self.docs.iter().filter_map(|d| match &d.object {
            Object::NetworkPolicy(n) => Some((d.origin.as_str(), &**n)),
            _ => None,
        })
    }

    fn certificates(&self) -> impl Iterator<Item = &Value> {
        self.docs.iter().filter_map(|d| match &d.object {
            Object::Certificate(c) => Some(c),
            _ => None,
        })
    }
}

fn selects(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let plain = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions = sel.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            other => panic!("unknown selector operator {other}"),
        }
    });
    plain && expressions
}

fn is_empty_selector(sel: &LabelSelector) -> bool {
    sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && sel.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

/// The value after `flag` in `args`, as `--flag value` or `--flag=value`.
fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(flag).and_then(|r| r.strip_prefix('='))
        }
    })
}

fn args(c: &Container) -> Vec<String> {
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .cloned()
        .collect()
}

fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

/// The volume (by name) whose mount holds `path` in container `c`, and the path inside it.
fn mounted_at<'a>(c: &Container, path: &'a str) -> Option<(String, &'a str)> {
    c.volume_mounts
        .iter()
        .flatten()
        .filter_map(|m| {
            let rest = path.strip_prefix(m.mount_path.trim_end_matches('/'))?;
            rest.strip_prefix('/')
                .map(|r| (m.name.clone(), r, m.mount_path.len()))
        })
        .max_by_key(|(_, _, len)| *len)
        .map(|(name, rest, _)| (name, rest))
}

fn secret_of_volume(spec: &PodSpec, volume: &str) -> Option<String> {
    spec.volumes
        .iter()
        .flatten()
        .find(|v| v.name == volume)
        .and_then(|v| v.secret.as_ref())
        .and_then(|s| s.secret_name.clone())
}

fn bytes(q: &Quantity) -> f64 {
    let s = q.0.as_str();
    let units = [
        ("Ki", 1024.0),
        ("Mi", MIB),
        ("Gi", 1024.0 * MIB),
        ("Ti", 1024.0 * 1024.0 * MIB),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ];
    let (number, factor) = units
        .iter()
        .find_map(|(u, f)| s.strip_suffix(u).map(|n| (n, *f)))
        .unwrap_or((s, 1.0));
    number
        .parse::<f64>()
        .unwrap_or_else(|_| panic!("memory quantity {s:?}"))
        * factor
}

fn millicores(q: &Quantity) -> f64 {
    let s = q.0.as_str();
    match s.strip_suffix('m') {
        Some(m) => m.parse().unwrap_or_else(|_| panic!("cpu quantity {s:?}")),
        None => {
            s.parse::<f64>()
                .unwrap_or_else(|_| panic!("cpu quantity {s:?}"))
                * 1000.0
        }
    }
}

fn port_number(c: &Container, port: &IntOrString) -> Option<i32> {
    match port {
        IntOrString::Int(n) => c
            .ports
            .iter()
            .flatten()
            .any(|p| p.container_port == *n)
            .then_some(*n),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port),
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets

fn secret_word(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    [
        "SECRET",
        "TOKEN",
        "PASSWORD",
        "PASSWD",
        "KEY",
        "AUTH",
        "CREDENTIAL",
    ]
    .iter()
    .any(|w| upper.contains(w))
}

/// Why `text` looks like it holds a secret value, if it does: `password = ...`-style
/// assignments of a literal (not a path or a `$variable`), Redis `requirepass`/`masterauth`
/// with a literal, a password inside a URL, or a run of 32+ hex digits (`openssl rand -hex`).
fn secret_looking(text: &str) -> Option<String> {
    let literal = |v: &str| {
        let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
        !v.is_empty() && !v.starts_with('/') && !v.starts_with('$')
    };
    for line in text.lines() {
        let t = line.trim().trim_start_matches('#').trim();
        if let Some((key, value)) = t.split_once(['=', ':']) {
            let key = key
                .trim()
                .rsplit(|c: char| c.is_whitespace() || c == '"' || c == '\'')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            let secret_key = [
                "password",
                "passwd",
                "secret",
                "token",
                "requirepass",
                "masterauth",
            ]
            .iter()
            .any(|w| key.ends_with(w));
            if secret_key && literal(value) && !value.starts_with("//") {
                return Some(format!("assignment: {line:?}"));
            }
        }
        let mut words = t.split_whitespace();
        if let (Some(first), Some(value)) = (words.next(), words.next())
            && matches!(first, "requirepass" | "masterauth")
            && literal(value)
        {
            return Some(format!("Redis password: {line:?}"));
        }
    }
    for (i, _) in text.match_indices("://") {
        let authority = text[i + 3..]
            .split(|c: char| c == '/' || c.is_whitespace() || c == ',')
            .next()
            .unwrap_or_default();
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && userinfo.contains(':')
        {
            return Some(format!("password in a URL: {authority:?}"));
        }
    }
    let mut run = 0;
    for c in text.chars() {
        run = if c.is_ascii_hexdigit() { run + 1 } else { 0 };
        if run >= 32 {
            return Some("a run of 32 or more hex digits".to_owned());
        }
    }
    None
}

fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        Value::Object(o) => o.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

fn env_example_keys() -> BTreeMap<String, String> {
    let mut keys = BTreeMap::new();
    for path in &tree().env_examples {
        for line in read(path).lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .unwrap_or_else(|| panic!("{}: {line:?}", shown(path)));
            keys.insert(k.to_owned(), v.to_owned());
        }
    }
    keys
}

// ---------------------------------------------------------------------------------------------
// The Portcullis config file, as the Deployment mounts it

#[derive(Debug)]
struct PortcullisConfig {
    permits: u64,
    memory_kib: u64,
    shutdown_grace_secs: u64,
}

fn portcullis_config(set: &Set, w: &Workload<'_>) -> PortcullisConfig {
    let c = &w.spec().containers[0];
    let args = args(c);
    let path = flag(&args, "--config").expect("the Deployment passes --config");
    let (volume, key) = mounted_at(c, path).expect("--config lies on a mounted volume");
    let map_name = w
        .spec()
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == volume)
        .and_then(|v| v.config_map.as_ref())
        .map(|c| c.name.clone())
        .expect("--config comes from a ConfigMap volume");
    let text = set
        .config_map(&map_name)
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .unwrap_or_else(|| panic!("{}: ConfigMap {map_name} has no key {key}", set.name));
    let file: toml::Table = toml::from_str(text).expect("portcullis.toml is TOML");
    let permits = file
        .get("auth")
        .and_then(|a| a.get("argon2"))
        .and_then(|a| a.get("permits"))
        .and_then(toml::Value::as_integer)
        .unwrap_or_else(|| {
            panic!(
                "{}: [auth.argon2] permits must be set: its default is the node's CPU count, \
                 which would unbind hashing memory from the pod's limit",
                set.name
            )
        });
    // The server's own loader: the file is valid (unknown keys are errors) and means what the
    // TOML above says.
    let mut tmp = tempfile::NamedTempFile::new().unwrap();
    tmp.write_all(text.as_bytes()).unwrap();
    let config = Config::load(
        ["portcullis", "--config", tmp.path().to_str().unwrap()],
        &HashMap::<String, String>::new(),
    )
    .unwrap_or_else(|e| panic!("{}: Portcullis refuses {key}: {e}", set.name));
    assert_eq!(config.auth.hash_permits as i64, permits, "{}", set.name);
    PortcullisConfig {
        permits: permits.try_into().unwrap(),
        memory_kib: config.auth.argon2.memory_kib.into(),
        shutdown_grace_secs: config.shutdown_grace.as_secs(),
    }
}

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
