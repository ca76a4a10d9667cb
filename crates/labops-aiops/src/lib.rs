//! labops AIOps (issue #6): alert intake and the incident desk.
//!
//! - [`intake`]: the webhook bodies labops accepts (Alertmanager's webhook v4, Grafana unified
//!   alerting's webhook, Alertmanager's own push API `POST /api/v2/alerts` as Prometheus sends
//!   it, Uptime Kuma's webhook, and a documented generic JSON form), parsed into one normalised
//!   [`intake::Alert`] with Alertmanager's fingerprint, or refused with the path of what is wrong.
//! - [`desk`]: dedup by fingerprint into incidents, topology-aware correlation over the
//!   inventory's links (symptoms fold into their failed node's incident), root causes ranked
//!   with evidence, silences and maintenance windows, flapping.
//! - [`detect`]: the streaming anomaly detector (issue #7): the novelty of each point's recent
//!   shape and of its value at its phase of the series' period, and an anomaly likelihood over
//!   those surprises.
//! - [`season`]: the detector's clock: a series' period (augurs' periodogram, checked by the
//!   self-similarity) and what each phase of it usually holds.
//! - [`forecast`]: time-to-limit forecasts with an interval, and counters that should stay flat.
//! - [`nab`]: the Numenta Anomaly Benchmark's scoring (issue #7): probation, windows weighted by
//!   a scaled sigmoid, one threshold for the corpus found in one sweep.
//! - [`runbook`]: rules on alert labels that name a library workflow and its target; withheld
//!   when the target sits on a machine that is down.
//!
//! Pure: no I/O, no clock. Storage, notification and the HTTP routes are the engine's and the
//! server's.

pub mod desk;
pub mod detect;
pub mod forecast;
pub mod intake;
pub mod nab;
pub mod runbook;
pub mod season;
