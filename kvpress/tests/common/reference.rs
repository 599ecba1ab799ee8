//! The kvpress parity data the tests read: `reference/` in the repository (see its README), or
//! the kvpress reference directory named by `KVPRESS_REFERENCE_DIR` (the same layout:
//! `prompts/`, `presses/`, `fixtures/`). A JSON file may be stored plain or gzipped
//! (`NAME.json.gz`); the plain one wins when both exist.
//!
//! Included by each test that needs it: `#[path = "common/reference.rs"] mod reference;`.

// Each test target uses a part of this module.
#![allow(dead_code)]

use std::io::Read;
use std::path::PathBuf;

use serde_json::Value;

/// The repository's copy, `reference/` (refreshed by `scripts/refresh-reference.sh`).
pub fn vendored_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../reference")
}

/// The reference directory: `KVPRESS_REFERENCE_DIR` when set, else the repository's `reference/`.
pub fn dir() -> PathBuf {
    match std::env::var_os("KVPRESS_REFERENCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => vendored_dir(),
    }
}

/// The text of `relative` (e.g. `fixtures/niah-noise-1k.json`) in the reference directory: the
/// file itself, or `relative.gz` decompressed.
pub fn read_to_string(relative: &str) -> String {
    let plain = dir().join(relative);
    let gzipped = dir().join(format!("{relative}.gz"));
    if plain.is_file() {
        return std::fs::read_to_string(&plain)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", plain.display()));
    }
    match std::fs::File::open(&gzipped) {
        Ok(file) => {
            let mut text = String::new();
            flate2::read::GzDecoder::new(std::io::BufReader::new(file))
                .read_to_string(&mut text)
                .unwrap_or_else(|e| panic!("cannot decompress {}: {e}", gzipped.display()));
            text
        }
        Err(e) => panic!(
            "cannot read {} or {}: {e} (reference/ holds the repository's copy, \
             scripts/refresh-reference.sh refreshes it; KVPRESS_REFERENCE_DIR names another \
             reference directory)",
            plain.display(),
            gzipped.display()
        ),
    }
}

/// `relative` in the reference directory, plain or gzipped, parsed as JSON.
pub fn json(relative: &str) -> Value {
    serde_json::from_str(&read_to_string(relative))
        .unwrap_or_else(|e| panic!("{relative} in {} is not valid JSON: {e}", dir().display()))
}

/// The kvpress fixture `fixtures/NAME.json` (e.g. `niah-noise-1k`).
pub fn fixture(name: &str) -> Value {
    json(&format!("fixtures/{name}.json"))
}

/// The press configuration folder, `presses/` (the config contract: plain files).
pub fn presses_dir() -> PathBuf {
    dir().join("presses")
}

/// The path of the press configuration `presses/NAME.json`.
pub fn press_config(name: &str) -> PathBuf {
    presses_dir().join(format!("{name}.json"))
}

/// Every press configuration, `(file stem, path)`, sorted by name.
pub fn press_configs() -> Vec<(String, PathBuf)> {
    let dir = presses_dir();
    let mut configs: Vec<(String, PathBuf)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list the press configs in {}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter_map(|path| {
            let name = path.file_stem()?.to_string_lossy().into_owned();
            Some((name, path))
        })
        .collect();
    configs.sort();
    configs
}

/// The path of the catalogue press configuration `catalogue/NAME.json` (kvpress's other
/// presses, whose outputs are in the fixture `niah-noise-1k.catalogue`).
pub fn catalogue_config(name: &str) -> PathBuf {
    dir().join("catalogue").join(format!("{name}.json"))
}
