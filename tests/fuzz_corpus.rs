//! The fuzz targets' corpora, replayed on stable Rust: every input committed under `fuzz/corpus/<target>/`
//! (seeds, edge cases, and what fuzzing runs found) goes through its target's property in
//! `fanout::fuzzing`, the same function the libFuzzer target calls. So a crash found once stays fixed
//! without nightly; `.ci/fuzz` runs the fuzzing itself where nightly is installed.

use std::fs;
use std::panic::catch_unwind;
use std::path::{Path, PathBuf};

use fanout::fuzzing;

/// What a target checks of one input: panics when the property breaks.
type Property = fn(&[u8]);

/// Each target's name (its file in `fuzz/fuzz_targets/`, its folder in `fuzz/corpus/`) and property.
const TARGETS: [(&str, Property); 3] = [
    ("chunked", fuzzing::chunked),
    ("request_head", fuzzing::request_head),
    ("upstream_answer", fuzzing::upstream_answer),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files in `dir`, sorted, by name.
fn files(dir: &Path) -> Vec<PathBuf> {
    let entries = fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a readable entry").path())
        .collect();
    files.sort();
    files
}

/// Replays every input of `target`'s corpus, and names each one whose property broke (the panic
/// message above it says how).
fn replay(target: &str) {
    let (_, property) = TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .expect("a target");
    let inputs = files(&fuzz_dir().join("corpus").join(target));
    assert!(inputs.len() >= 10, "{target}: only {} inputs", inputs.len());
    let broken: Vec<String> = inputs
        .iter()
        .filter(|path| {
            let data = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            catch_unwind(|| property(&data)).is_err()
        })
        .map(|path| path.display().to_string())
        .collect();
    assert!(
        broken.is_empty(),
        "{target}: the property breaks on {broken:#?}"
    );
}

#[test]
fn chunked_inputs_decode_the_same_whole_and_in_pieces() {
    replay("chunked");
}

#[test]
fn request_head_inputs_are_answered_with_documented_statuses() {
    replay("request_head");
}

#[test]
fn upstream_answer_inputs_succeed_exactly_when_readme_says() {
    replay("upstream_answer");
}

#[test]
fn every_fuzz_target_and_corpus_is_replayed() {
    let names = |dir: &str, suffix: &str| -> Vec<String> {
        let names = files(&fuzz_dir().join(dir)).into_iter();
        let names =
            names.filter_map(|p| Some(p.file_name()?.to_str()?.strip_suffix(suffix)?.to_string()));
        names.collect()
    };
    let replayed: Vec<&str> = TARGETS.iter().map(|(name, _)| *name).collect();
    assert_eq!(names("fuzz_targets", ".rs"), replayed);
    assert_eq!(names("corpus", ""), replayed);
}
