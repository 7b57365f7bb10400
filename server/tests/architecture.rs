//! The house's layering, read from the source: which top-level module of `server/src` may
//! import which, so the domain never learns of its stores, tonic or Redis, and no lower layer
//! reaches up into a higher one.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The top-level modules of `server/src`, lowest layer first. A module may import modules of
/// lower layers only; `lib.rs` and `main.rs` wire everything and are exempt. A new module must
/// be placed here, so its layer is a decision rather than an accident.
const LAYERS: &[&[&str]] = &[
    // Foundations: no imports from the rest of the crate.
    &["clock", "env", "keys", "periodic", "secret_files"],
    // Metric names, logs, traces, the RPC layer and the admin HTTP port.
    &["telemetry"],
    // The domains; authentication throttles logins through the rate limiter.
    &["ratelimit"],
    &["auth"],
    // Implementations of the domains' store interfaces.
    &["store"],
    // Builds the settings of everything below it.
    &["config"],
    // The edges: gRPC handlers and TLS.
    &["grpc", "tls"],
];

/// Crates the domain must not name: it speaks in its own types and leaves the wire and the
/// storage to the layers that implement them.
const FOREIGN_TO_THE_DOMAIN: &[&str] = &["tonic", "redis", "tonic_health", "tonic_types"];

/// The domain modules.
const DOMAIN: &[&str] = &["ratelimit", "auth"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, recursively.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The top-level module a file belongs to (`store` for `src/store/redis/auth.rs`, `keys` for
/// `src/keys.rs`); `None` for the crate root files.
fn top_module(file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src()).unwrap();
    let first = relative
        .components()
        .next()?
        .as_os_str()
        .to_str()?
        .to_owned();
    let name = first.strip_suffix(".rs").unwrap_or(&first).to_owned();
    (name != "lib" && name != "main").then_some(name)
}

/// The lines of code of `text`, without whole-line comments (doc comments mention other
/// modules in prose; that is no dependency).
fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| !l.trim_start().starts_with("//"))
}

/// The crate's top-level modules a source text names through `crate::<module>`.
fn crate_imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in code_lines(text) {
        for (at, _) in line.match_indices("crate::") {
            let preceded_by_ident = line[..at]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_');
            if preceded_by_ident {
                continue; // e.g. `portcullis_crate::`
            }
            let name: String = line[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
    }
    found
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

#[test]
fn every_module_has_a_layer() {
    let mut modules = BTreeSet::new();
    for file in rust_files(&src()) {
        if let Some(module) = top_module(&file) {
            modules.insert(module);
        }
    }
    let unplaced: Vec<_> = modules.iter().filter(|m| layer_of(m).is_none()).collect();
    assert!(unplaced.is_empty(), "modules without a layer: {unplaced:?}");
    let placed: BTreeSet<String> = LAYERS
        .iter()
        .flat_map(|l| l.iter())
        .map(|m| m.to_string())
        .collect();
    let gone: Vec<_> = placed.difference(&modules).collect();
    assert!(
        gone.is_empty(),
        "layers name modules that do not exist: {gone:?}"
    );
}

#[test]
fn modules_import_only_lower_layers() {
    let mut violations = Vec::new();
    for file in rust_files(&src()) {
        let Some(module) = top_module(&file) else {
            continue;
        };
        let Some(own) = layer_of(&module) else {
            continue; // reported by every_module_has_a_layer
        };
        let text = fs::read_to_string(&file).unwrap();
        for imported in crate_imports(&text) {
            if imported == module {
                continue;
            }
            match layer_of(&imported) {
                Some(layer) if layer < own => {}
                _ => violations.push(format!(
                    "{} ({module}) imports crate::{imported}",
                    file.strip_prefix(src()).unwrap().display()
                )),
            }
        }
    }
    assert!(
        violations.is_empty(),
        "imports against the layering:\n{}",
        violations.join("\n")
    );
}

#[test]
fn the_domain_names_neither_the_wire_nor_the_storage() {
    let mut violations = Vec::new();
    for file in rust_files(&src()) {
        let Some(module) = top_module(&file) else {
            continue;
        };
        if !DOMAIN.contains(&module.as_str()) {
            continue;
        }
        let text = fs::read_to_string(&file).unwrap();
        for (number, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            let named = FOREIGN_TO_THE_DOMAIN.iter().find(|krate| {
                line.match_indices(&format!("{krate}::")).any(|(at, _)| {
                    !line[..at]
                        .chars()
                        .next_back()
                        .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
                })
            });
            if let Some(krate) = named {
                violations.push(format!(
                    "{}:{}: names {krate}",
                    file.strip_prefix(src()).unwrap().display(),
                    number + 1
                ));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn the_checks_see_imports() {
    // The scanner itself: a checker that finds nothing passes everything.
    let text = "use crate::store::AnyStore;\n// crate::grpc in prose\nlet x = crate::keys::hex(b);\nuse other_crate::x;";
    let found: Vec<_> = crate_imports(text).into_iter().collect();
    assert_eq!(found, ["keys", "store"]);
    assert_eq!(layer_of("store"), Some(4));
    assert!(layer_of("auth") < layer_of("store"));
}
