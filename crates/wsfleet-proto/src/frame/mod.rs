//! Frame layer: header parse/encode, opcodes, close codes and close frames.

mod close;
mod header;
mod opcode;

pub use close::{CloseCode, CloseFrame};
pub use header::{FrameHeader, MAX_HEADER_LEN, encode_header, parse_header};
pub use opcode::OpCode;

/// Largest payload of a control frame (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;
/// Bytes of the status code that starts a non-empty close payload (RFC 6455 §5.5.1).
pub(crate) const CLOSE_CODE_LEN: usize = 2;
/// Longest close reason that fits a control frame next to its code.
pub const MAX_CLOSE_REASON: usize = MAX_CONTROL_PAYLOAD - CLOSE_CODE_LEN;
