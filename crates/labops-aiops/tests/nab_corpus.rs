//! The detector over the shared NAB subset (`../shared/nab`, or `$LABOPS_TEST_SHARED/nab`), scored
//! by the project's scorer: a guard on the benchmark's number (BENCHMARKS.md has the figures;
//! `labops bench nab` writes NAB's result files). Fails when the subset is missing: CI has it.

use labops_aiops::detect::{Config, Detector};
use labops_aiops::nab::{self, Series};

#[test]
fn the_detector_scores_at_least_70_on_the_nab_subset_and_catches_every_artificial_anomaly() {
    let shared = std::env::var_os("LABOPS_TEST_SHARED")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared"));
    let root = shared.join("nab");
    let files = nab::load(&root.join("data"), &root.join("labels/combined_windows.json")).unwrap_or_else(|e| panic!("the NAB subset at {}: {e}", root.display()));
    assert_eq!(files.len(), 41);
    let profiles = nab::profiles(&std::fs::read_to_string(root.join("profiles.json")).unwrap()).unwrap();
    let corpus: Vec<Series> = files
        .iter()
        .map(|f| {
            let mut d = Detector::new(Config::default());
            Series { name: f.name.clone(), scores: f.rows.iter().map(|r| d.score(r.2)).collect(), windows: f.windows.clone() }
        })
        .collect();
    let (threshold, standard) = nab::best(&corpus, &profiles.iter().find(|(n, _)| n == "standard").expect("the standard profile").1);
    eprintln!("NAB standard: {standard:.1} (threshold {threshold:.4})");
    assert!(standard >= 70.0, "standard profile {standard:.1}");
    // The artificial anomalies: a flat middle, jumps down, a daily jump that does not come (only
    // the phase channel sees it) and spikes growing denser. Each window has a detection.
    for s in corpus.iter().filter(|s| s.name.starts_with("artificialWithAnomaly/")) {
        let start = nab::probation(s.scores.len());
        for (a, b) in &s.windows {
            assert!((*a.max(&start)..=*b).any(|i| s.scores[i] >= threshold), "{}: window {a}..{b} missed", s.name);
        }
    }
}
