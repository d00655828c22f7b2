//! WebSocket payload masking (RFC 6455 §5.3).
//!
//! Masking is a XOR of the payload with a 4-byte key, where payload byte `i` is XOR-ed with
//! `key[i % 4]`. It is applied by the client to every outgoing frame and undone by whoever
//! receives a masked frame, so it sits on the hot path of every byte.
//!
//! The implementation is safe code only: the bulk of the buffer is processed in 64-byte
//! blocks XOR-ed with a 64-byte copy of the (rotated) key, a loop LLVM turns into plain
//! vector XORs; the remainder uses 8-byte words, then single bytes.

use std::mem::MaybeUninit;

/// Bytes per block of the fast path. A multiple of 4, so every block starts at key phase 0.
const BLOCK: usize = 64;

/// XOR `buf` with `key`, where `buf[0]` is byte number `offset` of the frame payload
/// (so the key is rotated by `offset % 4`).
///
/// Resumable: masking a payload in pieces with the right offsets gives the same result as
/// masking it whole. Masking twice with the same key and offset restores the input.
///
/// ```
/// use wsfleet_proto::internals::apply_mask;
///
/// let key = [0x37, 0xfa, 0x21, 0x3d];
/// let mut whole = *b"Hello, world";
/// apply_mask(&mut whole, key, 0);
///
/// let mut pieces = *b"Hello, world";
/// let (a, b) = pieces.split_at_mut(5);
/// apply_mask(a, key, 0);
/// apply_mask(b, key, 5);
/// assert_eq!(whole, pieces);
/// ```
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let key = rotate_key(key, offset);
    let wide = widen_key(key);

    let mut blocks = buf.chunks_exact_mut(BLOCK);
    for block in &mut blocks {
        for (b, k) in block.iter_mut().zip(wide.iter()) {
            *b ^= *k;
        }
    }
    // Every block is a multiple of 4 bytes long, so the tail starts at key phase 0 too.
    xor_tail(blocks.into_remainder(), key);
}

/// Copy `src` into `dst` while XOR-ing with `key`, starting at payload offset 0: how the
/// client masks an outgoing payload into the write buffer in one pass. `dst` is uninitialised
/// memory such as the spare capacity of that buffer, so it need not be zero-filled first (for
/// a 16 MiB message that fill cost as much as the masking). The slices should have the same
/// length (checked in debug builds); otherwise only the first `min(dst.len(), src.len())`
/// bytes are written.
///
/// ```
/// use wsfleet_proto::internals::{apply_mask, mask_into_uninit};
///
/// let key = [1, 2, 3, 4];
/// let mut out = Vec::with_capacity(5);
/// mask_into_uninit(&mut out.spare_capacity_mut()[..5], b"abcde", key);
/// // SAFETY: all 5 bytes were written above.
/// unsafe { out.set_len(5) };
/// apply_mask(&mut out, key, 0);
/// assert_eq!(&out, b"abcde");
/// ```
#[inline]
pub fn mask_into_uninit(dst: &mut [MaybeUninit<u8>], src: &[u8], key: [u8; 4]) {
    debug_assert_eq!(dst.len(), src.len(), "mask_into_uninit: length mismatch");
    let len = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..len], &src[..len]);
    let wide = widen_key(key);

    let mut dst_blocks = dst.chunks_exact_mut(BLOCK);
    let mut src_blocks = src.chunks_exact(BLOCK);
    for (d, s) in (&mut dst_blocks).zip(&mut src_blocks) {
        for ((d, s), k) in d.iter_mut().zip(s.iter()).zip(wide.iter()) {
            d.write(*s ^ *k);
        }
    }
    // Every block is a multiple of 4 bytes long: the tail starts at phase 0.
    let (dst, src) = (dst_blocks.into_remainder(), src_blocks.remainder());
    for (i, (d, s)) in dst.iter_mut().zip(src).enumerate() {
        d.write(*s ^ key[i % 4]);
    }
}

/// The key as seen from payload byte `offset`: `rotated[i] == key[(offset + i) % 4]`.
#[inline]
fn rotate_key(mut key: [u8; 4], offset: usize) -> [u8; 4] {
    key.rotate_left(offset % 4);
    key
}

/// `key` repeated to fill one block.
#[inline]
fn widen_key(key: [u8; 4]) -> [u8; BLOCK] {
    let mut wide = [0u8; BLOCK];
    for quad in wide.chunks_exact_mut(4) {
        quad.copy_from_slice(&key);
    }
    wide
}

/// Mask a short slice (less than one block) that starts at key phase 0.
#[inline]
fn xor_tail(buf: &mut [u8], key: [u8; 4]) {
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut words = buf.chunks_exact_mut(8);
    for w in &mut words {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(w);
        w.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    for (b, k) in words.into_remainder().iter_mut().zip(key.iter().cycle()) {
        *b ^= *k;
    }
}

/// Byte-at-a-time reference implementation, the definition the fast paths are tested against.
#[cfg(test)]
fn apply_mask_reference(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(offset + i) % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + 3) as u8).collect()
    }

    #[test]
    fn matches_reference_all_lengths_and_offsets() {
        for len in 0..=300 {
            for offset in 0..8 {
                let mut fast = pattern(len);
                let mut slow = fast.clone();
                apply_mask(&mut fast, KEY, offset);
                apply_mask_reference(&mut slow, KEY, offset);
                assert_eq!(fast, slow, "len {len} offset {offset}");
            }
        }
    }

    #[test]
    fn matches_reference_on_unaligned_starts() {
        // Sub-slices starting at every alignment of the underlying allocation.
        let base = pattern(400);
        for start in 0..16 {
            for len in [0, 1, 7, 63, 64, 65, 200, 300] {
                let mut fast = base.clone();
                let mut slow = base.clone();
                apply_mask(&mut fast[start..start + len], KEY, start);
                apply_mask_reference(&mut slow[start..start + len], KEY, start);
                assert_eq!(fast, slow, "start {start} len {len}");
            }
        }
    }

    #[test]
    fn known_vector_rfc6455() {
        // RFC 6455 §5.7: a masked "Hello" from client to server.
        let mut payload = *b"Hello";
        apply_mask(&mut payload, KEY, 0);
        assert_eq!(payload, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }

    #[test]
    fn mask_twice_is_identity() {
        for len in [0, 1, 3, 4, 5, 63, 64, 65, 127, 128, 1000, 65536 + 3] {
            for offset in 0..4 {
                let original = pattern(len);
                let mut buf = original.clone();
                apply_mask(&mut buf, KEY, offset);
                if len > 0 {
                    assert_ne!(buf, original);
                }
                apply_mask(&mut buf, KEY, offset);
                assert_eq!(buf, original);
            }
        }
    }

    /// `src` masked into a fresh buffer by [`mask_into_uninit`].
    fn masked_copy(src: &[u8], key: [u8; 4]) -> Vec<u8> {
        let mut out: Vec<u8> = Vec::with_capacity(src.len());
        mask_into_uninit(&mut out.spare_capacity_mut()[..src.len()], src, key);
        // SAFETY: every byte up to src.len() was written above.
        #[allow(unsafe_code)]
        unsafe {
            out.set_len(src.len());
        }
        out
    }

    #[test]
    fn mask_into_uninit_equals_copy_then_mask() {
        for len in 0..=300 {
            let src = pattern(len);
            let dst = masked_copy(&src, KEY);
            let mut expected = src.clone();
            apply_mask_reference(&mut expected, KEY, 0);
            assert_eq!(dst, expected, "len {len}");
        }
    }

    proptest! {
        #[test]
        fn masking_in_pieces_equals_masking_whole(
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            key in any::<[u8; 4]>(),
            mut cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut whole = data.clone();
            apply_mask(&mut whole, key, 0);

            let mut points: Vec<usize> = cuts.drain(..).map(|c| c.index(data.len() + 1)).collect();
            points.push(0);
            points.push(data.len());
            points.sort_unstable();

            let mut pieces = data.clone();
            for pair in points.windows(2) {
                let (start, end) = (pair[0], pair[1]);
                apply_mask(&mut pieces[start..end], key, start);
            }
            prop_assert_eq!(pieces, whole);
        }

        #[test]
        fn mask_into_uninit_equals_copy_then_mask_prop(
            data in proptest::collection::vec(any::<u8>(), 0..2048),
            key in any::<[u8; 4]>(),
        ) {
            let mut expected = data.clone();
            apply_mask(&mut expected, key, 0);
            prop_assert_eq!(masked_copy(&data, key), expected);
        }
    }
}
