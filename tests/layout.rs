//! The module layout holds (docs/architecture.md): no circle of imports among the top-level
//! modules of src/, and the domain imports neither the HTTP framework nor the edge, the server
//! wiring or the commands.
//!
//! Read from the source text: every `crate::NAME` path, including the names inside
//! `use crate::{a::…, b}` groups, is an edge from the file's top-level module to `NAME`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules that only the binary, the server wiring or the commands may import: the edge and the
/// program around it.
const OUTER: &[&str] = &["http", "server", "cli"];

/// Top-level modules that may use axum: the edge and the program; `tls`, whose listener plugs
/// into axum's `Listener`; and `stream`, whose messages are kept as axum's WebSocket text type
/// so that a message fanned out to many subscribers is shared, not copied or re-validated per
/// subscriber (axum offers no unchecked conversion from bytes).
const MAY_USE_AXUM: &[&str] = &["http", "server", "cli", "tls", "stream"];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/http/auth.rs` -> `http`, `src/clock.rs` ->
/// `clock`); `None` for the crate root and the binary.
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// Strips `//` comments (doc comments included), so prose naming a module is no edge.
fn code_only(text: &str) -> String {
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn ident_at(text: &str, from: usize) -> &str {
    let rest = &text[from..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(rest.len());
    &rest[..end]
}

/// Every top-level module a file's code names through `crate::`.
fn imports(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut at = 0;
    while let Some(i) = text[at..].find("crate::") {
        let start = at + i + "crate::".len();
        at = start;
        // `event_router_crate::` or `my_crate::` are other names, not ours.
        let before = text[..start - "crate::".len()].chars().next_back();
        if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        if text[start..].starts_with('{') {
            // A group: the first name of every item at depth one.
            let mut depth = 0usize;
            let mut expect_name = true;
            for (j, c) in text[start..].char_indices() {
                match c {
                    '{' => {
                        depth += 1;
                        expect_name = depth == 1;
                    }
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => expect_name = true,
                    c if expect_name && depth == 1 && (c.is_ascii_alphabetic() || c == '_') => {
                        found.insert(ident_at(text, start + j).to_string());
                        expect_name = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident_at(text, start);
            if !name.is_empty() {
                found.insert(name.to_string());
            }
        }
    }
    found
}

struct Graph {
    /// module -> (imported module -> a file that imports it)
    edges: BTreeMap<String, BTreeMap<String, String>>,
    axum_users: BTreeMap<String, String>,
}

fn graph() -> Graph {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(&src, f)).collect();
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut axum_users = BTreeMap::new();
    for file in &files {
        let Some(module) = top_module(&src, file) else {
            continue;
        };
        let text = code_only(&std::fs::read_to_string(file).expect("a source file is readable"));
        let shown = file
            .strip_prefix(&src)
            .unwrap_or(file)
            .display()
            .to_string();
        for target in imports(&text) {
            if target != module && modules.contains(&target) {
                edges
                    .entry(module.clone())
                    .or_default()
                    .entry(target)
                    .or_insert_with(|| shown.clone());
            }
        }
        if text.contains("axum::") || text.contains("use axum") {
            axum_users.entry(module.clone()).or_insert(shown);
        }
    }
    Graph { edges, axum_users }
}

/// A path of imports from `from` back to `to`, if there is one.
fn path_between(graph: &Graph, from: &str, to: &str) -> Option<Vec<String>> {
    let mut seen = BTreeSet::new();
    let mut stack = vec![vec![from.to_string()]];
    while let Some(path) = stack.pop() {
        let last = path.last().expect("paths are never empty");
        if last == to {
            return Some(path);
        }
        if !seen.insert(last.clone()) {
            continue;
        }
        for next in graph.edges.get(last).into_iter().flat_map(|m| m.keys()) {
            let mut longer = path.clone();
            longer.push(next.clone());
            stack.push(longer);
        }
    }
    None
}

#[test]
fn no_import_circle_among_top_level_modules() {
    let graph = graph();
    let mut circles = Vec::new();
    for (module, targets) in &graph.edges {
        for (target, file) in targets {
            if let Some(back) = path_between(&graph, target, module) {
                circles.push(format!(
                    "{module} -> {} (first: {file} imports crate::{target})",
                    back.join(" -> ")
                ));
            }
        }
    }
    assert!(
        circles.is_empty(),
        "import circles among the top-level modules of src/:\n{}",
        circles.join("\n")
    );
}

#[test]
fn the_domain_imports_neither_the_edge_nor_axum() {
    let graph = graph();
    let mut wrong = Vec::new();
    for (module, targets) in &graph.edges {
        if OUTER.contains(&module.as_str()) {
            continue;
        }
        for (target, file) in targets {
            if OUTER.contains(&target.as_str()) {
                wrong.push(format!("{file} imports crate::{target}"));
            }
        }
    }
    for (module, file) in &graph.axum_users {
        if !MAY_USE_AXUM.contains(&module.as_str()) {
            wrong.push(format!("{file} uses axum"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_reader_finds_grouped_and_plain_imports() {
    let text = "use crate::{a::B, c, d::{e, f}};\nfn x() { crate::g::h(); }\nuse other_crate::z;";
    let got: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(got, ["a", "c", "d", "g"]);
    assert!(imports(&code_only("// crate::commented\n")).is_empty());
}
