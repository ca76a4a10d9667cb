//! labops transports: the only crate that knows MCP, HTTP and their wire formats.
//!
//! - [`mcp`]: the MCP server (tools, the `labops://inventory` resource, prompts), usable over
//!   stdio ([`serve_stdio`]) and Streamable HTTP.
//! - [`http`]: the axum application: `/mcp`, the REST API under `/api/v1`, `/healthz`, with the
//!   Host check, bearer token and body limit in front of everything.
//! - [`tasks`]: the task processor's toolbox (the MCP server's own read-only tools), the MCP
//!   client's model through sampling, and the task view `process_task` returns.
//!
//! Handlers hold no logic: each calls one `labops_engine::service` function.

pub mod http;
pub mod mcp;
pub mod tasks;

use labops_engine::Lab;
use rmcp::ServiceExt;

/// Serves MCP over stdin/stdout until the client disconnects. Nothing else may write to stdout.
pub async fn serve_stdio(
    lab: Lab,
    changes: Option<labops_engine::changes::Changes>,
    tasks: Option<labops_engine::tasks::Tasks>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let service = mcp::LabMcp::new(lab, "mcp:stdio").with_changes(changes).with_tasks(tasks).serve(rmcp::transport::stdio()).await?;
    service.waiting().await?;
    Ok(())
}
