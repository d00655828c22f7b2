//! UTF-8 validation of text messages, whole or incrementally across fragments.
//!
//! RFC 6455 §8.1 requires text messages (and close reasons) to be valid UTF-8 and the
//! connection to fail as soon as they are not. Fragmented messages are validated as they
//! stream in with [`Utf8Validator`], which fails at the first chunk that makes the bytes seen
//! so far impossible to extend into valid UTF-8, and carries a code point split across chunks
//! in a fixed 4-byte state.
//!
//! Bulk validation uses `simdutf8`'s SIMD validator; only the at most 3 bytes of a code point
//! split across a chunk boundary are looked at separately.

use core::fmt;

/// Marker in [`Utf8Validator::len`] for a validator that has seen invalid input.
const FAILED: u8 = u8::MAX;

/// Streaming UTF-8 validator with a fixed 4-byte state (no allocation).
///
/// Feed the chunks of a message in order with [`feed`](Self::feed), then call
/// [`finish`](Self::finish) at the end of the message. A code point may be split across any
/// chunks. Once `feed` has returned an error, the validator stays failed (every `feed` and the
/// next `finish` return [`InvalidUtf8`]) until [`finish`](Self::finish) or
/// [`reset`](Self::reset).
///
/// ```
/// use wsfleet_proto::internals::Utf8Validator;
///
/// let mut v = Utf8Validator::new();
/// let euro = "€".as_bytes(); // E2 82 AC
/// v.feed(&euro[..1]).unwrap();
/// assert!(!v.is_complete());
/// v.feed(&euro[1..]).unwrap();
/// assert!(v.finish().is_ok());
///
/// // Fails at the first impossible byte, not at the end of the message.
/// assert!(v.feed(&[0xF0]).is_ok());
/// assert!(v.feed(b"A").is_err());
/// ```
#[derive(Debug, Default, Clone)]
pub struct Utf8Validator {
    /// Leading bytes of an incomplete code point (a valid prefix of one).
    pending: [u8; 3],
    /// Number of valid bytes in `pending`, or [`FAILED`].
    len: u8,
}

/// The input is not UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidUtf8;

impl fmt::Display for InvalidUtf8 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid UTF-8")
    }
}

impl std::error::Error for InvalidUtf8 {}

impl Utf8Validator {
    /// A validator at the start of a message.
    pub const fn new() -> Self {
        Self {
            pending: [0; 3],
            len: 0,
        }
    }

    /// Validate the next chunk of the message.
    ///
    /// A chunk may end inside a code point; its valid leading bytes are kept for the next
    /// call.
    ///
    /// # Errors
    ///
    /// [`InvalidUtf8`] as soon as the bytes seen so far (this chunk included) cannot be a
    /// prefix of valid UTF-8, or if an earlier call already failed.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), InvalidUtf8> {
        let result = self.feed_inner(chunk);
        if result.is_err() {
            self.len = FAILED;
        }
        result
    }

    fn feed_inner(&mut self, chunk: &[u8]) -> Result<(), InvalidUtf8> {
        let rest = match self.len {
            0 => chunk,
            FAILED => return Err(InvalidUtf8),
            _ => match self.complete_pending(chunk)? {
                Some(rest) => rest,
                // The chunk was used up and the code point is still incomplete.
                None => return Ok(()),
            },
        };

        let (body, tail) = rest.split_at(incomplete_tail_start(rest));
        validate(body)?;
        if !tail.is_empty() {
            match simdutf8::compat::from_utf8(tail) {
                // A valid but truncated code point: keep it for the next chunk.
                Err(e) if e.error_len().is_none() => {
                    self.pending[..tail.len()].copy_from_slice(tail);
                    self.len = tail.len() as u8;
                }
                _ => return Err(InvalidUtf8),
            }
        }
        Ok(())
    }

    /// Extend the pending code point with the start of `chunk`. Returns the rest of the chunk
    /// once the code point is complete, or `None` if the chunk ran out first.
    fn complete_pending<'a>(&mut self, chunk: &'a [u8]) -> Result<Option<&'a [u8]>, InvalidUtf8> {
        let have = usize::from(self.len);
        let missing = sequence_len(self.pending[0]).saturating_sub(have);
        let take = missing.min(chunk.len());

        let mut buf = [0u8; 4];
        buf[..have].copy_from_slice(&self.pending[..have]);
        buf[have..have + take].copy_from_slice(&chunk[..take]);
        let n = have + take;

        match simdutf8::compat::from_utf8(&buf[..n]) {
            Ok(_) => {
                self.len = 0;
                Ok(Some(&chunk[take..]))
            }
            // Still a valid prefix; only possible when the chunk is used up (take < missing).
            Err(e) if e.error_len().is_none() => {
                self.pending[..n].copy_from_slice(&buf[..n]);
                self.len = n as u8;
                Ok(None)
            }
            Err(_) => Err(InvalidUtf8),
        }
    }

    /// End of the message: checks that no code point is left incomplete, then resets the
    /// validator for the next message.
    ///
    /// # Errors
    ///
    /// [`InvalidUtf8`] if an incomplete code point is pending or a `feed` failed.
    pub fn finish(&mut self) -> Result<(), InvalidUtf8> {
        let complete = self.is_complete();
        self.reset();
        if complete { Ok(()) } else { Err(InvalidUtf8) }
    }

    /// True when no partial code point is pending (and no `feed` has failed).
    pub fn is_complete(&self) -> bool {
        self.len == 0
    }

    /// Forget any pending bytes or failure, ready for a new message.
    pub fn reset(&mut self) {
        *self = Self::new();
    }
}

/// Whole-buffer validation (fast path for unfragmented messages and close reasons).
///
/// # Errors
///
/// [`InvalidUtf8`] if `bytes` is not valid UTF-8, including when it ends inside a code point.
#[inline]
pub fn validate(bytes: &[u8]) -> Result<(), InvalidUtf8> {
    match simdutf8::basic::from_utf8(bytes) {
        Ok(_) => Ok(()),
        Err(_) => Err(InvalidUtf8),
    }
}

/// Length of the sequence a byte starts, as far as the lead byte tells; 1 for ASCII and for
/// bytes that cannot start a sequence (those fail validation as they are).
#[inline]
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 1,
    }
}

/// Start of a code point that the end of `bytes` cuts short, or `bytes.len()` if there is
/// none. Only the last 3 bytes can hold one.
#[inline]
fn incomplete_tail_start(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for i in (len.saturating_sub(3)..len).rev() {
        let b = bytes[i];
        if b & 0xC0 != 0x80 {
            // The last byte that is not a continuation byte.
            return if sequence_len(b) > len - i { i } else { len };
        }
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// True if `bytes` can be extended into valid UTF-8.
    fn is_valid_prefix(bytes: &[u8]) -> bool {
        match core::str::from_utf8(bytes) {
            Ok(_) => true,
            Err(e) => e.error_len().is_none(),
        }
    }

    /// Index of the byte at which `bytes` stops being a prefix of valid UTF-8, if any.
    fn first_bad_byte(bytes: &[u8]) -> Option<usize> {
        let e = core::str::from_utf8(bytes).err()?;
        e.error_len()?;
        (e.valid_up_to() + 1..=bytes.len())
            .find(|&n| !is_valid_prefix(&bytes[..n]))
            .map(|n| n - 1)
    }

    /// Split `bytes` at `cuts` (indices modulo `len + 1`, may repeat: empty chunks).
    fn split<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        points.push(0);
        points.push(bytes.len());
        points.sort_unstable();
        points.windows(2).map(|w| &bytes[w[0]..w[1]]).collect()
    }

    /// Feed `chunks` and check the result and the chunk of the first error against std.
    fn check_chunks(bytes: &[u8], chunks: &[&[u8]]) -> Result<(), TestCaseError> {
        let mut v = Utf8Validator::new();
        let mut failed_at = None;
        let mut start = 0;
        for (i, chunk) in chunks.iter().enumerate() {
            let end = start + chunk.len();
            let r = v.feed(chunk);
            match failed_at {
                None if r.is_err() => failed_at = Some((i, start, end)),
                None => {}
                // Sticky failure.
                Some(_) => prop_assert_eq!(r, Err(InvalidUtf8)),
            }
            start = end;
        }
        match first_bad_byte(bytes) {
            Some(bad) => {
                let (i, s, e) = failed_at.expect("invalid input accepted by feed");
                prop_assert!(
                    s <= bad && bad < e,
                    "error at chunk {} ({}..{}), first bad byte {}",
                    i,
                    s,
                    e,
                    bad
                );
            }
            None => prop_assert_eq!(failed_at, None),
        }
        let whole_ok = core::str::from_utf8(bytes).is_ok();
        prop_assert_eq!(v.finish().is_ok(), whole_ok);
        prop_assert_eq!(validate(bytes).is_ok(), whole_ok);
        // finish() resets.
        prop_assert!(v.is_complete());
        prop_assert!(v.feed(b"ok").is_ok());
        Ok(())
    }

    /// Check `bytes` split at every single point and at every pair of points.
    fn check_all_splits(bytes: &[u8]) {
        let check = |chunks: &[&[u8]]| {
            check_chunks(bytes, chunks)
                .unwrap_or_else(|e| panic!("{bytes:02X?} {chunks:02X?}: {e}"))
        };
        check(&[bytes]);
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                check(&[&bytes[..i], &bytes[i..j], &bytes[j..]]);
            }
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        check(&singles);
    }

    #[test]
    fn valid_examples() {
        for s in [
            "",
            "a",
            "Hello-µ@ßöäüàá-UTF-8!!",
            "κόσμε",
            "\u{0}\u{7f}\u{80}\u{7ff}\u{800}\u{d7ff}\u{e000}\u{fffd}\u{ffff}\u{10000}\u{10ffff}",
        ] {
            assert_eq!(validate(s.as_bytes()), Ok(()));
            check_all_splits(s.as_bytes());
        }
    }

    #[test]
    fn autobahn_6_x_invalid_cases() {
        let cases: &[&[u8]] = &[
            // Surrogates (6.19-6.21).
            &[0xED, 0xA0, 0x80],
            &[0xED, 0xBF, 0xBF],
            &[0xED, 0xA0, 0x80, 0xED, 0xB0, 0x80],
            // Overlongs (6.8-6.10).
            &[0xC0, 0x80],
            &[0xC1, 0xBF],
            &[0xE0, 0x80, 0x80],
            &[0xE0, 0x9F, 0xBF],
            &[0xF0, 0x80, 0x80, 0x80],
            &[0xF0, 0x8F, 0xBF, 0xBF],
            // Above U+10FFFF, and bytes that never occur (6.6, 6.7).
            &[0xF4, 0x90, 0x80, 0x80],
            &[0xF5, 0x80, 0x80, 0x80],
            &[0xF8, 0x88, 0x80, 0x80, 0x80],
            &[0xFE],
            &[0xFF],
            // Lone continuation bytes and interrupted sequences.
            &[0x80],
            &[0xBF],
            &[b'a', 0x80, b'b'],
            &[0xC2, 0x41],
            &[0xE2, 0x82, 0x41],
            &[0xF0, 0x9F, 0x98, 0x41],
            // κόσμε followed by a surrogate (6.3.1 style).
            &[
                0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCF, 0x83, 0xCE, 0xBC, 0xCE, 0xB5, 0xED, 0xA0, 0x80,
                0x65, 0x64, 0x69, 0x74, 0x65, 0x64,
            ],
        ];
        for bytes in cases {
            assert_eq!(validate(bytes), Err(InvalidUtf8), "{bytes:02X?}");
            let mut v = Utf8Validator::new();
            assert_eq!(v.feed(bytes), Err(InvalidUtf8), "{bytes:02X?}");
            check_all_splits(bytes);
        }
    }

    #[test]
    fn truncated_at_end_fails_only_at_finish() {
        let cases: &[&[u8]] = &[
            &[0xC2],
            &[0xE2, 0x82],
            &[0xF0, 0x9F, 0x98],
            &[0xF4, 0x8F, 0xBF],
            &[b'a', b'b', 0xE0, 0xA0],
        ];
        for bytes in cases {
            let mut v = Utf8Validator::new();
            assert_eq!(v.feed(bytes), Ok(()), "{bytes:02X?}");
            assert!(!v.is_complete());
            assert_eq!(v.finish(), Err(InvalidUtf8), "{bytes:02X?}");
            assert!(v.is_complete(), "finish resets");
            assert_eq!(validate(bytes), Err(InvalidUtf8));
            check_all_splits(bytes);
        }
    }

    #[test]
    fn fails_fast_when_completing_a_pending_code_point() {
        let cases: &[(&[u8], &[u8])] = &[
            (&[0xF0], &[0x41]),
            (&[0xED], &[0xA0]),
            (&[0xE0], &[0x80]),
            (&[0xF0], &[0x8F]),
            (&[0xF4], &[0x90]),
            (&[0xE2, 0x82], &[0xC2, 0xA2]),
            (&[b'x', 0xF0, 0x9F], &[0x98, 0x80, 0xFF]),
        ];
        for (first, second) in cases {
            let mut v = Utf8Validator::new();
            assert_eq!(v.feed(first), Ok(()), "{first:02X?}");
            assert_eq!(
                v.feed(second),
                Err(InvalidUtf8),
                "{first:02X?} {second:02X?}"
            );
            assert_eq!(v.feed(b"a"), Err(InvalidUtf8), "sticky");
            assert!(!v.is_complete());
            assert_eq!(v.finish(), Err(InvalidUtf8));
            assert_eq!(v.feed(b"a"), Ok(()), "finish resets");
        }
    }

    #[test]
    fn invalid_lead_bytes_fail_at_once() {
        for b in [0xC0, 0xC1, 0xF5, 0xF8, 0xFF, 0x80] {
            let mut v = Utf8Validator::new();
            assert_eq!(v.feed(&[b'a', b]), Err(InvalidUtf8), "{b:02X}");
            v.reset();
            assert!(v.is_complete());
            assert_eq!(v.feed(&[b]), Err(InvalidUtf8), "{b:02X}");
        }
    }

    #[test]
    fn code_point_split_into_single_bytes() {
        let mut v = Utf8Validator::new();
        for b in "a😀b€c".bytes() {
            v.feed(&[b]).unwrap();
        }
        assert_eq!(v.finish(), Ok(()));
    }

    #[test]
    fn display() {
        assert_eq!(InvalidUtf8.to_string(), "invalid UTF-8");
    }

    /// Bytes that are mostly UTF-8, with occasional bytes that tend to break it.
    fn mostly_utf8() -> impl Strategy<Value = Vec<u8>> {
        let atom = prop_oneof![
            8 => any::<char>().prop_map(|c| c.to_string().into_bytes()),
            1 => prop::sample::select(vec![
                0x80u8, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xED, 0xEF,
                0xF0, 0xF4, 0xF5, 0xFF,
            ])
            .prop_map(|b| vec![b]),
            1 => any::<u8>().prop_map(|b| vec![b]),
        ];
        prop::collection::vec(atom, 0..40).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn valid_string_split_anywhere(
            s in any::<String>(),
            cuts in prop::collection::vec(any::<usize>(), 0..10),
        ) {
            let bytes = s.as_bytes();
            let mut v = Utf8Validator::new();
            for chunk in split(bytes, &cuts) {
                prop_assert_eq!(v.feed(chunk), Ok(()));
            }
            prop_assert_eq!(v.finish(), Ok(()));
        }

        #[test]
        fn matches_std_and_fails_fast(
            bytes in mostly_utf8(),
            cuts in prop::collection::vec(any::<usize>(), 0..10),
        ) {
            check_chunks(&bytes, &split(&bytes, &cuts))?;
        }

        #[test]
        fn arbitrary_bytes_match_std(
            bytes in prop::collection::vec(any::<u8>(), 0..64),
            cuts in prop::collection::vec(any::<usize>(), 0..10),
        ) {
            check_chunks(&bytes, &split(&bytes, &cuts))?;
        }
    }
}
