//! Entity resolution: the precision rule.
//!
//! A caller's name maps to exactly one entity or to a structured error; nothing is guessed.
//! Accepted forms, tried in this order:
//!
//! 1. an id: `vm/108`, `proxmox_node/still-fawn`, `pod/web/db-0`;
//! 2. a kind-qualified name: `vm/haos`, `k8s_node/k3s-vm-pve`, `host/nas`;
//! 3. a VMID: `108`;
//! 4. a qualified name: `namespace/name` for Kubernetes objects, `node/name` for storage;
//! 5. a plain name, exact first, then ignoring case.
//!
//! Each step only ever accepts exact matches. When nothing matches, the error lists the nearest
//! real names (by edit similarity) so the caller can ask again precisely; when several match, it
//! lists them all.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::inventory::{Entity, EntityKind, Inventory};

/// A real entity offered to the caller when a name did not resolve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Candidate {
    /// Its id, which always resolves.
    pub id: String,
    /// Its kind.
    pub kind: EntityKind,
    /// Its qualified name.
    pub name: String,
    /// Similarity to what was asked, 0..1 (1 for exact matches of an ambiguous name).
    pub similarity: f64,
}

impl Candidate {
    fn of(e: &Entity, similarity: f64) -> Self {
        Self { id: e.id.clone(), kind: e.kind, name: e.qualified_name(), similarity }
    }
}

/// Why a name did not resolve to exactly one entity.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "error", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResolveError {
    /// Nothing in the inventory has that name.
    #[error("no {} is named {query:?}{}", kinds_phrase(kinds), nearest_phrase(nearest))]
    Unknown {
        /// What was asked.
        query: String,
        /// The kinds that were searched (empty: all).
        kinds: Vec<EntityKind>,
        /// The nearest real names, best first.
        nearest: Vec<Candidate>,
        /// Why none of them matched.
        reason: String,
    },
    /// Several entities have that name.
    #[error("{query:?} is ambiguous: it names {} entities ({}); ask again with an id", candidates.len(), candidates.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", "))]
    Ambiguous {
        /// What was asked.
        query: String,
        /// Every entity it names.
        candidates: Vec<Candidate>,
    },
    /// The name was empty or too long to be a name.
    #[error("invalid name {query:?}: {reason}")]
    Invalid {
        /// What was asked (cut to 80 characters).
        query: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn kinds_phrase(kinds: &[EntityKind]) -> String {
    if kinds.is_empty() {
        "entity".into()
    } else {
        kinds.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(" or ")
    }
}

fn nearest_phrase(nearest: &[Candidate]) -> String {
    if nearest.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = nearest.iter().map(|c| format!("{} ({})", c.name, c.id)).collect();
        format!("; nearest: {}", names.join(", "))
    }
}

/// Longest name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 253;
/// How many nearest names an unknown-name error lists.
pub const NEAREST: usize = 5;

impl Inventory {
    /// Resolves `query` to exactly one entity of one of `kinds` (all kinds when empty).
    pub fn resolve(&self, query: &str, kinds: &[EntityKind]) -> Result<&Entity, ResolveError> {
        let q = query.trim();
        if q.is_empty() || q.len() > MAX_NAME_LEN {
            return Err(ResolveError::Invalid {
                query: q.chars().take(80).collect(),
                reason: if q.is_empty() {
                    "a name is required".into()
                } else {
                    format!("longer than {MAX_NAME_LEN} bytes")
                },
            });
        }
        let wanted = |e: &Entity| kinds.is_empty() || kinds.contains(&e.kind);
        let pick = |found: Vec<usize>| -> Option<Result<&Entity, ResolveError>> {
            let found: Vec<usize> = found.into_iter().filter(|&i| wanted(self.at(i))).collect();
            match found.len() {
                0 => None,
                1 => Some(Ok(self.at(found[0]))),
                _ => Some(Err(ResolveError::Ambiguous {
                    query: q.to_string(),
                    candidates: found.iter().map(|&i| Candidate::of(self.at(i), 1.0)).collect(),
                })),
            }
        };

        // 1. An id.
        if let Some(i) = self.index_of(q)
            && let Some(r) = pick(vec![i]) {
                return r;
            }
        // 2. kind/name.
        if let Some((kind, rest)) = q.split_once('/')
            && let Some(kind) = EntityKind::parse(kind)
                && (kinds.is_empty() || kinds.contains(&kind)) {
                    let sub = self.resolve(rest, &[kind]);
                    if !matches!(sub, Err(ResolveError::Unknown { .. })) {
                        return sub;
                    }
                }
        // 3. A VMID, written as PVE writes it (no sign, no leading zero).
        if let Some(vmid) = q.parse::<u32>().ok().filter(|v| v.to_string() == q)
            && let Some(r) = pick(self.by_vmid(vmid).to_vec()) {
                return r;
            }
        let lower = q.to_lowercase();
        // 4. namespace/name or node/name.
        if q.contains('/')
            && let Some(found) = self.by_qualified.get(&lower) {
                let exact: Vec<usize> =
                    found.iter().copied().filter(|&i| self.at(i).qualified_name() == q).collect();
                if let Some(r) = pick(exact) {
                    return r;
                }
                if let Some(r) = pick(found.clone()) {
                    return r;
                }
            }
        // 5. A name: exact spelling first, then ignoring case.
        if let Some(found) = self.by_name.get(&lower) {
            let exact: Vec<usize> = found.iter().copied().filter(|&i| self.at(i).name == q).collect();
            if let Some(r) = pick(exact) {
                return r;
            }
            if let Some(r) = pick(found.clone()) {
                return r;
            }
        }
        Err(self.unknown(q, kinds))
    }

    fn unknown(&self, q: &str, kinds: &[EntityKind]) -> ResolveError {
        let lower = q.to_lowercase();
        // Prefilter by shared character bigrams (cheap bit operations over every entity), then
        // score the best few hundred exactly with Jaro-Winkler.
        let qmask = crate::inventory::bigram_mask(&lower);
        let qbits = qmask.count_ones().max(1);
        let mut pre: Vec<(u32, usize)> = self
            .search
            .iter()
            .enumerate()
            .filter(|(i, _)| kinds.is_empty() || kinds.contains(&self.at(*i).kind))
            .map(|(i, k)| ((2 * (qmask & k.mask).count_ones() * 1000) / (qbits + k.mask.count_ones()), i))
            .collect();
        const EXACT_SCORED: usize = 256;
        if pre.len() > EXACT_SCORED {
            pre.select_nth_unstable_by(EXACT_SCORED, |a, b| b.0.cmp(&a.0));
            pre.truncate(EXACT_SCORED);
        }
        let all_scored: Vec<(f64, &Entity)> = pre
            .into_iter()
            .map(|(_, i)| {
                let k = &self.search[i];
                let s = strsim::jaro_winkler(&lower, &k.name)
                    .max(strsim::jaro_winkler(&lower, &k.qualified))
                    .max(strsim::jaro_winkler(&lower, &k.id));
                (s, self.at(i))
            })
            .collect();
        let mut scored: Vec<(f64, &Entity)> = all_scored.iter().copied().filter(|(s, _)| *s >= 0.6).collect();
        // Nothing close, but the caller asked for a few kinds (a node, a guest): list the real
        // ones anyway, so the answer always shows what exists.
        let nothing_close = scored.is_empty();
        if nothing_close && !kinds.is_empty() {
            scored = all_scored;
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.id.cmp(&b.1.id)));
        scored.truncate(NEAREST);
        let reason = if self.entities().is_empty() {
            "the inventory is empty: no source has reported yet, or none is configured".to_string()
        } else if let Some(other) = (!kinds.is_empty()).then(|| self.resolve(q, &[]).ok()).flatten() {
            format!(
                "{q:?} exists, but it is a {} ({}), not a {}",
                other.kind,
                other.id,
                kinds_phrase(kinds)
            )
        } else if scored.is_empty() {
            "no id, VMID or name matches exactly, and no name is close".to_string()
        } else if nothing_close {
            format!("no {} has that name or a close one; these are some that exist", kinds_phrase(kinds))
        } else {
            "no id, VMID or name matches exactly; names are never completed or guessed".to_string()
        };
        ResolveError::Unknown {
            query: q.to_string(),
            kinds: kinds.to_vec(),
            nearest: scored.into_iter().map(|(s, e)| Candidate::of(e, (s * 1000.0).round() / 1000.0)).collect(),
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::tests::lab;

    fn ok(inv: &Inventory, q: &str) -> String {
        inv.resolve(q, &[]).map(|e| e.id.clone()).unwrap_or_else(|e| panic!("{q}: {e}"))
    }

    #[test]
    fn every_accepted_form_resolves() {
        let inv = lab();
        assert_eq!(ok(&inv, "vm/108"), "vm/108");
        assert_eq!(ok(&inv, "108"), "vm/108");
        assert_eq!(ok(&inv, "103"), "lxc/103");
        assert_eq!(ok(&inv, "proxmox-backup-server"), "lxc/103");
        assert_eq!(ok(&inv, "still-fawn"), "proxmox_node/still-fawn");
        assert_eq!(ok(&inv, "Still-Fawn"), "proxmox_node/still-fawn");
        assert_eq!(ok(&inv, "web/db-0"), "pod/web/db-0");
        assert_eq!(ok(&inv, "still-fawn/local-zfs"), "storage/still-fawn/local-zfs");
        assert_eq!(ok(&inv, "vm/k3s-vm-still-fawn"), "vm/108");
        assert_eq!(ok(&inv, "k8s_node/k3s-vm-still-fawn"), "k8s_node/k3s-vm-still-fawn");
        assert_eq!(ok(&inv, "host/nas"), "host/nas");
        assert_eq!(ok(&inv, " nas "), "host/nas");
    }

    #[test]
    fn a_vm_and_its_k8s_node_share_a_name_and_are_ambiguous_until_narrowed() {
        let inv = lab();
        match inv.resolve("k3s-vm-still-fawn", &[]) {
            Err(ResolveError::Ambiguous { candidates, .. }) => {
                let ids: Vec<_> = candidates.iter().map(|c| c.id.as_str()).collect();
                assert_eq!(ids, ["vm/108", "k8s_node/k3s-vm-still-fawn"]);
            }
            other => panic!("expected ambiguity, got {other:?}"),
        }
        assert_eq!(inv.resolve("k3s-vm-still-fawn", &[EntityKind::Vm]).unwrap().id, "vm/108");
        // Storage of the same name on two nodes, and two things named "frontend".
        assert!(matches!(inv.resolve("local-zfs", &[]), Err(ResolveError::Ambiguous { .. })));
        match inv.resolve("frontend", &[]) {
            Err(ResolveError::Ambiguous { candidates, .. }) => assert_eq!(candidates.len(), 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_names_list_the_nearest_real_ones() {
        let inv = lab();
        match inv.resolve("still-fawm", &[]) {
            Err(ResolveError::Unknown { nearest, reason, .. }) => {
                assert_eq!(nearest[0].id, "proxmox_node/still-fawn");
                assert!(reason.contains("never completed"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        // A prefix is not a match.
        assert!(matches!(inv.resolve("still", &[]), Err(ResolveError::Unknown { .. })));
        assert!(matches!(inv.resolve("999", &[]), Err(ResolveError::Unknown { .. })));
    }

    #[test]
    fn a_name_with_nothing_close_still_lists_real_entities_of_the_asked_kind() {
        let inv = lab();
        match inv.resolve("no-such-node", &[EntityKind::ProxmoxNode]) {
            Err(ResolveError::Unknown { nearest, reason, .. }) => {
                let ids: Vec<&str> = nearest.iter().map(|c| c.id.as_str()).collect();
                assert_eq!(ids.len(), 2, "{ids:?}");
                assert!(ids.iter().all(|i| i.starts_with("proxmox_node/")));
                assert!(reason.contains("some that exist"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_name_of_the_wrong_kind_says_what_it_is() {
        let inv = lab();
        match inv.resolve("still-fawn", &[EntityKind::Vm, EntityKind::Lxc]) {
            Err(ResolveError::Unknown { reason, .. }) => {
                assert!(reason.contains("proxmox_node"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn empty_and_oversized_names_are_invalid() {
        let inv = lab();
        assert!(matches!(inv.resolve("  ", &[]), Err(ResolveError::Invalid { .. })));
        assert!(matches!(inv.resolve(&"x".repeat(300), &[]), Err(ResolveError::Invalid { .. })));
    }

    #[test]
    fn messages_read_as_sentences() {
        let inv = lab();
        let e = inv.resolve("still-fawm", &[]).unwrap_err().to_string();
        assert!(e.starts_with("no entity is named \"still-fawm\"; nearest: still-fawn (proxmox_node/still-fawn)"), "{e}");
    }
}

#[cfg(test)]
mod props {
    use proptest::prelude::*;

    use crate::inventory::{ids, Entity, EntityKind, Inventory, Part};

    /// The ways a query may legitimately identify an entity.
    fn identifies(q: &str, e: &Entity) -> bool {
        let q = q.trim();
        let ql = q.to_lowercase();
        q == e.id
            || e.name.to_lowercase() == ql
            || e.qualified_name().to_lowercase() == ql
            || e.vmid.is_some_and(|v| v.to_string() == q)
            || q.split_once('/').is_some_and(|(k, rest)| {
                k == e.kind.as_str() && identifies(rest, e)
            })
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof!["[a-c]{1,3}", "[a-c]{1,2}-[a-c]", "[0-9]{1,3}", Just("A".to_string())]
    }

    fn inventory() -> impl Strategy<Value = Inventory> {
        let kinds = prop::sample::select(EntityKind::ALL.to_vec());
        prop::collection::vec((kinds, name(), name(), 1u32..300), 0..30).prop_map(|items| {
            let mut p = Part::default();
            for (kind, n, ns, vmid) in items {
                let (id, e) = match kind {
                    EntityKind::Vm => (ids::vm(vmid), Some(vmid)),
                    EntityKind::Lxc => (ids::lxc(vmid), Some(vmid)),
                    EntityKind::Storage => (ids::storage(&ns, &n), None),
                    k if k.is_namespaced() => (format!("{}/{ns}/{n}", k.as_str()), None),
                    k => (format!("{}/{n}", k.as_str()), None),
                };
                let mut ent = Entity::new(kind, id, n, "running", "test");
                ent.vmid = e;
                if kind.is_namespaced() {
                    ent.namespace = Some(ns);
                } else if kind == EntityKind::Storage {
                    ent.node = Some(ns);
                }
                p.entities.push(ent);
            }
            Inventory::build([p])
        })
    }

    fn query() -> impl Strategy<Value = String> {
        prop_oneof![
            name(),
            (name(), name()).prop_map(|(a, b)| format!("{a}/{b}")),
            (prop::sample::select(EntityKind::ALL.to_vec()), name())
                .prop_map(|(k, n)| format!("{}/{n}", k.as_str())),
            (prop::sample::select(EntityKind::ALL.to_vec()), name(), name())
                .prop_map(|(k, a, b)| format!("{}/{a}/{b}", k.as_str())),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// No name resolves to an entity it does not identify.
        #[test]
        fn resolution_never_picks_an_entity_the_name_does_not_identify(
            inv in inventory(), q in query(), narrow in prop::option::of(prop::sample::select(EntityKind::ALL.to_vec())),
        ) {
            let kinds: Vec<EntityKind> = narrow.into_iter().collect();
            match inv.resolve(&q, &kinds) {
                Ok(e) => {
                    prop_assert!(identifies(&q, e), "{q:?} resolved to {} ({})", e.id, e.qualified_name());
                    prop_assert!(kinds.is_empty() || kinds.contains(&e.kind));
                }
                Err(crate::ResolveError::Ambiguous { candidates, .. }) => {
                    prop_assert!(candidates.len() > 1);
                    for c in &candidates {
                        prop_assert!(identifies(&q, inv.get(&c.id).unwrap()), "{q:?} listed {}", c.id);
                    }
                }
                Err(crate::ResolveError::Unknown { nearest, .. }) => {
                    // Nothing of the wanted kinds identifies it.
                    let hit = inv.entities().iter().any(|e| (kinds.is_empty() || kinds.contains(&e.kind)) && identifies(&q, e));
                    prop_assert!(!hit, "{q:?} is unknown but an entity identifies it");
                    for c in &nearest { prop_assert!(inv.get(&c.id).is_some()); }
                }
                Err(e) => prop_assert!(false, "{e}"),
            }
        }

        /// Every entity is reachable through its id.
        #[test]
        fn every_id_resolves_to_itself(inv in inventory()) {
            for e in inv.entities() {
                prop_assert_eq!(&inv.resolve(&e.id, &[]).unwrap().id, &e.id);
            }
        }
    }
}
