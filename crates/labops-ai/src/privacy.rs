//! Privacy classes: whether a request may leave the machine, from what it contains and what it
//! is for, with every reason named.

use serde::{Deserialize, Serialize};

use crate::redact::{Kind, Redactor};

/// Whether a request may leave the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Privacy {
    /// Stays on the local model.
    Sensitive,
    /// May go to a cloud model (redacted all the same).
    Public,
}

/// What a request is for. The owner's design document keeps configs, security, monitoring and
/// real-time decisions local, and sends architecture, research and code to the cloud.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Reading or writing configuration.
    Config,
    /// Security analysis.
    Security,
    /// Monitoring, alerts, logs.
    Monitoring,
    /// A decision about the lab right now (restart, fail over).
    RealTime,
    /// System design.
    Architecture,
    /// General knowledge.
    Research,
    /// Writing code.
    Code,
    /// None of the above.
    General,
}

impl Purpose {
    /// The default policy: where a purpose goes when nothing in the content is sensitive.
    pub fn default_privacy(self) -> Privacy {
        match self {
            Purpose::Config | Purpose::Security | Purpose::Monitoring | Purpose::RealTime => Privacy::Sensitive,
            Purpose::Architecture | Purpose::Research | Purpose::Code | Purpose::General => Privacy::Public,
        }
    }

    /// Every purpose.
    pub const ALL: [Purpose; 8] = [
        Purpose::Config,
        Purpose::Security,
        Purpose::Monitoring,
        Purpose::RealTime,
        Purpose::Architecture,
        Purpose::Research,
        Purpose::Code,
        Purpose::General,
    ];

    /// Words that suggest the purpose, checked on word boundaries, lower case.
    fn cues(self) -> &'static [&'static str] {
        match self {
            Purpose::Config => &["config", "configure", "configuration", ".toml", ".yaml", ".conf", "settings", "fstab", "sshd_config", "kubeconfig"],
            Purpose::Security => &["security", "vulnerability", "cve", "firewall", "intrusion", "exploit", "audit", "certificate", "ssh key", "hardening", "breach", "attack"],
            Purpose::Monitoring => &["alert", "alerts", "grafana", "prometheus", "alertmanager", "logs", "log", "metric", "metrics", "dashboard", "uptime"],
            Purpose::RealTime => &["restart", "reboot", "now", "down", "outage", "failover", "fail over", "migrate", "stop", "start"],
            Purpose::Architecture => &["architecture", "design", "topology", "should i use", "compare", "trade-off", "tradeoff"],
            Purpose::Research => &["what is", "explain", "how does", "research", "difference between", "best practice", "best practices"],
            Purpose::Code => &["code", "script", "function", "python", "rust", "bash", "regex", "write a", "refactor"],
            Purpose::General => &[],
        }
    }
}

/// A classification with its reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Classification {
    /// The class.
    pub privacy: Privacy,
    /// The purpose, given or inferred.
    pub purpose: Purpose,
    /// Why, one sentence each (content findings first).
    pub reasons: Vec<String>,
}

fn has_cue(lower: &str, cue: &str) -> bool {
    let bytes = lower.as_bytes();
    let mut from = 0;
    while let Some(i) = lower[from..].find(cue) {
        let (s, e) = (from + i, from + i + cue.len());
        let before = s == 0 || !bytes[s - 1].is_ascii_alphanumeric();
        let after = e == bytes.len() || !bytes[e].is_ascii_alphanumeric();
        if before && after {
            return true;
        }
        from = e;
    }
    false
}

/// The purpose a request's words suggest: the first of the local purposes with a cue, else the
/// first cloud purpose with one, else `general`.
pub fn infer_purpose(text: &str) -> Purpose {
    let lower = text.to_lowercase();
    Purpose::ALL.into_iter().find(|p| p.cues().iter().any(|c| has_cue(&lower, c))).unwrap_or(Purpose::General)
}

/// Classifies `text`: sensitive when it holds a secret, a private address or a value the owner
/// marked sensitive (what `redactor` finds), or when its purpose (`purpose`, else inferred) is one
/// the policy keeps local.
pub fn classify(text: &str, purpose: Option<Purpose>, redactor: &Redactor) -> Classification {
    let purpose = purpose.unwrap_or_else(|| infer_purpose(text));
    let mut reasons = Vec::new();
    for (kind, found_by) in redactor.findings(text) {
        reasons.push(match kind {
            Kind::Secret => format!("it contains a secret ({found_by})"),
            Kind::Address => format!("it contains an internal address ({found_by})"),
            Kind::Value => "it contains a value configured as sensitive (a host name or other internal detail)".to_string(),
        });
    }
    let privacy = if !reasons.is_empty() {
        Privacy::Sensitive
    } else {
        let p = purpose.default_privacy();
        let verb = if p == Privacy::Sensitive { "stays local" } else { "may use the cloud" };
        reasons.push(format!("its purpose is {} ({verb} by policy), and it holds no secret or internal detail", serde_json::to_value(purpose).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()));
        p
    };
    Classification { privacy, purpose, reasons }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_makes_a_request_sensitive_whatever_its_purpose() {
        let r = Redactor::new(["still-fawn".to_string()]);
        let c = classify("write a python script that signs in with token = abcdef123456", None, &r);
        assert_eq!((c.privacy, c.purpose), (Privacy::Sensitive, Purpose::Code));
        assert!(c.reasons[0].contains("secret (credential assignment)"), "{:?}", c.reasons);
        let c = classify("explain why still-fawn is slow", None, &r);
        assert_eq!(c.privacy, Privacy::Sensitive, "{:?}", c.reasons);
        let c = classify("what is the difference between ZFS and btrfs on 10.0.0.5?", None, &r);
        assert_eq!(c.privacy, Privacy::Sensitive);
    }

    #[test]
    fn the_owners_split_decides_the_rest() {
        let r = Redactor::default();
        for (text, purpose, privacy) in [
            ("review my firewall rules for open ports", Purpose::Security, Privacy::Sensitive),
            ("which alerts fired overnight?", Purpose::Monitoring, Privacy::Sensitive),
            ("configure the backup schedule", Purpose::Config, Privacy::Sensitive),
            ("restart the jellyfin pod", Purpose::RealTime, Privacy::Sensitive),
            ("compare Longhorn and Ceph for a small cluster: trade-offs?", Purpose::Architecture, Privacy::Public),
            ("explain how Raft elects a leader", Purpose::Research, Privacy::Public),
            ("write a bash function that retries a command", Purpose::Code, Privacy::Public),
            ("hello", Purpose::General, Privacy::Public),
        ] {
            let c = classify(text, None, &r);
            assert_eq!((c.purpose, c.privacy), (purpose, privacy), "{text}: {:?}", c.reasons);
        }
        // A purpose given by the caller wins over the words.
        assert_eq!(classify("explain this", Some(Purpose::Security), &r).privacy, Privacy::Sensitive);
    }

    #[test]
    fn cues_match_whole_words() {
        assert!(has_cue("the alert fired", "alert"));
        assert!(!has_cue("alerting pipeline", "alert"));
        assert!(!has_cue("startup", "start"));
        assert!(has_cue("cve-2024-1234", "cve"));
    }
}
