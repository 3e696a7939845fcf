//! Helpers shared by the integration tests of the `agentrun` package.
//!
//! Each test file declares `mod common;` and uses the modules it needs:
//!
//! - [`process`]: whether a process still runs;
//! - [`runtimes`]: whether Docker or Podman can run jobs here, and whether a test that cannot
//!   reach one must fail (`AGENTRUN_REQUIRE_RUNTIMES`) or skip;
//! - [`testagent`]: the statically linked test agent and a package that runs it on every backend;
//! - [`webhook`]: a loopback HTTP server that records what an agent posts.

pub mod process;
pub mod runtimes;
pub mod testagent;
pub mod webhook;
