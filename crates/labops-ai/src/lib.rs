//! The hybrid AI engine's policy core: what a request may reveal and where it may go.
//!
//! - [`privacy`]: classifies a request as `sensitive` or `public` from its content (secrets,
//!   keys, tokens, configs, internal addresses and host names) and its purpose (the owner's
//!   split: configs, security, monitoring and real-time decisions stay local; architecture,
//!   research and code may use the cloud), with every reason named.
//! - [`redact`]: replaces secrets and configured sensitive values with placeholders before
//!   anything leaves the machine, and restores them in the answer.
//! - [`router`]: the privacy-first decision: local, cloud, the MCP client's model (sampling,
//!   which leaves the machine too), or refused, with the reason.
//! - [`model`]: what labops says to a model and gets back, and the [`model::Model`] trait.
//! - [`provider`]: the models on genai (Ollama, OpenAI-compatible, Anthropic, OpenAI), with
//!   tool calls and streaming.
//! - [`engine`]: every call goes through [`engine::Ai::chat`]: routed, redacted, falling back,
//!   within budget, recorded.
//!
//! - [`agent`]: the universal task processor (an agent loop over the read-only tools) and its
//!   guards: grounding, untrusted text, limits.
//!
//! `privacy`, `redact` and `router` are pure; `provider` and `engine` do the I/O.

pub mod agent;
pub mod engine;
pub mod model;
pub mod privacy;
pub mod provider;
pub mod redact;
pub mod router;
