//! The wishlist: what the owner might do next, ranked by bang for the buck, and a model that
//! learns from how past items actually went.
//!
//! # The ROI formula (0 to 10)
//!
//! Every factor has a value, a unit, where it came from (the owner, an AI estimate, a
//! measurement, or the default for an unknown) and a reason. From them:
//!
//! ```text
//! time      T  = 10 (1 - e^(-hours_saved_per_month / 5))         0-10, 5 h/month gives 6.3
//! benefit   B  = 0.5 T + 0.3 learning + 0.2 security             0-10
//! cost      Pc = 10 (1 - e^(-(cost_once + 12 cost_monthly) / 500)) first year's cost, 500 gives 6.3
//! effort    Pe = 10 (1 - e^(-effort_hours / 20))                 the owner's hours, calibrated
//! burden    D  = 0.35 complexity + 0.25 risk + 0.2 Pc + 0.2 Pe    0-10
//! score        = B (1 - D / 20)                                  a heavy burden halves the benefit
//! ```
//!
//! `effort_hours` is multiplied by the category's calibration before it enters the formula (see
//! below), so an owner whose networking projects always take twice as long sees networking
//! items fall. The breakdown ([`Breakdown`]) shows every term.
//!
//! # Ranking
//!
//! Open items sort by score; an item waits behind every open item it depends on (its score
//! cannot carry it above what it needs), and an item with an unmet dependency is never the next
//! one to do.
//!
//! # Learning
//!
//! When an item is done, the actual effort and cost are recorded against the estimates. Per
//! category and factor the model keeps the log ratios `ln(actual / estimate)` and uses their
//! mean shrunk towards 0 (no correction) by a prior worth [`PRIOR_WEIGHT`] observations:
//! `multiplier = exp(sum / (n + PRIOR_WEIGHT))`. Few outcomes move it a little; a steady bias
//! moves it all the way. The prediction error of each outcome (against the estimate as
//! calibrated when it was made) is kept, so the error over time can be reported.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where an item came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The owner asked for it.
    Owner,
    /// Discovered from an incident.
    Incident,
    /// Discovered from an anomaly.
    Anomaly,
    /// Discovered from a capacity forecast.
    Forecast,
    /// A need labops predicts.
    Predicted,
    /// A community trend the owner entered.
    Community,
}

/// Where an item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Noted.
    Idea,
    /// A change is proposed for it.
    Proposed,
    /// Its change is approved.
    Approved,
    /// Its change is running.
    InProgress,
    /// Done.
    Done,
    /// Not to be done.
    Dropped,
}

impl Status {
    /// Open: still to be done.
    pub fn is_open(self) -> bool {
        !matches!(self, Self::Done | Self::Dropped)
    }
}

/// Where a factor's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provenance {
    /// The owner said so.
    Owner,
    /// An AI estimate (marked as such everywhere it shows).
    Estimate,
    /// Measured (after the fact).
    Measured,
    /// Nobody said: the formula's neutral default, to be estimated.
    Default,
}

/// One factor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Factor {
    /// Its value, in `unit`.
    pub value: f64,
    /// Where it came from.
    pub provenance: Provenance,
    /// Why this value.
    #[serde(default)]
    pub reason: String,
}

/// The factors, by name: `time_saved`, `cost_once`, `cost_monthly`, `learning`, `security`,
/// `complexity`, `risk`, `effort`.
pub const FACTORS: &[(&str, &str, f64)] = &[
    ("time_saved", "hours/month", 0.0),
    ("cost_once", "currency", 0.0),
    ("cost_monthly", "currency/month (power included)", 0.0),
    ("learning", "0-10", 5.0),
    ("security", "0-10", 0.0),
    ("complexity", "0-10", 5.0),
    ("risk", "0-10", 5.0),
    ("effort", "hours of the owner's work", 4.0),
];

/// The upper bound of a factor's value.
fn bound(name: &str) -> f64 {
    match name {
        "learning" | "security" | "complexity" | "risk" => 10.0,
        "time_saved" => 744.0,
        _ => 1e9,
    }
}

/// Checks a factor's name and value.
pub fn check_factor(name: &str, value: f64) -> Result<(), String> {
    let Some((_, unit, _)) = FACTORS.iter().find(|(n, _, _)| *n == name) else {
        let known: Vec<&str> = FACTORS.iter().map(|(n, _, _)| *n).collect();
        return Err(format!("unknown factor {name:?}; the factors are {}", known.join(", ")));
    };
    if !value.is_finite() || value < 0.0 || value > bound(name) {
        return Err(format!("{name} = {value} is out of range: 0 to {} ({unit})", bound(name)));
    }
    Ok(())
}

/// One wishlist item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item {
    /// Its number.
    pub id: i64,
    /// One line.
    pub title: String,
    /// What and why.
    #[serde(default)]
    pub description: String,
    /// Where it came from.
    pub source: Source,
    /// Its category (`networking`, `storage`, `ai`, `documents`...): calibration is per category.
    pub category: String,
    /// Items it needs first.
    #[serde(default)]
    pub depends_on: Vec<i64>,
    /// Hardware it needs, if any.
    #[serde(default)]
    pub hardware: Option<String>,
    /// The factors given so far.
    #[serde(default)]
    pub factors: BTreeMap<String, Factor>,
    /// Where it stands.
    pub status: Status,
    /// Changes made for it.
    #[serde(default)]
    pub changes: Vec<String>,
    /// When it was added (unix ms).
    pub created_ms: i64,
}

impl Item {
    /// A factor's value, or its default.
    pub fn value(&self, name: &str) -> f64 {
        self.factors.get(name).map(|f| f.value).unwrap_or_else(|| FACTORS.iter().find(|(n, _, _)| *n == name).map(|x| x.2).unwrap_or(0.0))
    }

    /// The factors nobody has given (they count at their defaults until estimated).
    pub fn missing(&self) -> Vec<&'static str> {
        FACTORS.iter().map(|(n, _, _)| *n).filter(|n| !self.factors.contains_key(*n)).collect()
    }
}

/// Every term of an item's score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Breakdown {
    /// `T`.
    pub time: f64,
    /// `B`.
    pub benefit: f64,
    /// `Pc`.
    pub cost: f64,
    /// The effort after calibration, hours.
    pub effort_hours: f64,
    /// The category's effort multiplier applied.
    pub effort_multiplier: f64,
    /// `Pe`.
    pub effort: f64,
    /// `D`.
    pub burden: f64,
    /// The score, 0-10.
    pub score: f64,
}

fn sat(x: f64, scale: f64) -> f64 {
    10.0 * (1.0 - (-x.max(0.0) / scale).exp())
}

/// The score of `item` with the category multipliers of `cal`.
pub fn score(item: &Item, cal: &Calibration) -> Breakdown {
    let v = |n: &str| item.value(n);
    let time = sat(v("time_saved"), 5.0);
    let benefit = 0.5 * time + 0.3 * v("learning") + 0.2 * v("security");
    let cost = sat(v("cost_once") + 12.0 * v("cost_monthly"), 500.0);
    let effort_multiplier = cal.multiplier(&item.category, "effort");
    let effort_hours = v("effort") * effort_multiplier;
    let effort = sat(effort_hours, 20.0);
    let burden = 0.35 * v("complexity") + 0.25 * v("risk") + 0.2 * cost + 0.2 * effort;
    let score = (benefit * (1.0 - burden / 20.0)).clamp(0.0, 10.0);
    Breakdown { time, benefit, cost, effort_hours, effort_multiplier, effort, burden, score }
}

/// An item's place in the ranking.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ranked {
    /// The item.
    pub id: i64,
    /// Its rank, from 1.
    pub rank: usize,
    /// Its score.
    pub breakdown: Breakdown,
    /// Open items it waits for.
    pub blocked_by: Vec<i64>,
}

/// Open items in order: by score, each after every open item it depends on.
pub fn rank(items: &[Item], cal: &Calibration) -> Vec<Ranked> {
    let open: Vec<&Item> = items.iter().filter(|i| i.status.is_open()).collect();
    let open_ids: std::collections::BTreeSet<i64> = open.iter().map(|i| i.id).collect();
    let mut scored: Vec<(&Item, Breakdown)> = open.iter().map(|i| (*i, score(i, cal))).collect();
    scored.sort_by(|a, b| b.1.score.total_cmp(&a.1.score).then(a.0.id.cmp(&b.0.id)));
    let mut out: Vec<Ranked> = Vec::new();
    let mut placed = std::collections::BTreeSet::new();
    // Repeatedly take the best item whose open dependencies are already placed.
    while out.len() < scored.len() {
        let next = scored
            .iter()
            .find(|(i, _)| !placed.contains(&i.id) && i.depends_on.iter().all(|d| !open_ids.contains(d) || placed.contains(d)))
            // A dependency cycle: take the best remaining so every item is listed.
            .or_else(|| scored.iter().find(|(i, _)| !placed.contains(&i.id)));
        let Some((item, b)) = next else { break };
        placed.insert(item.id);
        out.push(Ranked {
            id: item.id,
            rank: out.len() + 1,
            breakdown: b.clone(),
            blocked_by: item.depends_on.iter().copied().filter(|d| open_ids.contains(d)).collect(),
        });
    }
    out
}

/// The best open item whose dependencies are all done, not yet proposed.
pub fn next(items: &[Item], cal: &Calibration) -> Option<i64> {
    let by_id: BTreeMap<i64, &Item> = items.iter().map(|i| (i.id, i)).collect();
    rank(items, cal).into_iter().find(|r| {
        let item = by_id[&r.id];
        item.status == Status::Idea && item.depends_on.iter().all(|d| by_id.get(d).is_some_and(|x| x.status == Status::Done))
    })
    .map(|r| r.id)
}

/// How much prior weight the "no correction" belief has, in observations.
pub const PRIOR_WEIGHT: f64 = 2.0;

/// One recorded outcome of one factor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// The item.
    pub item: i64,
    /// Its category.
    pub category: String,
    /// The factor (`effort`, `cost_once`...).
    pub factor: String,
    /// The raw estimate.
    pub estimated: f64,
    /// The estimate as calibrated when the outcome was recorded (what the model predicted).
    pub predicted: f64,
    /// What it was.
    pub actual: f64,
    /// When (unix ms).
    pub at_ms: i64,
}

impl Outcome {
    /// The prediction's error: `|ln(actual / predicted)|` (0.69 is off by a factor of 2).
    pub fn error(&self) -> f64 {
        (self.actual.max(1e-9) / self.predicted.max(1e-9)).ln().abs()
    }
}

/// Per category and factor: the multiplier learned from outcomes.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Calibration {
    /// `(category, factor)` -> (sum of log ratios, count).
    cells: BTreeMap<(String, String), (f64, f64)>,
}

impl Calibration {
    /// Learned from `outcomes` (in any order).
    pub fn from_outcomes(outcomes: &[Outcome]) -> Self {
        let mut c = Self::default();
        for o in outcomes {
            c.learn(o);
        }
        c
    }

    /// Adds one outcome.
    pub fn learn(&mut self, o: &Outcome) {
        if !(o.estimated > 0.0 && o.actual > 0.0) {
            return;
        }
        let cell = self.cells.entry((o.category.clone(), o.factor.clone())).or_insert((0.0, 0.0));
        cell.0 += (o.actual / o.estimated).ln();
        cell.1 += 1.0;
    }

    /// What a raw estimate of `factor` in `category` is multiplied by.
    pub fn multiplier(&self, category: &str, factor: &str) -> f64 {
        match self.cells.get(&(category.to_string(), factor.to_string())) {
            Some((sum, n)) => (sum / (n + PRIOR_WEIGHT)).exp(),
            None => 1.0,
        }
    }

    /// Every learned multiplier: `(category, factor, multiplier, outcomes)`.
    pub fn table(&self) -> Vec<(String, String, f64, usize)> {
        self.cells.iter().map(|((c, f), (s, n))| (c.clone(), f.clone(), (s / (n + PRIOR_WEIGHT)).exp(), *n as usize)).collect()
    }
}

/// The mean prediction error of consecutive groups of `per` outcomes (in time order): how the
/// model's error moves as it learns.
pub fn error_over_time(outcomes: &[Outcome], per: usize) -> Vec<f64> {
    let mut sorted: Vec<&Outcome> = outcomes.iter().collect();
    sorted.sort_by_key(|o| o.at_ms);
    sorted.chunks(per.max(1)).map(|c| c.iter().map(|o| o.error()).sum::<f64>() / c.len() as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: i64, category: &str, factors: &[(&str, f64)]) -> Item {
        Item {
            id,
            title: format!("item {id}"),
            description: String::new(),
            source: Source::Owner,
            category: category.into(),
            depends_on: vec![],
            hardware: None,
            factors: factors.iter().map(|(n, v)| (n.to_string(), Factor { value: *v, provenance: Provenance::Owner, reason: String::new() })).collect(),
            status: Status::Idea,
            changes: vec![],
            created_ms: 0,
        }
    }

    #[test]
    fn the_formula_by_hand() {
        let i = item(1, "networking", &[("time_saved", 10.0), ("learning", 8.0), ("security", 9.0), ("complexity", 6.0), ("risk", 3.0), ("effort", 2.0)]);
        let b = score(&i, &Calibration::default());
        let t = 10.0 * (1.0 - (-2.0f64).exp());
        assert!((b.time - t).abs() < 1e-9);
        let benefit = 0.5 * t + 0.3 * 8.0 + 0.2 * 9.0;
        let effort = 10.0 * (1.0 - (-0.1f64).exp());
        let burden = 0.35 * 6.0 + 0.25 * 3.0 + 0.2 * 0.0 + 0.2 * effort;
        assert!((b.score - benefit * (1.0 - burden / 20.0)).abs() < 1e-9, "{b:?}");
        // Defaults count for what nobody gave.
        assert_eq!(item(2, "x", &[]).missing().len(), FACTORS.len());
        assert_eq!(item(2, "x", &[]).value("complexity"), 5.0);
        assert!(check_factor("learning", 11.0).unwrap_err().contains("0 to 10"));
        assert!(check_factor("fun", 1.0).unwrap_err().contains("unknown factor"));
    }

    #[test]
    fn ranking_waits_for_dependencies_and_next_needs_them_done() {
        let mut a = item(1, "x", &[("time_saved", 1.0)]);
        let mut b = item(2, "x", &[("time_saved", 40.0), ("learning", 9.0)]);
        b.depends_on = vec![1];
        let c = item(3, "x", &[("time_saved", 5.0)]);
        let cal = Calibration::default();
        let r = rank(&[a.clone(), b.clone(), c.clone()], &cal);
        let order: Vec<i64> = r.iter().map(|x| x.id).collect();
        assert_eq!(order, vec![3, 1, 2], "b scores best but waits behind a, which c outscores");
        assert_eq!(r[2].blocked_by, vec![1]);
        assert_eq!(next(&[a.clone(), b.clone(), c.clone()], &cal), Some(3));
        a.status = Status::Done;
        assert_eq!(next(&[a, b, c], &cal), Some(2), "once a is done, b is next");
    }

    #[test]
    fn the_update_rule_shrinks_towards_no_correction() {
        let o = |ratio: f64, at: i64| Outcome { item: at, category: "net".into(), factor: "effort".into(), estimated: 10.0, predicted: 10.0, actual: 10.0 * ratio, at_ms: at };
        let mut c = Calibration::default();
        assert_eq!(c.multiplier("net", "effort"), 1.0);
        c.learn(&o(2.0, 1));
        // One outcome at 2x: exp(ln 2 / 3) = 1.26.
        assert!((c.multiplier("net", "effort") - 2f64.powf(1.0 / 3.0)).abs() < 1e-9);
        for k in 2..=40 {
            c.learn(&o(2.0, k));
        }
        assert!((c.multiplier("net", "effort") - 2f64.powf(40.0 / 42.0)).abs() < 1e-9);
        assert_eq!(c.multiplier("storage", "effort"), 1.0, "other categories untouched");
    }

    /// A generated history: networking always takes twice the estimate, storage as estimated;
    /// releases of 5 items each, actuals within 2% of the bias. The networking error falls release
    /// after release.
    #[test]
    fn recalibration_makes_the_error_fall() {
        let mut cal = Calibration::default();
        let mut outcomes = Vec::new();
        let mut rng = 7u64;
        let mut noise = || {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            1.0 + ((rng >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.04
        };
        for release in 0..6 {
            for k in 0..5 {
                for (cat, bias) in [("networking", 2.0), ("storage", 1.0)] {
                    let estimated = 3.0 + k as f64;
                    let predicted = estimated * cal.multiplier(cat, "effort");
                    let o = Outcome { item: 0, category: cat.into(), factor: "effort".into(), estimated, predicted, actual: estimated * bias * noise(), at_ms: release * 100 + k };
                    cal.learn(&o);
                    outcomes.push(o);
                }
            }
        }
        let net: Vec<Outcome> = outcomes.iter().filter(|o| o.category == "networking").cloned().collect();
        let errors = error_over_time(&net, 5);
        assert_eq!(errors.len(), 6);
        for w in errors.windows(2) {
            assert!(w[1] < w[0], "the error falls release after release: {errors:?}");
        }
        assert!(errors[0] > 0.3 && errors[5] < 0.1, "{errors:?}");
        assert!((cal.multiplier("networking", "effort") - 2.0).abs() < 0.25);
    }
}
