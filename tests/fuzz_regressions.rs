//! Every input a fuzz run ever crashed on (tests/fixtures/fuzz-regressions/<target>/), replayed
//! through the same harness as the fuzzer (fuzz/src/lib.rs), plus our own captures through the
//! pcap reader harness: these run on stable, in CI; the long fuzz runs live outside it
//! (docs/fuzzing.md).
#[path = "../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod harness;

use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

#[test]
fn every_kept_crash_input_passes_its_harness() {
    let root = fixtures().join("fuzz-regressions");
    let mut replayed = 0;
    for dir in files_and_dirs(&root) {
        let target = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        assert!(
            harness::TARGETS.contains(&target.as_str()),
            "{}: not a fuzz target",
            dir.display()
        );
        for f in files(&dir) {
            let data = std::fs::read(&f).expect("read regression input");
            // A panic here names the input through the test's output.
            eprintln!("replaying {}", f.display());
            assert!(harness::run(&target, &data));
            replayed += 1;
        }
    }
    // Each kept input is listed in docs/fuzzing.md; this count keeps the two honest.
    assert_eq!(
        replayed, KEPT_INPUTS,
        "update KEPT_INPUTS and docs/fuzzing.md"
    );
}

/// Crash inputs kept so far (docs/fuzzing.md, "Findings").
const KEPT_INPUTS: usize = 2;

fn files_and_dirs(root: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    v
}

#[test]
fn our_captures_pass_the_reader_and_decoder_harnesses() {
    let mut n = 0;
    for f in files(&fixtures().join("testbed")) {
        if f.extension().is_some_and(|e| e == "pcapng" || e == "pcap") {
            let data = std::fs::read(&f).expect("read capture");
            harness::pcap_read(&data);
            // Every prefix cut at a block boundary or mid-block must be just as harmless.
            for cut in [1, 27, data.len() / 3, data.len() / 2, data.len() - 1] {
                harness::pcap_read(&data[..cut.min(data.len())]);
            }
            n += 1;
        }
    }
    assert!(n >= 10, "only {n} test-bed captures found");
}
