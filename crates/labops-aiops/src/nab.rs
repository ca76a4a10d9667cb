//! The Numenta Anomaly Benchmark's scoring, implemented from its description
//! (`../shared/nab/README.md`; Lavin & Ahmad 2015).
//!
//! Per series: the first 15% of rows (at most 750) are probationary and never count. Inside an
//! anomaly window only the earliest detection counts, as a true positive weighted by
//! `scaled_sigmoid` of its position (1 at the left edge, falling towards 0 at the right edge);
//! a window without a detection costs the false-negative weight; a detection outside every
//! window costs the false-positive weight, in full before the first window, and after a window
//! scaled by how many window widths past it. One threshold serves the whole corpus; [`best`]
//! finds the one that maximises a profile's normalised score in one sweep over the scores sorted
//! in descending order.

use serde::{Deserialize, Serialize};

/// A scoring profile's weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Costs {
    /// True positive weight.
    #[serde(rename = "tpWeight")]
    pub tp: f64,
    /// False positive weight.
    #[serde(rename = "fpWeight")]
    pub fp: f64,
    /// False negative weight.
    #[serde(rename = "fnWeight")]
    pub fn_: f64,
}

/// NAB's three profiles, by name, in NAB's order.
pub fn profiles(json: &str) -> Result<Vec<(String, Costs)>, String> {
    #[derive(Deserialize)]
    struct P {
        #[serde(rename = "CostMatrix")]
        costs: Costs,
    }
    let map: std::collections::BTreeMap<String, P> = serde_json::from_str(json).map_err(|e| format!("profiles: {e}"))?;
    let mut out: Vec<(String, Costs)> = map.into_iter().map(|(k, v)| (k, v.costs)).collect();
    let order = |n: &str| ["standard", "reward_low_FP_rate", "reward_low_FN_rate"].iter().position(|x| *x == n).unwrap_or(9);
    out.sort_by_key(|(n, _)| order(n));
    Ok(out)
}

/// NAB's scaled sigmoid: about 1 at -1, 0 at 0, about -1 from 3 on.
pub fn scaled_sigmoid(x: f64) -> f64 {
    if x > 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * x).exp()) - 1.0
    }
}

/// One scored series: every row's anomaly score and the windows as inclusive row ranges.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Its name (`realKnownCause/nyc_taxi.csv`).
    pub name: String,
    /// One score per row, in [0, 1].
    pub scores: Vec<f64>,
    /// Anomaly windows, `(first row, last row)`, in order, not overlapping.
    pub windows: Vec<(usize, usize)>,
}

/// Rows at the start that never count: 15% of the series, at most 750.
pub fn probation(len: usize) -> usize {
    ((0.15 * len as f64).floor() as usize).min(750)
}

/// What one row would add if it were a detection.
#[derive(Debug, Clone, Copy)]
enum Effect {
    /// In window `w`, worth this (unweighted, already divided by the left edge's value).
    Hit { window: usize, value: f64 },
    /// Outside every window: this unweighted cost (negative).
    Miss { value: f64 },
}

fn effects(s: &Series) -> Vec<Option<Effect>> {
    let max_tp = scaled_sigmoid(-1.0);
    let start = probation(s.scores.len());
    let mut out = vec![None; s.scores.len()];
    let mut w = 0;
    let mut prev: Option<(usize, usize)> = None;
    for (i, slot) in out.iter_mut().enumerate() {
        while w < s.windows.len() && s.windows[w].1 < i {
            prev = Some(s.windows[w]);
            w += 1;
        }
        if i < start {
            continue;
        }
        let inside = s.windows.get(w).filter(|(a, b)| *a <= i && i <= *b);
        *slot = Some(match (inside, prev) {
            (Some(&(_, right)), _) => {
                let width = (s.windows[w].1 - s.windows[w].0 + 1) as f64;
                let pos = -((right - i + 1) as f64) / width;
                Effect::Hit { window: w, value: scaled_sigmoid(pos) / max_tp }
            }
            (None, None) => Effect::Miss { value: -1.0 },
            (None, Some((left, right))) => {
                let width = (right - left + 1) as f64;
                let past = (i - right) as f64 / (width - 1.0).max(1.0);
                Effect::Miss { value: scaled_sigmoid(past) }
            }
        });
    }
    out
}

/// A series' raw score with detections at `score >= threshold`.
pub fn raw_score(s: &Series, threshold: f64, c: &Costs) -> f64 {
    let mut first: Vec<Option<f64>> = vec![None; s.windows.len()];
    let mut total = 0.0;
    for (i, e) in effects(s).into_iter().enumerate() {
        if s.scores[i] < threshold {
            continue;
        }
        match e {
            Some(Effect::Hit { window, value }) => {
                if first[window].is_none() {
                    first[window] = Some(value);
                }
            }
            Some(Effect::Miss { value }) => total += value * c.fp,
            None => {}
        }
    }
    total + first.iter().map(|f| f.map(|v| v * c.tp).unwrap_or(-c.fn_)).sum::<f64>()
}

/// The corpus' normalised score at one threshold: 100 is every window hit at its left edge with
/// no false positive, 0 is never detecting anything.
pub fn normalised(corpus: &[Series], threshold: f64, c: &Costs) -> f64 {
    let raw: f64 = corpus.iter().map(|s| raw_score(s, threshold, c)).sum();
    normalise(corpus, raw, c)
}

fn normalise(corpus: &[Series], raw: f64, c: &Costs) -> f64 {
    let windows: usize = corpus.iter().map(|s| s.windows.len()).sum();
    let perfect = windows as f64 * c.tp;
    let null = -(windows as f64) * c.fn_;
    if perfect == null {
        return 0.0;
    }
    100.0 * (raw - null) / (perfect - null)
}

/// The threshold that maximises the profile's normalised score over the whole corpus, and that
/// score. Lowering the threshold past each distinct score adds that score's rows as
/// detections; each row changes the total in O(1) (a window's value is its earliest
/// detection).
pub fn best(corpus: &[Series], c: &Costs) -> (f64, f64) {
    // (score, series, row, effect)
    let mut points: Vec<(f64, usize, usize, Effect)> = Vec::new();
    let mut offsets = Vec::with_capacity(corpus.len());
    let mut windows = 0;
    for (k, s) in corpus.iter().enumerate() {
        offsets.push(windows);
        windows += s.windows.len();
        for (i, e) in effects(s).into_iter().enumerate() {
            if let Some(e) = e {
                points.push((s.scores[i], k, i, e));
            }
        }
    }
    points.sort_by(|a, b| b.0.total_cmp(&a.0));
    // Per window: the earliest detected row and its value.
    let mut first: Vec<Option<(usize, f64)>> = vec![None; windows];
    let mut total = -(windows as f64) * c.fn_;
    let mut best = (f64::INFINITY, normalise(corpus, total, c));
    let mut i = 0;
    while i < points.len() {
        let level = points[i].0;
        while i < points.len() && points[i].0 == level {
            let (_, k, row, e) = points[i];
            match e {
                Effect::Miss { value } => total += value * c.fp,
                Effect::Hit { window, value } => {
                    let slot = &mut first[offsets[k] + window];
                    match *slot {
                        None => {
                            total += c.fn_ + value * c.tp;
                            *slot = Some((row, value));
                        }
                        Some((r, v)) if row < r => {
                            total += (value - v) * c.tp;
                            *slot = Some((row, value));
                        }
                        Some(_) => {}
                    }
                }
            }
            i += 1;
        }
        let n = normalise(corpus, total, c);
        if n > best.1 {
            best = (level, n);
        }
    }
    best
}

/// One NAB data file, read: its rows and its anomaly windows.
#[derive(Debug, Clone)]
pub struct File {
    /// Path under the data directory, `/`-separated (`realKnownCause/nyc_taxi.csv`): NAB's key.
    pub name: String,
    /// `(timestamp as written, milliseconds since the epoch, value)`, in file order.
    pub rows: Vec<(String, i64, f64)>,
    /// Anomaly windows as inclusive row ranges.
    pub windows: Vec<(usize, usize)>,
}

impl File {
    /// Whether a row lies inside a window (NAB's `label`).
    pub fn label(&self, row: usize) -> bool {
        self.windows.iter().any(|(a, b)| *a <= row && row <= *b)
    }
}

fn parse_time(s: &str) -> Option<i64> {
    chrono::NaiveDateTime::parse_from_str(s.trim(), "%Y-%m-%d %H:%M:%S%.f").ok().map(|t| t.and_utc().timestamp_millis())
}

fn csv_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
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

/// Reads every `*.csv` under `data` (NAB's layout) with its windows from NAB's
/// `combined_windows.json`. Errors name the file and line and what to do.
pub fn load(data: &std::path::Path, labels: &std::path::Path) -> Result<Vec<File>, String> {
    let files = csv_files(data);
    if files.is_empty() {
        return Err(format!("no CSV files under {}; point --data at NAB's data directory", data.display()));
    }
    let text = std::fs::read_to_string(labels).map_err(|e| format!("read the labels {}: {e}", labels.display()))?;
    let windows: std::collections::BTreeMap<String, Vec<(String, String)>> =
        serde_json::from_str(&text).map_err(|e| format!("{} is not NAB's combined_windows.json: {e}", labels.display()))?;
    let mut out = Vec::with_capacity(files.len());
    for f in &files {
        let name = f.strip_prefix(data).unwrap_or(f).to_string_lossy().replace('\\', "/");
        let text = std::fs::read_to_string(f).map_err(|e| format!("read {}: {e}", f.display()))?;
        let mut rows = Vec::new();
        for (n, line) in text.lines().enumerate().skip(1) {
            let Some((t, v)) = line.split_once(',') else { continue };
            let ts = parse_time(t).ok_or_else(|| format!("{}:{}: {t:?} is not a timestamp (YYYY-MM-DD HH:MM:SS)", f.display(), n + 1))?;
            let v: f64 = v.trim().parse().map_err(|_| format!("{}:{}: {v:?} is not a number", f.display(), n + 1))?;
            rows.push((t.to_string(), ts, v));
        }
        let mut idx = Vec::new();
        for (a, b) in windows.get(&name).into_iter().flatten() {
            let (Some(a), Some(b)) = (parse_time(a), parse_time(b)) else {
                return Err(format!("{}: window [{a:?}, {b:?}] of {name} is not a pair of timestamps", labels.display()));
            };
            let first = rows.iter().position(|r: &(String, i64, f64)| r.1 >= a);
            let last = rows.iter().rposition(|r: &(String, i64, f64)| r.1 <= b);
            if let (Some(x), Some(y)) = (first, last) {
                if x <= y {
                    idx.push((x, y));
                }
            }
        }
        out.push(File { name, rows, windows: idx });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STANDARD: Costs = Costs { tp: 1.0, fp: 0.11, fn_: 1.0 };

    /// 100 rows (probation 15), one window at rows 50..=59.
    fn series(detect: &[usize]) -> Series {
        let mut scores = vec![0.0; 100];
        for &d in detect {
            scores[d] = 1.0;
        }
        Series { name: "t".into(), scores, windows: vec![(50, 59)] }
    }

    #[test]
    fn hand_computed_cases() {
        assert_eq!(probation(100), 15);
        assert_eq!(probation(22_695), 750);
        // A hit at the left edge is a full true positive: the perfect score.
        assert!((raw_score(&series(&[50]), 0.5, &STANDARD) - 1.0).abs() < 1e-12);
        assert!((normalised(&[series(&[50])], 0.5, &STANDARD) - 100.0).abs() < 1e-9);
        // Nothing detected: the window's false negative, the null score.
        assert!((raw_score(&series(&[]), 0.5, &STANDARD) + 1.0).abs() < 1e-12);
        assert!(normalised(&[series(&[])], 0.5, &STANDARD).abs() < 1e-9);
        // A false positive before any window costs the full FP weight: 100 * (0.89 + 1) / 2.
        assert!((normalised(&[series(&[20, 50])], 0.5, &STANDARD) - 94.5).abs() < 1e-9);
        // At the right edge: sigmoid(-0.1) / sigmoid(-1) = 0.244919 / 0.986614 = 0.248242.
        assert!((raw_score(&series(&[59]), 0.5, &STANDARD) - 0.248242).abs() < 1e-5);
        // Only the earliest detection in a window counts.
        assert!((raw_score(&series(&[50, 55, 59]), 0.5, &STANDARD) - 1.0).abs() < 1e-12);
        // Just after the window: 1/9 of a width past, sigmoid(0.1111) = -0.270847, times 0.11.
        assert!((raw_score(&series(&[50, 60]), 0.5, &STANDARD) - (1.0 - 0.11 * 0.270847)).abs() < 1e-5);
        // Far after (more than 3 widths): the full FP weight.
        assert!((raw_score(&series(&[50, 99]), 0.5, &STANDARD) - 0.89).abs() < 1e-12);
        // Detections in the probationary period do not count.
        assert!((raw_score(&series(&[5, 50]), 0.5, &STANDARD) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn the_sweep_finds_the_best_threshold_and_agrees_with_direct_scoring() {
        // A false positive at 0.9, the window's left edge at 0.7, its right edge at 0.95.
        let mut s = series(&[]);
        s.scores[30] = 0.9;
        s.scores[50] = 0.7;
        s.scores[59] = 0.95;
        let corpus = [s.clone()];
        let (t, score) = best(&corpus, &STANDARD);
        assert_eq!(t, 0.7, "down to 0.7 the window is hit at its left edge");
        assert!((score - normalised(&corpus, t, &STANDARD)).abs() < 1e-9);
        for th in [0.95, 0.9, 0.7, 0.5, 0.0] {
            assert!(normalised(&corpus, th, &STANDARD) <= score + 1e-9, "{th}");
        }
        // A heavier FP weight can make the earlier, cheaper threshold win.
        let harsh = Costs { tp: 1.0, fp: 2.0, fn_: 1.0 };
        let (t, _) = best(&corpus, &harsh);
        assert_eq!(t, 0.95);
    }

    #[test]
    fn profiles_read_in_nabs_order() {
        let p = profiles(r#"{"reward_low_FN_rate":{"CostMatrix":{"tpWeight":1.0,"fnWeight":2.0,"fpWeight":0.11,"tnWeight":1.0}},
            "standard":{"CostMatrix":{"tpWeight":1.0,"fnWeight":1.0,"fpWeight":0.11,"tnWeight":1.0}}}"#)
        .unwrap();
        assert_eq!(p[0].0, "standard");
        assert_eq!(p[1].1.fn_, 2.0);
    }
}
