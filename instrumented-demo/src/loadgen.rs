//! The load generator.

use crate::Result;
use crate::services::ServiceContext;

/// Runs the load generator.
pub async fn run(_ctx: ServiceContext) -> Result<()> {
    Ok(())
}
