//! permessage-deflate (RFC 7692): negotiation, and inflate/deflate whose
//! memory is bounded while they run.
//!
//! # Memory, measured against the defaults
//!
//! A zlib context is the expensive part of compression: with zlib-rs an
//! inflate context holds 46.6 KiB (a 32 KiB window plus state); a deflate
//! context at window 15 and the default memory level 371 KiB (measured by
//! `tests/context_cost.rs`). At 10,000 connections, context takeover would
//! pin 0.5 GB (inflate) to 4.3 GB (both directions). So the default offer asks for
//! `server_no_context_takeover` and `client_no_context_takeover`: a context
//! is then made when a message needs it, reused while messages flow, and
//! freed once the connection has been quiet for a moment
//! ([`Protocol::release_idle_buffers`](crate::Protocol::release_idle_buffers)),
//! charged to the budget while it lives ([`INFLATE_CONTEXT_BYTES`],
//! [`deflate_context_bytes`]). A client that only receives needs only the
//! inflate context. With takeover negotiated both persist, and stay charged,
//! for the connection's life. docs/deflate.md has the measured table.
//!
//! # The bomb
//!
//! Inflate writes into a growing buffer in chunks of at most
//! [`INFLATE_CHUNK`] bytes and checks the running total against
//! `max_message` after every chunk: a 1 MiB message that would inflate to
//! 4 GiB is stopped after at most `max_message + INFLATE_CHUNK` bytes of
//! output, having consumed only as much input as produced that.

use std::fmt;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// The extension's name in `Sec-WebSocket-Extensions`.
const PERMESSAGE_DEFLATE: &str = "permessage-deflate";
/// RFC 7692 §7.1.1.1: the server resets its compressor after each message.
const SERVER_NO_CONTEXT_TAKEOVER: &str = "server_no_context_takeover";
/// RFC 7692 §7.1.1.2: the client resets its compressor after each message.
const CLIENT_NO_CONTEXT_TAKEOVER: &str = "client_no_context_takeover";
/// RFC 7692 §7.1.2.1: the largest window the server compresses with.
const SERVER_MAX_WINDOW_BITS: &str = "server_max_window_bits";
/// RFC 7692 §7.1.2.2: the largest window the client compresses with.
const CLIENT_MAX_WINDOW_BITS: &str = "client_max_window_bits";
/// Window sizes RFC 7692 §7.1.2 allows, as log2 of bytes (256 B to 32 KiB).
const MIN_WINDOW_BITS: u8 = 8;
/// The largest window (32 KiB), and the one assumed when none is named.
const MAX_WINDOW_BITS: u8 = 15;
/// The smallest window zlib can compress with: a window of 8 is offered and
/// accepted, but messages are then sent uncompressed (RFC 7692 §7.1.2.2
/// lets any message go uncompressed).
pub(crate) const MIN_DEFLATE_WINDOW_BITS: u8 = 9;
/// The highest zlib compression level.
const MAX_LEVEL: u32 = 9;

/// Bytes charged for a live inflate context (32 KiB window + state; zlib-rs
/// holds 46.6 KiB, measured by `tests/context_cost.rs`).
pub const INFLATE_CONTEXT_BYTES: usize = 48 * 1024;
/// Output step of bounded inflate.
pub const INFLATE_CHUNK: usize = 16 * 1024;
/// The sync-flush trailer a sender strips and a receiver appends.
const TRAILER: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// Bytes charged for a live deflate context at `window_bits`: what zlib-rs
/// allocates at memory level 8, the window and its hash chains (4 × 2^bits)
/// plus a hash table and pending buffer of fixed size (~243 KiB), so about
/// 371 KiB at 15 bits and 246 KiB at 9. Measured, and kept honest, by
/// `tests/context_cost.rs` (zlib's own formula says 264 KiB at 15 bits;
/// zlib-rs's hash table is larger).
pub const fn deflate_context_bytes(window_bits: u8) -> usize {
    (1 << (window_bits as usize + 2)) + 244 * 1024
}

/// What a client offers. `Default` keeps 10,000 connections affordable: no
/// context takeover either way, compression of messages from 256 bytes.
///
/// ```
/// use wsfleet_proto::deflate::DeflateConfig;
/// assert_eq!(
///     DeflateConfig::default().offer(),
///     "permessage-deflate; client_no_context_takeover; server_no_context_takeover; client_max_window_bits"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeflateConfig {
    /// Ask to reset our compressor after each message (frees it between
    /// messages). Default true.
    pub client_no_context_takeover: bool,
    /// Ask the server to reset its compressor after each message, so we can
    /// free our inflater between messages. Default true.
    pub server_no_context_takeover: bool,
    /// Offer `client_max_window_bits` (with a value 8–15, or bare: the
    /// server may choose). Default bare.
    pub client_max_window_bits: Option<Option<u8>>,
    /// Ask the server to compress with at most this window (8–15). Default: not asked.
    pub server_max_window_bits: Option<u8>,
    /// Messages shorter than this are sent uncompressed. Default 256 bytes.
    pub threshold: usize,
    /// zlib level 0–9. Default 1 (fast: the CPU is better spent elsewhere).
    pub level: u32,
}

impl Default for DeflateConfig {
    fn default() -> Self {
        Self {
            client_no_context_takeover: true,
            server_no_context_takeover: true,
            client_max_window_bits: Some(None),
            server_max_window_bits: None,
            threshold: 256,
            level: 1,
        }
    }
}

impl DeflateConfig {
    /// With context takeover both ways: better ratios, but both contexts stay
    /// for the connection's life: about 418 KiB per connection at 15-bit windows
    /// (371 KiB deflate + 47 KiB inflate; see docs/deflate.md).
    #[must_use]
    pub fn with_context_takeover(mut self) -> Self {
        self.client_no_context_takeover = false;
        self.server_no_context_takeover = false;
        self
    }

    /// Sets [`DeflateConfig::threshold`].
    #[must_use]
    pub fn with_threshold(mut self, bytes: usize) -> Self {
        self.threshold = bytes;
        self
    }

    /// The `Sec-WebSocket-Extensions` value to send.
    pub fn offer(&self) -> String {
        let mut out = String::from(PERMESSAGE_DEFLATE);
        let mut param = |name: &str, value: Option<u8>| {
            out.push_str("; ");
            out.push_str(name);
            if let Some(v) = value {
                out.push_str(&format!("={v}"));
            }
        };
        if self.client_no_context_takeover {
            param(CLIENT_NO_CONTEXT_TAKEOVER, None);
        }
        if self.server_no_context_takeover {
            param(SERVER_NO_CONTEXT_TAKEOVER, None);
        }
        if let Some(bits) = self.client_max_window_bits {
            param(CLIENT_MAX_WINDOW_BITS, bits);
        }
        if let Some(bits) = self.server_max_window_bits {
            param(SERVER_MAX_WINDOW_BITS, Some(bits));
        }
        out
    }

    /// Validates an accepted response (the value of the server's
    /// `Sec-WebSocket-Extensions`) against this offer.
    ///
    /// # Errors
    /// A [`DeflateError`] naming what is wrong: another extension, an
    /// unknown, duplicate or out-of-range parameter (with its value), or a
    /// parameter we did not offer.
    pub fn accept(&self, response: &str) -> Result<DeflateParams, DeflateError> {
        let mut extensions = response.split(',').map(str::trim).filter(|e| !e.is_empty());
        let Some(ext) = extensions.next() else {
            return Err(DeflateError::Empty);
        };
        if let Some(other) = extensions.next() {
            return Err(DeflateError::SecondExtension(other.to_owned()));
        }
        let mut parts = ext.split(';').map(str::trim);
        let name = parts.next().unwrap_or_default();
        if name != PERMESSAGE_DEFLATE {
            return Err(DeflateError::OtherExtension(name.to_owned()));
        }
        let mut params = DeflateParams {
            client_no_context_takeover: self.client_no_context_takeover,
            server_no_context_takeover: false,
            client_max_window_bits: MAX_WINDOW_BITS,
            server_max_window_bits: MAX_WINDOW_BITS,
            threshold: self.threshold,
            level: self.level.min(MAX_LEVEL),
        };
        let mut seen = Vec::new();
        for part in parts.filter(|p| !p.is_empty()) {
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
                None => (part, None),
            };
            if seen.contains(&key) {
                return Err(DeflateError::DuplicateParameter(key.to_owned()));
            }
            seen.push(key);
            match (key, value) {
                (SERVER_NO_CONTEXT_TAKEOVER, None) => params.server_no_context_takeover = true,
                (CLIENT_NO_CONTEXT_TAKEOVER, None) => params.client_no_context_takeover = true,
                (SERVER_MAX_WINDOW_BITS, v) => {
                    let b = window_bits(SERVER_MAX_WINDOW_BITS, v)?;
                    if let Some(offered) = self.server_max_window_bits.filter(|&o| b > o) {
                        return Err(DeflateError::AboveOffer {
                            parameter: SERVER_MAX_WINDOW_BITS,
                            value: b,
                            offered,
                        });
                    }
                    params.server_max_window_bits = b;
                }
                (CLIENT_MAX_WINDOW_BITS, v) => {
                    let Some(offered) = self.client_max_window_bits else {
                        return Err(DeflateError::NotOffered(CLIENT_MAX_WINDOW_BITS));
                    };
                    let b = window_bits(CLIENT_MAX_WINDOW_BITS, v)?;
                    if let Some(offered) = offered.filter(|&o| b > o) {
                        return Err(DeflateError::AboveOffer {
                            parameter: CLIENT_MAX_WINDOW_BITS,
                            value: b,
                            offered,
                        });
                    }
                    params.client_max_window_bits = b;
                }
                (key, value) => {
                    return Err(DeflateError::UnknownParameter {
                        name: key.to_owned(),
                        value: value.map(str::to_owned),
                    });
                }
            }
        }
        if self.server_no_context_takeover && !params.server_no_context_takeover {
            return Err(DeflateError::NotAccepted(SERVER_NO_CONTEXT_TAKEOVER));
        }
        Ok(params)
    }
}

/// The value of a `*_max_window_bits` parameter: a number from
/// [`MIN_WINDOW_BITS`] to [`MAX_WINDOW_BITS`].
fn window_bits(parameter: &'static str, value: Option<&str>) -> Result<u8, DeflateError> {
    value
        .and_then(|v| v.parse::<u8>().ok())
        .filter(|b| (MIN_WINDOW_BITS..=MAX_WINDOW_BITS).contains(b))
        .ok_or_else(|| DeflateError::InvalidWindowBits {
            parameter,
            value: value.map(str::to_owned),
        })
}

/// Why a server's permessage-deflate answer was refused (it breaks RFC 7692
/// §7 or our offer): the parameter at fault and the value it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeflateError {
    /// The `Sec-WebSocket-Extensions` answer names no extension.
    Empty,
    /// More than one extension accepted; the second one.
    SecondExtension(String),
    /// An extension other than `permessage-deflate`, which we did not offer.
    OtherExtension(String),
    /// A parameter given twice.
    DuplicateParameter(String),
    /// A parameter RFC 7692 does not define, or a flag given a value.
    UnknownParameter {
        /// The parameter's name.
        name: String,
        /// Its value, if it had one.
        value: Option<String>,
    },
    /// A window-bits parameter without a value from 8 to 15.
    InvalidWindowBits {
        /// `server_max_window_bits` or `client_max_window_bits`.
        parameter: &'static str,
        /// The value given, if any.
        value: Option<String>,
    },
    /// A window larger than the one we offered.
    AboveOffer {
        /// `server_max_window_bits` or `client_max_window_bits`.
        parameter: &'static str,
        /// The server's value.
        value: u8,
        /// Ours.
        offered: u8,
    },
    /// A parameter in the answer that we did not offer.
    NotOffered(&'static str),
    /// A parameter we asked for that the answer leaves out.
    NotAccepted(&'static str),
}

impl fmt::Display for DeflateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty extension list"),
            Self::SecondExtension(e) => write!(f, "more than one extension accepted ({e:?})"),
            Self::OtherExtension(e) => write!(f, "extension {e:?} was not offered"),
            Self::DuplicateParameter(p) => write!(f, "duplicate parameter {p}"),
            Self::UnknownParameter { name, value: None } => {
                write!(f, "unknown parameter {name:?}")
            }
            Self::UnknownParameter {
                name,
                value: Some(v),
            } => write!(f, "unknown or malformed parameter {name:?}={v:?}"),
            Self::InvalidWindowBits {
                parameter,
                value: None,
            } => write!(
                f,
                "{parameter} needs a value from {MIN_WINDOW_BITS} to {MAX_WINDOW_BITS}, got none"
            ),
            Self::InvalidWindowBits {
                parameter,
                value: Some(v),
            } => write!(
                f,
                "{parameter} needs a value from {MIN_WINDOW_BITS} to {MAX_WINDOW_BITS}, got {v:?}"
            ),
            Self::AboveOffer {
                parameter,
                value,
                offered,
            } => write!(f, "{parameter}={value} is above the {offered} offered"),
            Self::NotOffered(p) => write!(f, "{p} was not offered"),
            Self::NotAccepted(p) => write!(f, "{p} was asked for but not accepted"),
        }
    }
}

impl std::error::Error for DeflateError {}

/// What was negotiated, from the client's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeflateParams {
    /// We reset our compressor after each message.
    pub client_no_context_takeover: bool,
    /// The server resets its compressor after each message.
    pub server_no_context_takeover: bool,
    /// Our compression window.
    pub client_max_window_bits: u8,
    /// The server's compression window.
    pub server_max_window_bits: u8,
    /// Messages shorter than this are sent uncompressed.
    pub threshold: usize,
    /// zlib level.
    pub level: u32,
}

/// Inflates `input` (one message's payload, trailer not included) into
/// `out`, growing it by at most [`INFLATE_CHUNK`] at a time and calling
/// `grow(n)` before each growth (the caller charges its budget there),
/// from `*pos` on (see `inflate_parts`). Stops with `TooLarge` as soon as the
/// output passes `max`, `Corrupt` on corrupt data, and `Budget` when `grow`
/// refuses (resumable: call again with the same `pos`, `out` and context).
pub(crate) fn inflate_bounded(
    ctx: &mut Decompress,
    input: &[u8],
    pos: &mut usize,
    max: usize,
    out: &mut Vec<u8>,
    grow: &mut dyn FnMut(usize) -> Result<(), ()>,
) -> Result<(), InflateError> {
    let result = inflate_parts(ctx, input, pos, max, out, grow);
    // A message may end with a BFINAL=1 block (RFC 7692 §7.2.3.3): the
    // stream is then over, and a context kept for takeover would produce
    // nothing for later messages. Start the next message afresh.
    if result.is_ok() && ended(ctx) {
        ctx.reset(false);
    }
    result
}

/// True when the deflate stream in `ctx` has ended (BFINAL seen).
fn ended(ctx: &mut Decompress) -> bool {
    let mut probe = [0u8; 1];
    matches!(
        ctx.decompress(&[], &mut probe, FlushDecompress::None),
        Ok(Status::StreamEnd)
    )
}

/// Inflates `input` and then the sync-flush trailer from `*pos` (an offset
/// into the two, one after the other), advancing `*pos` as input is
/// consumed: when `grow` refuses, the call can be repeated later and goes
/// on exactly where it stopped.
fn inflate_parts(
    ctx: &mut Decompress,
    input: &[u8],
    pos: &mut usize,
    max: usize,
    out: &mut Vec<u8>,
    grow: &mut dyn FnMut(usize) -> Result<(), ()>,
) -> Result<(), InflateError> {
    for (start, part) in [(0, input), (input.len(), &TRAILER[..])] {
        if *pos >= start + part.len() {
            continue;
        }
        let mut rest = &part[*pos - start..];
        loop {
            if out.capacity() - out.len() == 0 {
                let step = INFLATE_CHUNK.min(max.saturating_sub(out.len()) + 1);
                grow(step).map_err(|()| InflateError::Budget)?;
                out.reserve_exact(step);
            }
            let before_in = ctx.total_in();
            let before_out = out.len();
            let status = ctx
                .decompress_vec(rest, out, FlushDecompress::Sync)
                .map_err(|_| InflateError::Corrupt)?;
            let consumed = (ctx.total_in() - before_in) as usize;
            rest = &rest[consumed..];
            *pos += consumed;
            if out.len() > max {
                return Err(InflateError::TooLarge(out.len()));
            }
            let filled = out.len() == out.capacity();
            let progressed = consumed > 0 || out.len() > before_out;
            if status == Status::StreamEnd
                || (rest.is_empty() && !filled)
                || (!progressed && !filled)
            {
                break;
            }
        }
        // Whatever is left of this part was not needed (a stream that ended).
        *pos = start + part.len();
    }
    Ok(())
}

/// Why bounded inflate stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// Output passed the limit at this many bytes.
    TooLarge(usize),
    /// The budget refused a growth.
    Budget,
    /// Not a deflate stream.
    Corrupt,
}

/// Free output space [`deflate_message`] keeps before each call, so zlib
/// always has room for a block header and the sync-flush marker.
const DEFLATE_HEADROOM: usize = 64;
/// The least [`deflate_message`] grows its output by when it runs short.
const DEFLATE_MIN_GROWTH: usize = 1024;

/// Compresses one message into `out` (sync flush, trailer stripped).
///
/// `Err(())` when zlib reports an error, which a context made by
/// [`new_deflater`] does not do for any input; `out` is then incomplete.
pub(crate) fn deflate_message(
    ctx: &mut Compress,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), ()> {
    // Typical text compresses to less than half; the loop grows it if not.
    out.reserve(input.len() / 2 + DEFLATE_HEADROOM);
    let mut rest = input;
    loop {
        if out.capacity() - out.len() < DEFLATE_HEADROOM {
            out.reserve(out.capacity().max(DEFLATE_MIN_GROWTH));
        }
        let before = ctx.total_in();
        ctx.compress_vec(rest, out, FlushCompress::Sync)
            .map_err(|_| ())?;
        rest = &rest[(ctx.total_in() - before) as usize..];
        if rest.is_empty() && out.capacity() > out.len() && out.ends_with(&TRAILER) {
            break;
        }
    }
    out.truncate(out.len() - TRAILER.len());
    Ok(())
}

/// A fresh inflater (raw deflate, the largest window: it decodes any smaller one).
pub(crate) fn new_inflater() -> Decompress {
    Decompress::new(false)
}

/// A fresh compressor for `bits` (9–15; 8 is never used, see `Protocol`).
pub(crate) fn new_deflater(level: u32, bits: u8) -> Compress {
    Compress::new_with_window_bits(
        Compression::new(level),
        false,
        bits.clamp(MIN_DEFLATE_WINDOW_BITS, MAX_WINDOW_BITS),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(s: &str) -> Result<DeflateParams, DeflateError> {
        DeflateConfig::default().accept(s)
    }

    #[test]
    fn accepts_the_usual_answers() {
        let p =
            params("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
                .unwrap();
        assert!(p.server_no_context_takeover && p.client_no_context_takeover);
        let p = params("permessage-deflate; server_no_context_takeover; client_max_window_bits=10")
            .unwrap();
        assert_eq!(
            (p.client_max_window_bits, p.server_max_window_bits),
            (10, 15)
        );
        let p =
            params("permessage-deflate;server_no_context_takeover;server_max_window_bits=\"12\"")
                .unwrap();
        assert_eq!(p.server_max_window_bits, 12);
    }

    #[test]
    fn refuses_what_was_not_offered_or_is_out_of_range_naming_it() {
        use DeflateError as E;
        let owned = |s: &str| Some(s.to_owned());
        for (bad, why) in [
            ("", E::Empty),
            (
                "x-webkit-deflate-frame",
                E::OtherExtension("x-webkit-deflate-frame".into()),
            ),
            (
                "permessage-deflate; server_no_context_takeover, permessage-deflate",
                E::SecondExtension("permessage-deflate".into()),
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=16",
                E::InvalidWindowBits {
                    parameter: "server_max_window_bits",
                    value: owned("16"),
                },
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_max_window_bits",
                E::InvalidWindowBits {
                    parameter: "server_max_window_bits",
                    value: None,
                },
            ),
            (
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=7",
                E::InvalidWindowBits {
                    parameter: "client_max_window_bits",
                    value: owned("7"),
                },
            ),
            (
                "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
                E::DuplicateParameter("server_no_context_takeover".into()),
            ),
            (
                "permessage-deflate; server_no_context_takeover; mystery=1",
                E::UnknownParameter {
                    name: "mystery".into(),
                    value: owned("1"),
                },
            ),
            (
                "permessage-deflate; server_no_context_takeover=1",
                E::UnknownParameter {
                    name: "server_no_context_takeover".into(),
                    value: owned("1"),
                },
            ),
            (
                "permessage-deflate",
                E::NotAccepted("server_no_context_takeover"),
            ),
        ] {
            assert_eq!(params(bad), Err(why), "{bad}");
        }
        let no_client_bits = DeflateConfig {
            client_max_window_bits: None,
            ..DeflateConfig::default()
        };
        assert_eq!(
            no_client_bits
                .accept("permessage-deflate; server_no_context_takeover; client_max_window_bits=9"),
            Err(E::NotOffered("client_max_window_bits"))
        );
        let small_windows = DeflateConfig {
            server_max_window_bits: Some(10),
            client_max_window_bits: Some(Some(11)),
            ..DeflateConfig::default()
        };
        let e = small_windows
            .accept("permessage-deflate; server_no_context_takeover; server_max_window_bits=12")
            .unwrap_err();
        assert_eq!(
            e,
            E::AboveOffer {
                parameter: "server_max_window_bits",
                value: 12,
                offered: 10
            }
        );
        assert_eq!(
            e.to_string(),
            "server_max_window_bits=12 is above the 10 offered"
        );
        assert_eq!(
            small_windows.accept(
                "permessage-deflate; server_no_context_takeover; client_max_window_bits=13"
            ),
            Err(E::AboveOffer {
                parameter: "client_max_window_bits",
                value: 13,
                offered: 11
            })
        );
    }

    fn round_trip(data: &[u8]) -> Vec<u8> {
        let mut c = new_deflater(1, 15);
        let mut compressed = Vec::new();
        deflate_message(&mut c, data, &mut compressed).unwrap();
        let mut d = new_inflater();
        let mut out = Vec::new();
        inflate_bounded(
            &mut d,
            &compressed,
            &mut 0,
            usize::MAX / 2,
            &mut out,
            &mut |_| Ok(()),
        )
        .unwrap();
        out
    }

    #[test]
    fn compress_then_inflate_round_trips() {
        for data in [
            &b""[..],
            b"a",
            &[7u8; 100_000],
            "héllo wörld ".repeat(5000).as_bytes(),
        ] {
            assert_eq!(round_trip(data), data);
        }
    }

    #[test]
    fn a_bomb_stops_at_the_limit_in_bounded_memory() {
        // 64 MiB of zeros compress to about 64 KiB.
        let mut c = new_deflater(9, 15);
        let mut bomb = Vec::new();
        deflate_message(&mut c, &vec![0u8; 64 << 20], &mut bomb).unwrap();
        assert!(bomb.len() < 128 << 10, "{} bytes", bomb.len());
        let mut d = new_inflater();
        let mut out = Vec::new();
        let mut charged = 0;
        let max = 1 << 20;
        let err = inflate_bounded(&mut d, &bomb, &mut 0, max, &mut out, &mut |n| {
            charged += n;
            Ok(())
        })
        .unwrap_err();
        assert!(matches!(err, InflateError::TooLarge(n) if n <= max + INFLATE_CHUNK + 1));
        assert!(out.capacity() <= max + INFLATE_CHUNK + 1);
        assert_eq!(charged, out.capacity());
    }

    #[test]
    fn a_final_block_does_not_silence_later_messages_with_context_takeover() {
        // "hello" as a BFINAL=1 fixed-Huffman block (fuzz finding F2).
        let bfinal = [0xca, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        let mut d = new_inflater();
        for _ in 0..3 {
            let mut out = Vec::new();
            inflate_bounded(&mut d, &bfinal, &mut 0, 1 << 20, &mut out, &mut |_| Ok(())).unwrap();
            assert_eq!(out, b"hello");
        }
    }

    #[test]
    fn corrupt_input_is_an_error_not_a_panic() {
        let mut d = new_inflater();
        let mut out = Vec::new();
        let r = inflate_bounded(&mut d, &[0xFF; 100], &mut 0, 1 << 20, &mut out, &mut |_| {
            Ok(())
        });
        assert_eq!(r, Err(InflateError::Corrupt));
    }
}
