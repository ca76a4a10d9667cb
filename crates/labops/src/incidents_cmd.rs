//! `labops incidents`: list, show, acknowledge, resolve, silence.
//!
//! These work on the state database directly, so they work whether or not `labops serve` is
//! running; a running server picks decisions and silences up within a second.

use std::process::ExitCode;

use clap::Subcommand;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Table};
use labops_engine::alerting::Incidents;
use labops_engine::changes::date_time;
use labops_store::alerting::Which;
use labops_store::Store;

/// `labops incidents ...`
#[derive(Debug, Subcommand)]
pub enum IncidentsCommand {
    /// One incident: its alerts, suspected causes with evidence, and timeline.
    Show {
        /// Its number.
        id: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Acknowledge an incident: you are on it; escalation stops.
    Ack {
        /// Its number.
        id: i64,
        /// Your name, as recorded (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Resolve an incident (a new firing afterwards opens a new one).
    Resolve {
        /// Its number.
        id: i64,
        /// Your name, as recorded (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Silence alerts for a while, by label matchers or as a maintenance window on an entity
    /// (which covers everything placed on it). Silenced alerts are stored, open nothing, notify
    /// nobody.
    Silence {
        /// A label matcher: `alertname=HighCPU`, `severity!=critical`, `instance=~"pve.*"`.
        /// Repeat for more; all must hold.
        #[arg(long = "match", short = 'm')]
        matchers: Vec<String>,
        /// An entity under maintenance (node, VM, host...), resolved against the inventory.
        #[arg(long)]
        entity: Option<String>,
        /// How long.
        #[arg(long, default_value_t = 60)]
        minutes: u32,
        /// Why.
        #[arg(long, default_value = "")]
        comment: String,
        /// Your name, as recorded (default: $USER).
        #[arg(long)]
        by: Option<String>,
    },
    /// Silences in force or to come.
    Silences {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// What labops learned from closed incidents: per alert name how often it was noise (and
    /// whether it is now quiet), per runbook how its fixes did, and the incidents it quieted.
    Learned {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// End a silence now.
    Unsilence {
        /// Its number.
        id: i64,
    },
}

fn who(by: &Option<String>) -> String {
    by.clone().or_else(|| std::env::var("USER").ok()).filter(|s| !s.trim().is_empty()).unwrap_or_else(|| "cli".into())
}

/// Lists incidents.
pub async fn list(store: &Store, all: bool, json: bool) -> anyhow::Result<ExitCode> {
    let list = store.incidents(if all { Which::All } else { Which::Active }, 500).await?;
    if json {
        let v: Vec<_> = list.iter().map(|(i, n)| labops_server::incident_json(i, *n)).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        println!("{}", if all { "No incidents." } else { "No active incidents (`labops incidents --all` shows closed ones)." });
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(["#", "severity", "state", "title", "alerts", "repeats", "suspected cause", "opened"]);
    for (i, n) in &list {
        let state = match (i.state.as_str(), i.merged_into) {
            ("merged", Some(into)) => format!("merged into #{into}"),
            (s, _) => s.to_string(),
        };
        let cause = i.causes.first().map(|c| format!("{} {} ({:.2})", c.kind, c.name, c.score)).unwrap_or_default();
        t.add_row([i.id.to_string(), i.severity.clone(), state, i.title.clone(), n.to_string(), i.repeats.to_string(), cause, date_time(i.opened_ms)]);
    }
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}

/// Runs a subcommand. `lab` is there for `silence --entity` (resolved against the inventory).
pub async fn run(cmd: &IncidentsCommand, store: Store, lab: Option<&labops_engine::Lab>) -> anyhow::Result<ExitCode> {
    let inc = Incidents::Stored(store.clone());
    match cmd {
        IncidentsCommand::Show { id, json } => {
            let Some(d) = store.incident(*id).await? else {
                eprintln!("error: no incident #{id}; `labops incidents --all` lists them");
                return Ok(ExitCode::from(1));
            };
            if *json {
                println!("{}", serde_json::to_string_pretty(&labops_server::incident_detail_json(&d))?);
                return Ok(ExitCode::SUCCESS);
            }
            let (i, alerts, events) = d;
            println!("#{} [{}] {} ({})", i.id, i.severity, i.title, i.state.as_str());
            if let Some(r) = &i.root {
                println!("about: {r}");
            }
            if !i.causes.is_empty() {
                println!("\nsuspected causes:");
                for c in &i.causes {
                    println!("  {:.2}  {} {}: {}", c.score, c.kind, c.name, c.evidence.join("; "));
                }
            }
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED).set_header(["alert", "status", "severity", "entity", "received", "last seen", "note"]);
            for a in &alerts {
                t.add_row([
                    a.alert.name().to_string(),
                    format!("{:?}", a.alert.status).to_lowercase(),
                    a.alert.severity(),
                    a.entity.clone().unwrap_or_else(|| "(not in the inventory)".into()),
                    a.received.to_string(),
                    date_time(a.last_seen_ms),
                    a.suppressed.clone().unwrap_or_default(),
                ]);
            }
            println!("\n{t}\n\ntimeline:");
            for e in &events {
                println!("  {}  {:<14} {}", date_time(e.at_ms), e.kind, e.detail);
            }
            Ok(ExitCode::SUCCESS)
        }
        IncidentsCommand::Ack { id, by } | IncidentsCommand::Resolve { id, by } => {
            let ack = matches!(cmd, IncidentsCommand::Ack { .. });
            let by = who(by);
            match inc.decide(*id, ack, &by, "cli").await {
                Ok(()) => {
                    println!("incident #{id} {} by {by}", if ack { "acknowledged" } else { "resolved" });
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        IncidentsCommand::Silence { matchers, entity, minutes, comment, by } => {
            let by = who(by);
            let s = match labops_server::alerts::build_silence(lab, matchers, entity.as_deref(), *minutes, &by, comment) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            let id = inc.silence(&s, "cli").await?;
            let what = s.matchers.iter().map(ToString::to_string).chain(s.entity.iter().map(|e| format!("maintenance of {e}"))).collect::<Vec<_>>().join(", ");
            println!("silence #{id}: {what} until {}", date_time(s.ends_ms));
            Ok(ExitCode::SUCCESS)
        }
        IncidentsCommand::Silences { json } => {
            let list = store.silences(labops_engine::lab::now_ms()).await?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED).set_header(["#", "matchers", "maintenance of", "from", "until", "by", "comment"]);
            for s in list {
                t.add_row([
                    s.id.to_string(),
                    s.matchers.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                    s.entity.unwrap_or_default(),
                    date_time(s.starts_ms),
                    date_time(s.ends_ms),
                    s.created_by,
                    s.comment,
                ]);
            }
            println!("{t}");
            Ok(ExitCode::SUCCESS)
        }
        IncidentsCommand::Learned { json } => {
            let now = labops_engine::lab::now_ms();
            let since = now - labops_engine::alerting::LEARN_DAYS * 86_400_000;
            let rules = store.rule_stats(since, labops_engine::alerting::NOISE_MS).await?;
            let quiet = labops_engine::alerting::learned(&rules);
            let runbooks = store.runbook_stats(since).await?;
            let quieted: Vec<_> = store.incidents(Which::All, 500).await?.into_iter().filter(|(i, _)| i.quiet.is_some()).collect();
            if *json {
                let v = serde_json::json!({
                    "rules": rules.iter().map(|r| serde_json::json!({"stats": r, "quiet": quiet.get(&r.name)})).collect::<Vec<_>>(),
                    "runbooks": runbooks,
                    "quieted_incidents": quieted.iter().map(|(i, n)| labops_server::incident_json(i, *n)).collect::<Vec<_>>(),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED).set_header(["alert", "closed incidents", "noise", "acknowledged", "critical", "mean min to resolve", "notified"]);
            for r in &rules {
                t.add_row([
                    r.name.clone(),
                    r.incidents.to_string(),
                    format!("{} ({:.0}%)", r.noise, 100.0 * r.noise as f64 / r.incidents.max(1) as f64),
                    r.acknowledged.to_string(),
                    if r.critical { "yes".into() } else { "no".into() },
                    format!("{:.1}", r.mean_minutes_to_resolve),
                    if quiet.contains_key(&r.name) { "no: learned noise".into() } else { "yes".to_string() },
                ]);
            }
            println!("Alert names, last {} days (noise: resolved by itself within {} min, unacknowledged, nothing proposed):\n{t}", labops_engine::alerting::LEARN_DAYS, labops_engine::alerting::NOISE_MS / 60_000);
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED).set_header(["runbook", "proposed", "withheld", "failed", "alerts resolved after the fix"]);
            for r in &runbooks {
                t.add_row([r.runbook.clone(), r.proposed.to_string(), r.withheld.to_string(), r.failed.to_string(), r.fixed.to_string()]);
            }
            println!("\nRunbooks:\n{t}");
            println!("\nIncidents quieted by learning: {}", quieted.len());
            for (i, _) in &quieted {
                println!("  #{} {} ({}): {}", i.id, i.title, i.state.as_str(), i.quiet.clone().unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
        IncidentsCommand::Unsilence { id } => {
            if store.expire_silence(*id, labops_engine::lab::now_ms(), "cli").await? {
                println!("silence #{id} ended");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("error: no silence #{id} in force; `labops incidents silences` lists them");
                Ok(ExitCode::from(1))
            }
        }
    }
}
