//! A command's output to standard output, the way Unix tools write it: when the reader
//! goes away (`xhubd events show ID | head -1`), the output ends quietly with status 0,
//! never a panic. Rust ignores `SIGPIPE`, so a write to a closed pipe is an error
//! (`BrokenPipe`) that `println!` would turn into a panic.

use std::io::{self, Write};
use std::process::ExitCode;

/// Writes `text` and a final newline (unless it has one) to standard output.
/// `Ok` also when the reader has gone away.
pub fn print(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    let written = out
        .write_all(text.as_bytes())
        .and_then(|()| {
            if text.ends_with('\n') {
                Ok(())
            } else {
                out.write_all(b"\n")
            }
        })
        .and_then(|()| out.flush());
    match written {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Writes `text` like [`print`](fn@print) and returns the exit status: 0, or 1 with a line on
/// standard error when standard output cannot be written (a full disk, say).
pub fn print_and_exit(text: &str) -> ExitCode {
    match print(text) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xhubd: cannot write the output: {e}");
            ExitCode::from(1)
        }
    }
}
