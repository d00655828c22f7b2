//! Sans-I/O RFC 6455 WebSocket protocol core.

pub mod mask;
pub mod utf8;
