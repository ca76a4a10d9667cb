//! `labops bench nab`: the detector over the Numenta Anomaly Benchmark, scored by NAB's rules.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use labops_aiops::detect::{Config, Detector};
use labops_aiops::nab::{self, Series};

fn parse_time(s: &str) -> Option<i64> {
    chrono::NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S%.f").ok().map(|t| t.and_utc().timestamp_millis())
}

fn csv_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "csv") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Runs the detector over every series, writes NAB result files, prints one line per profile.
pub fn run(data: &Path, labels: &Path, out: &Path, profiles: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let files = csv_files(data);
    anyhow::ensure!(!files.is_empty(), "no CSV files under {}; point --data at NAB's data directory", data.display());
    let labels_text = std::fs::read_to_string(labels).with_context(|| format!("read the labels {}", labels.display()))?;
    let windows: BTreeMap<String, Vec<(String, String)>> = serde_json::from_str(&labels_text).with_context(|| format!("{} is not NAB's combined_windows.json", labels.display()))?;
    let profiles_path = profiles.map(Path::to_path_buf).unwrap_or_else(|| data.parent().unwrap_or(Path::new(".")).join("profiles.json"));
    let profiles = nab::profiles(&std::fs::read_to_string(&profiles_path).with_context(|| format!("read {}", profiles_path.display()))?).map_err(anyhow::Error::msg)?;
    let mut corpus = Vec::new();
    let (mut points, mut busy, mut memory) = (0usize, std::time::Duration::ZERO, 0usize);
    for f in &files {
        let rel = f.strip_prefix(data).unwrap_or(f).to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?;
        let mut rows: Vec<(String, i64, f64)> = Vec::new();
        for (n, line) in text.lines().enumerate().skip(1) {
            let Some((t, v)) = line.split_once(',') else { continue };
            let ts = parse_time(t).with_context(|| format!("{}:{}: {t:?} is not a timestamp", f.display(), n + 1))?;
            let v: f64 = v.trim().parse().with_context(|| format!("{}:{}: {v:?} is not a number", f.display(), n + 1))?;
            rows.push((t.to_string(), ts, v));
        }
        let spans: Vec<(i64, i64)> = windows.get(&rel).map(|w| w.iter().filter_map(|(a, b)| Some((parse_time(a)?, parse_time(b)?))).collect()).unwrap_or_default();
        let mut det = Detector::new(Config::default());
        let started = Instant::now();
        let scores: Vec<f64> = rows.iter().map(|(_, _, v)| det.score(*v)).collect();
        busy += started.elapsed();
        memory = memory.max(det.memory_bytes());
        points += rows.len();
        let label = |ts: i64| spans.iter().any(|(a, b)| *a <= ts && ts <= *b);
        let mut idx_windows = Vec::new();
        for (a, b) in &spans {
            let first = rows.iter().position(|r| r.1 >= *a);
            let last = rows.iter().rposition(|r| r.1 <= *b);
            if let (Some(x), Some(y)) = (first, last).into() {
                if x <= y {
                    idx_windows.push((x, y));
                }
            }
        }
        // NAB names result files <detector>_<series>.csv under the category folder.
        let (cat, name) = rel.rsplit_once('/').unwrap_or(("", rel.as_str()));
        let dir = out.join(cat);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut csv = String::from("timestamp,value,anomaly_score,label\n");
        for ((t, ts, v), s) in rows.iter().zip(&scores) {
            csv.push_str(&format!("{t},{v},{s:.6},{}\n", u8::from(label(*ts))));
        }
        std::fs::write(dir.join(format!("labops_{name}")), csv).with_context(|| format!("write results for {rel}"))?;
        corpus.push(Series { name: rel, scores, windows: idx_windows });
    }
    let mut results = Vec::new();
    for (name, costs) in &profiles {
        let (threshold, score) = nab::best(&corpus, costs);
        results.push((name.clone(), threshold, score));
    }
    let rate = points as f64 / busy.as_secs_f64().max(1e-9);
    if json {
        let v = serde_json::json!({
            "files": files.len(), "points": points, "points_per_second": rate, "state_bytes_per_series": memory,
            "profiles": results.iter().map(|(n, t, s)| serde_json::json!({"profile": n, "score": s, "threshold": t})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (n, t, s) in &results {
            println!("{n}: {s:.1}  (threshold {t:.6})");
        }
        eprintln!("{} series, {points} points, {:.0} points/s on one core, {memory} bytes of state per series; results in {}", files.len(), rate, out.display());
    }
    Ok(ExitCode::SUCCESS)
}
