//! Tidy checks that keep the house readable without review, in the spirit of rust-analyzer's
//! `tidy.rs`: every Rust file opens with a `//!` line, no file is over 1,000 lines, no Markdown
//! line is over 200 characters outside tables and code blocks, every metric family the code
//! records is in the catalogue (its `# HELP` text) and in `docs/metrics.md`, `policy` and
//! `simulations` keep their dependency rules, and no two role folders of `actors` import each
//! other in a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file under `dir` whose name ends in `ext`, skipping build output and hidden folders.
fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" && name != "node_modules" {
                files(&path, ext, out);
            }
        } else if name.ends_with(ext) {
            out.push(path);
        }
    }
}

fn all(ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    files(&root(), ext, &mut out);
    out.sort();
    assert!(!out.is_empty(), "no {ext} files found");
    out
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

#[test]
fn every_rust_file_opens_with_a_module_doc_and_stays_under_a_thousand_lines() {
    let mut bad = Vec::new();
    for path in all(".rs") {
        let text = fs::read_to_string(&path).unwrap();
        if !text.starts_with("//!") {
            bad.push(format!("{}: does not open with a `//!` line", relative(&path)));
        }
        let lines = text.lines().count();
        if lines > 1000 {
            bad.push(format!("{}: {lines} lines (split it before 1,000)", relative(&path)));
        }
    }
    assert!(bad.is_empty(), "\n{}", bad.join("\n"));
}

#[test]
fn markdown_lines_stay_under_two_hundred_characters_outside_tables_and_code() {
    let mut bad = Vec::new();
    for path in all(".md") {
        let text = fs::read_to_string(&path).unwrap();
        let mut code = false;
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with("```") {
                code = !code;
                continue;
            }
            if !code && !line.trim_start().starts_with('|') && line.chars().count() > 200 {
                bad.push(format!("{}:{}: {} characters", relative(&path), n + 1, line.chars().count()));
            }
        }
    }
    assert!(bad.is_empty(), "\n{}", bad.join("\n"));
}

/// The metric family names recorded with `counter!`, `gauge!` or `histogram!` in `text`.
fn recorded_metrics(text: &str, out: &mut BTreeSet<String>) {
    for macro_name in ["counter!(", "gauge!(", "histogram!("] {
        for (at, _) in text.match_indices(macro_name) {
            let rest = text[at + macro_name.len()..].trim_start();
            if let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next())
                && name.starts_with("armature_")
            {
                out.insert(name.to_string());
            }
        }
    }
}

#[test]
fn every_metric_family_has_help_text_and_a_row_in_the_metrics_page() {
    let mut recorded = BTreeSet::new();
    for path in all(".rs") {
        if path.ends_with("tidy.rs") {
            continue;
        }
        recorded_metrics(&fs::read_to_string(&path).unwrap(), &mut recorded);
    }
    // The telemetry module's own test records a throwaway family.
    recorded.remove("armature_test_total");
    assert!(recorded.len() > 50, "found only {} families: the scan is broken", recorded.len());
    let catalogued: BTreeSet<String> = runtime::catalogue::FAMILIES.iter().map(|f| f.name.to_string()).collect();
    let page = fs::read_to_string(root().join("docs/metrics.md")).unwrap();
    let missing: Vec<_> = recorded.difference(&catalogued).collect();
    assert!(missing.is_empty(), "recorded but not in runtime::catalogue::FAMILIES (no # HELP): {missing:?}");
    let unused: Vec<_> = catalogued.difference(&recorded).collect();
    assert!(unused.is_empty(), "catalogued but never recorded: {unused:?}");
    let undocumented: Vec<_> = catalogued.iter().filter(|n| !page.contains(&format!("`{n}`"))).collect();
    assert!(undocumented.is_empty(), "not in docs/metrics.md: {undocumented:?}");
}

/// The names in a Cargo.toml's `[dependencies]` table.
fn dependencies(manifest: &str) -> BTreeSet<String> {
    let text = fs::read_to_string(root().join(manifest)).unwrap();
    let mut deps = BTreeSet::new();
    let mut inside = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == "[dependencies]";
            continue;
        }
        if inside && let Some((name, _)) = line.split_once('=') {
            let name = name.trim().split('.').next().unwrap_or("").trim();
            if !name.is_empty() && !name.starts_with('#') {
                deps.insert(name.to_string());
            }
        }
    }
    deps
}

#[test]
fn the_decision_cores_and_the_simulator_keep_their_dependency_rules() {
    let forbidden = ["tokio", "ractor", "ractor_cluster", "quinn", "rustls", "axum", "runtime", "actors", "gpu"];
    let policy = dependencies("policy/Cargo.toml");
    let vocab = dependencies("vocab/Cargo.toml");
    for name in forbidden {
        assert!(!policy.contains(name), "policy depends on {name}");
    }
    // vocab's only tie to ractor is its optional `wire` feature, which policy does not turn on.
    let vocab_line = fs::read_to_string(root().join("policy/Cargo.toml")).unwrap();
    assert!(!vocab_line.contains("features = [\"wire\"]"), "policy turns on vocab's wire feature");
    for name in forbidden.iter().filter(|n| **n != "ractor") {
        assert!(!vocab.contains(*name), "vocab depends on {name}");
    }
    let vocab_toml = fs::read_to_string(root().join("vocab/Cargo.toml")).unwrap();
    assert!(vocab_toml.contains("ractor = { workspace = true, optional = true }"), "vocab's ractor is optional");
    assert!(!dependencies("simulations/Cargo.toml").contains("actors"), "simulations depends on actors");
}

/// The role folder (or top-level module) of `actors` a path inside `actors/src` belongs to.
fn role_of(path: &Path) -> String {
    let rel = path.strip_prefix(root().join("actors/src")).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

#[test]
fn no_two_role_folders_import_each_other_in_a_circle() {
    let mut sources = Vec::new();
    files(&root().join("actors/src"), ".rs", &mut sources);
    let roles: BTreeSet<String> = sources.iter().map(|p| role_of(p)).filter(|r| r != "lib").collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in &sources {
        let from = role_of(path);
        let text = fs::read_to_string(path).unwrap();
        for (at, _) in text.match_indices("crate::") {
            let to: String = text[at + 7..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            if to != from && roles.contains(&to) {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    assert!(edges.values().map(BTreeSet::len).sum::<usize>() > 3, "the scan found no imports: {edges:?}");
    // A depth-first search for a back edge; the path to it is the circle.
    fn visit(
        role: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|r| r == role) {
            let mut circle = path[at..].to_vec();
            circle.push(role.to_string());
            return Some(circle);
        }
        if done.contains(role) {
            return None;
        }
        path.push(role.to_string());
        for next in edges.get(role).into_iter().flatten() {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(role.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for role in &roles {
        if let Some(circle) = visit(role, &edges, &mut Vec::new(), &mut done) {
            panic!("role folders import each other in a circle: {}\nimports: {edges:?}", circle.join(" -> "));
        }
    }
}
