//! The layout keeps its promise (src/lib.rs): drawn from the `use` paths of `src/` (files as
//! modules, `crate::…`, `super::…` and a `mod.rs`'s own children as arrows), no module imports
//! from a layer above its own and no modules import each other in a cycle.
//!
//! Unit-test modules (`#[cfg(test)] mod …` at the end of a file) are left out: a test may set
//! up its subject with a sibling (a stuck-sensor test restores a snapshot). A `pub use` in a
//! `mod.rs` re-exports a child and is not an arrow: the children are the rooms, the facade
//! only names them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers, bottom first: a top-level module's number. Every top-level module must be
/// listed, so a new one has to be placed.
const LAYERS: &[(&str, u8)] = &[
    ("time", 0),
    ("watched", 0),
    ("config", 1),
    ("decode", 2),
    ("telemetry", 2),
    ("labels", 2),
    ("synth", 2),
    ("engine", 3),
    ("model", 4),
    ("output", 4),
    ("state", 4),
    ("kafka", 4),
    ("influx", 4),
    ("serve", 5),
    ("tools", 6),
    ("commands", 7),
];

/// Module path of every file under `src/` (`serve/sink` for `src/serve/sink/mod.rs`), with
/// its text, comments and unit-test modules removed. `lib.rs` and `main.rs` are left out.
fn modules(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(root).expect("under src");
            let rel = rel.to_string_lossy().trim_end_matches(".rs").to_string();
            if rel == "lib" || rel == "main" {
                continue;
            }
            let name = rel.strip_suffix("/mod").unwrap_or(&rel).to_string();
            let text = std::fs::read_to_string(&path).expect("read file");
            out.insert(name, production_code(&text));
        }
    }
    out
}

/// The text without comments and without the unit-test modules at the end.
fn production_code(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(|l| l.find("//").map_or(l, |i| &l[..i]))
        .collect();
    let mut end = lines.len();
    for (i, l) in lines.iter().enumerate() {
        if l.trim() == "#[cfg(test)]" && !l.starts_with(' ') {
            let next = lines[i + 1..].iter().find(|n| !n.trim().is_empty());
            if next.is_some_and(|n| n.starts_with("mod ") || n.starts_with("pub(crate) mod ")) {
                end = i;
                break;
            }
        }
    }
    lines[..end].join("\n")
}

/// The identifier at the start of `s` and the rest.
fn ident(s: &str) -> (&str, &str) {
    let n = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (&s[..n], &s[n..])
}

/// Every path that starts at `s` (just after `crate::` or `super::`), with `{…}` groups
/// expanded: `a::{b, c::d}` gives `a/b` and `a/c/d`.
fn paths(s: &str, prefix: &str, out: &mut Vec<String>) {
    let (name, rest) = ident(s);
    if name.is_empty() {
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 0;
            let mut start = 0;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        paths(group[start..i].trim_start(), prefix, out);
                        return;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        paths(group[start..i].trim_start(), prefix, out);
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        }
        return;
    }
    let path = if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}/{name}")
    };
    match rest.strip_prefix("::") {
        Some(more) => paths(more, &path, out),
        None => out.push(path),
    }
}

/// The module a path names: its longest prefix that is a module.
fn resolve(path: &str, modules: &BTreeMap<String, String>) -> Option<String> {
    let parts: Vec<&str> = path.split('/').collect();
    (1..=parts.len())
        .rev()
        .map(|k| parts[..k].join("/"))
        .find(|c| modules.contains_key(c))
}

/// The arrows: which modules each module imports.
fn arrows(modules: &BTreeMap<String, String>) -> BTreeSet<(String, String)> {
    let mut edges = BTreeSet::new();
    for (name, text) in modules {
        let mut found = Vec::new();
        for (i, _) in text.match_indices("crate::") {
            paths(&text[i + "crate::".len()..], "", &mut found);
        }
        // `super::` from `a/b` (file a/b.rs or a/b/mod.rs) names `a`.
        if let Some((parent, _)) = name.rsplit_once('/') {
            for (i, _) in text.match_indices("super::") {
                paths(&text[i + "super::".len()..], parent, &mut found);
            }
        }
        // A `mod.rs` using its own children (not re-exporting them).
        for line in text.lines() {
            let t = line.trim_start();
            if let Some(rest) = t.strip_prefix("use ") {
                let (first, _) = ident(rest);
                if !matches!(first, "crate" | "super" | "self" | "std")
                    && modules.contains_key(&format!("{name}/{first}"))
                {
                    paths(rest, name, &mut found);
                }
            }
        }
        for path in found {
            if let Some(target) = resolve(&path, modules).filter(|t| t != name) {
                edges.insert((name.clone(), target));
            }
        }
    }
    edges
}

fn layer(module: &str) -> Option<u8> {
    let top = module.split('/').next().unwrap_or(module);
    LAYERS.iter().find(|(m, _)| *m == top).map(|(_, l)| *l)
}

/// The cycles: strongly connected sets of more than one module.
fn cycles(edges: &BTreeSet<(String, String)>) -> Vec<BTreeSet<String>> {
    let nodes: BTreeSet<&String> = edges.iter().flat_map(|(a, b)| [a, b]).collect();
    let reach = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(n) = todo.pop() {
            for (a, b) in edges {
                if *a == n && seen.insert(b.clone()) {
                    todo.push(b.clone());
                }
            }
        }
        seen
    };
    let reachable: BTreeMap<&String, BTreeSet<String>> =
        nodes.iter().map(|n| (*n, reach(n))).collect();
    let mut out: Vec<BTreeSet<String>> = Vec::new();
    for n in &nodes {
        if !reachable[n].contains(*n) {
            continue;
        }
        let set: BTreeSet<String> = reachable[n]
            .iter()
            .filter(|m| reachable.get(m).is_some_and(|r| r.contains(*n)))
            .cloned()
            .collect();
        if !out.contains(&set) {
            out.push(set);
        }
    }
    out
}

fn graph() -> (BTreeMap<String, String>, BTreeSet<(String, String)>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = modules(&src);
    let edges = arrows(&modules);
    (modules, edges)
}

#[test]
fn every_module_has_a_layer() {
    let (modules, _) = graph();
    let unplaced: Vec<&String> = modules.keys().filter(|m| layer(m).is_none()).collect();
    assert!(
        unplaced.is_empty(),
        "place these in tests/layers.rs LAYERS: {unplaced:?}"
    );
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let (_, edges) = graph();
    assert!(
        edges.len() > 100,
        "the parser found only {} arrows",
        edges.len()
    );
    let up: Vec<String> = edges
        .iter()
        .filter(|(a, b)| layer(b) > layer(a))
        .map(|(a, b)| format!("{a} -> {b}"))
        .collect();
    assert!(up.is_empty(), "imports that run back up: {up:#?}");
}

#[test]
fn no_modules_import_each_other_in_a_cycle() {
    let (_, edges) = graph();
    let found = cycles(&edges);
    assert!(found.is_empty(), "import cycles: {found:#?}");
}

#[test]
fn the_parser_sees_grouped_and_relative_imports() {
    let mut found = Vec::new();
    paths("a::{b, c::{d, e}}, x", "", &mut found);
    assert_eq!(found, ["a/b", "a/c/d", "a/c/e"]);
    let code = production_code(
        "use crate::x; // crate::y\n#[cfg(test)]\nmod tests {\n    use crate::z;\n}\n",
    );
    assert!(code.contains("crate::x") && !code.contains("crate::y") && !code.contains("crate::z"));
}
