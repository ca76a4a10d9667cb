//! `labops bench nab`: the detector over the Numenta Anomaly Benchmark, scored by NAB's rules;
//! `labops bench forecast`: time-to-full forecasts against generated curves with known answers;
//! `labops bench series`: the detector over many series at once.

use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use labops_aiops::detect::{Config, Detector};
use labops_aiops::nab::{self, Series};

/// Runs the detector over every series, writes NAB result files, prints one line per profile.
pub fn run(data: &Path, labels: &Path, out: &Path, profiles: Option<&Path>, json: bool) -> anyhow::Result<ExitCode> {
    let files = nab::load(data, labels).map_err(anyhow::Error::msg)?;
    let profiles_path = profiles.map(Path::to_path_buf).unwrap_or_else(|| data.parent().unwrap_or(Path::new(".")).join("profiles.json"));
    let profiles = nab::profiles(&std::fs::read_to_string(&profiles_path).with_context(|| format!("read {}", profiles_path.display()))?).map_err(anyhow::Error::msg)?;
    let mut corpus = Vec::new();
    let (mut points, mut busy, mut memory, mut memory_sum) = (0usize, std::time::Duration::ZERO, 0usize, 0usize);
    for file in &files {
        let rel = &file.name;
        let mut det = Detector::new(Config::default());
        let started = Instant::now();
        let scores: Vec<f64> = file.rows.iter().map(|(_, _, v)| det.score(*v)).collect();
        busy += started.elapsed();
        memory = memory.max(det.memory_bytes());
        memory_sum += det.memory_bytes();
        points += file.rows.len();
        // NAB names result files <detector>_<series>.csv under the category folder.
        let (cat, name) = rel.rsplit_once('/').unwrap_or(("", rel.as_str()));
        let dir = out.join(cat);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let mut csv = String::from("timestamp,value,anomaly_score,label\n");
        for (i, ((t, _, v), s)) in file.rows.iter().zip(&scores).enumerate() {
            csv.push_str(&format!("{t},{v},{s:.6},{}\n", u8::from(file.label(i))));
        }
        std::fs::write(dir.join(format!("labops_{name}")), csv).with_context(|| format!("write results for {rel}"))?;
        corpus.push(Series { name: rel.clone(), scores, windows: file.windows.clone() });
    }
    let mut results = Vec::new();
    for (name, costs) in &profiles {
        let (threshold, score) = nab::best(&corpus, costs);
        results.push((name.clone(), threshold, score));
    }
    let rate = points as f64 / busy.as_secs_f64().max(1e-9);
    if json {
        let v = serde_json::json!({
            "files": files.len(), "points": points, "points_per_second": rate, "state_bytes_per_series": memory, "mean_state_bytes_per_series": memory_sum / files.len().max(1),
            "profiles": results.iter().map(|(n, t, s)| serde_json::json!({"profile": n, "score": s, "threshold": t})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        for (n, t, s) in &results {
            println!("{n}: {s:.1}  (threshold {t:.6})");
        }
        eprintln!(
            "{} series, {points} points, {:.0} points/s on one core; state per series {} bytes on average, {memory} at most; results in {}",
            files.len(),
            rate,
            memory_sum / files.len().max(1),
            out.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Forecast error and interval coverage per shape of generated growth curve.
pub fn forecast(per_shape: u64, json: bool) -> anyhow::Result<ExitCode> {
    use labops_aiops::forecast::{synth, time_to};
    anyhow::ensure!((1..=10_000).contains(&per_shape), "--cases {per_shape} is out of range; use 1..=10000");
    let corpus = synth::corpus(per_shape);
    let started = Instant::now();
    let mut rows: Vec<serde_json::Value> = Vec::new();
    let mut all_within = true;
    for shape in [synth::Shape::Linear, synth::Shape::Stepwise, synth::Shape::Daily] {
        let cases: Vec<&synth::Case> = corpus.iter().filter(|c| c.shape == shape).collect();
        let mut errors: Vec<f64> = Vec::new();
        let (mut covered, mut missing) = (0usize, 0usize);
        for c in &cases {
            match time_to(&c.samples, c.capacity) {
                Some(f) => {
                    errors.push((f.eta_secs - c.truth_secs).abs() / c.truth_secs);
                    if f.soonest_secs <= c.truth_secs && f.latest_secs.is_none_or(|l| c.truth_secs <= l) {
                        covered += 1;
                    }
                }
                None => missing += 1,
            }
        }
        errors.sort_by(f64::total_cmp);
        let pct = |q: f64| errors.get(((errors.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN) * 100.0;
        let within = errors.iter().filter(|e| **e < 0.2).count();
        all_within &= within == cases.len();
        rows.push(serde_json::json!({
            "shape": format!("{shape:?}").to_lowercase(), "cases": cases.len(), "no_forecast": missing,
            "median_error_pct": pct(0.5), "p90_error_pct": pct(0.9), "max_error_pct": pct(1.0),
            "within_20_pct": within, "interval_covers_truth": covered,
        }));
    }
    let elapsed = started.elapsed();
    if json {
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"shapes": rows, "seconds": elapsed.as_secs_f64()}))?);
    } else {
        println!("{:<9} {:>5} {:>10} {:>9} {:>9} {:>12} {:>14}", "shape", "cases", "median err", "p90 err", "max err", "within 20%", "CI covers");
        for r in &rows {
            println!(
                "{:<9} {:>5} {:>9.1}% {:>8.1}% {:>8.1}% {:>12} {:>14}",
                r["shape"].as_str().unwrap_or(""),
                r["cases"],
                r["median_error_pct"].as_f64().unwrap_or(f64::NAN),
                r["p90_error_pct"].as_f64().unwrap_or(f64::NAN),
                r["max_error_pct"].as_f64().unwrap_or(f64::NAN),
                format!("{}/{}", r["within_20_pct"], r["cases"]),
                format!("{}/{}", r["interval_covers_truth"], r["cases"]),
            );
        }
        eprintln!("{} cases of 4,032 points each in {:.2} s", corpus.len(), elapsed.as_secs_f64());
    }
    Ok(if all_within { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Resident memory of this process in bytes (Linux), for the memory report.
fn resident_bytes() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: usize = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Many series round-robin, one point each per round, as the watcher feeds them.
pub fn series(count: usize, points: usize, json: bool) -> anyhow::Result<ExitCode> {
    anyhow::ensure!((1..=1_000_000).contains(&count), "--series {count} is out of range; use 1..=1000000");
    anyhow::ensure!((1..=1_000_000).contains(&points), "--points {points} is out of range; use 1..=1000000");
    let before = resident_bytes().unwrap_or(0);
    let mut detectors: Vec<Detector> = (0..count).map(|_| Detector::new(Config::default())).collect();
    // Each series: its own level, a daily cycle (1,440 points a day), and a fixed wiggle.
    let value = |s: usize, i: usize| -> f64 {
        let wiggle = ((s as f64 * 0.618 + i as f64 * 12.9898).sin() * 43758.5453).fract().abs();
        100.0 + (s % 97) as f64 + 20.0 * (i as f64 * std::f64::consts::TAU / 1440.0).sin() + 3.0 * wiggle
    };
    let started = Instant::now();
    let mut alarms = 0usize;
    for i in 0..points {
        for (s, d) in detectors.iter_mut().enumerate() {
            // Alarms are counted after the first day: the first cycle is all new.
            if d.score(value(s, i)) >= Config::default().alarm && i >= 1440 {
                alarms += 1;
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let state: usize = detectors.iter().map(Detector::memory_bytes).sum();
    let resident = resident_bytes().unwrap_or(0).saturating_sub(before);
    let total = count * points;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "series": count, "points": total, "seconds": elapsed, "points_per_second": total as f64 / elapsed.max(1e-9),
                "state_bytes_per_series": state / count, "resident_bytes_per_series": resident / count, "alarms": alarms,
            }))?
        );
    } else {
        println!("{count} series x {points} points: {:.0} points/s on one core", total as f64 / elapsed.max(1e-9));
        println!("state per series: {} bytes (detector), {} bytes resident", state / count, resident / count);
        println!("alarms on these quiet series after their first day: {alarms}");
    }
    Ok(ExitCode::SUCCESS)
}
