//! The tree is the architecture: these checks fail when a pure folder reaches into the shell,
//! when argv is built outside the adapters, or when docs/ARCHITECTURE.md's module map misses
//! a module of `src/`.

use std::path::{Path, PathBuf};

/// The functional core: no I/O, no clock, no runtime, no shell module.
const PURE: &[&str] = &["spec", "model", "adapters", "decide", "plan"];
/// The imperative shell.
const SHELL: &[&str] = &[
    "transport",
    "observe",
    "apply",
    "state",
    "controller",
    "cli",
];

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rs_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The non-test code of a file: everything before its first `#[cfg(test)]`; nothing for a
/// file of tests (`tests.rs`).
fn code_of(p: &Path) -> String {
    if p.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(p).unwrap();
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    // comments may name anything
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn the_pure_folders_never_do_io_read_a_clock_or_import_the_shell() {
    let mut forbidden: Vec<String> = [
        "tokio",
        "std::fs",
        "std::process",
        "std::net",
        "Timestamp::now",
        "SystemTime::now",
        "Instant::now",
        "openssh",
        "std::env",
        "println!",
        "eprintln!",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    forbidden.extend(SHELL.iter().map(|m| format!("crate::{m}")));
    let mut bad = Vec::new();
    for folder in PURE {
        let mut files = Vec::new();
        rs_files(&src().join(folder), &mut files);
        assert!(!files.is_empty(), "src/{folder} is empty");
        for f in files {
            let code = code_of(&f);
            for word in &forbidden {
                if code.contains(word.as_str()) {
                    bad.push(format!("{}: {word}", f.display()));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "the core reaches into the shell:\n{}",
        bad.join("\n")
    );
}

#[test]
fn argv_is_built_only_in_the_adapters() {
    // the tools spoolkeeper runs, as the first word of an argv literal
    let tools = [
        "\"zfs\"",
        "\"zpool\"",
        "\"postconf\"",
        "\"postfix\"",
        "\"postqueue\"",
        "\"postsuper\"",
        "\"postcat\"",
        "\"sendmail\"",
        "\"doveadm\"",
        "\"ezjail-admin\"",
        "\"jls\"",
        "\"jail\"",
        "\"sh\"",
        "\"ssh\"",
        "\"which\"",
        "\"date\"",
    ];
    let mut bad = Vec::new();
    let mut files = Vec::new();
    rs_files(&src(), &mut files);
    for f in files {
        let rel = f
            .strip_prefix(src())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        // the adapters build argv; the transport's batch and quoting wrap them
        if rel.starts_with("adapters/") || rel.starts_with("transport/") {
            continue;
        }
        let code = code_of(&f);
        for t in tools {
            for pat in [
                format!("vec![{t}"),
                format!("[{t}, "),
                format!("{t}.into()"),
            ] {
                if code.contains(&pat) {
                    bad.push(format!("{rel}: {pat}"));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "argv built outside the adapters:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_module_map_names_every_module() {
    let arch =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ARCHITECTURE.md"))
            .unwrap();
    let map = arch
        .split("## Module map")
        .nth(1)
        .expect("docs/ARCHITECTURE.md has a `## Module map`");
    let map = map.split("\n## ").next().unwrap_or(map);
    let mut files = Vec::new();
    rs_files(&src(), &mut files);
    let mut missing = Vec::new();
    for f in files {
        let rel = f
            .strip_prefix(src())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel == "lib.rs" || rel == "main.rs" || rel.ends_with("tests.rs") {
            continue;
        }
        let module = rel
            .trim_end_matches(".rs")
            .trim_end_matches("/mod")
            .replace('/', "::");
        let leaf = module.rsplit("::").next().unwrap_or(&module);
        // named as `a::b`, or as `b` in its folder's row
        if !map.contains(&format!("`{module}`")) && !map.contains(&format!("`{leaf}`")) {
            missing.push(module);
        }
    }
    assert!(
        missing.is_empty(),
        "docs/ARCHITECTURE.md's module map misses: {}",
        missing.join(", ")
    );
    for folder in PURE.iter().chain(SHELL) {
        assert!(
            map.contains(&format!("`{folder}/`")),
            "the module map has no row for `{folder}/`"
        );
    }
}
