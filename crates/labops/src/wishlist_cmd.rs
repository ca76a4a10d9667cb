//! `labops wishlist ...`: the wishlist ranked by ROI, explained, proposed, learned from.

use std::collections::BTreeMap;
use std::process::ExitCode;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::Table;
use labops_core::change::Actor;
use labops_core::wishlist::Provenance;
use labops_engine::wishlist::{NewItem, Wishlist};

/// `labops wishlist ...`
#[derive(Debug, clap::Subcommand)]
pub enum WishlistCommand {
    /// Add an item.
    Add {
        /// One line (`Tailscale integration`).
        #[arg(long)]
        title: String,
        /// `networking`, `storage`, `ai`, `documents`...
        #[arg(long)]
        category: String,
        /// What and why.
        #[arg(long, default_value = "")]
        description: String,
        /// `owner`, `incident`, `anomaly`, `forecast`, `predicted`, `community`.
        #[arg(long, default_value = "owner")]
        source: String,
        /// An item it needs first (repeat).
        #[arg(long = "depends-on")]
        depends_on: Vec<i64>,
        /// Hardware it needs.
        #[arg(long)]
        hardware: Option<String>,
        /// A factor: `time_saved=10` (hours/month), `cost_once=150`, `cost_monthly=2`,
        /// `learning=8`, `security=9`, `complexity=6`, `risk=3` (0-10), `effort=4` (hours). Repeat.
        #[arg(long = "factor")]
        factors: Vec<String>,
        /// Why those values.
        #[arg(long, default_value = "")]
        reason: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The ranked wishlist with score bars.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Why an item scores what it scores: every factor and the formula with its numbers.
    Explain {
        /// The item's number.
        item: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Set one factor of an item (`complexity=4`), as the owner's value or, with `--estimate`,
    /// as an estimate.
    Set {
        /// The item's number.
        item: i64,
        /// `name=value`.
        factor: String,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
        /// Mark it as an estimate rather than the owner's value.
        #[arg(long)]
        estimate: bool,
    },
    /// Ask the AI engine to estimate the factors nobody gave (marked as estimates; the privacy
    /// router decides which model may see the item).
    Estimate {
        /// The item's number.
        item: i64,
    },
    /// Propose the best item whose dependencies are done as a change, for approval.
    Next {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Record what an item actually took (`effort=6`, `cost_once=180`...): it is done, and the
    /// model learns.
    Outcome {
        /// The item's number.
        item: i64,
        /// `name=value`, repeat.
        actual: Vec<String>,
    },
    /// Drop an item: it will not be done.
    Drop {
        /// The item's number.
        item: i64,
        /// Why.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// What the model learned: multipliers per category and factor, the error over time.
    Learning {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

fn pairs(items: &[String]) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for p in items {
        let (k, v) = p.split_once('=').ok_or_else(|| anyhow::anyhow!("{p:?} is not name=value (like complexity=6)"))?;
        let v: f64 = v.trim().parse().map_err(|_| anyhow::anyhow!("{p:?}: {v:?} is not a number"))?;
        out.insert(k.trim().to_string(), v);
    }
    Ok(out)
}

fn bar(score: f64) -> String {
    let full = (score.clamp(0.0, 10.0) * 2.0).round() as usize;
    format!("{}{}", "█".repeat(full), "·".repeat(20 - full))
}

fn user() -> String {
    std::env::var("USER").ok().filter(|u| !u.is_empty()).unwrap_or_else(|| "owner".into())
}

/// Runs one wishlist command.
pub async fn run(cmd: &WishlistCommand, w: Wishlist, ai: Option<(std::sync::Arc<labops_ai::engine::Ai>, String)>) -> anyhow::Result<ExitCode> {
    let who = user();
    match cmd {
        WishlistCommand::Add { title, category, description, source, depends_on, hardware, factors, reason, json } => {
            let item = w
                .add(
                    NewItem {
                        title: title.clone(),
                        description: description.clone(),
                        source: Some(source.clone()),
                        category: category.clone(),
                        depends_on: depends_on.clone(),
                        hardware: hardware.clone(),
                        factors: pairs(factors)?,
                        reason: reason.clone(),
                    },
                    &who,
                )
                .await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&item)?);
            } else {
                println!("added wishlist #{}: {}", item.id, item.title);
                let missing = item.missing();
                if !missing.is_empty() {
                    println!("not given (counted at neutral defaults until set): {}", missing.join(", "));
                }
            }
        }
        WishlistCommand::List { json } => {
            let list = w.list().await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            if list.is_empty() {
                println!("the wishlist is empty; `labops wishlist add --title ... --category ...` adds an item");
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED).set_header(["#", "rank", "item", "category", "ROI", "", "status", "waits for"]);
            for l in &list {
                t.add_row([
                    l.item.id.to_string(),
                    l.rank.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
                    l.item.title.clone(),
                    l.item.category.clone(),
                    format!("{:.1}", l.breakdown.score),
                    bar(l.breakdown.score),
                    serde_json::to_value(l.item.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
                    l.blocked_by.iter().map(|b| format!("#{b}")).collect::<Vec<_>>().join(" "),
                ]);
            }
            println!("{t}");
        }
        WishlistCommand::Explain { item, json } => {
            let e = w.explain(*item).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&e)?);
                return Ok(ExitCode::SUCCESS);
            }
            let i = &e.listed.item;
            println!("#{} {} ({}): ROI {:.1}/10 {}", i.id, i.title, i.category, e.listed.breakdown.score, bar(e.listed.breakdown.score));
            match e.listed.rank {
                Some(r) => println!("rank {r}{}", if e.listed.blocked_by.is_empty() { ", no open dependencies".to_string() } else { format!(", waits for {}", e.listed.blocked_by.iter().map(|b| format!("#{b}")).collect::<Vec<_>>().join(", ")) }),
                None => println!("not ranked: {}", serde_json::to_value(i.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()),
            }
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED).set_header(["factor", "value", "unit", "from", "why"]);
            for f in &e.factors {
                let from = match f.provenance {
                    Provenance::Owner => "owner",
                    Provenance::Estimate => "AI estimate",
                    Provenance::Measured => "measured",
                    Provenance::Default => "default",
                };
                t.add_row([f.name.clone(), format!("{}", f.value), f.unit.clone(), from.to_string(), f.reason.clone()]);
            }
            println!("{t}");
            for line in &e.formula {
                println!("  {line}");
            }
        }
        WishlistCommand::Set { item, factor, reason, estimate } => {
            let p = pairs(std::slice::from_ref(factor))?;
            let (name, value) = p.into_iter().next().ok_or_else(|| anyhow::anyhow!("give name=value"))?;
            let prov = if *estimate { Provenance::Estimate } else { Provenance::Owner };
            w.set_factor(*item, &name, value, prov, reason, &who).await?;
            println!("wishlist #{item}: {name} = {value}");
        }
        WishlistCommand::Estimate { item } => {
            let (ai, context) = ai.ok_or_else(|| anyhow::anyhow!("no model is configured: set [ai.local] (or [ai.cloud]) in labops.toml; see `labops init`"))?;
            let (i, notes) = w.estimate(*item, &ai, &context, &who).await?;
            for f in i.factors.iter().filter(|(_, f)| f.provenance == Provenance::Estimate) {
                println!("{} = {}  ({})", f.0, f.1.value, f.1.reason);
            }
            for n in &notes {
                println!("note: {n}");
            }
        }
        WishlistCommand::Next { json } => match w.next(Actor::Human(who.clone())).await? {
            Some(p) if *json => println!("{}", serde_json::to_string_pretty(&p)?),
            Some(p) => {
                println!("proposed wishlist #{} {} (ROI {:.1}/10) as change {}{}", p.item, p.title, p.score, p.change, p.issue.map(|n| format!(", issue #{n}")).unwrap_or_default());
                println!("your part: about {:.1} hours; success: {}", p.owner_hours, p.success_metrics.join("; "));
                println!("approve it with `labops change approve {}`", p.change);
            }
            None => {
                println!("nothing to propose: no open idea has all its dependencies done");
            }
        },
        WishlistCommand::Outcome { item, actual } => {
            let i = w.record_outcome(*item, &pairs(actual)?, &who).await?;
            println!("wishlist #{} is done; recorded {}", i.id, actual.join(", "));
        }
        WishlistCommand::Drop { item, reason } => {
            w.drop_item(*item, reason, &who).await?;
            println!("wishlist #{item} dropped");
        }
        WishlistCommand::Learning { json } => {
            let l = w.learning().await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&l)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!("{} outcome(s) recorded", l.outcomes);
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED).set_header(["category", "factor", "multiplier", "outcomes"]);
            for (c, f, m, n) in &l.multipliers {
                t.add_row([c.clone(), f.clone(), format!("{m:.2}"), n.to_string()]);
            }
            println!("{t}");
            if !l.error_over_time.is_empty() {
                println!("mean error per 5 outcomes (|ln(actual/predicted)|): {}", l.error_over_time.iter().map(|e| format!("{e:.2}")).collect::<Vec<_>>().join(" -> "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
