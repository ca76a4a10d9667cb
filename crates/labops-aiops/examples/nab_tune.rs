//! Tuning aid: the detector over the NAB subset, with each file's share of the standard score.
//! `cargo run --release -p labops-aiops --example nab_tune -- ../shared/nab [--files] [--no-season]`
//! (`labops bench nab` is the benchmark; this prints where the points are won and lost.)

use labops_aiops::detect::{Config, Detector};
use labops_aiops::nab::{self, Series};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let root = std::path::PathBuf::from(args.get(1).map(String::as_str).unwrap_or("../shared/nab"));
    let files = match nab::load(&root.join("data"), &root.join("labels/combined_windows.json")) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let profiles = nab::profiles(&std::fs::read_to_string(root.join("profiles.json")).unwrap_or_default()).unwrap_or_default();
    let mut cfg = Config::default();
    if args.iter().any(|a| a == "--no-season") {
        cfg.season = false;
    }
    let mut periods = Vec::new();
    let corpus: Vec<Series> = files
        .iter()
        .map(|f| {
            let mut d = Detector::new(cfg);
            let scores = f.rows.iter().map(|r| d.score(r.2)).collect();
            periods.push(d.period());
            Series { name: f.name.clone(), scores, windows: f.windows.clone() }
        })
        .collect();
    let mut standard = 1.0;
    for (name, c) in &profiles {
        let (t, s) = nab::best(&corpus, c);
        if name == "standard" {
            standard = t;
        }
        println!("{name}: {s:.1} (threshold {t:.4})");
    }
    if args.iter().any(|a| a == "--files") {
        let Some((_, c)) = profiles.first() else {
            return;
        };
        for (s, period) in corpus.iter().zip(&periods) {
            let start = nab::probation(s.scores.len());
            let dets: Vec<usize> = (start..s.scores.len()).filter(|&i| s.scores[i] >= standard).collect();
            let inside = |d: &usize| s.windows.iter().any(|(a, b)| a <= d && d <= b);
            let hits = s.windows.iter().filter(|(a, b)| dets.iter().any(|d| a <= d && d <= b)).count();
            let fps = dets.iter().filter(|d| !inside(d)).count();
            let period = period.map(|p| format!("period {p}")).unwrap_or_default();
            println!("{:+7.2} {:55} windows {hits}/{} false positives {fps} {period}", nab::raw_score(s, standard, c), s.name, s.windows.len());
        }
    }
}
