//! The open-files limit: every connection is a file descriptor, so at start xhubd raises
//! its soft limit to the hard limit (as Nginx's `worker_rlimit_nofile` does), and warns
//! when even that cannot hold `--max-connections` on both listeners.

use tracing::{debug, warn};

/// Descriptors beyond the connections: the spool's files, upstream connections, logs.
const RESERVED: u64 = 256;

/// Raises the soft `RLIMIT_NOFILE` as far as allowed, and says so when the limit in
/// force is low for `max_connections`.
pub fn raise_for(max_connections: usize) {
    let wanted = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(RESERVED);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            if limit < wanted {
                warn!(
                    open_files_limit = limit,
                    max_connections,
                    "the open-files limit is low for --max-connections; raise LimitNOFILE= or lower --max-connections"
                );
            } else {
                debug!(open_files_limit = limit, "open-files limit");
            }
        }
        Err(e) => warn!(error = %e, "cannot read or raise the open-files limit"),
    }
}
