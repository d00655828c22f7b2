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

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

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
        let mut out = String::from("permessage-deflate");
        if self.client_no_context_takeover {
            out.push_str("; client_no_context_takeover");
        }
        if self.server_no_context_takeover {
            out.push_str("; server_no_context_takeover");
        }
        match self.client_max_window_bits {
            Some(Some(bits)) => out.push_str(&format!("; client_max_window_bits={bits}")),
            Some(None) => out.push_str("; client_max_window_bits"),
            None => {}
        }
        if let Some(bits) = self.server_max_window_bits {
            out.push_str(&format!("; server_max_window_bits={bits}"));
        }
        out
    }

    /// Validates an accepted response (the value of the server's
    /// `Sec-WebSocket-Extensions`) against this offer.
    ///
    /// # Errors
    /// A message naming what is wrong: another extension, an unknown,
    /// duplicate or out-of-range parameter, or a parameter we did not offer.
    pub fn accept(&self, response: &str) -> Result<DeflateParams, String> {
        let mut extensions = response.split(',').map(str::trim).filter(|e| !e.is_empty());
        let Some(ext) = extensions.next() else {
            return Err("empty extension list".into());
        };
        if let Some(other) = extensions.next() {
            return Err(format!("more than one extension accepted ({other:?})"));
        }
        let mut parts = ext.split(';').map(str::trim);
        if parts.next() != Some("permessage-deflate") {
            return Err(format!("extension {ext:?} was not offered"));
        }
        let mut params = DeflateParams {
            client_no_context_takeover: self.client_no_context_takeover,
            server_no_context_takeover: false,
            client_max_window_bits: 15,
            server_max_window_bits: 15,
            threshold: self.threshold,
            level: self.level.min(9),
        };
        let mut seen = Vec::new();
        for part in parts.filter(|p| !p.is_empty()) {
            let (key, value) = match part.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
                None => (part, None),
            };
            if seen.contains(&key) {
                return Err(format!("duplicate parameter {key}"));
            }
            seen.push(key);
            let bits = |v: Option<&str>| -> Result<u8, String> {
                v.and_then(|v| v.parse::<u8>().ok())
                    .filter(|b| (8..=15).contains(b))
                    .ok_or_else(|| format!("{key} needs a value from 8 to 15, got {v:?}"))
            };
            match (key, value) {
                ("server_no_context_takeover", None) => params.server_no_context_takeover = true,
                ("client_no_context_takeover", None) => params.client_no_context_takeover = true,
                ("server_max_window_bits", v) => {
                    let b = bits(v)?;
                    if let Some(offered) = self.server_max_window_bits.filter(|&o| b > o) {
                        return Err(format!(
                            "server_max_window_bits={b} is above the {offered} offered"
                        ));
                    }
                    params.server_max_window_bits = b;
                }
                ("client_max_window_bits", v) => {
                    let Some(offered) = self.client_max_window_bits else {
                        return Err("client_max_window_bits was not offered".into());
                    };
                    let b = bits(v)?;
                    if offered.is_some_and(|o| b > o) {
                        return Err(format!("client_max_window_bits={b} is above the offer"));
                    }
                    params.client_max_window_bits = b;
                }
                (key, _) => return Err(format!("unknown or malformed parameter {key:?}")),
            }
        }
        if self.server_no_context_takeover && !params.server_no_context_takeover {
            return Err("server_no_context_takeover was asked for but not accepted".into());
        }
        Ok(params)
    }
}

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

/// Compresses one message into `out` (sync flush, trailer stripped).
pub(crate) fn deflate_message(
    ctx: &mut Compress,
    input: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), ()> {
    out.reserve(input.len() / 2 + 64);
    let mut rest = input;
    loop {
        if out.capacity() - out.len() < 64 {
            out.reserve(out.capacity().max(1024));
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
    Compress::new_with_window_bits(Compression::new(level), false, bits.clamp(9, 15))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(s: &str) -> Result<DeflateParams, String> {
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
    fn refuses_what_was_not_offered_or_is_out_of_range() {
        for bad in [
            "x-webkit-deflate-frame",
            "permessage-deflate; server_no_context_takeover, permessage-deflate",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=16",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits",
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=7",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; mystery=1",
            "permessage-deflate",
        ] {
            assert!(params(bad).is_err(), "{bad}");
        }
        let no_client_bits = DeflateConfig {
            client_max_window_bits: None,
            ..DeflateConfig::default()
        };
        assert!(
            no_client_bits
                .accept("permessage-deflate; server_no_context_takeover; client_max_window_bits=9")
                .is_err()
        );
        let small_server_window = DeflateConfig {
            server_max_window_bits: Some(10),
            ..DeflateConfig::default()
        };
        assert_eq!(
            small_server_window.accept(
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
            ),
            Err("server_max_window_bits=12 is above the 10 offered".to_owned())
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
