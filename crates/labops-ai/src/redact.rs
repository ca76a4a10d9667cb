//! Redaction: secrets and configured sensitive values become placeholders before a request
//! leaves the machine, and the placeholders become the values again in the answer.
//!
//! Placeholders look like `[[SECRET_1]]`, `[[ADDRESS_2]]`, `[[VALUE_3]]`: the same value always
//! gets the same placeholder within one request, so the model can still reason about "the same
//! token twice" without seeing it.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use regex::Regex;
use serde::Serialize;

/// What kind of value was replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A key, token, password or other credential.
    Secret,
    /// A private network address.
    Address,
    /// A value the owner configured as sensitive (host names, serial numbers...).
    Value,
}

impl Kind {
    fn tag(self) -> &'static str {
        match self {
            Kind::Secret => "SECRET",
            Kind::Address => "ADDRESS",
            Kind::Value => "VALUE",
        }
    }
}

/// One detector: a pattern, what it finds, and which capture group holds the value (0: all).
struct Detector {
    name: &'static str,
    kind: Kind,
    re: Regex,
    group: usize,
}

fn d(name: &'static str, kind: Kind, re: &str, group: usize) -> Detector {
    Detector { name, kind, re: Regex::new(re).expect("static regex"), group }
}

/// The secret and address detectors, most specific first.
static DETECTORS: LazyLock<Vec<Detector>> = LazyLock::new(|| {
    vec![
        d("private key", Kind::Secret, r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----", 0),
        d("Proxmox API token", Kind::Secret, r"PVEAPIToken=[^\s'\x22;,]+", 0),
        d("Anthropic key", Kind::Secret, r"\bsk-ant-[A-Za-z0-9_\-]{16,}", 0),
        d("OpenAI key", Kind::Secret, r"\bsk-(?:proj-)?[A-Za-z0-9_\-]{20,}", 0),
        d("GitHub token", Kind::Secret, r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})", 0),
        d("AWS access key", Kind::Secret, r"\bAKIA[0-9A-Z]{16}\b", 0),
        d("JSON web token", Kind::Secret, r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}", 0),
        d("bearer token", Kind::Secret, r"(?i)\bbearer\s+([A-Za-z0-9._~+/=\-]{16,})", 1),
        d("ssh public key", Kind::Secret, r"\bssh-(?:ed25519|rsa|ecdsa)\s+AAAA[A-Za-z0-9+/=]{20,}", 0),
        d(
            "credential assignment",
            Kind::Secret,
            r#"(?i)(?:\b|_)(?:password|passwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|client[_-]?secret)\b["']?\s*[:=]\s*["']?([^\s"',;]{6,})"#,
            1,
        ),
        d("private IPv4 address", Kind::Address, r"\b(?:10(?:\.\d{1,3}){3}|192\.168(?:\.\d{1,3}){2}|172\.(?:1[6-9]|2\d|3[01])(?:\.\d{1,3}){2})\b", 0),
        d("private IPv6 address", Kind::Address, r"(?i)\bf[cd][0-9a-f]{2}:[0-9a-f:]{2,}\b", 0),
    ]
});

/// What one replacement was, for the audit log (never the value itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Redaction {
    /// The placeholder that stands for the value.
    pub placeholder: String,
    /// What kind of value.
    pub kind: Kind,
    /// Which detector found it (`GitHub token`, `configured value`...).
    pub found_by: String,
}

/// A redacted text and the map that restores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted {
    /// The text with placeholders.
    pub text: String,
    /// Each placeholder, what it replaced.
    pub redactions: Vec<Redaction>,
    values: BTreeMap<String, String>,
}

impl Redacted {
    /// `answer` with every placeholder put back to its value.
    pub fn restore(&self, answer: &str) -> String {
        let mut out = answer.to_string();
        for (placeholder, value) in &self.values {
            out = out.replace(placeholder.as_str(), value);
        }
        out
    }
}

/// Finds secrets, private addresses and the owner's sensitive values.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    /// Values the owner marked sensitive (internal host names, serials, ...), longest first.
    values: Vec<String>,
}

impl Redactor {
    /// A redactor that also replaces each of `sensitive` (values shorter than 3 characters are
    /// ignored: they would match everywhere).
    pub fn new(sensitive: impl IntoIterator<Item = String>) -> Self {
        let mut values: Vec<String> = sensitive.into_iter().map(|v| v.trim().to_string()).filter(|v| v.chars().count() >= 3).collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        values.dedup();
        Self { values }
    }

    /// A redactor for `values` and every node, guest, host and Kubernetes node name and address
    /// in `inv`: internal names never leave the machine.
    pub fn for_lab(values: &[String], inv: &labops_core::inventory::Inventory) -> Self {
        use labops_core::inventory::EntityKind;
        let mut all = values.to_vec();
        for e in inv.entities() {
            if matches!(e.kind, EntityKind::ProxmoxNode | EntityKind::Vm | EntityKind::Lxc | EntityKind::Host | EntityKind::K8sNode) {
                all.push(e.name.clone());
                all.extend(e.addresses.iter().cloned());
            }
        }
        Self::new(all)
    }

    /// Every (start, end, kind, detector) to replace in `text`, without overlaps, in order.
    fn spans(&self, text: &str) -> Vec<(usize, usize, Kind, String)> {
        let mut spans: Vec<(usize, usize, Kind, String)> = Vec::new();
        let free = |spans: &Vec<(usize, usize, Kind, String)>, s: usize, e: usize| spans.iter().all(|(a, b, _, _)| e <= *a || s >= *b);
        for det in DETECTORS.iter() {
            for caps in det.re.captures_iter(text) {
                if let Some(m) = caps.get(det.group)
                    && free(&spans, m.start(), m.end())
                {
                    spans.push((m.start(), m.end(), det.kind, det.name.to_string()));
                }
            }
        }
        for v in &self.values {
            let mut from = 0;
            while let Some(i) = text[from..].find(v.as_str()) {
                let (s, e) = (from + i, from + i + v.len());
                if free(&spans, s, e) {
                    spans.push((s, e, Kind::Value, "configured value".into()));
                }
                from = e;
            }
        }
        spans.sort_by_key(|s| s.0);
        spans
    }

    /// Whether `text` holds anything this redactor would replace, and what: the detectors' names.
    pub fn findings(&self, text: &str) -> Vec<(Kind, String)> {
        let mut out: Vec<(Kind, String)> = self.spans(text).into_iter().map(|(_, _, k, n)| (k, n)).collect();
        out.sort();
        out.dedup();
        out
    }

    /// `text` with every finding replaced by a placeholder.
    pub fn redact(&self, text: &str) -> Redacted {
        let mut session = self.session();
        let text = session.redact(text);
        Redacted { text, redactions: session.redactions, values: session.values }
    }

    /// A redaction session over several texts (the messages of one request): one value gets
    /// the same placeholder in all of them, and [`Session::restore`] undoes them all.
    pub fn session(&self) -> Session<'_> {
        Session { redactor: self, values: BTreeMap::new(), by_value: BTreeMap::new(), counts: BTreeMap::new(), redactions: Vec::new() }
    }
}

/// Placeholders shared by the texts of one request; see [`Redactor::session`].
#[derive(Debug)]
pub struct Session<'a> {
    redactor: &'a Redactor,
    values: BTreeMap<String, String>,
    by_value: BTreeMap<String, String>,
    counts: BTreeMap<Kind, usize>,
    redactions: Vec<Redaction>,
}

impl Session<'_> {
    /// `text` with every finding replaced by its placeholder.
    pub fn redact(&mut self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for (s, e, kind, found_by) in self.redactor.spans(text) {
            out.push_str(&text[at..s]);
            let value = &text[s..e];
            let placeholder = match self.by_value.get(value) {
                Some(p) => p.clone(),
                None => {
                    let n = self.counts.entry(kind).or_default();
                    *n += 1;
                    let p = format!("[[{}_{}]]", kind.tag(), n);
                    self.by_value.insert(value.to_string(), p.clone());
                    self.values.insert(p.clone(), value.to_string());
                    self.redactions.push(Redaction { placeholder: p.clone(), kind, found_by });
                    p
                }
            };
            out.push_str(&placeholder);
            at = e;
        }
        out.push_str(&text[at..]);
        out
    }

    /// `answer` with every placeholder of the session put back to its value.
    pub fn restore(&self, answer: &str) -> String {
        let mut out = answer.to_string();
        for (placeholder, value) in &self.values {
            out = out.replace(placeholder.as_str(), value);
        }
        out
    }

    /// What was replaced so far.
    pub fn redactions(&self) -> &[Redaction] {
        &self.redactions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARIES: &[&str] = &[
        "PVEAPIToken=root@pam!labops=0b7e2f4c-canary-4d1e-9a8b-000000000001",
        "ghp_canaryCANARYcanaryCANARYcanary0001",
        "sk-ant-api03-canary-0000000000000000000001",
        "sk-proj-canarycanarycanarycanary01",
        "AKIACANARY0000000001",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjYW5hcnkifQ.c2lnbmF0dXJlY2FuYXJ5",
    ];

    #[test]
    fn canary_secrets_never_survive_redaction() {
        let r = Redactor::new(["still-fawn.homelab".to_string()]);
        for canary in CANARIES {
            let text = format!("the config says {canary} and again {canary}; host still-fawn.homelab at 192.168.4.19");
            let red = r.redact(&text);
            assert!(!red.text.contains(canary), "{canary} leaked: {}", red.text);
            assert!(!red.text.contains("192.168.4.19") && !red.text.contains("still-fawn.homelab"), "{}", red.text);
            assert_eq!(red.text.matches("[[SECRET_1]]").count(), 2, "one value, one placeholder: {}", red.text);
            assert_eq!(red.restore(&red.text), text, "the answer gets the values back");
        }
    }

    #[test]
    fn assignments_keys_and_pem_blocks_are_found() {
        let r = Redactor::default();
        let env = r.redact("PBS_PASSWORD=LABOPS-CANARY-a07c55 and DB_TOKEN: abcdef123456");
        assert!(!env.text.contains("LABOPS-CANARY") && !env.text.contains("abcdef123456"), "environment-style names too: {}", env.text);
        let text = "password: hunter2hunter\napi_key = \"abcd1234efgh\"\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\nAuthorization: Bearer abcdefghijklmnop1234";
        let red = r.redact(text);
        for leaked in ["hunter2hunter", "abcd1234efgh", "b3BlbnNzaC1rZXktdjEAAAAA", "abcdefghijklmnop1234"] {
            assert!(!red.text.contains(leaked), "{leaked}: {}", red.text);
        }
        assert!(red.text.starts_with("password: [[SECRET_1]]"), "the key name stays, the value goes: {}", red.text);
        assert_eq!(red.redactions.len(), 4, "{:?}", red.redactions);
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        let r = Redactor::new(["ab".to_string()]);
        let text = "How do I set up Tailscale as an exit node? Version 1.66.4, port 41641, see RFC 1918.";
        let red = r.redact(text);
        assert_eq!(red.text, text);
        assert!(red.redactions.is_empty());
        assert!(r.findings("public 8.8.8.8 and 172.32.0.1 are not private").is_empty());
        assert_eq!(r.findings("fd12:3456:789a::1 and 172.20.1.1").len(), 2);
    }
}
