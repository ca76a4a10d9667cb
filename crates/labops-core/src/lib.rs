//! The labops domain: pure types and logic, no I/O.
//!
//! Everything here is testable with plain values: no async runtime, no network, no disk, no clock
//! (callers pass the current time in). The crate is laid out as:
//!
//! - [`inventory`]: the typed model of the lab (Proxmox nodes, guests, storage, Kubernetes
//!   objects, static hosts), the links between them, and [`inventory::Inventory::impact_of`].
//! - [`resolve`]: the precision rule. Any name from outside is mapped to exactly one entity, or
//!   fails with the nearest real names. Nothing is guessed.
//! - [`source`]: how fresh and how healthy each source's data is.
//! - [`change`]: the change record's lifecycle (proposed -> ... -> closed), with human-only
//!   approval bound to the plan shown (the start of issue #4; not wired to runs yet).
//! - [`workflow`]: workflow graphs (kro ResourceGraphDefinitions): parsing, validation that
//!   reports every error with its line and column, and plans of parallel stages.

pub mod change;
pub mod inventory;
pub mod wishlist;
pub mod workflow;
pub mod resolve;
pub mod source;

pub use inventory::{Entity, EntityKind, Inventory, Relation, RelationKind, Tags, Usage};
pub use resolve::{Candidate, ResolveError};
pub use source::{SourceHealth, SourceState, SourceStatus};
