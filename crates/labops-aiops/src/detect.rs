//! A streaming anomaly detector for one series: online, no look-ahead, bounded memory.
//!
//! First version (issue #7 is open): each point's raw surprise is its distance from an
//! exponentially weighted baseline in units of the baseline's spread (with a floor from the
//! series' observed range, so a flat series does not turn noise into alarms), and the raw
//! surprises go through an anomaly likelihood in the manner of Numenta's: how unlikely the
//! short-term average surprise is, given the long-term distribution of surprises. One
//! configuration for every series.

use std::collections::VecDeque;

/// Tunables shared by every series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    /// Weight of a new point in the baseline (smaller: longer memory).
    pub alpha: f64,
    /// Points in the long-term window of surprises.
    pub long: usize,
    /// Points in the short-term average of surprises.
    pub short: usize,
    /// Points before any score other than 0 (learning the baseline).
    pub warmup: usize,
    /// Points after an alarm during which scores are damped (one event, one alarm).
    pub refractory: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self { alpha: 0.01, long: 2000, short: 4, warmup: 150, refractory: 200 }
    }
}

/// The state of one series.
#[derive(Debug, Clone)]
pub struct Detector {
    cfg: Config,
    n: usize,
    mean: f64,
    var: f64,
    min: f64,
    max: f64,
    long: VecDeque<f64>,
    long_sum: f64,
    long_sq: f64,
    short: VecDeque<f64>,
    short_sum: f64,
    /// Points since the last score above 0.99 (alarms in a burst are one event).
    since_alarm: usize,
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
            cfg,
            n: 0,
            mean: 0.0,
            var: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            long: VecDeque::with_capacity(cfg.long),
            long_sum: 0.0,
            long_sq: 0.0,
            short: VecDeque::with_capacity(cfg.short),
            short_sum: 0.0,
            since_alarm: usize::MAX / 2,
        }
    }

    /// Bytes of state per series (for the memory report).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>() + (self.long.capacity() + self.short.capacity()) * std::mem::size_of::<f64>()
    }

    /// Scores one new point in [0, 1], then learns from it.
    pub fn score(&mut self, x: f64) -> f64 {
        if !x.is_finite() {
            return 0.0;
        }
        self.n += 1;
        if self.n == 1 {
            self.mean = x;
        }
        self.min = self.min.min(x);
        self.max = self.max.max(x);
        let range = (self.max - self.min).max(1e-9);
        let spread = self.var.sqrt().max(0.02 * range);
        let raw = ((x - self.mean).abs() / spread).min(50.0);
        // Learn the baseline.
        let d = x - self.mean;
        self.mean += self.cfg.alpha * d;
        self.var = (1.0 - self.cfg.alpha) * (self.var + self.cfg.alpha * d * d);
        // Likelihood of the recent surprise given the long-term ones.
        self.short.push_back(raw);
        self.short_sum += raw;
        if self.short.len() > self.cfg.short {
            self.short_sum -= self.short.pop_front().unwrap_or(0.0);
        }
        let score = if self.n > self.cfg.warmup && self.long.len() >= self.cfg.warmup / 2 {
            let k = self.long.len() as f64;
            let m = self.long_sum / k;
            let sd = (self.long_sq / k - m * m).max(1e-6).sqrt();
            let recent = self.short_sum / self.short.len() as f64;
            1.0 - tail((recent - m) / sd)
        } else {
            0.0
        };
        self.long.push_back(raw);
        self.long_sum += raw;
        self.long_sq += raw * raw;
        if self.long.len() > self.cfg.long {
            let old = self.long.pop_front().unwrap_or(0.0);
            self.long_sum -= old;
            self.long_sq -= old * old;
        }
        // An alarm was just raised: what follows is the same event, not a new one.
        self.since_alarm = self.since_alarm.saturating_add(1);
        let quiet = (self.since_alarm as f64 / self.cfg.refractory as f64).min(1.0);
        let out = (score * quiet).clamp(0.0, 1.0);
        if score > 0.99 && self.since_alarm > self.cfg.refractory {
            self.since_alarm = 0;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(i: usize) -> f64 {
        // A fixed, deterministic wiggle.
        ((i as f64 * 12.9898).sin() * 43758.5453).fract()
    }

    #[test]
    fn a_spike_and_a_level_shift_score_high_and_a_quiet_series_stays_quiet() {
        let mut d = Detector::new(Config::default());
        let mut quiet_max: f64 = 0.0;
        for i in 0..3000 {
            let s = d.score(10.0 + noise(i) + 3.0 * (i as f64 / 50.0).sin());
            if i > 500 {
                quiet_max = quiet_max.max(s);
            }
        }
        let spike = (0..3).map(|k| d.score(if k == 0 { 40.0 } else { 10.0 })).fold(0.0, f64::max);
        assert!(spike > 0.99, "a spike: {spike}");
        // One event, one alarm: right after it, scores are damped.
        let after = d.score(40.0);
        assert!(after < 0.1, "the same burst alarms once: {after}");
        for i in 0..400 {
            d.score(10.0 + noise(i) + 3.0 * (i as f64 / 50.0).sin());
        }
        let mut shift: f64 = 0.0;
        for i in 0..50 {
            shift = shift.max(d.score(25.0 + noise(i)));
        }
        assert!(shift > 0.99, "a level shift: {shift}");
        assert!(quiet_max < shift, "quiet {quiet_max} < shift {shift}");
    }

    #[test]
    fn tail_matches_the_normal_distribution() {
        assert!((tail(0.0) - 0.5).abs() < 1e-6);
        assert!((tail(1.96) - 0.025).abs() < 1e-4);
        assert!((tail(-1.0) - 0.841345).abs() < 1e-5);
    }
}
