//! The anomaly watcher: Prometheus series through the streaming detector and the capacity
//! forecast, into labops' own alerts.
//!
//! Each configured query (a kind such as `cpu` or `disk_usage`, and a PromQL expression) is
//! read once over the warm-up window with a range query, then every `interval` from where each
//! series left off, so a tick that was missed is caught up and nothing is scored twice. The
//! warm-up's history teaches the detectors and raises nothing (a restart does not replay a
//! day of alarms). Each
//! series (its labels) has its own [`Detector`]; a score at or above the alarm becomes an
//! `AnomalyDetected` alert carrying the series' labels (so the desk locates it on the inventory
//! and correlates it with everything else), and resolves after a quiet stretch.
//!
//! Each capacity rule (`used` and `size` expressions whose series share labels) is forecast
//! over `forecast_window` every `forecast_every`: a series that will be full within its horizon
//! becomes a `CapacityForecast` alert saying when, with the interval and what to do, and a
//! discovered wishlist item (source `forecast`). Each
//! counter that should stay flat (SMART reallocated or pending sectors, media errors) and rose
//! over the same window becomes a `CounterRising` alert.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use labops_aiops::detect::{Config as DetectorConfig, Detector, Why};
use labops_aiops::forecast::{time_to, Forecast};
use labops_aiops::intake::{fingerprint, Alert, Source, Status};
use serde::Deserialize;

use crate::alerting::Alerting;
use crate::lab::now_ms;

/// One watched query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// What it measures (`cpu`, `memory`, `latency`, `errors`, `network`, `temperature`,
    /// `disk_usage`, or any word): a label on the alert.
    pub kind: String,
    /// The PromQL expression; each series it returns is watched.
    pub expr: String,
}

/// One capacity rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Capacity {
    /// What fills (`filesystem`, `zfs_pool`, `temperature`): a label on the alert.
    pub name: String,
    /// PromQL for what is used (bytes, degrees).
    pub used: String,
    /// PromQL for the limit, with the same labels as `used` (or a number).
    pub size: String,
    /// Alert when the limit is met within this many days.
    pub horizon_days: f64,
}

/// A counter that should stay flat (SMART reallocated or pending sectors, media errors).
#[derive(Debug, Clone, PartialEq)]
pub struct Counter {
    /// What it counts (`smart_reallocated_sectors`): a label on the alert.
    pub name: String,
    /// PromQL; each series it returns is checked over `forecast_window`.
    pub expr: String,
}

/// What the watcher reads and how often.
#[derive(Debug, Clone)]
pub struct Watch {
    /// Prometheus base URL.
    pub prometheus: String,
    /// Series to score.
    pub queries: Vec<Query>,
    /// Capacity rules.
    pub capacity: Vec<Capacity>,
    /// Counters that should stay flat.
    pub counters: Vec<Counter>,
    /// Resolution of the series (the range queries' step).
    pub step: Duration,
    /// How often to read new points.
    pub interval: Duration,
    /// How far back the first read goes.
    pub warmup: Duration,
    /// How far back a forecast looks, and how often forecasts run.
    pub forecast_window: Duration,
    /// See `forecast_window`.
    pub forecast_every: Duration,
    /// The detector's settings (one for every series).
    pub detector: DetectorConfig,
    /// At most this many series are watched (the rest are reported and skipped).
    pub max_series: usize,
}

#[derive(Deserialize)]
struct Response {
    status: String,
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    error: Option<String>,
}
#[derive(Deserialize)]
struct Data {
    result: Vec<Matrix>,
}
#[derive(Deserialize)]
struct Matrix {
    metric: BTreeMap<String, String>,
    values: Vec<(f64, String)>,
}

/// One series' state.
struct Series {
    detector: Detector,
    /// Last sample time read (unix seconds).
    last: f64,
    /// The time of the last alarm (unix ms) while it fires.
    firing_since: Option<i64>,
    quiet_points: usize,
}

/// What one read found.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Pass {
    /// Series read.
    pub series: usize,
    /// Points scored.
    pub points: usize,
    /// Alerts produced (firing or resolved).
    pub alerts: Vec<Alert>,
    /// Problems (a query Prometheus refused, too many series).
    pub problems: Vec<String>,
}

/// The watcher's state across reads.
pub struct Watcher {
    watch: Watch,
    http: reqwest::Client,
    series: HashMap<(usize, String), Series>,
    last_forecast: Option<std::time::Instant>,
    forecasting: HashMap<String, bool>,
    /// Points up to this time (the first read's) are history: they teach, they do not alert.
    history_until: Option<f64>,
}

fn key(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// Points of quiet after which an anomaly resolves.
const QUIET: usize = 60;

impl Watcher {
    /// A watcher that has read nothing yet.
    pub fn new(watch: Watch) -> Self {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap_or_default();
        Self { watch, http, series: HashMap::new(), last_forecast: None, forecasting: HashMap::new(), history_until: None }
    }

    /// Series being watched.
    pub fn watched(&self) -> usize {
        self.series.len()
    }

    /// Bytes of detector state over every watched series.
    pub fn memory_bytes(&self) -> usize {
        self.series.values().map(|s| s.detector.memory_bytes() + std::mem::size_of::<Series>()).sum()
    }

    async fn range(&self, expr: &str, start: f64, end: f64, step: f64) -> Result<Vec<Matrix>, String> {
        let url = format!("{}/api/v1/query_range", self.watch.prometheus.trim_end_matches('/'));
        let r = self
            .http
            .post(&url)
            .form(&[("query", expr.to_string()), ("start", format!("{start:.3}")), ("end", format!("{end:.3}")), ("step", format!("{step}"))])
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = r.status();
        let body: Response = r.json().await.map_err(|e| format!("{url}: HTTP {status}, not Prometheus' JSON: {e}"))?;
        if body.status != "success" {
            return Err(format!("Prometheus refused {expr:?}: {}", body.error.unwrap_or_default()));
        }
        Ok(body.data.map(|d| d.result).unwrap_or_default())
    }

    /// Reads every query from where it left off up to `now` (unix seconds) and scores the new
    /// points.
    pub async fn read(&mut self, now: f64) -> Pass {
        let mut pass = Pass::default();
        let step = self.watch.step.as_secs_f64().max(0.001);
        let history = *self.history_until.get_or_insert(now);
        for (qi, q) in self.watch.queries.clone().iter().enumerate() {
            let known: Vec<f64> = self.series.iter().filter(|((i, _), _)| *i == qi).map(|(_, s)| s.last).collect();
            let start = if known.is_empty() { now - self.watch.warmup.as_secs_f64() } else { known.iter().copied().fold(f64::INFINITY, f64::min) + step };
            // Prometheus answers at most 11,000 points per series per query.
            let start = start.max(now - step * 10_000.0);
            if start > now {
                continue;
            }
            let matrix = match self.range(&q.expr, start, now, step).await {
                Ok(m) => m,
                Err(e) => {
                    pass.problems.push(e);
                    continue;
                }
            };
            for m in matrix {
                let k = (qi, key(&m.metric));
                if !self.series.contains_key(&k) {
                    if self.series.len() >= self.watch.max_series {
                        pass.problems.push(format!("more than {} series; {} is not watched (raise [anomaly] max_series)", self.watch.max_series, k.1));
                        continue;
                    }
                    self.series.insert(k.clone(), Series { detector: Detector::new(self.watch.detector), last: f64::NEG_INFINITY, firing_since: None, quiet_points: 0 });
                }
                let Some(s) = self.series.get_mut(&k) else { continue };
                pass.series += 1;
                let alarm = self.watch.detector.alarm;
                for (t, v) in &m.values {
                    if *t <= s.last {
                        continue;
                    }
                    s.last = *t;
                    let Ok(v) = v.parse::<f64>() else { continue };
                    let score = s.detector.score(v);
                    pass.points += 1;
                    let at = (*t * 1000.0) as i64;
                    if *t <= history {
                        continue;
                    }
                    if score >= alarm {
                        s.quiet_points = 0;
                        if s.firing_since.is_none() {
                            s.firing_since = Some(at);
                            let why = describe(s.detector.why(), self.watch.step);
                            pass.alerts.push(anomaly_alert(&q.kind, &m.metric, v, score, &why, at, Status::Firing));
                        }
                    } else if s.firing_since.is_some() {
                        s.quiet_points += 1;
                        if s.quiet_points >= QUIET {
                            s.firing_since = None;
                            pass.alerts.push(anomaly_alert(&q.kind, &m.metric, v, score, "is back to its usual behaviour", at, Status::Resolved));
                        }
                    }
                }
            }
        }
        pass
    }

    /// Forecasts every capacity rule at `now` (unix seconds).
    pub async fn forecast(&mut self, now: f64) -> Pass {
        let mut pass = Pass::default();
        let window = self.watch.forecast_window.as_secs_f64();
        // Enough points for a daily cycle, few enough for one query.
        let step = (window / 2_000.0).max(self.watch.step.as_secs_f64()).max(1.0);
        for c in self.watch.capacity.clone() {
            let used = match self.range(&c.used, now - window, now, step).await {
                Ok(m) => m,
                Err(e) => {
                    pass.problems.push(e);
                    continue;
                }
            };
            let fixed: Option<f64> = c.size.trim().parse().ok();
            let sizes = match fixed {
                Some(_) => Vec::new(),
                None => match self.range(&c.size, now - step, now, step).await {
                    Ok(m) => m,
                    Err(e) => {
                        pass.problems.push(e);
                        continue;
                    }
                },
            };
            let size_of = |labels: &BTreeMap<String, String>| -> Option<f64> {
                if let Some(f) = fixed {
                    return Some(f);
                }
                let strip = |l: &BTreeMap<String, String>| l.iter().filter(|(k, _)| k.as_str() != "__name__").map(|(k, v)| (k.clone(), v.clone())).collect::<BTreeMap<_, _>>();
                let want = strip(labels);
                sizes.iter().find(|m| strip(&m.metric) == want).and_then(|m| m.values.last()).and_then(|(_, v)| v.parse().ok())
            };
            for m in &used {
                pass.series += 1;
                let Some(limit) = size_of(&m.metric) else {
                    pass.problems.push(format!("{}: no size for {} (the `size` query must return the same labels)", c.name, key(&m.metric)));
                    continue;
                };
                let samples: Vec<(f64, f64)> = m.values.iter().filter_map(|(t, v)| Some((*t, v.parse::<f64>().ok()?))).collect();
                pass.points += samples.len();
                let id = format!("{}|{}", c.name, key(&m.metric));
                let due = time_to(&samples, limit).filter(|f| f.eta_secs <= c.horizon_days * 86_400.0);
                let was = self.forecasting.get(&id).copied().unwrap_or(false);
                match due {
                    Some(f) => {
                        self.forecasting.insert(id, true);
                        pass.alerts.push(capacity_alert(&c, &m.metric, limit, Some(&f), (now * 1000.0) as i64));
                    }
                    None if was => {
                        self.forecasting.insert(id, false);
                        pass.alerts.push(capacity_alert(&c, &m.metric, limit, None, (now * 1000.0) as i64));
                    }
                    None => {}
                }
            }
        }
        pass
    }

    /// Checks every counter that should stay flat over the forecast window at `now`.
    pub async fn counters(&mut self, now: f64) -> Pass {
        let mut pass = Pass::default();
        let window = self.watch.forecast_window.as_secs_f64();
        let step = (window / 2_000.0).max(self.watch.step.as_secs_f64()).max(1.0);
        for c in self.watch.counters.clone() {
            let series = match self.range(&c.expr, now - window, now, step).await {
                Ok(m) => m,
                Err(e) => {
                    pass.problems.push(e);
                    continue;
                }
            };
            for m in &series {
                pass.series += 1;
                let samples: Vec<(f64, f64)> = m.values.iter().filter_map(|(t, v)| Some((*t, v.parse::<f64>().ok()?))).collect();
                pass.points += samples.len();
                let id = format!("counter|{}|{}", c.name, key(&m.metric));
                let rise = labops_aiops::forecast::counter_rise(&samples);
                let was = self.forecasting.get(&id).copied().unwrap_or(false);
                if rise.is_some() || was {
                    self.forecasting.insert(id, rise.is_some());
                    pass.alerts.push(counter_alert(&c, &m.metric, rise, window, (now * 1000.0) as i64));
                }
            }
        }
        pass
    }

    /// Whether a forecast is due.
    fn forecast_due(&self) -> bool {
        !(self.watch.capacity.is_empty() && self.watch.counters.is_empty()) && self.last_forecast.is_none_or(|t| t.elapsed() >= self.watch.forecast_every)
    }
}

fn series_labels(kind_key: &str, kind: &str, metric: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = metric.iter().filter(|(k, _)| k.as_str() != "__name__" && k.as_str() != "alertname").map(|(k, v)| (k.clone(), v.clone())).collect();
    if let Some(n) = metric.get("__name__") {
        labels.insert("metric".into(), n.clone());
    }
    labels.insert(kind_key.into(), kind.into());
    labels.insert("source".into(), "labops".into());
    labels
}

/// What made a series' point unusual, in words.
pub fn describe(why: Why, step: Duration) -> String {
    match why {
        Why::NewValue => "is a value it has never shown".into(),
        Why::Shape => "is unlike its recent behaviour".into(),
        Why::Phase(points) => format!("is unusual for this point of its cycle, which repeats every {}", days(f64::from(points) * step.as_secs_f64())),
    }
}

/// The alert an anomaly becomes; `why` says what made it unusual ([`describe`]).
pub fn anomaly_alert(kind: &str, metric: &BTreeMap<String, String>, value: f64, score: f64, why: &str, at_ms: i64, status: Status) -> Alert {
    let mut labels = series_labels("kind", kind, metric);
    labels.insert("alertname".into(), "AnomalyDetected".into());
    labels.insert("severity".into(), "warning".into());
    let what = metric.get("__name__").cloned().unwrap_or_else(|| kind.to_string());
    let mut annotations = BTreeMap::new();
    annotations.insert(
        "summary".to_string(),
        format!("unusual {kind}: {what} at {value} {why} (anomaly score {score:.4}) [{}]", key(metric)),
    );
    Alert {
        source: Source::Labops,
        fingerprint: fingerprint(&labels),
        status,
        labels,
        annotations,
        starts_at_ms: Some(at_ms),
        ends_at_ms: (status == Status::Resolved).then_some(at_ms),
        url: None,
    }
}

fn days(secs: f64) -> String {
    let d = secs / 86_400.0;
    if secs < 2.0 * 3_600.0 {
        format!("{:.0} minutes", secs / 60.0)
    } else if d < 2.0 {
        format!("{:.0} hours", secs / 3_600.0)
    } else {
        format!("{d:.0} days")
    }
}

/// The alert a capacity forecast becomes (`None`: it no longer fills within the horizon).
pub fn capacity_alert(c: &Capacity, metric: &BTreeMap<String, String>, limit: f64, f: Option<&Forecast>, at_ms: i64) -> Alert {
    let mut labels = series_labels("capacity", &c.name, metric);
    labels.insert("alertname".into(), "CapacityForecast".into());
    let soon = f.is_some_and(|f| f.eta_secs < 2.0 * 86_400.0);
    labels.insert("severity".into(), if soon { "critical" } else { "warning" }.into());
    let mut annotations = BTreeMap::new();
    let thing = metric.get("mountpoint").or(metric.get("pool")).or(metric.get("device")).or(metric.get("sensor")).or(metric.get("instance")).cloned().unwrap_or_else(|| key(metric));
    if let Some(f) = f {
        let latest = f.latest_secs.map(days).unwrap_or_else(|| "no upper bound".into());
        annotations.insert(
            "summary".to_string(),
            format!(
                "{} {thing} reaches {limit} in about {} (95%: {} to {}), growing {:.3} a day from {:.3}",
                c.name,
                days(f.eta_secs),
                days(f.soonest_secs),
                latest,
                f.slope_per_day,
                f.level
            ),
        );
        let action = match c.name.as_str() {
            "filesystem" | "zfs_pool" | "pool" | "disk" => "add a disk or free space (find what grows), before the horizon",
            "temperature" => "check cooling (fans, dust, airflow) and the load on the machine",
            _ => "act before the horizon: more capacity or less growth",
        };
        annotations.insert("proposed_action".to_string(), action.to_string());
    }
    Alert {
        source: Source::Labops,
        fingerprint: fingerprint(&labels),
        status: if f.is_some() { Status::Firing } else { Status::Resolved },
        labels,
        annotations,
        starts_at_ms: Some(at_ms),
        ends_at_ms: f.is_none().then_some(at_ms),
        url: None,
    }
}

/// The alert a counter that rose becomes (`None`: it has stayed flat over the window since).
pub fn counter_alert(c: &Counter, metric: &BTreeMap<String, String>, rise: Option<(f64, f64)>, window_secs: f64, at_ms: i64) -> Alert {
    let mut labels = series_labels("counter", &c.name, metric);
    labels.insert("alertname".into(), "CounterRising".into());
    labels.insert("severity".into(), "warning".into());
    let mut annotations = BTreeMap::new();
    let thing = metric.get("device").or(metric.get("instance")).cloned().unwrap_or_else(|| key(metric));
    if let Some((from, by)) = rise {
        annotations.insert(
            "summary".to_string(),
            format!("{} on {thing} rose by {by} (from {from}) in the last {}: a disk that starts counting errors often fails soon", c.name, days(window_secs)),
        );
        annotations.insert("proposed_action".to_string(), "check the disk's SMART report (smartctl -a), make sure its data has a current backup, plan to replace it".to_string());
    }
    Alert {
        source: Source::Labops,
        fingerprint: fingerprint(&labels),
        status: if rise.is_some() { Status::Firing } else { Status::Resolved },
        labels,
        annotations,
        starts_at_ms: Some(at_ms),
        ends_at_ms: rise.is_none().then_some(at_ms),
        url: None,
    }
}

/// A capacity forecast becomes a discovered wishlist item (once while it is open), so making
/// room is ranked with everything else the owner might do.
async fn discover(store: &labops_store::Store, a: &Alert) -> Result<(), crate::wishlist::WishError> {
    let l = |k: &str| a.labels.get(k).cloned().unwrap_or_default();
    let thing = ["mountpoint", "pool", "device", "sensor"].iter().find_map(|k| a.labels.get(*k).cloned()).unwrap_or_else(|| l("metric"));
    let title = format!("Make room: {} {thing} on {}", l("capacity"), l("instance"));
    if store.wishes().await?.iter().any(|i| i.status.is_open() && i.title == title) {
        return Ok(());
    }
    let new = crate::wishlist::NewItem {
        title,
        description: a.annotations.get("summary").cloned().unwrap_or_default(),
        source: Some("forecast".into()),
        category: "storage".into(),
        // No factor values: labops knows when, not what making room costs; the owner sets them
        // or `labops wishlist estimate` asks the AI engine.
        ..Default::default()
    };
    crate::wishlist::Wishlist::new(store.clone(), None).add(new, "labops").await?;
    Ok(())
}

/// Reads and forecasts forever; alerts go through `alerting`.
pub async fn run(alerting: Alerting, watch: Watch, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(watch.interval.max(Duration::from_millis(100)));
    let mut watcher = Watcher::new(watch);
    let mut reported: HashMap<String, i64> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = now_ms() as f64 / 1000.0;
        let mut pass = watcher.read(now).await;
        if watcher.forecast_due() {
            watcher.last_forecast = Some(std::time::Instant::now());
            for f in [watcher.forecast(now).await, watcher.counters(now).await] {
                pass.alerts.extend(f.alerts);
                pass.problems.extend(f.problems);
            }
        }
        tracing::debug!(series = pass.series, points = pass.points, alerts = pass.alerts.len(), watched = watcher.watched(), "anomaly watcher read");
        for p in &pass.problems {
            // The same problem is logged once an hour, not every tick.
            let last = reported.get(p).copied().unwrap_or(0);
            if now_ms() - last > 3_600_000 {
                tracing::warn!("anomaly watcher: {p}");
                reported.insert(p.clone(), now_ms());
            }
        }
        for a in pass.alerts.iter().filter(|a| a.status == Status::Firing && a.labels.get("alertname").is_some_and(|n| n == "CapacityForecast")) {
            if let Err(e) = discover(alerting.store(), a).await {
                tracing::warn!("anomaly watcher: could not add the forecast to the wishlist: {e}");
            }
        }
        if !pass.alerts.is_empty() {
            if let Err(e) = alerting.ingest(pass.alerts).await {
                tracing::warn!("anomaly watcher: could not record its alerts: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alerts_carry_the_series_labels_and_say_what_to_do() {
        let metric = BTreeMap::from([("__name__".to_string(), "node_filesystem_avail_bytes".to_string()), ("instance".to_string(), "nas:9100".to_string()), ("mountpoint".to_string(), "/tank".to_string())]);
        let a = anomaly_alert("disk_usage", &metric, 3.5, 0.9991, &describe(Why::Phase(1440), Duration::from_secs(60)), 1_000, Status::Firing);
        assert_eq!(a.labels["alertname"], "AnomalyDetected");
        assert!(a.annotations["summary"].contains("at 3.5 is unusual for this point of its cycle, which repeats every 24 hours"), "{:?}", a.annotations);
        assert_eq!(a.labels["instance"], "nas:9100");
        assert_eq!(a.labels["metric"], "node_filesystem_avail_bytes");
        assert!(!a.labels.contains_key("__name__"));
        let c = Capacity { name: "zfs_pool".into(), used: "u".into(), size: "s".into(), horizon_days: 14.0 };
        let f = Forecast { slope_per_day: 10.0, level: 800.0, peak: 0.0, eta_secs: 21.0 * 86_400.0, soonest_secs: 18.0 * 86_400.0, latest_secs: None };
        let a = capacity_alert(&c, &metric, 1000.0, Some(&f), 1_000);
        let s = &a.annotations["summary"];
        assert!(s.contains("zfs_pool /tank reaches 1000 in about 21 days (95%: 18 days to no upper bound)"), "{s}");
        assert!(a.annotations["proposed_action"].contains("add a disk"));
        assert_eq!(a.labels["severity"], "warning");
        let smart = Counter { name: "smart_reallocated_sectors".into(), expr: "x".into() };
        let disk = BTreeMap::from([("device".to_string(), "/dev/sda".to_string()), ("instance".to_string(), "nas:9633".to_string())]);
        let a2 = counter_alert(&smart, &disk, Some((0.0, 8.0)), 7.0 * 86_400.0, 1_000);
        assert!(a2.annotations["summary"].contains("smart_reallocated_sectors on /dev/sda rose by 8 (from 0) in the last 7 days"), "{:?}", a2.annotations);
        assert_eq!(counter_alert(&smart, &disk, None, 7.0 * 86_400.0, 2_000).fingerprint, a2.fingerprint);
        let resolved = capacity_alert(&c, &metric, 1000.0, None, 2_000);
        assert_eq!(resolved.fingerprint, a.fingerprint, "the same series resolves the same alert");
        assert_eq!(resolved.status, Status::Resolved);
    }
}
