//! Freshness and health of each inventory source.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How a source's last refresh went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    /// No refresh has finished yet and nothing is known.
    Pending,
    /// The last refresh succeeded.
    Healthy,
    /// The last refresh failed; the last good snapshot is being served.
    Degraded,
    /// Refreshes fail and there has never been a good snapshot.
    Unavailable,
}

/// What is known about one source, as stored by the refresher.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// Source name: `proxmox`, `kubernetes` or `static`.
    pub name: String,
    /// Where the data comes from (an URL, a kubeconfig context, the config file).
    pub endpoint: String,
    /// Unix time in milliseconds of the last successful refresh.
    pub last_success_ms: Option<i64>,
    /// Unix time in milliseconds of the last attempt, successful or not.
    pub last_attempt_ms: Option<i64>,
    /// Error of the last attempt, when it failed.
    pub last_error: Option<String>,
    /// Warnings attached to the data itself (for example: cluster has lost quorum, node offline).
    pub warnings: Vec<String>,
    /// Number of entities in the last good snapshot.
    pub entities: usize,
}

impl SourceStatus {
    /// A source that has not reported yet.
    pub fn pending(name: impl Into<String>, endpoint: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            endpoint: endpoint.into(),
            last_success_ms: None,
            last_attempt_ms: None,
            last_error: None,
            warnings: Vec::new(),
            entities: 0,
        }
    }

    /// The state derived from the last attempt and the last success.
    pub fn state(&self) -> SourceState {
        match (self.last_success_ms, &self.last_error) {
            (None, None) => SourceState::Pending,
            (None, Some(_)) => SourceState::Unavailable,
            (Some(_), Some(_)) => SourceState::Degraded,
            (Some(_), None) if !self.warnings.is_empty() => SourceState::Degraded,
            (Some(_), None) => SourceState::Healthy,
        }
    }

    /// The view a caller sees at `now_ms`.
    pub fn health(&self, now_ms: i64) -> SourceHealth {
        SourceHealth {
            name: self.name.clone(),
            endpoint: self.endpoint.clone(),
            state: self.state(),
            age_seconds: self.last_success_ms.map(|t| ((now_ms - t).max(0) as f64) / 1000.0),
            last_error: self.last_error.clone(),
            warnings: self.warnings.clone(),
            entities: self.entities,
        }
    }
}

/// One source's health as answers report it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SourceHealth {
    /// Source name.
    pub name: String,
    /// Where the data comes from.
    pub endpoint: String,
    /// Healthy, degraded (serving the last good snapshot), unavailable or pending.
    pub state: SourceState,
    /// Seconds since the data was last fetched successfully; absent when never.
    pub age_seconds: Option<f64>,
    /// Error of the last refresh, when it failed.
    pub last_error: Option<String>,
    /// Problems the source itself reports (offline nodes, lost quorum).
    pub warnings: Vec<String>,
    /// Entities this source contributes.
    pub entities: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_follows_success_and_error() {
        let mut s = SourceStatus::pending("proxmox", "https://pve:8006");
        assert_eq!(s.state(), SourceState::Pending);
        s.last_error = Some("connection refused".into());
        assert_eq!(s.state(), SourceState::Unavailable);
        s.last_success_ms = Some(1_000);
        assert_eq!(s.state(), SourceState::Degraded);
        s.last_error = None;
        assert_eq!(s.state(), SourceState::Healthy);
        s.warnings.push("node pve offline".into());
        assert_eq!(s.state(), SourceState::Degraded);
        assert_eq!(s.health(4_500).age_seconds, Some(3.5));
    }
}
