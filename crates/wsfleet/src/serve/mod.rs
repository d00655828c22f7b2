//! Servers for testing clients: an echo server (what `wsfleet run` starts
//! for its demo, and what tests and benchmarks talk to).

mod echo;

pub use echo::EchoServer;
