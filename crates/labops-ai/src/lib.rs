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
//!
//! Pure: no network, no clock; the providers and the agent loop build on it.

pub mod privacy;
pub mod redact;
pub mod router;
