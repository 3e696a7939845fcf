//! agentrun: runs security-analytics integrations ("agents") on a subprocess, Docker or Podman.
//!
//! An integration is a package (a folder or a `.zip`) with a `Dockerfile` whose `ENTRYPOINT` is
//! the agent, and an optional `integration.toml` manifest that describes where the action appears
//! in the platform's UI, the form the user fills in and the agent's environment. An agent reads
//! one JSON message on stdin and writes one JSON reply on stdout.
//!
//! The crate is organised around the [`dispatcher::Dispatcher`], which builds protocol messages
//! ([`protocol`]), validates forms and substitutes `SIFT-*` keywords ([`forms`]), and hands the
//! bytes to an [`agentrun_executor::Executor`] backend.

pub mod backends;
pub mod cli;
pub mod config;
pub mod dispatcher;
pub mod error;
pub mod forms;
pub mod manifest;
pub mod package;
pub mod protocol;
pub mod service;
pub mod store;
mod suggest;
pub mod warning;

pub use agentrun_executor as executor;
