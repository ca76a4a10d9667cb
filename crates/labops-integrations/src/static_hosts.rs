//! Hosts declared in the config: machines without an API (NAS, router, switches).

use std::collections::BTreeMap;

use labops_core::inventory::{ids, Entity, EntityKind, Part};
use serde::{Deserialize, Serialize};

/// Name of this source.
pub const SOURCE: &str = "static";

/// One `[[hosts]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// The name labops and you use for it (`nas`). Must be unique.
    pub name: String,
    /// IP address or DNS name.
    #[serde(default)]
    pub address: Option<String>,
    /// What it is: `nas`, `router`, `switch`, `server`... Free text.
    #[serde(default)]
    pub role: Option<String>,
    /// Free-form labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The declared hosts as inventory entities (status `declared`: labops cannot see them).
pub fn to_part(hosts: &[HostConfig]) -> Part {
    let mut part = Part::default();
    for h in hosts {
        let mut e = Entity::new(EntityKind::Host, ids::host(&h.name), &h.name, "declared", SOURCE);
        e.addresses.extend(h.address.clone());
        e.labels = h.labels.clone().into();
        if let Some(r) = &h.role {
            e.attributes.insert("role".into(), r.clone());
        }
        part.entities.push(e);
    }
    part
}
