//! labops AIOps (issue #6, first part): alert intake.
//!
//! - [`intake`]: the webhook bodies labops accepts (Alertmanager's webhook v4, Grafana unified
//!   alerting's webhook, Alertmanager's own push API `POST /api/v2/alerts` as Prometheus sends
//!   it, Uptime Kuma's webhook, and a documented generic JSON form), parsed into one normalised
//!   [`intake::Alert`] with Alertmanager's fingerprint, or refused with the path of what is wrong.
//!
//! Pure: no I/O, no clock. Storage, dedup into incidents, correlation and the HTTP routes build
//! on it.

pub mod intake;
