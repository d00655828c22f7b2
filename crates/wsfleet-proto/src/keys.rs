//! Where client masking keys come from.
//!
//! RFC 6455 §5.3 asks for unpredictable keys so that a script cannot choose
//! the bytes on the wire (cache poisoning of intermediaries). The core holds
//! no randomness: the runtime passes a CSPRNG-backed source; tests pass a
//! fixed one.

/// A source of 4-byte masking keys.
pub trait MaskKeys: Send {
    /// The key for the next frame.
    fn next_key(&mut self) -> [u8; 4];
}

/// Always the same key: for tests and fuzzing only (predictable keys defeat
/// the purpose of masking).
#[derive(Debug, Clone, Copy)]
pub struct FixedKey(pub [u8; 4]);

impl MaskKeys for FixedKey {
    fn next_key(&mut self) -> [u8; 4] {
        self.0
    }
}
