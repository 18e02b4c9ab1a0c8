//! `xhubd sign`: prints the `X-Hub-Signature-256` value Meta would send for a body, to
//! test a deployment by hand (`curl -H "X-Hub-Signature-256: $(xhubd sign …)"`).

use std::io::Read;

use anyhow::Context;

use crate::cli::SignArgs;
use crate::secret::{self, load_app_secrets};
use crate::webhook::signature;

/// Signs the file (or standard input) and returns the header value. The secret is
/// loaded by the daemon's rule (trailing whitespace removed, empty refused), so a
/// signature made here is one the daemon accepts.
pub fn run(args: &SignArgs) -> anyhow::Result<String> {
    let secrets = load_app_secrets(&secret::require(
        "--secret",
        args.secret.as_deref(),
        args.secret_file.as_deref(),
        "app_secret",
    )?)
    .context("App Secret")?;
    let body = match &args.file {
        Some(path) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?
        }
        None => {
            let mut body = Vec::new();
            std::io::stdin()
                .read_to_end(&mut body)
                .context("cannot read standard input")?;
            body
        }
    };
    let first = secrets
        .first()
        .context("no App Secret given: the value is empty")?;
    Ok(signature::sign(first.expose(), &body))
}
