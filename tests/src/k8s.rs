//! A small kustomize loader for the deploy/ manifests test: deploy/k8s read into typed Kubernetes objects, as written, each overlay with its patches merged, and as `kubectl kustomize` renders it.

// The loader serves tests only: a manifest it cannot read is a failed test, so it panics.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, PodTemplateSpec, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::serde::Deserialize;
use k8s_openapi::serde::Serialize;
use k8s_openapi::serde::de::DeserializeOwned;
use portcullis_server::config::Config;
use serde_json::Value;

/// One mebibyte, in bytes.
pub const MIB: f64 = 1024.0 * 1024.0;
/// The label that names the app a workload runs.
pub const NAME_LABEL: &str = "app.kubernetes.io/name";

/// The repository root (the tests crate sits one level below it).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// `deploy/k8s`, the kustomize bases and overlays.
pub fn k8s_dir() -> PathBuf {
    repo().join("deploy/k8s")
}

/// The file as text; panics naming it when it cannot be read.
pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `path` relative to the repository, for messages.
pub fn shown(path: &Path) -> String {
    path.strip_prefix(repo())
        .unwrap_or(path)
        .display()
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Reading manifests into typed objects

/// One Kubernetes object.
#[derive(Debug, Clone)]
pub enum Object {
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

/// One YAML document and the object it parsed into.
#[derive(Debug, Clone)]
pub struct Doc {
    /// File and document number, or the render it came from.
    pub origin: String,
    pub raw: Value,
    pub object: Object,
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

/// Parses one document into its typed object; panics on a kind without a check, or on a
/// field its type does not have.
pub fn parse(origin: String, raw: Value) -> Doc {
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
pub struct Kustomization {
    pub dir: PathBuf,
    pub raw: Value,
}

impl Kustomization {
    pub fn list(&self, key: &str) -> Vec<&Value> {
        self.raw[key]
            .as_array()
            .map_or(Vec::new(), |a| a.iter().collect())
    }

    pub fn resources(&self) -> Vec<PathBuf> {
        self.list("resources")
            .into_iter()
            .map(|r| self.dir.join(r.as_str().expect("resources are paths")))
            .collect()
    }

    pub fn patches(&self) -> Vec<PathBuf> {
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
    pub fn named_paths(&self) -> Vec<PathBuf> {
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
pub struct Tree {
    pub kustomizations: Vec<Kustomization>,
    /// Resource documents by file.
    pub files: BTreeMap<PathBuf, Vec<Doc>>,
    /// Patch documents by file.
    pub patch_files: BTreeMap<PathBuf, Vec<Doc>>,
    /// YAML files that are not kustomization.yaml.
    pub yaml_files: Vec<PathBuf>,
    /// secrets.example.env files.
    pub env_examples: Vec<PathBuf>,
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

/// deploy/k8s read once per test process.
pub fn tree() -> &'static Tree {
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
pub struct Set {
    pub name: String,
    pub docs: Vec<Doc>,
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
pub fn split_image(image: &str) -> (&str, Option<String>) {
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
pub fn sets() -> &'static [Set] {
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
pub struct Workload<'a> {
    pub origin: &'a str,
    pub kind: &'static str,
    pub name: String,
    pub replicas: Option<i32>,
    pub pod: &'a PodTemplateSpec,
}

impl Workload<'_> {
    pub fn spec(&self) -> &PodSpec {
        self.pod.spec.as_ref().expect("pod spec")
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        self.pod
            .metadata
            .as_ref()
            .and_then(|m| m.labels.clone())
            .unwrap_or_default()
    }

    pub fn containers(&self) -> impl Iterator<Item = &Container> {
        let s = self.spec();
        s.containers
            .iter()
            .chain(s.init_containers.iter().flatten())
    }

    pub fn is(&self, app: &str) -> bool {
        self.labels().get(NAME_LABEL).map(String::as_str) == Some(app)
    }
}

impl Set {
    pub fn workloads(&self) -> Vec<Workload<'_>> {
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
    pub fn portcullis(&self) -> Workload<'_> {
        let mut found: Vec<_> = self
            .workloads()
            .into_iter()
            .filter(|w| w.kind == "Deployment" && w.is("portcullis"))
            .collect();
        assert_eq!(found.len(), 1, "{}: one Portcullis Deployment", self.name);
        found.remove(0)
    }

    pub fn config_maps(&self) -> impl Iterator<Item = (&str, &ConfigMap)> {
        self.docs.iter().filter_map(|d| match &d.object {
            Object::ConfigMap(c) => Some((d.origin.as_str(), &**c)),
            _ => None,
        })
    }

    pub fn config_map(&self, name: &str) -> &ConfigMap {
        self.config_maps()
            .find(|(_, c)| c.metadata.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("{}: no ConfigMap {name}", self.name))
            .1
    }

    pub fn services(&self) -> impl Iterator<Item = (&str, &Service)> {
        self.docs.iter().filter_map(|d| match &d.object {
            Object::Service(s) => Some((d.origin.as_str(), &**s)),
            _ => None,
        })
    }

    pub fn network_policies(&self) -> impl Iterator<Item = (&str, &NetworkPolicy)> {
        self.docs.iter().filter_map(|d| match &d.object {
            Object::NetworkPolicy(n) => Some((d.origin.as_str(), &**n)),
            _ => None,
        })
    }

    pub fn certificates(&self) -> impl Iterator<Item = &Value> {
        self.docs.iter().filter_map(|d| match &d.object {
            Object::Certificate(c) => Some(c),
            _ => None,
        })
    }
}

/// Whether `sel` selects a pod with these labels.
pub fn selects(sel: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
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

/// An empty selector selects every pod (or peer) in the namespace.
pub fn is_empty_selector(sel: &LabelSelector) -> bool {
    sel.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && sel.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

/// The value after `flag` in `args`, as `--flag value` or `--flag=value`.
pub fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().enumerate().find_map(|(i, a)| {
        if a == flag {
            args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(flag).and_then(|r| r.strip_prefix('='))
        }
    })
}

/// The container's command and arguments, in order.
pub fn args(c: &Container) -> Vec<String> {
    c.command
        .iter()
        .flatten()
        .chain(c.args.iter().flatten())
        .cloned()
        .collect()
}

/// The literal value of environment variable `name` (not one taken from a Secret).
pub fn env_value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.as_deref())
}

/// The volume (by name) whose mount holds `path` in container `c`, and the path inside it.
pub fn mounted_at<'a>(c: &Container, path: &'a str) -> Option<(String, &'a str)> {
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

/// The Secret behind volume `volume`, if it is a Secret volume.
pub fn secret_of_volume(spec: &PodSpec, volume: &str) -> Option<String> {
    spec.volumes
        .iter()
        .flatten()
        .find(|v| v.name == volume)
        .and_then(|v| v.secret.as_ref())
        .and_then(|s| s.secret_name.clone())
}

/// A memory quantity (`512Mi`, `1G`, …) in bytes.
pub fn bytes(q: &Quantity) -> f64 {
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

/// A CPU quantity (`500m`, `2`) in millicores.
pub fn millicores(q: &Quantity) -> f64 {
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

/// The container port a Service's target port (number or name) reaches, if the container has it.
pub fn port_number(c: &Container, port: &IntOrString) -> Option<i32> {
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

/// Whether a name (of a key, variable or file) says it holds a secret.
pub fn secret_word(name: &str) -> bool {
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
pub fn secret_looking(text: &str) -> Option<String> {
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

/// Every string inside `v`, depth first.
pub fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Array(a) => a.iter().for_each(|v| strings(v, out)),
        Value::Object(o) => o.values().for_each(|v| strings(v, out)),
        _ => {}
    }
}

/// The keys and placeholder values of every `secrets.example.env`.
pub fn env_example_keys() -> BTreeMap<String, String> {
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

/// What the manifests test needs from the mounted Portcullis config file.
#[derive(Debug)]
pub struct PortcullisConfig {
    pub permits: u64,
    pub memory_kib: u64,
    pub shutdown_grace_secs: u64,
}

/// Reads the config file the Deployment `w` mounts with `--config`, through the server's own
/// loader (so the file is valid as the server reads it).
pub fn portcullis_config(set: &Set, w: &Workload<'_>) -> PortcullisConfig {
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
