//! The house's layering, read from the source: which top-level module of `server/src` may
//! import which, so the domain never learns of its stores, tonic or Redis, and no lower layer
//! reaches up into a higher one; and no two files of a folder import each other, even through
//! a chain or a re-export.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::collections::{BTreeMap, BTreeSet};
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
    // The gRPC port's connections, over TLS or not.
    &["transport"],
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

/// Every file of the library but the crate root, with its top-level module and its text.
fn module_files() -> Vec<(PathBuf, String, String)> {
    rust_files(&src())
        .into_iter()
        .filter_map(|file| {
            let module = top_module(&file)?;
            let text = fs::read_to_string(&file).unwrap();
            Some((file, module, text))
        })
        .collect()
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

#[test]
fn every_module_has_a_layer() {
    let modules: BTreeSet<String> = module_files().into_iter().map(|(_, m, _)| m).collect();
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
    for (file, module, text) in module_files() {
        let Some(own) = layer_of(&module) else {
            continue; // reported by every_module_has_a_layer
        };
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
    for (file, module, text) in module_files() {
        if !DOMAIN.contains(&module.as_str()) {
            continue;
        }
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

/// A module by its path from the crate root: `["store", "redis", "auth"]`; the root is `[]`.
type ModPath = Vec<String>;

/// The module a file defines (`src/store/redis/mod.rs` → `["store", "redis"]`).
fn module_path(file: &Path) -> ModPath {
    let relative = file.strip_prefix(src()).unwrap().with_extension("");
    let mut path: ModPath = relative
        .components()
        .map(|c| c.as_os_str().to_str().unwrap().to_owned())
        .collect();
    if path.last().is_some_and(|l| l == "mod") {
        path.pop();
    }
    if path == ["lib"] {
        path.clear();
    }
    path
}

/// True for items compiled only in tests (`#[cfg(test)]`): test code may reach anywhere.
fn is_test_only(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

/// Every path a use tree names, as segments (`a::{b, c::d}` → `a::b`, `a::c::d`), with the
/// name each one is known by in the importing module.
fn use_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let mut path = prefix.clone();
            path.push(n.ident.to_string());
            out.push((path, n.ident.to_string()));
        }
        syn::UseTree::Rename(r) => {
            let mut path = prefix.clone();
            path.push(r.ident.to_string());
            out.push((path, r.rename.to_string()));
        }
        syn::UseTree::Glob(_) => out.push((prefix.clone(), "*".to_owned())),
        syn::UseTree::Group(g) => {
            for tree in &g.items {
                use_paths(tree, prefix, out);
            }
        }
    }
}

/// What one file refers to: the paths of its `use` items (and which of them it re-exports)
/// and the multi-segment paths of its code, macro bodies included.
#[derive(Default)]
struct References {
    /// Every path named, from `use` items and from code.
    paths: Vec<Vec<String>>,
    /// `pub use` items: the name exported → the path it stands for.
    reexports: Vec<(String, Vec<String>)>,
}

impl<'ast> syn::visit::Visit<'ast> for References {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let attrs: &[syn::Attribute] = match item {
            syn::Item::Mod(m) => &m.attrs,
            syn::Item::Fn(f) => &f.attrs,
            syn::Item::Use(u) => &u.attrs,
            syn::Item::Impl(i) => &i.attrs,
            syn::Item::Const(c) => &c.attrs,
            syn::Item::Static(s) => &s.attrs,
            syn::Item::Struct(s) => &s.attrs,
            _ => &[],
        };
        if !is_test_only(attrs) {
            syn::visit::visit_item(self, item);
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        let mut named = Vec::new();
        use_paths(&item.tree, &mut Vec::new(), &mut named);
        let public = !matches!(item.vis, syn::Visibility::Inherited);
        for (path, name) in named {
            if public {
                self.reexports.push((name, path.clone()));
            }
            self.paths.push(path);
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        if path.segments.len() > 1 {
            self.paths
                .push(path.segments.iter().map(|s| s.ident.to_string()).collect());
        }
        syn::visit::visit_path(self, path);
    }

    fn visit_macro(&mut self, mac: &'ast syn::Macro) {
        syn::visit::visit_macro(self, mac);
        paths_in_tokens(mac.tokens.clone(), &mut self.paths);
    }
}

/// `a::b::c` runs of a macro body, which syn leaves unparsed.
fn paths_in_tokens(tokens: proc_macro2::TokenStream, out: &mut Vec<Vec<String>>) {
    use proc_macro2::TokenTree;
    fn flush(run: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if run.len() > 1 {
            out.push(std::mem::take(run));
        }
        run.clear();
    }
    let mut run: Vec<String> = Vec::new();
    let mut colons = 0;
    for token in tokens {
        match token {
            TokenTree::Ident(ident) if run.is_empty() || colons == 2 => {
                run.push(ident.to_string());
                colons = 0;
            }
            TokenTree::Punct(p) if p.as_char() == ':' && !run.is_empty() && colons < 2 => {
                colons += 1;
            }
            TokenTree::Group(group) => {
                flush(&mut run, out);
                colons = 0;
                paths_in_tokens(group.stream(), out);
            }
            other => {
                flush(&mut run, out);
                colons = 0;
                if let TokenTree::Ident(ident) = other {
                    run.push(ident.to_string());
                }
            }
        }
    }
    flush(&mut run, out);
}

/// The crate's modules, what each refers to, and the module each `pub use` name leads to.
struct Crate {
    references: BTreeMap<ModPath, References>,
}

impl Crate {
    fn read() -> Self {
        let mut references = BTreeMap::new();
        for file in rust_files(&src()) {
            let module = module_path(&file);
            if module == ["main"] {
                continue; // the binary: wiring, outside the library's graph
            }
            let syntax = syn::parse_file(&fs::read_to_string(&file).unwrap())
                .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            let mut found = References::default();
            syn::visit::Visit::visit_file(&mut found, &syntax);
            references.insert(module, found);
        }
        Self { references }
    }

    /// The file a path names, seen from `from`: the longest prefix that is a module, or the
    /// module a re-export of the next segment leads to. `None` for other crates and for names
    /// local to `from`.
    fn resolve(&self, from: &ModPath, path: &[String]) -> Option<ModPath> {
        let mut base: ModPath = match path.first().map(String::as_str) {
            Some("crate") => Vec::new(),
            Some("super") | Some("self") => from.clone(),
            Some(first) if self.is_child(from, first) => from.clone(),
            _ => return None,
        };
        let mut rest = path;
        if rest[0] == "crate" {
            rest = &rest[1..];
        }
        while let Some(first) = rest.first() {
            match first.as_str() {
                "super" => {
                    base.pop();
                }
                "self" => {}
                _ => break,
            }
            rest = &rest[1..];
        }
        let mut module = base;
        let mut used = 0;
        while used < rest.len() && self.is_child(&module, &rest[used]) {
            module.push(rest[used].clone());
            used += 1;
        }
        let reexported = rest
            .get(used)
            .and_then(|next| self.reexport(&module, next, 0));
        Some(reexported.unwrap_or(module))
    }

    /// The module a `pub use` of `name` in `module` leads to, followed through chains.
    fn reexport(&self, module: &ModPath, name: &str, depth: usize) -> Option<ModPath> {
        if depth > 8 {
            return None;
        }
        let (_, path) = self
            .references
            .get(module)?
            .reexports
            .iter()
            .find(|(exported, _)| exported == name)?;
        let target = self.resolve(module, path)?;
        (target != *module).then_some(target)
    }

    fn is_child(&self, parent: &ModPath, name: &str) -> bool {
        let mut child = parent.clone();
        child.push(name.to_owned());
        self.references.contains_key(&child)
    }

    /// Import edges between files, leaving out a folder's `mod.rs` with its own children (it
    /// declares them; they may use what it holds).
    fn edges(&self) -> BTreeMap<ModPath, BTreeSet<ModPath>> {
        let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
        for (module, found) in &self.references {
            for path in &found.paths {
                let Some(target) = self.resolve(module, path) else {
                    continue;
                };
                let parent_and_child = (target.len() + 1 == module.len()
                    && module.starts_with(&target))
                    || (module.len() + 1 == target.len() && target.starts_with(module));
                if target != *module && !parent_and_child {
                    edges.entry(module.clone()).or_default().insert(target);
                }
            }
        }
        edges
    }
}

/// The cycles of a graph: each strongly connected component of more than one node.
fn cycles(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    // Kosaraju: finish order on the graph, then components on its reverse.
    fn finish(
        node: &ModPath,
        edges: &BTreeMap<ModPath, BTreeSet<ModPath>>,
        seen: &mut BTreeSet<ModPath>,
        order: &mut Vec<ModPath>,
    ) {
        if !seen.insert(node.clone()) {
            return;
        }
        for next in edges.get(node).into_iter().flatten() {
            finish(next, edges, seen, order);
        }
        order.push(node.clone());
    }
    let mut reverse: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    let mut nodes = BTreeSet::new();
    for (from, targets) in edges {
        nodes.insert(from.clone());
        for to in targets {
            nodes.insert(to.clone());
            reverse.entry(to.clone()).or_default().insert(from.clone());
        }
    }
    let (mut seen, mut order) = (BTreeSet::new(), Vec::new());
    for node in &nodes {
        finish(node, edges, &mut seen, &mut order);
    }
    let mut assigned = BTreeSet::new();
    let mut components = Vec::new();
    for node in order.iter().rev() {
        let mut component = Vec::new();
        finish(node, &reverse, &mut assigned, &mut component);
        if component.len() > 1 {
            component.sort();
            components.push(component);
        }
    }
    components
}

#[test]
fn no_two_files_import_each_other() {
    let krate = Crate::read();
    let edges = krate.edges();
    let found: Vec<String> = cycles(&edges)
        .iter()
        .map(|cycle| {
            let names: Vec<String> = cycle.iter().map(|m| m.join("/")).collect();
            names.join(" ↔ ")
        })
        .collect();
    assert!(
        found.is_empty(),
        "import cycles between files:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_cycle_check_sees_cycles() {
    // The checker itself, on a made-up crate: a → b → c → a through a re-export is a cycle,
    // a parent with its own child is not.
    let module = |p: &str| -> ModPath { p.split('/').map(str::to_owned).collect() };
    let mut references = BTreeMap::new();
    let refer = |paths: &[&str], reexports: &[(&str, &str)]| References {
        paths: paths
            .iter()
            .map(|p| p.split("::").map(str::to_owned).collect())
            .collect(),
        reexports: reexports
            .iter()
            .map(|(n, p)| (n.to_string(), p.split("::").map(str::to_owned).collect()))
            .collect(),
    };
    references.insert(Vec::new(), refer(&[], &[]));
    references.insert(module("f"), refer(&[], &[("Thing", "c::Thing")]));
    references.insert(module("f/a"), refer(&["super::b::x"], &[]));
    references.insert(module("f/b"), refer(&["crate::f::Thing"], &[]));
    references.insert(module("f/c"), refer(&["super::a::y", "super::Other"], &[]));
    let krate = Crate { references };
    let found = cycles(&krate.edges());
    assert_eq!(
        found,
        vec![vec![module("f/a"), module("f/b"), module("f/c")]]
    );
    assert!(!krate.edges()[&module("f/c")].contains(&module("f")));
}
