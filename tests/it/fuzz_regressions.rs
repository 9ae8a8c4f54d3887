//! Replays, under plain `cargo test`, every input the fuzzer ever crashed on
//! (`tests/fuzz_regressions/<target>/`) and the seed corpus (`fuzz/corpus/<target>/`) through the
//! same target bodies the fuzzer runs (`fuzz/src/bodies.rs`, included here). A target body panics
//! when a property breaks, so a fixed bug that comes back fails here, naming the file.

use std::path::{Path, PathBuf};

// The one copy of the bodies: the fuzz crate's, outside the shipped library.
#[path = "../../fuzz/src/bodies.rs"]
mod bodies;

use bodies::TARGETS;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The target directories under `dir` (none if `dir` does not exist).
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// The input files of one target directory, hidden files (`.gitkeep`) and READMEs aside.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("readable directory").path())
        .filter(|p| p.is_file())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            !name.starts_with('.') && !name.ends_with(".md")
        })
        .collect();
    files.sort();
    files
}

fn name_of(dir: &Path) -> String {
    dir.file_name()
        .and_then(|n| n.to_str())
        .expect("UTF-8 directory name")
        .to_string()
}

#[test]
fn fuzz_directories_match_the_targets() {
    // Every target has a cargo-fuzz binary and seeds; every directory names a target, so that an
    // input kept under a misspelt name cannot be skipped silently.
    for (name, _) in TARGETS {
        let bin = root().join("fuzz/fuzz_targets").join(format!("{name}.rs"));
        assert!(bin.is_file(), "{} is missing", bin.display());
        let seeds = inputs(&root().join("fuzz/corpus").join(name));
        assert!(!seeds.is_empty(), "fuzz/corpus/{name}/ has no seed");
    }
    let bins = std::fs::read_dir(root().join("fuzz/fuzz_targets")).expect("fuzz/fuzz_targets");
    for bin in bins {
        let path = bin.expect("readable directory").path();
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        assert!(
            bodies::target(stem).is_some(),
            "{} is no target",
            path.display()
        );
    }
    for parent in ["fuzz/corpus", "tests/fuzz_regressions"] {
        for dir in subdirs(&root().join(parent)) {
            let name = name_of(&dir);
            assert!(
                bodies::target(&name).is_some(),
                "{parent}/{name} is no target"
            );
        }
    }
}

#[test]
fn fuzz_regressions_and_seeds_replay_cleanly() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for parent in ["tests/fuzz_regressions", "fuzz/corpus"] {
        for dir in subdirs(&root().join(parent)) {
            let target = bodies::target(&name_of(&dir)).expect("checked by the other test");
            for file in inputs(&dir) {
                let data = std::fs::read(&file).expect("readable input");
                // The fuzzer runs on the main thread (8 MiB of stack, optimized code); a debug
                // build needs more room for the same nesting.
                let outcome = std::thread::Builder::new()
                    .stack_size(64 << 20)
                    .spawn(move || target(&data))
                    .expect("thread")
                    .join();
                replayed += 1;
                if outcome.is_err() {
                    failures.push(file.display().to_string());
                }
            }
        }
    }
    assert!(replayed > 0);
    assert!(failures.is_empty(), "inputs that fail: {failures:#?}");
}
