use super::OpCode;
use crate::error::ProtocolError;

/// Longest possible frame header: 2 bytes, 8 bytes of length, 4 of mask key.
pub const MAX_HEADER_LEN: usize = 14;

/// A parsed frame header. Rules that depend on the connection (role, limits,
/// negotiated extensions, fragmentation state) are checked by the protocol
/// machine, not here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Final fragment of a message.
    pub fin: bool,
    /// The three reserved bits, RSV1 as `0b100`.
    pub rsv: u8,
    /// The opcode.
    pub opcode: OpCode,
    /// The masking key, if the frame is masked.
    pub mask: Option<[u8; 4]>,
    /// Declared payload length.
    pub payload_len: u64,
}

/// Parses a frame header from the start of `buf`.
///
/// Returns `Ok(None)` when `buf` holds only part of a header, and otherwise
/// the header with its encoded length. Nothing is allocated.
///
/// # Errors
/// [`ProtocolError::UnknownOpcode`] for a reserved opcode and
/// [`ProtocolError::InvalidLength`] for a 64-bit length with the top bit set.
///
/// ```
/// use wsfleet_proto::frame::{parse_header, OpCode};
/// let (h, n) = parse_header(&[0x81, 0x05, b'h']).unwrap().unwrap();
/// assert_eq!((h.opcode, h.payload_len, h.fin, n), (OpCode::Text, 5, true, 2));
/// ```
pub fn parse_header(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, ProtocolError> {
    let [b0, b1, rest @ ..] = buf else {
        return Ok(None);
    };
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(ProtocolError::UnknownOpcode(b0 & 0x0F))?;
    let masked = b1 & 0x80 != 0;
    let (payload_len, ext) = match b1 & 0x7F {
        126 => match rest {
            [a, b, ..] => (u64::from(u16::from_be_bytes([*a, *b])), 2),
            _ => return Ok(None),
        },
        127 => match rest.first_chunk::<8>() {
            Some(bytes) => {
                let len = u64::from_be_bytes(*bytes);
                if len >> 63 != 0 {
                    return Err(ProtocolError::InvalidLength);
                }
                (len, 8)
            }
            None => return Ok(None),
        },
        n => (u64::from(n), 0),
    };
    let rest = &rest[ext..];
    let mask = if masked {
        match rest.first_chunk::<4>() {
            Some(key) => Some(*key),
            None => return Ok(None),
        }
    } else {
        None
    };
    let header = FrameHeader {
        fin: b0 & 0x80 != 0,
        rsv: (b0 >> 4) & 0x7,
        opcode,
        mask,
        payload_len,
    };
    Ok(Some((header, 2 + ext + if masked { 4 } else { 0 })))
}

/// Encodes a header into `out` and returns how many bytes it used (2 to 14).
/// The shortest length encoding is always chosen.
///
/// ```
/// use wsfleet_proto::frame::{encode_header, FrameHeader, OpCode};
/// let mut out = [0; 14];
/// let h = FrameHeader { fin: true, rsv: 0, opcode: OpCode::Binary, mask: None, payload_len: 300 };
/// let n = encode_header(&h, &mut out);
/// assert_eq!(&out[..n], &[0x82, 126, 0x01, 0x2C]);
/// ```
pub fn encode_header(header: &FrameHeader, out: &mut [u8; MAX_HEADER_LEN]) -> usize {
    out[0] = (u8::from(header.fin) << 7) | ((header.rsv & 0x7) << 4) | header.opcode as u8;
    let mask_bit = if header.mask.is_some() { 0x80 } else { 0 };
    let len = header.payload_len;
    let mut n = if len < 126 {
        out[1] = mask_bit | len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        out[1] = mask_bit | 126;
        out[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        out[1] = mask_bit | 127;
        out[2..10].copy_from_slice(&len.to_be_bytes());
        10
    };
    if let Some(key) = header.mask {
        out[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn opcode() -> impl Strategy<Value = OpCode> {
        prop_oneof![
            Just(OpCode::Continuation),
            Just(OpCode::Text),
            Just(OpCode::Binary),
            Just(OpCode::Close),
            Just(OpCode::Ping),
            Just(OpCode::Pong),
        ]
    }

    proptest! {
        #[test]
        fn encode_then_parse_round_trips(
            fin: bool, rsv in 0u8..8, op in opcode(), mask: Option<[u8; 4]>,
            len in prop_oneof![0u64..200, 60_000u64..70_000, 0u64..(1 << 63)],
        ) {
            let h = FrameHeader { fin, rsv, opcode: op, mask, payload_len: len };
            let mut out = [0; MAX_HEADER_LEN];
            let n = encode_header(&h, &mut out);
            prop_assert_eq!(parse_header(&out[..n]).unwrap(), Some((h, n)));
            // Every strict prefix is incomplete, never an error.
            for cut in 0..n {
                prop_assert_eq!(parse_header(&out[..cut]).unwrap(), None);
            }
        }
    }

    #[test]
    fn length_with_top_bit_is_rejected() {
        let mut buf = [0x82, 127, 0, 0, 0, 0, 0, 0, 0, 0];
        buf[2] = 0x80;
        assert_eq!(parse_header(&buf), Err(ProtocolError::InvalidLength));
    }

    #[test]
    fn reserved_opcode_is_rejected() {
        assert_eq!(
            parse_header(&[0x83, 0]),
            Err(ProtocolError::UnknownOpcode(3))
        );
        assert_eq!(
            parse_header(&[0x8B, 0]),
            Err(ProtocolError::UnknownOpcode(0xB))
        );
    }
}
