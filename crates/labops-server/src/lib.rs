//! labops transports: the only crate that knows MCP, HTTP and their wire formats.
//!
//! - [`mcp`]: the MCP server (tools, the `labops://inventory` resource, prompts), usable over
//!   stdio ([`serve_stdio`]) and Streamable HTTP.
//! - [`http`]: the axum application: `/mcp`, the REST API under `/api/v1`, `/healthz`, with the
//!   Host check, bearer token and body limit in front of everything.
//!
//! Handlers hold no logic: each calls one `labops_engine::service` function.

pub mod http;
pub mod mcp;

use labops_engine::Lab;
use rmcp::ServiceExt;

/// Serves MCP over stdin/stdout until the client disconnects. Nothing else may write to stdout.
pub async fn serve_stdio(lab: Lab, changes: Option<labops_engine::changes::Changes>) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let service = mcp::LabMcp::new(lab, "mcp:stdio").with_changes(changes).serve(rmcp::transport::stdio()).await?;
    service.waiting().await?;
    Ok(())
}
