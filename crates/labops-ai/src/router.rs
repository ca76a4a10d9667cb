//! The privacy-first router: privacy first, then the spend budget, then what is available. It
//! decides without calling any model, and says why.

use serde::Serialize;

use crate::privacy::{Classification, Privacy};

/// Where a request goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    /// The local model.
    Local,
    /// The cloud model, redacted.
    Cloud,
    /// The MCP client's own model (sampling): it leaves the machine, like the cloud.
    Sampling,
    /// Nowhere: nothing may serve it.
    Refused,
}

/// What the router knows about the providers at the moment of the decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Providers {
    /// The local model (`provider/model`) when configured and healthy.
    pub local: Option<String>,
    /// Why the configured local model is unavailable, when it is.
    pub local_down: Option<String>,
    /// The cloud model when configured and healthy.
    pub cloud: Option<String>,
    /// Why the cloud is unavailable (down, no network, budget spent), when it is configured.
    pub cloud_down: Option<String>,
    /// Why the local model is to be avoided for speed (its recent answers are slower than its
    /// latency target), when it is.
    pub local_slow: Option<String>,
    /// The same for the cloud model.
    pub cloud_slow: Option<String>,
    /// Whether a connected MCP client offers sampling.
    pub sampling: bool,
    /// Whether the request needs hard reasoning (prefers the cloud when allowed).
    pub hard: bool,
}

/// The decision, as `labops ai route --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Decision {
    /// Where it goes.
    pub route: Route,
    /// The provider/model that serves it, if any.
    pub provider: Option<String>,
    /// Its privacy class.
    pub privacy: Privacy,
    /// Why, in one paragraph.
    pub reason: String,
}

/// Decides where a classified request goes.
pub fn route(c: &Classification, p: &Providers) -> Decision {
    let why = c.reasons.join("; ");
    let local = |reason: String| Decision { route: Route::Local, provider: p.local.clone(), privacy: c.privacy, reason };
    match c.privacy {
        Privacy::Sensitive => match &p.local {
            Some(m) => local(format!("sensitive ({why}): served by the local model {m}; it never leaves the machine")),
            None => Decision {
                route: Route::Refused,
                provider: None,
                privacy: c.privacy,
                reason: format!(
                    "sensitive ({why}), and the local model is unavailable ({}); labops never sends a sensitive request off the machine: start the local model or configure [ai.local]",
                    p.local_down.as_deref().unwrap_or("not configured")
                ),
            },
        },
        Privacy::Public => {
            let cloud_fast = p.cloud.is_some() && p.cloud_slow.is_none();
            if p.hard
                && cloud_fast
                && let Some(m) = &p.cloud
            {
                return Decision { route: Route::Cloud, provider: Some(m.clone()), privacy: c.privacy, reason: format!("public ({why}) and hard: served by the cloud model {m}, redacted") };
            }
            if let Some(m) = &p.local
                && (p.local_slow.is_none() || !cloud_fast)
            {
                let extra = match (&p.cloud, &p.cloud_down, &p.cloud_slow) {
                    (None, Some(down), _) => format!("; the cloud is unavailable ({down})"),
                    (Some(_), _, Some(slow)) => format!("; the cloud is {slow}"),
                    _ => String::new(),
                };
                return local(format!("public ({why}): the local model {m} serves it{extra}"));
            }
            if let Some(m) = &p.cloud {
                let extra = p.local_slow.as_ref().map(|s| format!("; the local model is {s}")).unwrap_or_else(|| "; no local model is available".into());
                return Decision { route: Route::Cloud, provider: Some(m.clone()), privacy: c.privacy, reason: format!("public ({why}){extra}: the cloud model {m} serves it, redacted") };
            }
            if p.sampling {
                return Decision { route: Route::Sampling, provider: Some("mcp-client".into()), privacy: c.privacy, reason: format!("public ({why}); no model is configured: the MCP client's own model serves it (this leaves the machine), redacted") };
            }
            Decision {
                route: Route::Refused,
                provider: None,
                privacy: c.privacy,
                reason: format!("public ({why}), but no model is available: configure [ai.local] (and optionally [ai.cloud])"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::privacy::classify;
    use crate::redact::Redactor;

    fn providers() -> Providers {
        Providers { local: Some("ollama/qwen2.5:7b".into()), cloud: Some("anthropic/claude-sonnet-4-5".into()), ..Default::default() }
    }

    #[test]
    fn sensitive_requests_stay_local_or_are_refused() {
        let c = classify("here is my config: password = s3cretpassw0rd", None, &Redactor::default());
        let d = route(&c, &Providers { hard: true, ..providers() });
        assert_eq!((d.route, d.provider.as_deref()), (Route::Local, Some("ollama/qwen2.5:7b")), "hard or not, it stays local");
        let down = Providers { local: None, local_down: Some("connection refused".into()), sampling: true, ..providers() };
        let d = route(&c, &down);
        assert_eq!(d.route, Route::Refused, "never the cloud, never sampling");
        assert!(d.reason.contains("connection refused") && d.reason.contains("never sends a sensitive request"), "{}", d.reason);
    }

    #[test]
    fn public_requests_use_the_cloud_when_it_pays_and_fall_back_locally() {
        let c = classify("compare Longhorn and Ceph for a small cluster", None, &Redactor::default());
        assert_eq!(route(&c, &Providers { hard: true, ..providers() }).route, Route::Cloud);
        assert_eq!(route(&c, &providers()).route, Route::Local, "easy work stays on the local model");
        let spent = Providers { cloud: None, cloud_down: Some("daily budget of $2 spent".into()), hard: true, ..providers() };
        let d = route(&c, &spent);
        assert_eq!(d.route, Route::Local);
        assert!(d.reason.contains("budget"), "{}", d.reason);
        let slow_local = Providers { local_slow: Some("slower than its latency target (3.1 s on average, target 1 s)".into()), ..providers() };
        let d = route(&c, &slow_local);
        assert_eq!(d.route, Route::Cloud, "public and the local model too slow: {}", d.reason);
        assert!(d.reason.contains("latency target"), "{}", d.reason);
        let both_slow = Providers { cloud_slow: Some("slower than its latency target".into()), ..slow_local };
        assert_eq!(route(&c, &both_slow).route, Route::Local, "no faster choice: stay local");
        let secret = classify("password = s3cretpassw0rd", None, &Redactor::default());
        assert_eq!(route(&secret, &both_slow).route, Route::Local, "speed never moves a sensitive request");
        let only_client = Providers { local: None, cloud: None, sampling: true, ..Default::default() };
        assert_eq!(route(&c, &only_client).route, Route::Sampling);
        assert_eq!(route(&c, &Providers::default()).route, Route::Refused);
    }
}
