//! The crate's modules form layers without cycles: each top-level module of `src/` refers (through
//! `crate::…` paths in code, not in comments) only to modules below it in [`LAYERS`], the order that
//! `docs/design.md` states. A new dependency upward, or a new module missing from the list, fails here.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// Bottom to top. A module may use only modules to its left.
const LAYERS: &[&str] = &[
    "error",
    "arch",
    "table",
    "dist",
    "fixed",
    "hist",
    "alloc",
    "sqnr",
    "kernels",
    "io",
    "graph",
    "onnx",
    "quant_plan",
    "pack",
    "exec",
    "rounding",
    "calib",
    "plan",
    "eval",
    "quantize",
    "model_file",
    "export",
    "testing",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Names re-exported at the crate root (`pub use module::{a, b}` in lib.rs) → their module.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    let text: String = lib
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect();
    for stmt in text.split(';') {
        let Some(rest) = stmt.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, names)) = rest.split_once("::") else {
            continue;
        };
        for name in names
            .trim_matches(|c| c == '{' || c == '}' || c == ' ')
            .split(',')
        {
            let name = name.trim().rsplit("::").next().unwrap_or("").trim();
            if !name.is_empty() {
                map.insert(name.to_string(), module.trim().to_string());
            }
        }
    }
    map
}

/// Every `crate::name` in the code of `text` (comments and doc comments excluded), including the
/// names of a `use crate::{a, b}` group.
fn crate_refs(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let after = &rest[at + "crate::".len()..];
            if let Some(group) = after.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                out.extend(
                    group[..end]
                        .split(',')
                        .map(|n| n.trim().split("::").next().unwrap_or("").to_string()),
                );
            } else {
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                out.push(name);
            }
            rest = after;
        }
    }
    out.retain(|n| !n.is_empty());
    out
}

#[test]
fn modules_form_layers_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = fs::read_to_string(src.join("lib.rs")).unwrap();
    let reexports = root_reexports(&lib);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
    let mut violations = Vec::new();
    let mut seen_modules = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" {
            continue;
        }
        let Some(own) = rank(&module) else {
            violations.push(format!(
                "{}: module '{module}' is not in LAYERS",
                rel.display()
            ));
            continue;
        };
        seen_modules.push(module.clone());
        let text = fs::read_to_string(f).unwrap();
        for name in crate_refs(&text) {
            let target = reexports.get(&name).cloned().unwrap_or(name.clone());
            match rank(&target) {
                Some(r) if r > own => violations.push(format!(
                    "{}: '{module}' uses crate::{name} ('{target}' is above it)",
                    rel.display()
                )),
                Some(_) => {}
                None => violations.push(format!(
                    "{}: crate::{name} resolves to no module in LAYERS",
                    rel.display()
                )),
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n{}",
        violations.join("\n")
    );
    // The check really read the crate: every listed layer has code.
    for l in LAYERS {
        assert!(
            seen_modules.iter().any(|m| m == l),
            "LAYERS lists '{l}' but src/ has no such module"
        );
    }
}

#[test]
fn the_reference_scanner_sees_uses_and_ignores_comments() {
    let refs = crate_refs(
        "use crate::fixed::QFormat;\n/// [`crate::plan::plan`]\nlet x = crate::exec::ops::f(); // crate::eval\nuse crate::{Error, Result};",
    );
    assert_eq!(refs, ["fixed", "exec", "Error", "Result"]);
}
