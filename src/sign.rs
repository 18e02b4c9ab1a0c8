//! `xhubd sign`: prints the `X-Hub-Signature-256` value Meta would send for a body, to
//! test a deployment by hand (`curl -H "X-Hub-Signature-256: $(xhubd sign …)"`).

use std::io::Read;

use anyhow::Context;

use crate::cli::SignArgs;
use crate::webhook::signature;

/// Signs the file (or standard input) and returns the header value.
pub fn run(args: &SignArgs) -> anyhow::Result<String> {
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
    Ok(signature::sign(args.secret.as_bytes(), &body))
}
