//! The wishlist service: items, their ranking by the ROI formula of
//! `labops_core::wishlist`, the next one proposed as a change, and outcomes learned from.
//!
//! An item's plan is a generated workflow: the owner's part as an `external-task` whose form
//! asks for the hours spent (so the actual effort comes back with the completed step), then the
//! success check as a `milestone`. It goes through `Changes::propose` like every change: an
//! issue, the analysis with the ROI breakdown, a human's approval. [`Wishlist::sync`] follows
//! each item's change: approved, running, closed (the item is done and the effort the owner
//! reported is recorded against the estimate), rejected or failed (the item is an idea again).

use std::collections::BTreeMap;

use labops_core::change::{Actor, Analysis, ChangeState, RiskLevel, Roi};
use labops_core::wishlist::{self, Breakdown, Calibration, Factor, Item, Outcome, Provenance, Ranked, Source, Status};
use labops_store::Store;
use serde::Serialize;

use crate::changes::{Changes, ProposalInput};
use crate::lab::now_ms;

/// What went wrong, said so a caller can act on it.
#[derive(Debug, thiserror::Error)]
pub enum WishError {
    /// The request was wrong.
    #[error("{0}")]
    Invalid(String),
    /// No such item.
    #[error("no wishlist item #{0}; `labops wishlist list` shows them")]
    Unknown(i64),
    /// The store failed.
    #[error("the state database: {0}")]
    Store(#[from] labops_store::Error),
    /// The change could not be proposed.
    #[error("the change could not be proposed: {0}")]
    Change(String),
}

/// A new item as a caller gives it.
#[derive(Debug, Clone, Default, serde::Deserialize, schemars::JsonSchema)]
pub struct NewItem {
    /// One line (`Tailscale integration`).
    pub title: String,
    /// What and why.
    #[serde(default)]
    pub description: String,
    /// `owner` (default), `incident`, `anomaly`, `forecast`, `predicted`, `community`.
    #[serde(default)]
    pub source: Option<String>,
    /// `networking`, `storage`, `ai`, `documents`...
    pub category: String,
    /// Items it needs first (their numbers).
    #[serde(default)]
    pub depends_on: Vec<i64>,
    /// Hardware it needs.
    #[serde(default)]
    pub hardware: Option<String>,
    /// Factor values the owner gives: `time_saved`, `cost_once`, `cost_monthly`, `learning`,
    /// `security`, `complexity`, `risk`, `effort`.
    #[serde(default)]
    pub factors: BTreeMap<String, f64>,
    /// Why those values (one reason for all of them).
    #[serde(default)]
    pub reason: String,
}

/// An item with its place and score.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    /// The item.
    pub item: Item,
    /// Its rank among open items (None when done or dropped).
    pub rank: Option<usize>,
    /// Its score.
    pub breakdown: Breakdown,
    /// Open items it waits for.
    pub blocked_by: Vec<i64>,
}

/// One factor in an explanation.
#[derive(Debug, Clone, Serialize)]
pub struct FactorLine {
    /// Its name.
    pub name: String,
    /// Its value.
    pub value: f64,
    /// Its unit.
    pub unit: String,
    /// `owner`, `estimate`, `measured`, `default`.
    pub provenance: Provenance,
    /// Why.
    pub reason: String,
}

/// Why an item scores what it scores.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// The item, its rank and score.
    pub listed: Listed,
    /// Every factor with where it came from.
    pub factors: Vec<FactorLine>,
    /// The formula, in words, with this item's numbers.
    pub formula: Vec<String>,
    /// Factors nobody gave (counted at their defaults).
    pub missing: Vec<String>,
}

/// What `next` did.
#[derive(Debug, Clone, Serialize)]
pub struct Proposed {
    /// The item.
    pub item: i64,
    /// Its title.
    pub title: String,
    /// Its score.
    pub score: f64,
    /// The change proposed.
    pub change: String,
    /// Its forge issue.
    pub issue: Option<u64>,
    /// The owner's hours, calibrated.
    pub owner_hours: f64,
    /// How success is judged.
    pub success_metrics: Vec<String>,
}

/// The learning report.
#[derive(Debug, Clone, Serialize)]
pub struct Learning {
    /// `(category, factor, multiplier, outcomes)`.
    pub multipliers: Vec<(String, String, f64, usize)>,
    /// Mean prediction error (|ln(actual/predicted)|) of consecutive groups of 5 outcomes.
    pub error_over_time: Vec<f64>,
    /// Outcomes recorded.
    pub outcomes: usize,
}

/// The wishlist over the store, proposing through `changes` when given.
#[derive(Clone)]
pub struct Wishlist {
    store: Store,
    changes: Option<Changes>,
}

fn parse_source(s: Option<&str>) -> Result<Source, WishError> {
    match s.unwrap_or("owner") {
        "owner" => Ok(Source::Owner),
        "incident" => Ok(Source::Incident),
        "anomaly" => Ok(Source::Anomaly),
        "forecast" => Ok(Source::Forecast),
        "predicted" => Ok(Source::Predicted),
        "community" => Ok(Source::Community),
        other => Err(WishError::Invalid(format!("source {other:?} is not one of owner, incident, anomaly, forecast, predicted, community"))),
    }
}

/// YAML's double-quoted string.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

impl Wishlist {
    /// The wishlist.
    pub fn new(store: Store, changes: Option<Changes>) -> Self {
        Self { store, changes }
    }

    async fn calibration(&self) -> Result<(Calibration, Vec<Outcome>), WishError> {
        let outcomes = self.store.wish_outcomes().await?;
        Ok((Calibration::from_outcomes(&outcomes), outcomes))
    }

    /// Adds an item.
    pub async fn add(&self, new: NewItem, actor: &str) -> Result<Item, WishError> {
        let mut problems = Vec::new();
        let title = new.title.trim();
        if title.is_empty() || title.len() > 200 {
            problems.push("`title` must be one line of 1 to 200 characters".to_string());
        }
        if new.description.len() > 10_000 {
            problems.push("`description` is longer than 10,000 characters".to_string());
        }
        if new.reason.len() > 500 || new.hardware.as_ref().is_some_and(|h| h.len() > 200) {
            problems.push("`reason` is longer than 500 characters or `hardware` longer than 200".to_string());
        }
        if new.depends_on.len() > 50 || new.factors.len() > 20 {
            problems.push("at most 50 dependencies and 20 factors".to_string());
        }
        let category = new.category.trim().to_lowercase();
        if category.is_empty() || category.len() > 40 || !category.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            problems.push(format!("`category` {:?} must be a word (letters, digits, - or _), like networking or storage", new.category));
        }
        let source = parse_source(new.source.as_deref());
        if let Err(e) = &source {
            problems.push(e.to_string());
        }
        for (name, value) in &new.factors {
            if let Err(e) = wishlist::check_factor(name, *value) {
                problems.push(e);
            }
        }
        let existing = self.store.wishes().await?;
        for d in &new.depends_on {
            if !existing.iter().any(|i| i.id == *d) {
                problems.push(format!("depends_on: no item #{d}"));
            }
        }
        if !problems.is_empty() {
            return Err(WishError::Invalid(problems.join("; ")));
        }
        let reason = if new.reason.trim().is_empty() { "given by the owner".to_string() } else { new.reason.trim().to_string() };
        let item = Item {
            id: 0,
            title: title.to_string(),
            description: new.description.trim().to_string(),
            source: source?,
            category,
            depends_on: new.depends_on,
            hardware: new.hardware.filter(|h| !h.trim().is_empty()),
            factors: new.factors.into_iter().map(|(n, v)| (n, Factor { value: v, provenance: Provenance::Owner, reason: reason.clone() })).collect(),
            status: Status::Idea,
            changes: Vec::new(),
            created_ms: now_ms(),
        };
        let id = self.store.add_wish(&item, actor, now_ms()).await?;
        Ok(Item { id, ..item })
    }

    /// Sets one factor (an owner's value or an AI estimate, marked as such).
    pub async fn set_factor(&self, id: i64, name: &str, value: f64, provenance: Provenance, reason: &str, actor: &str) -> Result<Item, WishError> {
        wishlist::check_factor(name, value).map_err(WishError::Invalid)?;
        let mut item = self.store.wish(id).await?.ok_or(WishError::Unknown(id))?;
        item.factors.insert(name.to_string(), Factor { value, provenance, reason: reason.chars().take(500).collect() });
        self.store.update_wish(&item, actor, &format!("{name} = {value}"), now_ms()).await?;
        Ok(item)
    }

    /// Asks the AI engine (its privacy router and audit apply) for the factors nobody gave,
    /// from the item's text and `context` (the lab in a few words: counts, not names). Each value
    /// the model gives is checked like an owner's and stored marked as an estimate with the
    /// model's reason; what it gets wrong is listed, not stored.
    pub async fn estimate(&self, id: i64, ai: &labops_ai::engine::Ai, context: &str, actor: &str) -> Result<(Item, Vec<String>), WishError> {
        use labops_ai::model::{Message, Request};
        let mut item = self.store.wish(id).await?.ok_or(WishError::Unknown(id))?;
        let missing: Vec<&'static str> = item.missing();
        if missing.is_empty() {
            return Ok((item, vec!["every factor is given; nothing to estimate".into()]));
        }
        let units: Vec<String> = wishlist::FACTORS.iter().filter(|(n, _, _)| missing.contains(n)).map(|(n, u, _)| format!("{n} ({u})")).collect();
        let known: Vec<String> = item.factors.iter().map(|(n, f)| format!("{n} = {}", f.value)).collect();
        let props: serde_json::Map<String, serde_json::Value> = missing
            .iter()
            .map(|n| (n.to_string(), serde_json::json!({"type": "object", "properties": {"value": {"type": "number"}, "reason": {"type": "string"}}, "required": ["value", "reason"]})))
            .collect();
        let req = Request {
            system: "You estimate the ROI factors of a homelab project for its owner. Answer with one JSON object only: for each factor asked, {\"value\": a number, \"reason\": one short sentence}. Be realistic for one person running a small lab; 0-10 scales are 0 none, 5 typical, 10 extreme.".into(),
            messages: vec![Message::user(format!(
                "Project: {}\nCategory: {}\nDescription: {}\nHardware: {}\nKnown factors: {}\nThe lab: {context}\nEstimate these factors: {}",
                item.title,
                item.category,
                if item.description.is_empty() { "(none)" } else { &item.description },
                item.hardware.as_deref().unwrap_or("none"),
                if known.is_empty() { "none".into() } else { known.join(", ") },
                units.join(", ")
            ))],
            tools: Vec::new(),
            schema: Some(serde_json::json!({"type": "object", "properties": props, "required": missing})),
            max_tokens: 800,
        };
        let call = labops_ai::engine::Call { actor: actor.to_string(), task: Some(format!("wish/{id}")), purpose: None, hard: false, sampling: None };
        let served = ai.chat(&req, &call, None).await.map_err(|e| WishError::Change(format!("no estimate: {e}")))?;
        // The model's text is untrusted: one JSON object, each value checked.
        let text = served.reply.text.trim();
        let json = text.find('{').and_then(|a| text.rfind('}').map(|b| &text[a..=b])).unwrap_or("");
        let answer: serde_json::Map<String, serde_json::Value> = serde_json::from_str(json).map_err(|_| WishError::Change(format!("the model did not answer with a JSON object: {:?}", text.chars().take(200).collect::<String>())))?;
        let mut notes = Vec::new();
        for name in &missing {
            let Some(v) = answer.get(*name) else {
                notes.push(format!("{name}: not estimated"));
                continue;
            };
            let value = v.get("value").and_then(serde_json::Value::as_f64).or_else(|| v.as_f64());
            let reason: String = v.get("reason").and_then(serde_json::Value::as_str).unwrap_or("").chars().filter(|c| !c.is_control()).take(300).collect();
            match value.map(|x| (x, wishlist::check_factor(name, x))) {
                Some((x, Ok(()))) => {
                    item.factors.insert(name.to_string(), Factor { value: x, provenance: Provenance::Estimate, reason: format!("AI estimate ({}): {reason}", served.provider) });
                }
                Some((_, Err(e))) => notes.push(format!("rejected: {e}")),
                None => notes.push(format!("{name}: not a number")),
            }
        }
        self.store.update_wish(&item, actor, &format!("AI estimates by {}", served.provider), now_ms()).await?;
        Ok((item, notes))
    }

    /// Every item, ranked (open ones by rank, then done and dropped), after following their
    /// changes.
    pub async fn list(&self) -> Result<Vec<Listed>, WishError> {
        self.sync().await?;
        let items = self.store.wishes().await?;
        let (cal, _) = self.calibration().await?;
        let ranked: BTreeMap<i64, Ranked> = wishlist::rank(&items, &cal).into_iter().map(|r| (r.id, r)).collect();
        let mut out: Vec<Listed> = items
            .into_iter()
            .map(|i| {
                let r = ranked.get(&i.id);
                Listed { breakdown: r.map(|r| r.breakdown.clone()).unwrap_or_else(|| wishlist::score(&i, &cal)), rank: r.map(|r| r.rank), blocked_by: r.map(|r| r.blocked_by.clone()).unwrap_or_default(), item: i }
            })
            .collect();
        out.sort_by_key(|l| (l.rank.unwrap_or(usize::MAX), l.item.id));
        Ok(out)
    }

    /// Why an item scores what it scores.
    pub async fn explain(&self, id: i64) -> Result<Explanation, WishError> {
        let listed = self.list().await?.into_iter().find(|l| l.item.id == id).ok_or(WishError::Unknown(id))?;
        let i = &listed.item;
        let b = &listed.breakdown;
        let factors = wishlist::FACTORS
            .iter()
            .map(|(name, unit, default)| match i.factors.get(*name) {
                Some(f) => FactorLine { name: name.to_string(), value: f.value, unit: unit.to_string(), provenance: f.provenance, reason: f.reason.clone() },
                None => FactorLine { name: name.to_string(), value: *default, unit: unit.to_string(), provenance: Provenance::Default, reason: "nobody gave it: the neutral default".into() },
            })
            .collect();
        let v = |n: &str| i.value(n);
        let formula = vec![
            format!("time T = 10 (1 - e^(-{:.1} h/5)) = {:.2}", v("time_saved"), b.time),
            format!("benefit B = 0.5 T + 0.3 learning {:.0} + 0.2 security {:.0} = {:.2}", v("learning"), v("security"), b.benefit),
            format!("cost Pc = 10 (1 - e^(-({:.0} + 12 x {:.0})/500)) = {:.2}", v("cost_once"), v("cost_monthly"), b.cost),
            format!("effort Pe = 10 (1 - e^(-{:.1} h/20)) = {:.2} ({:.1} h estimated x {:.2} for {} from past outcomes)", b.effort_hours, b.effort, v("effort"), b.effort_multiplier, i.category),
            format!("burden D = 0.35 complexity {:.0} + 0.25 risk {:.0} + 0.2 Pc + 0.2 Pe = {:.2}", v("complexity"), v("risk"), b.burden),
            format!("score = B (1 - D/20) = {:.1}/10", b.score),
        ];
        let missing = i.missing().into_iter().map(str::to_owned).collect();
        Ok(Explanation { listed, factors, formula, missing })
    }

    /// The learned multipliers and the error over time.
    pub async fn learning(&self) -> Result<Learning, WishError> {
        let (cal, outcomes) = self.calibration().await?;
        Ok(Learning { multipliers: cal.table(), error_over_time: wishlist::error_over_time(&outcomes, 5), outcomes: outcomes.len() })
    }

    /// The generated workflow for an item: the owner's part, then the success check.
    fn plan_yaml(item: &Item, hours: f64, metrics: &[String]) -> String {
        let instructions = format!(
            "{}. {} Then complete this step with what you did and the hours you spent (about {hours:.1} h expected).",
            item.title.trim_end_matches('.'),
            if item.description.is_empty() { String::new() } else { format!("{}.", item.description.trim_end_matches('.')) }
        );
        format!(
            "apiVersion: kro.run/v1alpha1\nkind: ResourceGraphDefinition\nmetadata:\n  name: wish-{id}\nspec:\n  resources:\n    - name: implement\n      type: external-task\n      waitForHuman: true\n      instructions: {instructions}\n      form:\n        result: what was done and how it went\n        effort_hours: the hours you spent on it\n        cost: what it cost, in your currency (0 if nothing)\n    - name: success-check\n      type: milestone\n      dependencies: [implement]\n      description: {metrics}\n",
            id = item.id,
            instructions = quoted(&instructions),
            metrics = quoted(&format!("Success: {}", metrics.join("; "))),
        )
    }

    /// Proposes the best item whose dependencies are done as a change.
    pub async fn next(&self, actor: Actor) -> Result<Option<Proposed>, WishError> {
        let changes = self.changes.clone().ok_or_else(|| WishError::Change("no change service: configure [forge] and [gitops] (see `labops init`)".into()))?;
        self.sync().await?;
        let items = self.store.wishes().await?;
        let (cal, _) = self.calibration().await?;
        let Some(id) = wishlist::next(&items, &cal) else { return Ok(None) };
        let mut item = items.into_iter().find(|i| i.id == id).ok_or(WishError::Unknown(id))?;
        let b = wishlist::score(&item, &cal);
        let metrics = vec![
            format!("{:.1} hours a month saved, measured over the next month", item.value("time_saved")),
            format!("done within {:.1} hours of the owner's work", b.effort_hours),
        ];
        let yaml = Self::plan_yaml(&item, b.effort_hours, &metrics);
        let (w, report) = labops_core::workflow::check(&yaml);
        let w = w.filter(|_| report.is_valid()).ok_or_else(|| WishError::Change(format!("the generated workflow does not validate: {report:?}")))?;
        let plan = labops_core::workflow::plan(&w, &Default::default()).map_err(|e| WishError::Change(e.to_string()))?;
        let estimates: Vec<&str> = item.factors.iter().filter(|(_, f)| f.provenance == Provenance::Estimate).map(|(n, _)| n.as_str()).collect();
        let risk = item.value("risk");
        let input = ProposalInput {
            title: format!("Wishlist #{}: {}", item.id, item.title),
            analysis: Analysis {
                what: format!("{} ({}). The owner does it by hand; labops tracks it and records how it went.", item.title, item.category),
                why: format!(
                    "It is the best item on the wishlist whose dependencies are done: ROI {:.1}/10 (benefit {:.1}, burden {:.1}){}{}",
                    b.score,
                    b.benefit,
                    b.burden,
                    if item.description.is_empty() { String::new() } else { format!(". {}", item.description) },
                    if estimates.is_empty() { String::new() } else { format!(". AI estimates: {}", estimates.join(", ")) }
                ),
                risk: if risk >= 7.0 { RiskLevel::High } else if risk >= 4.0 { RiskLevel::Medium } else { RiskLevel::Low },
                risk_notes: format!("risk {risk:.0}/10 as given; the work is the owner's, labops changes nothing in the lab for it"),
                blast_radius: Vec::new(),
                rollback_plan: Vec::new(),
                manual_steps: vec![format!("{} (about {:.1} h)", item.title, b.effort_hours)],
            },
            roi: Roi {
                time_saved_hours_per_month: item.value("time_saved"),
                cost_once: item.value("cost_once"),
                cost_monthly: item.value("cost_monthly"),
                learning_value: item.value("learning").round() as u8,
                complexity: item.value("complexity").round() as u8,
                risk: risk.round() as u8,
                basis: format!("wishlist item #{}: ROI {:.1}/10 by the documented formula (`labops wishlist explain {}`)", item.id, b.score, item.id),
            },
            area: None,
        };
        let rec = changes.propose(&plan, serde_json::json!({}), input, actor.clone(), "wishlist").await.map_err(|e| WishError::Change(e.to_string()))?;
        item.status = Status::Proposed;
        item.changes.push(rec.change.id.clone());
        self.store.update_wish(&item, &actor.to_string(), &format!("proposed as {}", rec.change.id), now_ms()).await?;
        Ok(Some(Proposed { item: item.id, title: item.title, score: b.score, change: rec.change.id, issue: rec.change.issue, owner_hours: b.effort_hours, success_metrics: metrics }))
    }

    /// Drops an item (it will not be done), saying why.
    pub async fn drop_item(&self, id: i64, why: &str, actor: &str) -> Result<Item, WishError> {
        let mut item = self.store.wish(id).await?.ok_or(WishError::Unknown(id))?;
        if !item.status.is_open() {
            return Err(WishError::Invalid(format!("wishlist #{id} is already closed")));
        }
        item.status = Status::Dropped;
        self.store.update_wish(&item, actor, &format!("dropped: {}", why.chars().take(300).collect::<String>()), now_ms()).await?;
        Ok(item)
    }

    /// Records what an item actually took (`effort` hours, costs...), marks it done, and learns.
    pub async fn record_outcome(&self, id: i64, actual: &BTreeMap<String, f64>, actor: &str) -> Result<Item, WishError> {
        let mut item = self.store.wish(id).await?.ok_or(WishError::Unknown(id))?;
        if actual.is_empty() {
            return Err(WishError::Invalid("give at least one actual value (`effort` hours, `cost_once`...)".into()));
        }
        for (n, v) in actual {
            wishlist::check_factor(n, *v).map_err(WishError::Invalid)?;
        }
        self.finish(&mut item, actual, actor).await?;
        Ok(item)
    }

    async fn finish(&self, item: &mut Item, actual: &BTreeMap<String, f64>, actor: &str) -> Result<(), WishError> {
        let (cal, _) = self.calibration().await?;
        let now = now_ms();
        let outcomes: Vec<Outcome> = actual
            .iter()
            .map(|(factor, a)| {
                let estimated = item.value(factor);
                Outcome { item: item.id, category: item.category.clone(), factor: factor.clone(), estimated, predicted: estimated * cal.multiplier(&item.category, factor), actual: *a, at_ms: now }
            })
            .collect();
        for (factor, a) in actual {
            let estimate = item.factors.get(factor).cloned();
            item.factors.insert(
                format!("{factor}_actual"),
                Factor { value: *a, provenance: Provenance::Measured, reason: format!("recorded when done; estimated {}", estimate.map(|e| e.value).unwrap_or_else(|| item.value(factor))) },
            );
        }
        item.status = Status::Done;
        self.store.record_outcomes(item, &outcomes, actor, now).await?;
        Ok(())
    }

    /// Follows each item's latest change: approved or running moves the item on; closed makes it
    /// done (with the hours the owner reported on completing the step); rejected or failed makes
    /// it an idea again.
    pub async fn sync(&self) -> Result<(), WishError> {
        let Some(changes) = self.changes.clone() else { return Ok(()) };
        for mut item in self.store.wishes().await? {
            if !matches!(item.status, Status::Proposed | Status::Approved | Status::InProgress) {
                continue;
            }
            let Some(id) = item.changes.last().cloned() else { continue };
            let Ok(rec) = changes.get(&id).await else { continue };
            let to = match rec.change.state {
                ChangeState::Approved => Status::Approved,
                ChangeState::Executing | ChangeState::Validating | ChangeState::Documenting | ChangeState::Committed => Status::InProgress,
                ChangeState::Closed => Status::Done,
                // Not done: an idea again, its failed change kept in `changes` for the record.
                ChangeState::Rejected | ChangeState::Failed | ChangeState::RolledBack => Status::Idea,
                _ => item.status,
            };
            if to == item.status {
                continue;
            }
            if to == Status::Done {
                let mut actual = BTreeMap::new();
                if let Some(run) = rec.run_id {
                    for s in self.store.run_steps(run).await.unwrap_or_default() {
                        // What the owner reported on completing the step (untrusted: numbers only, in range).
                        let field = |k: &str| -> Option<f64> {
                            let v = s.outcome.as_ref()?.get(k).or_else(|| s.outcome.as_ref()?.get("data")?.get(k))?.clone();
                            v.as_f64().or_else(|| v.as_str().and_then(|t| t.trim().parse().ok())).filter(|x: &f64| x.is_finite() && *x >= 0.0 && *x < 1e9)
                        };
                        if let Some(h) = field("effort_hours").filter(|h| *h > 0.0 && *h < 10_000.0) {
                            actual.insert("effort".to_string(), h);
                        }
                        if let Some(c) = field("cost").filter(|c| *c > 0.0) {
                            actual.insert("cost_once".to_string(), c);
                        }
                    }
                }
                // How long it took from proposal to close, for the record.
                let days = (rec.updated_ms - rec.created_ms).max(0) as f64 / 86_400_000.0;
                item.factors.insert("duration_actual".into(), Factor { value: (days * 100.0).round() / 100.0, provenance: Provenance::Measured, reason: format!("days from proposing {id} to its close") });
                if actual.is_empty() {
                    item.status = Status::Done;
                    self.store.update_wish(&item, "labops", &format!("{id} closed"), now_ms()).await?;
                } else {
                    self.finish(&mut item, &actual, "labops").await?;
                }
            } else {
                item.status = to;
                self.store.update_wish(&item, "labops", &format!("{id} is {}", rec.change.state.as_str()), now_ms()).await?;
            }
        }
        Ok(())
    }
}
