//! Servers for testing clients: an echo server (what `wsfleet run` starts
//! for its demo, and what tests and benchmarks talk to) and a hostile one
//! (`wsfleet serve --chaos MODE`).

mod chaos;
mod echo;

pub use chaos::{ChaosMode, ChaosServer, ChaosSettings};
pub use echo::EchoServer;
