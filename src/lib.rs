//! xhubd receives Meta Webhooks behind Nginx, verifies them, stores them durably,
//! drops Meta's retries and delivers each genuine event to an upstream backend.
//!
//! # Layout
//!
//! The data path reads top to bottom:
//!
//! - [`cli`]: the command line as clap parses it (raw options).
//! - [`config`]: those options turned once into a validated [`config::Config`].
//! - [`listener`]: binds `unix:` and TCP listeners, or takes the socket systemd passes.
//! - [`server`]: the accept loop, connection limits and graceful shutdown.
//! - [`webhook`]: one request: client-certificate subject check, verification
//!   challenge, signature, size and JSON checks, then the spool.
//! - [`spool`]: the store (SQLite on one machine, or PostgreSQL shared by several): one
//!   writer with group commit, de-duplication, and the queries that feed delivery.
//! - [`delivery`]: sends stored events to the upstream with retries and backoff.
//! - [`admin`]: the optional admin listener: health, metrics, status page, replay;
//!   [`metrics`] holds the Prometheus registry.
//! - [`daemon`]: wires the parts together for `xhubd serve`; [`notify`] tells systemd
//!   when it is ready, stopping, and alive (watchdog).
//! - [`sign`]: `xhubd sign`, the signature Meta would send for a body; [`docs`]: man
//!   pages and shell completions.
//! - [`events_cli`], [`spool_cli`], [`check`], [`send_test`]: the operator's commands;
//!   [`output`] writes their output like a Unix tool.
//! - [`types`]: plain types the stages share (dedup keys); it uses no other module.
//! - [`secret`], [`tls`], [`duration`], [`time`], [`logging`], [`shutdown`], [`fd_limit`]:
//!   small helpers.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod admin;
pub mod check;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod docs;
pub mod duration;
pub mod events_cli;
pub mod fd_limit;
pub mod last_hour;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod output;
pub mod secret;
pub mod send_test;
pub mod server;
pub mod service_env;
pub mod shutdown;
pub mod sign;
pub mod spool;
pub mod spool_cli;
pub mod time;
pub mod tls;
pub mod types;
pub mod webhook;
