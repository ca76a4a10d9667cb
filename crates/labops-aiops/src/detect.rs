//! A streaming anomaly detector for one series: online, no look-ahead, bounded memory.
//!
//! Two channels, one configuration for every series:
//!
//! 1. **Novelty of the recent shape.** Each value is placed on a grid over the range seen so
//!    far, at two resolutions (coarse and fine). For each grid the detector counts how often it
//!    has seen the value's cell alone, after the previous cell, and after the previous two: the
//!    context of orders 0, 1 and 2. A cell or a transition seen `c` times before adds
//!    `1 / (1 + c)`, so the never-seen adds 1 and the familiar next to nothing; the raw score is
//!    the mean over orders and grids, in [0, 1]. Recurring shapes become familiar without the
//!    period being known; a new level, a spike or a broken rhythm is a run of unfamiliar
//!    transitions. Grid cells are powers of two wide and anchored at zero, so when the range
//!    grows the grid coarsens by merging cells (`c / 2^k`) and nothing learned is lost.
//! 2. **Novelty at the phase** ([`crate::season`]): once the series' own history shows a period,
//!    how rarely the value's cell was seen at this time of the cycle. It sees what the shape
//!    cannot: a familiar level at an unfamiliar time (a daily peak that does not come, a cycle
//!    running faster in the same range).
//!
//! Each channel's novelties go through Numenta's **anomaly likelihood** (as the HTM detector
//! does it): how unlikely the mean novelty of the last `short` points is, given the mean and
//! spread of the last `long` ones. The score is the larger of the two. A never-seen value at
//! every order scores 1 outright. After an alarm the next `rest` points score 0: one event, one
//! alarm; except a never-seen value more than half the range beyond everything seen, which no
//! rest period hides (NAB's score is the same with or without this exception; a real outage
//! right after a blip is not).
//!
//! On the Numenta Anomaly Benchmark subset this scores 76.0 (standard profile; 71.4 without the
//! phase channel), see BENCHMARKS.md; `labops bench nab` reproduces it.

use std::collections::{HashMap, VecDeque};

use crate::season::Season;

/// Tunables shared by every series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Cells across the observed range of each grid (rounded up to a power-of-two width).
    pub resolutions: [u32; 2],
    /// Raw scores in the long-term distribution.
    pub long: usize,
    /// Raw scores in the short-term mean.
    pub short: usize,
    /// Points after an alarm that score 0.
    pub rest: usize,
    /// A score at or above this is an alarm (starts the rest period).
    pub alarm: f64,
    /// Contexts kept per grid before the counts are halved and the rare ones forgotten.
    pub max_contexts: usize,
    /// Points a series needs before it can score above 0.
    pub warmup: usize,
    /// Whether to find each series' period and score how unusual each value is at its phase
    /// (see [`crate::season`]).
    pub season: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self { resolutions: [16, 64], long: 4000, short: 10, rest: 50, alarm: 0.998, max_contexts: 3500, warmup: 100, season: true }
    }
}

/// Orders of context: the cell alone, after one cell, after two.
const ORDERS: usize = 3;

/// A context, 16 bytes: the current cell, the steps back to the previous cell and from it to
/// the one before (saturated: every huge jump is alike), and the order (unused steps: 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Key {
    cell: i64,
    steps: [i16; ORDERS - 1],
    order: u8,
}

fn step(from: i64, to: i64) -> i16 {
    to.saturating_sub(from).clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16
}

impl Key {
    fn new(order: usize, cells: &[i64; ORDERS]) -> Self {
        let mut steps = [0i16; ORDERS - 1];
        for k in 0..order {
            steps[k] = step(cells[k], cells[k + 1]);
        }
        Self { cell: cells[0], steps, order: order as u8 }
    }

    /// The same context on a grid `factor` times coarser.
    fn coarsen(self, factor: i64) -> Self {
        let saturated = |s: i16| s == i16::MIN || s == i16::MAX;
        let mut cells = [self.cell; ORDERS];
        let mut out = [0i16; ORDERS - 1];
        for k in 0..usize::from(self.order) {
            cells[k + 1] = cells[k].saturating_add(i64::from(self.steps[k]));
        }
        let coarse: Vec<i64> = cells.iter().map(|c| c.div_euclid(factor)).collect();
        for k in 0..usize::from(self.order) {
            out[k] = if saturated(self.steps[k]) { self.steps[k] } else { step(coarse[k], coarse[k + 1]) };
        }
        Self { cell: coarse[0], steps: out, order: self.order }
    }
}

/// Fits a grid of `cells` power-of-two-wide cells anchored at zero to `range`: sets `width` on
/// the first call; afterwards, when the range has outgrown the grid, doubles `width` as often as
/// needed and returns the factor by which the old cells merge (`cell.div_euclid(factor)`).
pub(crate) fn widen(width: &mut f64, range: f64, cells: f64) -> Option<i64> {
    let wanted = (range / cells).max(f64::MIN_POSITIVE);
    let fits = 2f64.powi(wanted.log2().ceil() as i32);
    if *width == 0.0 {
        *width = fits;
        return None;
    }
    if fits <= *width {
        return None;
    }
    let factor = (fits / *width).round() as i64;
    *width = fits;
    Some(factor)
}

/// One grid: its cell width and the counts of contexts seen on it.
#[derive(Debug, Clone)]
struct Grid {
    cells: f64,
    width: f64,
    /// The last two cells, most recent first (fewer at the start).
    recent: [i64; ORDERS - 1],
    known: usize,
    counts: HashMap<Key, u32>,
}

impl Grid {
    fn new(cells: u32) -> Self {
        Self { cells: f64::from(cells.max(1)), width: 0.0, recent: [0; ORDERS - 1], known: 0, counts: HashMap::new() }
    }

    /// Coarsens the grid to fit `range`: merges cells when the width doubles.
    fn fit(&mut self, range: f64) {
        let Some(factor) = widen(&mut self.width, range, self.cells) else { return };
        let old = std::mem::take(&mut self.counts);
        for (key, c) in old {
            let e = self.counts.entry(key.coarsen(factor)).or_insert(0);
            *e = e.saturating_add(c);
        }
        for cell in &mut self.recent {
            *cell = cell.div_euclid(factor);
        }
    }

    /// The mean familiarity-weighted novelty of `x` over the orders available, then learns it.
    fn novelty(&mut self, x: f64, max_contexts: usize) -> (f64, bool) {
        let cell = (x / self.width).floor() as i64;
        let orders = (self.known + 1).min(ORDERS);
        let mut sum = 0.0;
        let mut unseen = true;
        for order in 0..orders {
            let mut cells = [0i64; ORDERS];
            cells[0] = cell;
            cells[1..=order].copy_from_slice(&self.recent[..order]);
            let c = self.counts.entry(Key::new(order, &cells)).or_insert(0);
            unseen &= *c == 0;
            sum += 1.0 / (1.0 + f64::from(*c));
            *c = c.saturating_add(1);
        }
        self.recent.rotate_right(1);
        self.recent[0] = cell;
        self.known += 1;
        if self.counts.len() >= max_contexts {
            // Bounded memory: halve every count; what was seen once is forgotten.
            self.counts.retain(|_, c| {
                *c /= 2;
                *c > 0
            });
        }
        (sum / ORDERS as f64, unseen)
    }
}

/// What the latest score came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A value never seen at any resolution, once the series has a history.
    NewValue,
    /// A run of unfamiliar levels and steps.
    Shape,
    /// A familiar value at an unfamiliar time of the series' period (in points).
    Phase(u32),
}

/// The state of one series.
#[derive(Debug, Clone)]
pub struct Detector {
    cfg: Config,
    n: u64,
    lo: f64,
    hi: f64,
    grids: Vec<Grid>,
    likelihood: Likelihood,
    since_alarm: usize,
    season: Season,
    /// The likelihood of the seasonal novelties alone, once the period is known.
    seasonal: Likelihood,
    why: Why,
}

/// Numenta's anomaly likelihood over a stream of raw scores in [0, 1].
#[derive(Debug, Clone)]
struct Likelihood {
    /// Long-term raw scores, in units of 1/65535.
    long: VecDeque<u16>,
    long_sum: f64,
    long_sq: f64,
    short: VecDeque<f64>,
    short_sum: f64,
}

impl Likelihood {
    fn new(cfg: &Config) -> Self {
        Self { long: VecDeque::with_capacity(cfg.long + 1), long_sum: 0.0, long_sq: 0.0, short: VecDeque::with_capacity(cfg.short + 1), short_sum: 0.0 }
    }

    fn memory_bytes(&self) -> usize {
        self.long.capacity() * std::mem::size_of::<u16>() + self.short.capacity() * std::mem::size_of::<f64>()
    }

    /// How unlikely the recent raw scores are given the long-term ones (0 until `warmup` are
    /// known); then remembers `raw`.
    fn update(&mut self, raw: f64, cfg: &Config) -> f64 {
        self.short.push_back(raw);
        self.short_sum += raw;
        if self.short.len() > cfg.short {
            self.short_sum -= self.short.pop_front().unwrap_or(0.0);
        }
        let out = if self.long.len() >= cfg.warmup.max(2) {
            let k = self.long.len() as f64;
            let mean = self.long_sum / k;
            let sd = (self.long_sq / k - mean * mean).max(1e-8).sqrt().max(1e-4);
            let recent = self.short_sum / self.short.len() as f64;
            1.0 - tail((recent - mean) / sd)
        } else {
            0.0
        };
        let q = (raw.clamp(0.0, 1.0) * 65535.0).round() as u16;
        let v = f64::from(q) / 65535.0;
        self.long.push_back(q);
        self.long_sum += v;
        self.long_sq += v * v;
        if self.long.len() > cfg.long {
            let old = f64::from(self.long.pop_front().unwrap_or(0)) / 65535.0;
            self.long_sum -= old;
            self.long_sq -= old * old;
        }
        out
    }
}

/// The standard normal's upper tail, Q(z) = P(Z > z) (Abramowitz & Stegun 7.1.26 via erfc).
fn tail(z: f64) -> f64 {
    let x = z / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.3275911 * x.abs());
    let y = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429)))) * (-x * x).exp();
    let erfc = if x >= 0.0 { y } else { 2.0 - y };
    0.5 * erfc
}

impl Detector {
    /// A new detector.
    pub fn new(cfg: Config) -> Self {
        Self {
            grids: cfg.resolutions.iter().map(|&c| Grid::new(c)).collect(),
            cfg,
            n: 0,
            lo: f64::INFINITY,
            hi: f64::NEG_INFINITY,
            likelihood: Likelihood::new(&cfg),
            since_alarm: usize::MAX / 2,
            season: Season::new(),
            seasonal: Likelihood::new(&cfg),
            why: Why::Shape,
        }
    }

    /// Points scored so far.
    pub fn seen(&self) -> u64 {
        self.n
    }

    /// What the latest score came from.
    pub fn why(&self) -> Why {
        self.why
    }

    /// The series' period in points, once found (see [`crate::season`]).
    pub fn period(&self) -> Option<u32> {
        self.season.period()
    }

    /// Bytes of state held for this series now (the memory report).
    pub fn memory_bytes(&self) -> usize {
        let map = |g: &Grid| g.counts.capacity() * (std::mem::size_of::<Key>() + std::mem::size_of::<u32>() + 1);
        std::mem::size_of::<Self>()
            + self.grids.iter().map(|g| std::mem::size_of::<Grid>() + map(g)).sum::<usize>()
            + self.likelihood.memory_bytes()
            + self.season.memory_bytes()
            + self.seasonal.memory_bytes()
    }

    /// Scores one new point in [0, 1] from what came before it, then learns it. Values that
    /// are not finite score 0 and teach nothing.
    pub fn score(&mut self, x: f64) -> f64 {
        if !x.is_finite() {
            return 0.0;
        }
        self.n += 1;
        // Far outside everything seen (by half the range): a jump no rest period hides.
        let spread = self.hi - self.lo;
        let far = self.n > 1 && (x > self.hi + 0.5 * spread || x < self.lo - 0.5 * spread);
        self.lo = self.lo.min(x);
        self.hi = self.hi.max(x);
        // A tiny floor relative to the level keeps a flat series on a sensible grid.
        let range = (self.hi - self.lo).max(1e-9 * self.hi.abs().max(self.lo.abs()).max(1.0));
        let (mut raw, mut unseen) = (0.0, true);
        let max_contexts = self.cfg.max_contexts;
        for g in &mut self.grids {
            g.fit(range);
            let (r, u) = g.novelty(x, max_contexts);
            raw += r;
            unseen &= u;
        }
        raw /= self.grids.len().max(1) as f64;
        let mut likelihood = self.likelihood.update(raw, &self.cfg);
        self.why = Why::Shape;
        if self.cfg.season
            && let Some(s) = self.season.novelty(x, range)
        {
            let phase = self.seasonal.update(s, &self.cfg);
            if phase > likelihood {
                likelihood = phase;
                self.why = Why::Phase(self.season.period().unwrap_or(0));
            }
        }
        self.since_alarm = self.since_alarm.saturating_add(1);
        // Unseen at every order and grid, once the series has a history: a new level or spike.
        let new_level = unseen && self.likelihood.long.len() >= self.cfg.warmup;
        if self.since_alarm <= self.cfg.rest && !(new_level && far) {
            return 0.0;
        }
        if new_level {
            self.why = Why::NewValue;
        }
        let out = if new_level { 1.0 } else { likelihood * 0.9999 };
        if out >= self.cfg.alarm {
            self.since_alarm = 0;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed, deterministic wiggle in [0, 1).
    fn noise(i: usize) -> f64 {
        ((i as f64 * 12.9898).sin() * 43758.5453).fract().abs()
    }

    /// A daily cycle (288 points a day) with noise.
    fn daily(i: usize) -> f64 {
        50.0 + 20.0 * (i as f64 * std::f64::consts::TAU / 288.0).sin() + noise(i)
    }

    /// Feeds `warm` points of `normal`, then `after` points of `planted`; the highest score
    /// in the normal stretch after warm-up and the highest over the planted stretch.
    fn run(normal: impl Fn(usize) -> f64, planted: impl Fn(usize) -> f64, warm: usize, after: usize) -> (f64, f64) {
        let mut d = Detector::new(Config::default());
        let mut quiet: f64 = 0.0;
        for i in 0..warm {
            let s = d.score(normal(i));
            if i > warm / 2 {
                quiet = quiet.max(s);
            }
        }
        let caught = (warm..warm + after).map(|i| d.score(planted(i))).fold(0.0, f64::max);
        (quiet, caught)
    }

    #[test]
    fn planted_anomalies_are_caught() {
        let alarm = Config::default().alarm;
        // A spike.
        let (quiet, spike) = run(daily, |i| if i == 4000 { 200.0 } else { daily(i) }, 4000, 10);
        assert!(spike >= alarm, "spike: {spike}");
        // A jump far outside the range, right after another alarm, is not hidden by the rest.
        let mut d = Detector::new(Config::default());
        for i in 0..3000 {
            d.score(daily(i));
        }
        assert!(d.score(75.0) >= alarm, "a new high");
        assert_eq!(d.score(daily(3001)), 0.0, "the rest period");
        assert!(d.score(500.0) >= alarm, "a far jump in the rest period");
        assert!(quiet < alarm, "a quiet daily cycle alarmed: {quiet}");
        // A level shift.
        let (_, shift) = run(daily, |i| daily(i) + 60.0, 4000, 50);
        assert!(shift >= alarm, "level shift: {shift}");
        // Changed seasonality, in the same range: the cycle runs four times faster. Every level
        // is familiar; the values come at the wrong time of the cycle.
        let clean = |i: usize| 50.0 + 20.0 * (i as f64 * std::f64::consts::TAU / 288.0).sin() + 0.2 * noise(i);
        let (quiet, faster) = run(clean, |i| 50.0 + 20.0 * (i as f64 * std::f64::consts::TAU / 72.0).sin() + 0.2 * noise(i), 4000, 300);
        assert!(faster >= alarm && quiet < alarm, "cycle period: {faster} against a quiet {quiet}");
        // A daily peak that does not come: the value rests at a level it knows well, at the
        // time of day it should be high.
        let peaks = |i: usize| if (100..160).contains(&(i % 288)) { 80.0 } else { 20.0 } + 2.0 * noise(i);
        let day = 288 * 14;
        let (quiet, missing) = run(
            peaks,
            |i| {
                if i < day + 288 { 20.0 + 2.0 * noise(i) } else { peaks(i) }
            },
            day,
            288,
        );
        assert!(missing >= alarm && quiet < alarm, "a missing daily peak: {missing} against a quiet {quiet}");
        // Said as such.
        let mut d = Detector::new(Config::default());
        for i in 0..day {
            d.score(peaks(i));
        }
        let why: Vec<Why> = (day..day + 288).filter_map(|i| (d.score(20.0 + 2.0 * noise(i)) >= alarm).then(|| d.why())).collect();
        assert_eq!(why, [Why::Phase(288)]);
        // Slow drift: one unit a day upwards, out of the range it knew.
        let (_, drift) = run(daily, |i| daily(i) + (i - 4000) as f64 * 0.2, 4000, 1500);
        assert!(drift >= alarm, "slow drift: {drift}");
    }

    #[test]
    fn quiet_series_stay_quiet() {
        let alarm = Config::default().alarm;
        let series: [(&str, Box<dyn Fn(usize) -> f64>); 4] = [
            ("flat", Box::new(|_| 7.0)),
            ("noise", Box::new(|i| 10.0 + noise(i))),
            ("daily", Box::new(daily)),
            ("square wave", Box::new(|i| if (i / 144) % 2 == 0 { 1.0 } else { 5.0 })),
        ];
        for (name, f) in series {
            let mut d = Detector::new(Config::default());
            let worst = (0..8000).map(|i| (i, d.score(f(i)))).filter(|(i, _)| *i > 1500).map(|(_, s)| s).fold(0.0, f64::max);
            assert!(worst < alarm, "{name} alarmed: {worst}");
        }
    }

    #[test]
    fn memory_stays_bounded_on_a_series_that_never_repeats() {
        let mut d = Detector::new(Config::default());
        for i in 0..200_000 {
            d.score(noise(i) * 1e6 + i as f64);
        }
        let cfg = Config::default();
        for g in &d.grids {
            assert!(g.counts.len() <= cfg.max_contexts, "{}", g.counts.len());
        }
        assert!(d.memory_bytes() < 1_000_000, "{}", d.memory_bytes());
    }

    #[test]
    fn bad_values_score_zero_and_teach_nothing() {
        let mut d = Detector::new(Config::default());
        for i in 0..500 {
            d.score(daily(i));
        }
        let before = d.seen();
        assert_eq!(d.score(f64::NAN), 0.0);
        assert_eq!(d.score(f64::INFINITY), 0.0);
        assert_eq!(d.seen(), before);
    }

    #[test]
    fn tail_matches_the_normal_distribution() {
        assert!((tail(0.0) - 0.5).abs() < 1e-6);
        assert!((tail(1.96) - 0.025).abs() < 1e-4);
        assert!((tail(-1.0) - 0.841345).abs() < 1e-5);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// No look-ahead once the period is known: a daily cycle long enough for the period to
        /// be found, then changed futures.
        #[test]
        fn no_look_ahead_with_a_period(n in 1100usize..2500, k in 0usize..2500, ys in proptest::collection::vec(0f64..100.0, 0..400)) {
            let k = k.min(n);
            let xs: Vec<f64> = (0..n).map(daily).collect();
            let mut a = Detector::new(Config::default());
            let mut b = Detector::new(Config::default());
            let sa: Vec<f64> = xs.iter().map(|x| a.score(*x)).collect();
            let sb: Vec<f64> = xs[..k].iter().chain(ys.iter()).map(|x| b.score(*x)).collect();
            proptest::prop_assert_eq!(&sa[..k], &sb[..k]);
            proptest::prop_assert_eq!(a.period(), Some(288));
        }
    }

    proptest::proptest! {
        /// No look-ahead: changing the points after k never changes the scores up to k.
        #[test]
        fn no_look_ahead(xs in proptest::collection::vec(-1e6f64..1e6, 1..600), k in 0usize..600, ys in proptest::collection::vec(-1e9f64..1e9, 0..300)) {
            let k = k.min(xs.len());
            let mut a = Detector::new(Config::default());
            let mut b = Detector::new(Config::default());
            let sa: Vec<f64> = xs.iter().map(|x| a.score(*x)).collect();
            let sb: Vec<f64> = xs[..k].iter().chain(ys.iter()).map(|x| b.score(*x)).collect();
            proptest::prop_assert_eq!(&sa[..k], &sb[..k]);
            for s in sa.iter().chain(&sb) {
                proptest::prop_assert!((0.0..=1.0).contains(s));
            }
        }
    }
}
