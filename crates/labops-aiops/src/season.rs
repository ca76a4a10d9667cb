//! The clock the anomaly detector lacks: a series' period, found from its own history, and how
//! familiar each value is at its phase of that period.
//!
//! Until a period is found the series' history is kept as block means (at most [`HISTORY`] of
//! them, 4 KB). When the history is full, augurs' periodogram (Welch's method) names the
//! candidate periods; the series' self-similarity (how little it differs from itself a lag
//! later, at the lag and its multiples) picks the exact lag around each candidate and accepts it
//! only when the series clearly repeats at that lag and not at half of it (a trend or a random
//! walk resembles itself at every short lag, a cycle does not at half its period). When none is
//! accepted, neighbouring blocks are merged, so the same 4 KB covers twice the time, and the
//! search goes on, up to [`MAX_STRIDE`] points a block; then the series is taken to have no
//! period and the history is dropped.
//!
//! Once a period is known, each point's phase falls in one of [`BUCKETS`] buckets, and the
//! model counts in how many cycles each value cell (a power-of-two grid over the range, as the
//! detector's own grids) was seen in each bucket; a value's familiarity is its count in its
//! bucket and the two neighbouring ones. The history is replayed into those counts, so the model
//! starts out knowing the cycles it was found from. A value rarely seen at this time of the cycle
//! (a daily peak that does not come, a cycle running four times faster in the same range) is
//! novel here though every level and step of it is familiar.

use std::collections::HashMap;

use augurs_seasons::PeriodogramDetector;

/// Block means kept while looking for a period.
pub const HISTORY: usize = 1024;
/// The coarsest block, in points, before the search gives up.
pub const MAX_STRIDE: u32 = 64;
/// Phase buckets per period.
pub const BUCKETS: u32 = 32;
/// Cells across the range (rounded up to a power-of-two width).
const CELLS: f64 = 16.0;
/// Entries kept before the counts are halved and the rare ones forgotten.
const MAX_ENTRIES: usize = 2048;
/// The self-similarity a period needs at its lag, and its margin over the half lag.
const MIN_ACF: f64 = 0.6;
const MIN_MARGIN: f64 = 0.4;

/// The seasonal state of one series.
#[derive(Debug, Clone, Default)]
pub struct Season {
    history: Vec<f32>,
    stride: u32,
    block_sum: f64,
    block_len: u32,
    /// The period in points (0: none yet) and the phase of the next point.
    period: u32,
    phase: u32,
    /// Points seen.
    n: u64,
    done: bool,
    width: f64,
    /// Cycles in which each (phase bucket, cell) was seen.
    counts: HashMap<(u8, i64), u32>,
    /// The bucket of the latest point and the cells seen in it this cycle.
    bucket_now: u8,
    pending: Vec<i64>,
}

impl Season {
    /// A series not yet seen.
    pub fn new() -> Self {
        Self { stride: 1, ..Self::default() }
    }

    /// The period in points, once found.
    pub fn period(&self) -> Option<u32> {
        (self.period > 0).then_some(self.period)
    }

    /// Bytes of state held now.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + self.history.capacity() * 4 + self.counts.capacity() * (std::mem::size_of::<((u8, i64), u32)>() + 1)
    }

    /// How novel `x` is at its phase, in [0, 1] (`None` while no period is known), then learns
    /// it. `range` is the series' range so far, including `x`.
    pub fn novelty(&mut self, x: f64, range: f64) -> Option<f64> {
        self.n += 1;
        if self.period == 0 {
            if !self.done {
                self.remember(x, range);
            }
            return None;
        }
        self.fit(range);
        let bucket = self.bucket(self.phase);
        let cell = (x / self.width).floor() as i64;
        let near = |b: i64| (b.rem_euclid(i64::from(BUCKETS))) as u8;
        let seen: u32 = [-1i64, 0, 1].iter().map(|d| self.counts.get(&(near(i64::from(bucket) + d), cell)).copied().unwrap_or(0)).sum();
        self.visit(bucket, cell);
        self.phase = (self.phase + 1) % self.period;
        Some(1.0 / (1.0 + f64::from(seen)))
    }

    fn bucket(&self, phase: u32) -> u8 {
        (u64::from(phase) * u64::from(BUCKETS) / u64::from(self.period.max(1))) as u8
    }

    /// Notes `cell` in `bucket`. The counts are of cycles, not points: the cells of a bucket
    /// are counted once each when the bucket is left, so a value's own run never makes it
    /// familiar before the next cycle.
    fn visit(&mut self, bucket: u8, cell: i64) {
        if bucket != self.bucket_now {
            for c in std::mem::take(&mut self.pending) {
                self.learn(self.bucket_now, c);
            }
            self.bucket_now = bucket;
        }
        if !self.pending.contains(&cell) && self.pending.len() < CELLS as usize * 4 {
            self.pending.push(cell);
        }
    }

    fn learn(&mut self, bucket: u8, cell: i64) {
        let c = self.counts.entry((bucket, cell)).or_insert(0);
        *c = c.saturating_add(1);
        if self.counts.len() >= MAX_ENTRIES {
            self.counts.retain(|_, c| {
                *c /= 2;
                *c > 0
            });
        }
    }

    /// Coarsens the value grid to fit `range`, merging cells.
    fn fit(&mut self, range: f64) {
        let Some(factor) = crate::detect::widen(&mut self.width, range, CELLS) else { return };
        let old = std::mem::take(&mut self.counts);
        for ((b, cell), c) in old {
            let e = self.counts.entry((b, cell.div_euclid(factor))).or_insert(0);
            *e = (*e).max(c);
        }
        for cell in &mut self.pending {
            *cell = cell.div_euclid(factor);
        }
        self.pending.sort_unstable();
        self.pending.dedup();
    }

    /// Keeps `x` in the history; looks for a period when it is full.
    fn remember(&mut self, x: f64, range: f64) {
        self.block_sum += x;
        self.block_len += 1;
        if self.block_len < self.stride {
            return;
        }
        self.history.push((self.block_sum / f64::from(self.block_len)) as f32);
        self.block_sum = 0.0;
        self.block_len = 0;
        if self.history.len() < HISTORY {
            return;
        }
        let data: Vec<f64> = self.history.iter().map(|&v| f64::from(v)).collect();
        if let Some(lag) = find_period(&data) {
            self.start(lag * self.stride, range);
        } else if self.stride >= MAX_STRIDE {
            self.done = true;
            self.history = Vec::new();
        } else {
            self.history = self.history.chunks(2).map(|p| p.iter().sum::<f32>() / p.len() as f32).collect();
            self.stride *= 2;
        }
    }

    /// Takes `period` (points) and replays the history into the counts.
    fn start(&mut self, period: u32, range: f64) {
        self.period = period;
        self.fit(range);
        let history = std::mem::take(&mut self.history);
        let stride = u64::from(self.stride);
        for (i, &v) in history.iter().enumerate() {
            let mid = i as u64 * stride + stride / 2;
            let bucket = self.bucket((mid % u64::from(period)) as u32);
            self.visit(bucket, (f64::from(v) / self.width).floor() as i64);
        }
        self.phase = (self.n % u64::from(period)) as u32;
    }
}

/// How alike a series is to itself some samples later, each lag computed once.
struct SelfSimilarity<'a> {
    x: &'a [f64],
    var: f64,
    memo: Vec<Option<f64>>,
}

impl<'a> SelfSimilarity<'a> {
    fn new(x: &'a [f64]) -> Self {
        let mean = x.iter().sum::<f64>() / x.len().max(1) as f64;
        let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / x.len().max(1) as f64;
        Self { x, var, memo: vec![None; x.len()] }
    }

    /// `1 - mean((x[i] - x[i+lag])^2) / (2 var)`: the autocorrelation's form of the squared
    /// difference. Unlike the autocorrelation over a window that is not a whole number of
    /// cycles, it peaks exactly at the period: a periodic series differs from itself one period
    /// later by its noise alone. 0 for a flat series or a lag past the end.
    fn at(&mut self, lag: usize) -> f64 {
        if lag >= self.x.len() || self.var <= 0.0 {
            return 0.0;
        }
        if let Some(r) = self.memo[lag] {
            return r;
        }
        let x = self.x;
        let diff = x.iter().zip(&x[lag..]).map(|(a, b)| (a - b) * (a - b)).sum::<f64>() / (x.len() - lag) as f64;
        let r = 1.0 - diff / (2.0 * self.var);
        self.memo[lag] = Some(r);
        r
    }

    /// How well the series repeats every `lag` samples: the mean similarity at `lag` and its
    /// multiples that leave at least a third of the series in pairs. The multiples sharpen the
    /// peak: a lag one sample off is `k` samples off at the `k`-th multiple.
    fn repeats(&mut self, lag: usize) -> f64 {
        let n = self.x.len();
        let lags: Vec<usize> = (1..).map(|k| k * lag).take_while(|&l| l == lag || 3 * l <= 2 * n).collect();
        lags.iter().map(|&l| self.at(l)).sum::<f64>() / lags.len() as f64
    }
}

/// The period of `x` in samples, if it clearly has one: the periodogram's candidates, each
/// refined to the lag that repeats best between its neighbouring periods; only a local peak
/// counts, and only if the series repeats at that lag and clearly not at half of it.
pub fn find_period(x: &[f64]) -> Option<u32> {
    let max = (x.len() / 3) as u32;
    if max < 4 {
        return None;
    }
    let detector = PeriodogramDetector::builder().min_period(4).max_period(max).threshold(0.5).build();
    let mut sim = SelfSimilarity::new(x);
    let mut best: Option<(f64, u32)> = None;
    for peak in detector.periodogram(x).peaks(0.5) {
        // The neighbouring bins' periods (0 past either end); the list runs from long to short.
        let hi = if peak.prev_period == 0 { max } else { peak.prev_period.min(max) };
        let lo = peak.next_period.max(4);
        for lag in lo..=hi {
            let lag = lag as usize;
            let r = sim.repeats(lag);
            let peak = r > sim.repeats(lag - 1) && r >= sim.repeats(lag + 1);
            if peak && r >= MIN_ACF && r - sim.at(lag / 2) >= MIN_MARGIN && best.is_none_or(|(b, _)| r > b) {
                best = Some((r, lag as u32));
            }
        }
    }
    best.map(|(_, lag)| lag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(i: usize) -> f64 {
        ((i as f64 * 12.9898).sin() * 43758.5453).fract().abs()
    }

    #[test]
    fn periods_are_found_exactly_and_only_where_there_are_some() {
        let cycle = |p: f64| (0..1024).map(move |i| (i as f64 * std::f64::consts::TAU / p).sin() * 10.0 + noise(i)).collect::<Vec<_>>();
        assert_eq!(find_period(&cycle(288.0)), Some(288));
        assert_eq!(find_period(&cycle(100.0)), Some(100));
        let peaks: Vec<f64> = (0..1024).map(|i| if i % 144 < 20 { 5.0 } else { 1.0 } + 0.1 * noise(i)).collect();
        assert_eq!(find_period(&peaks), Some(144));
        let walk: Vec<f64> = (0..1024)
            .scan(0.0, |s, i| {
                *s += noise(i) - 0.5;
                Some(*s)
            })
            .collect();
        assert_eq!(find_period(&walk), None, "a random walk");
        assert_eq!(find_period(&(0..1024).map(noise).collect::<Vec<_>>()), None, "noise");
        assert_eq!(find_period(&(0..1024).map(|i| i as f64).collect::<Vec<_>>()), None, "a trend");
        assert_eq!(find_period(&[3.0; 1024]), None, "flat");
    }

    #[test]
    fn a_long_period_is_found_by_merging_blocks() {
        let mut s = Season::new();
        let day = 1440.0;
        for i in 0..20_000 {
            let x = 50.0 + 20.0 * (i as f64 * std::f64::consts::TAU / day).sin() + noise(i);
            s.novelty(x, 42.0);
        }
        let p = s.period().expect("a daily period in minutes");
        assert!((p as f64 - day).abs() <= day * 0.02, "{p}");
        assert!(s.history.is_empty() && s.memory_bytes() < 100_000, "{}", s.memory_bytes());
    }
}
