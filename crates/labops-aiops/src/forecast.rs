//! Failure prediction: when will a growing series (a filesystem, a ZFS pool, a temperature)
//! cross a limit, with a confidence interval.
//!
//! The method is plain and explainable. A first least-squares line through the samples; the
//! mean residual per hour of the day is the daily cycle (when the samples span at least two
//! days); the cycle is taken out and the line fitted again. The series meets the limit when the
//! trend plus the cycle's highest hour does (a disk fills first at the daily peak). The interval
//! comes from the slope's standard error, widened for autocorrelated residuals (the effective
//! number of samples `n (1 - r) / (1 + r)` with `r` the lag-1 autocorrelation), at about 95%.
//! The position is as uncertain as the scatter about the trend, which widens the interval by
//! about two residual deviations of room. A series that is not rising has no forecast.
//!
//! [`synth`] generates the growth curves the accuracy benchmark and tests use, from fixed seeds.

/// A forecast of when a series meets a limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forecast {
    /// Growth per day (units of the series).
    pub slope_per_day: f64,
    /// The trend's value at the last sample (the daily cycle taken out).
    pub level: f64,
    /// How far the daily cycle's highest hour lies above the trend.
    pub peak: f64,
    /// Seconds from the last sample until the limit is met (best estimate).
    pub eta_secs: f64,
    /// The interval: soonest and latest (None: the slope may be zero, no upper bound).
    pub soonest_secs: f64,
    /// See `soonest_secs`.
    pub latest_secs: Option<f64>,
}

fn fit(t: &[f64], y: &[f64]) -> Option<(f64, f64)> {
    let n = t.len() as f64;
    if t.len() < 3 {
        return None;
    }
    let (mt, my) = (t.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (a, b) in t.iter().zip(y) {
        sxy += (a - mt) * (b - my);
        sxx += (a - mt) * (a - mt);
    }
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    Some((slope, my - slope * mt))
}

/// When the series `samples` (`(unix seconds, value)`, in time order) meets `limit`, or None
/// when there are too few samples, it is not rising, or it is already past the limit's reach.
pub fn time_to(samples: &[(f64, f64)], limit: f64) -> Option<Forecast> {
    let samples: Vec<(f64, f64)> = samples.iter().copied().filter(|(t, v)| t.is_finite() && v.is_finite()).collect();
    if samples.len() < 10 {
        return None;
    }
    let t0 = samples[0].0;
    let t: Vec<f64> = samples.iter().map(|(t, _)| (t - t0) / 86_400.0).collect();
    let y: Vec<f64> = samples.iter().map(|(_, v)| *v).collect();
    let (mut slope, mut icept) = fit(&t, &y)?;
    let days = t[t.len() - 1] - t[0];
    let mut profile = [0.0f64; 24];
    let mut deseasoned = y.clone();
    if days >= 2.0 {
        let hour = |(ts, _): &(f64, f64)| ((ts.rem_euclid(86_400.0)) / 3_600.0) as usize % 24;
        let (mut sum, mut count) = ([0.0f64; 24], [0usize; 24]);
        for (i, s) in samples.iter().enumerate() {
            let h = hour(s);
            sum[h] += y[i] - (slope * t[i] + icept);
            count[h] += 1;
        }
        for h in 0..24 {
            profile[h] = if count[h] > 0 { sum[h] / count[h] as f64 } else { 0.0 };
        }
        for (i, s) in samples.iter().enumerate() {
            deseasoned[i] -= profile[hour(s)];
        }
        (slope, icept) = fit(&t, &deseasoned)?;
    }
    if slope.is_nan() || slope <= 0.0 {
        return None;
    }
    // The slope's standard error, with autocorrelated residuals counted as fewer samples.
    let n = t.len() as f64;
    let resid: Vec<f64> = t.iter().zip(&deseasoned).map(|(a, b)| b - (slope * a + icept)).collect();
    let var = resid.iter().map(|r| r * r).sum::<f64>() / (n - 2.0);
    let r1 = if var > 0.0 { resid.windows(2).map(|w| w[0] * w[1]).sum::<f64>() / (n - 1.0) / var } else { 0.0 };
    let r1 = r1.clamp(0.0, 0.99);
    let n_eff = (n * (1.0 - r1) / (1.0 + r1)).max(3.0);
    let mt = t.iter().sum::<f64>() / n;
    let sxx = t.iter().map(|a| (a - mt) * (a - mt)).sum::<f64>();
    let se = (var / sxx * n / n_eff).sqrt();
    let last = t[t.len() - 1];
    let level = slope * last + icept;
    let peak = profile.iter().copied().fold(0.0, f64::max);
    let room = limit - level - peak;
    let day = 86_400.0;
    let eta = (room / slope * day).max(0.0);
    let hi_slope = slope + 1.96 * se;
    let lo_slope = slope - 1.96 * se;
    // Where the series stands is as uncertain as its scatter about the trend (noise, a step
    // not yet taken, a cycle not captured by hours).
    let spread = 1.96 * var.sqrt();
    Some(Forecast {
        slope_per_day: slope,
        level,
        peak,
        eta_secs: eta,
        soonest_secs: ((room - spread) / hi_slope * day).max(0.0),
        latest_secs: (lo_slope > 0.0).then(|| ((room + spread) / lo_slope * day).max(0.0)),
    })
}

/// Whether a counter that should stay flat (SMART reallocated or pending sectors, media
/// errors) has risen over the samples: the first and last values and the rise.
pub fn counter_rise(samples: &[(f64, f64)]) -> Option<(f64, f64)> {
    let first = samples.iter().find(|(_, v)| v.is_finite())?.1;
    let last = samples.iter().rev().find(|(_, v)| v.is_finite())?.1;
    (last > first).then_some((first, last - first))
}

/// Growth curves with a known answer, from fixed seeds.
pub mod synth {
    /// The shape of a generated curve.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Shape {
        /// Steady growth.
        Linear,
        /// Jumps at a fixed time each day (a nightly backup), flat in between.
        Stepwise,
        /// Steady growth under a daily cycle (logs and caches that grow by day, shrink at night).
        Daily,
    }

    /// One generated series and its truth.
    #[derive(Debug, Clone)]
    pub struct Case {
        /// The shape.
        pub shape: Shape,
        /// The seed it came from.
        pub seed: u64,
        /// Observed samples, `(unix seconds, value)`, every 5 minutes for 14 days.
        pub samples: Vec<(f64, f64)>,
        /// The capacity.
        pub capacity: f64,
        /// Seconds from the last sample until the noiseless curve first reaches the capacity.
        pub truth_secs: f64,
    }

    /// SplitMix64: a tiny, well-known generator, enough for reproducible test data.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            let (a, b) = (self.next().max(1e-12), self.next());
            (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
        }
        fn between(&mut self, lo: f64, hi: f64) -> f64 {
            lo + (hi - lo) * self.next()
        }
    }

    const STEP: f64 = 300.0;
    const DAY: f64 = 86_400.0;

    /// The case for `shape` and `seed`: capacity 1000 (say GB), growth 2-20 a day from a start
    /// at 30-60% full, noise about 0.5% of capacity, a daily swing of 10-40 for `Daily`.
    pub fn case(shape: Shape, seed: u64) -> Case {
        let mut r = Rng(seed.wrapping_mul(0x2545_F491_4F6C_DD1D) ^ shape as u64);
        let capacity = 1000.0;
        let start = r.between(300.0, 600.0);
        let rate = r.between(2.0, 20.0);
        let swing = r.between(10.0, 40.0);
        let noise = r.between(1.0, 5.0);
        let phase = r.between(0.0, DAY);
        let t0 = 1_790_000_000.0 - (1_790_000_000.0f64).rem_euclid(DAY);
        let clean = |t: f64| -> f64 {
            let d = (t - t0) / DAY;
            match shape {
                Shape::Linear => start + rate * d,
                // The day's growth arrives at once, at 02:00.
                Shape::Stepwise => start + rate * ((t - t0 - 2.0 * 3_600.0) / DAY).floor().max(-1.0) + rate,
                Shape::Daily => start + rate * d + swing * (std::f64::consts::TAU * (t - t0 + phase) / DAY).sin(),
            }
        };
        let n = (14.0 * DAY / STEP) as usize;
        let samples: Vec<(f64, f64)> = (0..n).map(|i| t0 + i as f64 * STEP).map(|t| (t, clean(t) + noise * r.normal())).collect();
        let last = samples[n - 1].0;
        // Walk the noiseless curve forward a minute at a time.
        let mut t = last;
        while clean(t) < capacity && t < last + 3_650.0 * DAY {
            t += 60.0;
        }
        Case { shape, seed, samples, capacity, truth_secs: t - last }
    }

    /// The corpus: `per_shape` seeds for each shape, keeping the cases whose truth lies 3 to
    /// 120 days out (a forecast horizon people act on).
    pub fn corpus(per_shape: u64) -> Vec<Case> {
        let mut out = Vec::new();
        for shape in [Shape::Linear, Shape::Stepwise, Shape::Daily] {
            let mut seed = 1;
            let mut kept = 0;
            while kept < per_shape {
                let c = case(shape, seed);
                seed += 1;
                if (3.0 * DAY..=120.0 * DAY).contains(&c.truth_secs) {
                    out.push(c);
                    kept += 1;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::synth::{corpus, Shape};
    use super::*;

    #[test]
    fn forecasts_are_within_20_percent_of_the_truth_on_every_shape() {
        for c in corpus(40) {
            let f = time_to(&c.samples, c.capacity).unwrap_or_else(|| panic!("{:?} seed {}: no forecast", c.shape, c.seed));
            let err = (f.eta_secs - c.truth_secs).abs() / c.truth_secs;
            assert!(err < 0.2, "{:?} seed {}: {:.1} days forecast, {:.1} true ({:.0}%)", c.shape, c.seed, f.eta_secs / 86_400.0, c.truth_secs / 86_400.0, err * 100.0);
            assert!(f.soonest_secs <= f.eta_secs && f.latest_secs.is_none_or(|l| l >= f.eta_secs));
        }
    }

    #[test]
    fn a_flat_or_shrinking_series_has_no_forecast_and_counters_rise() {
        let flat: Vec<(f64, f64)> = (0..500).map(|i| (i as f64 * 300.0, 100.0 + (i % 7) as f64)).collect();
        let shrinking: Vec<(f64, f64)> = (0..500).map(|i| (i as f64 * 300.0, 900.0 - i as f64)).collect();
        assert!(time_to(&shrinking, 1000.0).is_none());
        if let Some(f) = time_to(&flat, 1000.0) {
            assert!(f.latest_secs.is_none(), "a flat series may only have an unbounded forecast: {f:?}");
        }
        assert!(time_to(&flat[..5], 1000.0).is_none(), "too few samples");
        assert_eq!(counter_rise(&[(0.0, 3.0), (1.0, 3.0), (2.0, 5.0)]), Some((3.0, 2.0)));
        assert_eq!(counter_rise(&[(0.0, 3.0), (1.0, 3.0)]), None);
    }

    #[test]
    fn the_generator_is_reproducible_and_knows_its_truth() {
        let a = synth::case(Shape::Daily, 7);
        let b = synth::case(Shape::Daily, 7);
        assert_eq!(a.samples, b.samples);
        assert_eq!(a.truth_secs, b.truth_secs);
        let linear = synth::case(Shape::Linear, 3);
        assert!(linear.samples.len() == 4032 && linear.truth_secs > 0.0);
    }
}
