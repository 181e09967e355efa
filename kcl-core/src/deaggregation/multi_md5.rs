//! Multi-buffer MD5: the digests of several independent messages computed together, one message
//! per SIMD lane (32 with AVX-512 as two interleaved groups of 16, 8 with AVX2), chosen at run
//! time, with the `md-5` crate as the scalar fallback.
//!
//! Why: the de-aggregator must verify the MD5 trailer of every KPL aggregate, and MD5 of one
//! message is a chain of 64 dependent steps per 64-byte block, so a single message cannot be
//! hashed faster than the latency of that chain (about 4.5 cycles per byte on a modern x86 core).
//! Independent messages, such as the aggregates of one `GetRecords` batch, can share the chain:
//! the same vector instructions advance 8 or 16 messages at nearly the latency of one.
//!
//! Messages of different lengths may share a group: each lane is padded on its own, a lane that
//! has finished is fed a dummy block whose result is discarded, and the group runs until its
//! longest message is done. Callers group messages of similar length (the de-aggregator sorts a
//! window of aggregates by length) so that little work is wasted.
//!
//! This is the only module of the crate with `unsafe` code: the vector loads and stores, and the
//! calls into the `#[target_feature]` kernels after the CPU was checked for that feature. Every
//! kernel is checked against the `md-5` crate over many random lengths and contents (tests below
//! and `tests/multi_md5.rs`).
#![deny(unsafe_op_in_unsafe_fn)]

use md5::{Digest, Md5};

/// One MD5 digest.
pub type Md5Digest = [u8; 16];

/// An implementation of MD5 over several messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Kernel {
    /// One message after the other with the `md-5` crate (every CPU).
    Scalar,
    /// Eight messages at once in 32-bit lanes of 256-bit AVX2 registers (x86-64).
    Avx2,
    /// Thirty-two messages at once: two interleaved groups of sixteen 32-bit lanes of 512-bit
    /// AVX-512F registers (x86-64); a group of at most 16 messages runs one group.
    Avx512,
}

impl Kernel {
    /// Every kernel, fastest first.
    pub const ALL: [Kernel; 3] = [Kernel::Avx512, Kernel::Avx2, Kernel::Scalar];

    /// The fastest kernel this CPU supports (detected at run time; the answer is cached by the
    /// standard library).
    pub fn detect() -> Kernel {
        Self::ALL
            .into_iter()
            .find(|k| k.is_available())
            .unwrap_or(Kernel::Scalar)
    }

    /// Whether this CPU can run the kernel.
    pub fn is_available(self) -> bool {
        match self {
            Kernel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => std::arch::is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Avx2 | Kernel::Avx512 => false,
        }
    }

    /// How many messages the kernel hashes at once.
    pub fn lanes(self) -> usize {
        match self {
            Kernel::Scalar => 1,
            Kernel::Avx2 => 8,
            Kernel::Avx512 => 32,
        }
    }

    /// Appends the MD5 digest of every message to `out`, in order. Messages are hashed in groups
    /// of [`Kernel::lanes`] taken in the order given; a group costs about as much as its longest
    /// message, so order messages by length for the best speed. A kernel this CPU cannot run
    /// falls back to [`Kernel::Scalar`], as does a group of one message.
    pub fn digests(self, messages: &[&[u8]], out: &mut Vec<Md5Digest>) {
        let kernel = if self.is_available() {
            self
        } else {
            Kernel::Scalar
        };
        out.reserve(messages.len());
        for group in messages.chunks(kernel.lanes()) {
            if group.len() == 1 || kernel == Kernel::Scalar {
                out.extend(group.iter().map(|m| Md5Digest::from(Md5::digest(m))));
                continue;
            }
            #[cfg(target_arch = "x86_64")]
            {
                match kernel {
                    Kernel::Avx512 if group.len() > 16 => {
                        let lanes: [Lane<'_>; 32] =
                            std::array::from_fn(|i| Lane::new(group.get(i).copied()));
                        // SAFETY: `kernel` is only `Avx512` here when `is_available` found
                        // AVX-512F on this CPU, which is all `x86::run32` is compiled for.
                        let states = unsafe { x86::run32(&lanes) };
                        out.extend(states.iter().take(group.len()).map(state_to_digest));
                    }
                    Kernel::Avx512 => {
                        let lanes: [Lane<'_>; 16] =
                            std::array::from_fn(|i| Lane::new(group.get(i).copied()));
                        // SAFETY: as above, for `x86::run16`.
                        let states = unsafe { x86::run16(&lanes) };
                        out.extend(states.iter().take(group.len()).map(state_to_digest));
                    }
                    _ => {
                        let lanes: [Lane<'_>; 8] =
                            std::array::from_fn(|i| Lane::new(group.get(i).copied()));
                        // SAFETY: as above for AVX2 and `x86::run8`.
                        let states = unsafe { x86::run8(&lanes) };
                        out.extend(states.iter().take(group.len()).map(state_to_digest));
                    }
                }
            }
        }
    }
}

/// The MD5 digests of `messages` (appended to `out`) with the fastest kernel of this CPU; see
/// [`Kernel::digests`].
pub fn digests(messages: &[&[u8]], out: &mut Vec<Md5Digest>) {
    Kernel::detect().digests(messages, out);
}

/// MD5's initial state `A, B, C, D`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const INIT: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// MD5's additive constants, `floor(abs(sin(i + 1)) * 2^32)`.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const K: [u32; 64] = [
    0xd76aa478, 0xe8c7b756, 0x242070db, 0xc1bdceee, 0xf57c0faf, 0x4787c62a, 0xa8304613, 0xfd469501,
    0x698098d8, 0x8b44f7af, 0xffff5bb1, 0x895cd7be, 0x6b901122, 0xfd987193, 0xa679438e, 0x49b40821,
    0xf61e2562, 0xc040b340, 0x265e5a51, 0xe9b6c7aa, 0xd62f105d, 0x02441453, 0xd8a1e681, 0xe7d3fbc8,
    0x21e1cde6, 0xc33707d6, 0xf4d50d87, 0x455a14ed, 0xa9e3e905, 0xfcefa3f8, 0x676f02d9, 0x8d2a4c8a,
    0xfffa3942, 0x8771f681, 0x6d9d6122, 0xfde5380c, 0xa4beea44, 0x4bdecfa9, 0xf6bb4b60, 0xbebfbc70,
    0x289b7ec6, 0xeaa127fa, 0xd4ef3085, 0x04881d05, 0xd9d4d039, 0xe6db99e5, 0x1fa27cf8, 0xc4ac5665,
    0xf4292244, 0x432aff97, 0xab9423a7, 0xfc93a039, 0x655b59c3, 0x8f0ccc92, 0xffeff47d, 0x85845dd1,
    0x6fa87e4f, 0xfe2ce6e0, 0xa3014314, 0x4e0811a1, 0xf7537e82, 0xbd3af235, 0x2ad7d2bb, 0xeb86d391,
];

/// An all-zero block fed to a lane whose message is finished (its result is discarded).
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const IDLE_BLOCK: [u8; 64] = [0; 64];

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
fn state_to_digest(state: &[u32; 4]) -> Md5Digest {
    let mut digest = [0u8; 16];
    for (chunk, word) in digest.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_le_bytes());
    }
    digest
}

/// One message split into MD5 blocks: its full 64-byte blocks borrowed, the rest padded
/// (`0x80`, zeros, the length in bits) in one or two owned blocks.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Lane<'a> {
    full: &'a [[u8; 64]],
    tail: [[u8; 64]; 2],
    /// Total blocks: `full.len()` plus 1 or 2 padding blocks.
    blocks: usize,
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl<'a> Lane<'a> {
    /// A lane for `message` (an idle lane hashing the empty message when `None`).
    fn new(message: Option<&'a [u8]>) -> Self {
        let message = message.unwrap_or_default();
        let (full, rest) = message.as_chunks::<64>();
        let mut tail = [[0u8; 64]; 2];
        tail[0][..rest.len()].copy_from_slice(rest);
        tail[0][rest.len()] = 0x80;
        // The bit length goes in the last 8 bytes of the last block: this block if it has room
        // after the 0x80 marker, else the next one.
        let tail_blocks = if rest.len() < 56 { 1 } else { 2 };
        let bits = (message.len() as u64).wrapping_mul(8).to_le_bytes();
        tail[tail_blocks - 1][56..].copy_from_slice(&bits);
        Self {
            full,
            tail,
            blocks: full.len() + tail_blocks,
        }
    }

    /// Block `j` of the padded message, or an idle block past its end.
    #[inline(always)]
    fn block(&self, j: usize) -> &[u8; 64] {
        match self.full.get(j) {
            Some(block) => block,
            None => self.tail.get(j - self.full.len()).unwrap_or(&IDLE_BLOCK),
        }
    }
}

/// The 64 steps of one MD5 block, written once for every vector width: `$step!` receives the
/// round function (`F`, `G`, `H`, `I`), the four state registers rotated as MD5 requires, the
/// message words and the index of the one to add, the additive constant (from `$k`, a copy of
/// [`K`]) and the rotation.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_macros))]
macro_rules! md5_steps {
    ($step:ident, $a:ident, $b:ident, $c:ident, $d:ident, $w:ident, $k:ident) => {
        $step!(F, $a, $b, $c, $d, $w, 0, $k[0], 7);
        $step!(F, $d, $a, $b, $c, $w, 1, $k[1], 12);
        $step!(F, $c, $d, $a, $b, $w, 2, $k[2], 17);
        $step!(F, $b, $c, $d, $a, $w, 3, $k[3], 22);
        $step!(F, $a, $b, $c, $d, $w, 4, $k[4], 7);
        $step!(F, $d, $a, $b, $c, $w, 5, $k[5], 12);
        $step!(F, $c, $d, $a, $b, $w, 6, $k[6], 17);
        $step!(F, $b, $c, $d, $a, $w, 7, $k[7], 22);
        $step!(F, $a, $b, $c, $d, $w, 8, $k[8], 7);
        $step!(F, $d, $a, $b, $c, $w, 9, $k[9], 12);
        $step!(F, $c, $d, $a, $b, $w, 10, $k[10], 17);
        $step!(F, $b, $c, $d, $a, $w, 11, $k[11], 22);
        $step!(F, $a, $b, $c, $d, $w, 12, $k[12], 7);
        $step!(F, $d, $a, $b, $c, $w, 13, $k[13], 12);
        $step!(F, $c, $d, $a, $b, $w, 14, $k[14], 17);
        $step!(F, $b, $c, $d, $a, $w, 15, $k[15], 22);
        $step!(G, $a, $b, $c, $d, $w, 1, $k[16], 5);
        $step!(G, $d, $a, $b, $c, $w, 6, $k[17], 9);
        $step!(G, $c, $d, $a, $b, $w, 11, $k[18], 14);
        $step!(G, $b, $c, $d, $a, $w, 0, $k[19], 20);
        $step!(G, $a, $b, $c, $d, $w, 5, $k[20], 5);
        $step!(G, $d, $a, $b, $c, $w, 10, $k[21], 9);
        $step!(G, $c, $d, $a, $b, $w, 15, $k[22], 14);
        $step!(G, $b, $c, $d, $a, $w, 4, $k[23], 20);
        $step!(G, $a, $b, $c, $d, $w, 9, $k[24], 5);
        $step!(G, $d, $a, $b, $c, $w, 14, $k[25], 9);
        $step!(G, $c, $d, $a, $b, $w, 3, $k[26], 14);
        $step!(G, $b, $c, $d, $a, $w, 8, $k[27], 20);
        $step!(G, $a, $b, $c, $d, $w, 13, $k[28], 5);
        $step!(G, $d, $a, $b, $c, $w, 2, $k[29], 9);
        $step!(G, $c, $d, $a, $b, $w, 7, $k[30], 14);
        $step!(G, $b, $c, $d, $a, $w, 12, $k[31], 20);
        $step!(H, $a, $b, $c, $d, $w, 5, $k[32], 4);
        $step!(H, $d, $a, $b, $c, $w, 8, $k[33], 11);
        $step!(H, $c, $d, $a, $b, $w, 11, $k[34], 16);
        $step!(H, $b, $c, $d, $a, $w, 14, $k[35], 23);
        $step!(H, $a, $b, $c, $d, $w, 1, $k[36], 4);
        $step!(H, $d, $a, $b, $c, $w, 4, $k[37], 11);
        $step!(H, $c, $d, $a, $b, $w, 7, $k[38], 16);
        $step!(H, $b, $c, $d, $a, $w, 10, $k[39], 23);
        $step!(H, $a, $b, $c, $d, $w, 13, $k[40], 4);
        $step!(H, $d, $a, $b, $c, $w, 0, $k[41], 11);
        $step!(H, $c, $d, $a, $b, $w, 3, $k[42], 16);
        $step!(H, $b, $c, $d, $a, $w, 6, $k[43], 23);
        $step!(H, $a, $b, $c, $d, $w, 9, $k[44], 4);
        $step!(H, $d, $a, $b, $c, $w, 12, $k[45], 11);
        $step!(H, $c, $d, $a, $b, $w, 15, $k[46], 16);
        $step!(H, $b, $c, $d, $a, $w, 2, $k[47], 23);
        $step!(I, $a, $b, $c, $d, $w, 0, $k[48], 6);
        $step!(I, $d, $a, $b, $c, $w, 7, $k[49], 10);
        $step!(I, $c, $d, $a, $b, $w, 14, $k[50], 15);
        $step!(I, $b, $c, $d, $a, $w, 5, $k[51], 21);
        $step!(I, $a, $b, $c, $d, $w, 12, $k[52], 6);
        $step!(I, $d, $a, $b, $c, $w, 3, $k[53], 10);
        $step!(I, $c, $d, $a, $b, $w, 10, $k[54], 15);
        $step!(I, $b, $c, $d, $a, $w, 1, $k[55], 21);
        $step!(I, $a, $b, $c, $d, $w, 8, $k[56], 6);
        $step!(I, $d, $a, $b, $c, $w, 15, $k[57], 10);
        $step!(I, $c, $d, $a, $b, $w, 6, $k[58], 15);
        $step!(I, $b, $c, $d, $a, $w, 13, $k[59], 21);
        $step!(I, $a, $b, $c, $d, $w, 4, $k[60], 6);
        $step!(I, $d, $a, $b, $c, $w, 11, $k[61], 10);
        $step!(I, $c, $d, $a, $b, $w, 2, $k[62], 15);
        $step!(I, $b, $c, $d, $a, $w, 9, $k[63], 21);
    };
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{IDLE_BLOCK, INIT, K, Lane};

    /// One MD5 step in 16 lanes: `a = b + rotl(a + f(b, c, d) + k + w, s)`, with the round
    /// function as one `vpternlogd` (its truth table over `b, c, d`) and the rotation as one
    /// `vprold`.
    macro_rules! step16 {
        (F, $($rest:tt)*) => { step16!(@ 0xCA, $($rest)*) };
        (G, $($rest:tt)*) => { step16!(@ 0xE4, $($rest)*) };
        (H, $($rest:tt)*) => { step16!(@ 0x96, $($rest)*) };
        (I, $($rest:tt)*) => { step16!(@ 0x39, $($rest)*) };
        (@ $table:literal, $a:ident, $b:ident, $c:ident, $d:ident, $w:ident, $i:literal, $k:expr, $s:literal) => {
            // `a + w + k` does not depend on the previous step; only `f` and what follows do.
            let awk = _mm512_add_epi32($a, _mm512_add_epi32($w[$i], _mm512_set1_epi32($k as i32)));
            let f = _mm512_ternarylogic_epi32::<$table>($b, $c, $d);
            let t = _mm512_add_epi32(awk, f);
            $a = _mm512_add_epi32($b, _mm512_rol_epi32::<$s>(t));
        };
    }

    /// One MD5 step in two independent groups of 16 lanes (`$a` ... `$d` and `$w` are pairs),
    /// interleaved so that one group's step runs while the other waits on its dependency chain.
    macro_rules! step16x2 {
        (F, $($rest:tt)*) => { step16x2!(@ 0xCA, $($rest)*) };
        (G, $($rest:tt)*) => { step16x2!(@ 0xE4, $($rest)*) };
        (H, $($rest:tt)*) => { step16x2!(@ 0x96, $($rest)*) };
        (I, $($rest:tt)*) => { step16x2!(@ 0x39, $($rest)*) };
        (@ $table:literal, $a:ident, $b:ident, $c:ident, $d:ident, $w:ident, $i:literal, $k:expr, $s:literal) => {
            let k = _mm512_set1_epi32($k as i32);
            let awk0 = _mm512_add_epi32($a[0], _mm512_add_epi32($w[0][$i], k));
            let awk1 = _mm512_add_epi32($a[1], _mm512_add_epi32($w[1][$i], k));
            let f0 = _mm512_ternarylogic_epi32::<$table>($b[0], $c[0], $d[0]);
            let f1 = _mm512_ternarylogic_epi32::<$table>($b[1], $c[1], $d[1]);
            $a[0] = _mm512_add_epi32($b[0], _mm512_rol_epi32::<$s>(_mm512_add_epi32(awk0, f0)));
            $a[1] = _mm512_add_epi32($b[1], _mm512_rol_epi32::<$s>(_mm512_add_epi32(awk1, f1)));
        };
    }

    /// One MD5 step in 8 lanes (AVX2 has neither a ternary-logic instruction nor a rotation).
    macro_rules! step8 {
        (F, $a:ident, $b:ident, $c:ident, $d:ident, $($rest:tt)*) => {
            // (b & c) | (!b & d) == d ^ (b & (c ^ d))
            let f = _mm256_xor_si256($d, _mm256_and_si256($b, _mm256_xor_si256($c, $d)));
            step8!(@ f, $a, $b, $($rest)*)
        };
        (G, $a:ident, $b:ident, $c:ident, $d:ident, $($rest:tt)*) => {
            // (b & d) | (c & !d) == c ^ (d & (b ^ c))
            let g = _mm256_xor_si256($c, _mm256_and_si256($d, _mm256_xor_si256($b, $c)));
            step8!(@ g, $a, $b, $($rest)*)
        };
        (H, $a:ident, $b:ident, $c:ident, $d:ident, $($rest:tt)*) => {
            let h = _mm256_xor_si256(_mm256_xor_si256($b, $c), $d);
            step8!(@ h, $a, $b, $($rest)*)
        };
        (I, $a:ident, $b:ident, $c:ident, $d:ident, $($rest:tt)*) => {
            // c ^ (b | !d)
            let i = _mm256_xor_si256(
                $c,
                _mm256_or_si256($b, _mm256_xor_si256($d, _mm256_set1_epi32(-1))),
            );
            step8!(@ i, $a, $b, $($rest)*)
        };
        (@ $f:ident, $a:ident, $b:ident, $w:ident, $i:literal, $k:expr, $s:literal) => {
            let awk = _mm256_add_epi32($a, _mm256_add_epi32($w[$i], _mm256_set1_epi32($k as i32)));
            let t = _mm256_add_epi32(awk, $f);
            let rotated = _mm256_or_si256(
                _mm256_slli_epi32::<$s>(t),
                _mm256_srli_epi32::<{ 32 - $s }>(t),
            );
            $a = _mm256_add_epi32($b, rotated);
        };
    }

    /// Loads block `j` of 16 lanes and transposes it so that vector `i` holds message word `i`
    /// of every lane.
    #[target_feature(enable = "avx512f")]
    fn load16(lanes: &[Lane<'_>], j: usize) -> [__m512i; 16] {
        let rows: [__m512i; 16] = std::array::from_fn(|l| {
            let block: &[u8; 64] = lanes.get(l).map_or(&IDLE_BLOCK, |lane| lane.block(j));
            // SAFETY: `block` is a valid reference to 64 readable bytes, exactly one unaligned
            // 512-bit load.
            unsafe { _mm512_loadu_si512(block.as_ptr().cast()) }
        });
        // Within each 128-bit chunk, a 4x4 transpose of every group of four lanes: `u[4g + i]`
        // holds, in chunk `k`, word `4k + i` of lanes `4g..4g + 4`.
        let mut u = [_mm512_setzero_si512(); 16];
        for g in 0..4 {
            let r = &rows[4 * g..4 * g + 4];
            let t0 = _mm512_unpacklo_epi32(r[0], r[1]);
            let t1 = _mm512_unpackhi_epi32(r[0], r[1]);
            let t2 = _mm512_unpacklo_epi32(r[2], r[3]);
            let t3 = _mm512_unpackhi_epi32(r[2], r[3]);
            u[4 * g] = _mm512_unpacklo_epi64(t0, t2);
            u[4 * g + 1] = _mm512_unpackhi_epi64(t0, t2);
            u[4 * g + 2] = _mm512_unpacklo_epi64(t1, t3);
            u[4 * g + 3] = _mm512_unpackhi_epi64(t1, t3);
        }
        // Then a 4x4 transpose of 128-bit chunks across the four lane groups.
        let mut w = [_mm512_setzero_si512(); 16];
        for i in 0..4 {
            let (u0, u1, u2, u3) = (u[i], u[4 + i], u[8 + i], u[12 + i]);
            let v0 = _mm512_shuffle_i32x4::<0x44>(u0, u1);
            let v1 = _mm512_shuffle_i32x4::<0xEE>(u0, u1);
            let v2 = _mm512_shuffle_i32x4::<0x44>(u2, u3);
            let v3 = _mm512_shuffle_i32x4::<0xEE>(u2, u3);
            w[i] = _mm512_shuffle_i32x4::<0x88>(v0, v2);
            w[4 + i] = _mm512_shuffle_i32x4::<0xDD>(v0, v2);
            w[8 + i] = _mm512_shuffle_i32x4::<0x88>(v1, v3);
            w[12 + i] = _mm512_shuffle_i32x4::<0xDD>(v1, v3);
        }
        w
    }

    #[target_feature(enable = "avx512f")]
    fn store16(v: __m512i) -> [u32; 16] {
        let mut out = [0u32; 16];
        // SAFETY: `out` is 64 writable bytes, exactly one unaligned 512-bit store.
        unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), v) };
        out
    }

    /// The final MD5 state of each of 16 lanes.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn run16(lanes: &[Lane<'_>; 16]) -> [[u32; 4]; 16] {
        let mut a = _mm512_set1_epi32(INIT[0] as i32);
        let mut b = _mm512_set1_epi32(INIT[1] as i32);
        let mut c = _mm512_set1_epi32(INIT[2] as i32);
        let mut d = _mm512_set1_epi32(INIT[3] as i32);
        let mut out = [[0u32; 4]; 16];
        // Opaque to the optimizer: with literal constants LLVM reassociates `a + w + k + f` so
        // that the constant is added after `f`, one more dependent add per step.
        let k = std::hint::black_box(K);
        let blocks = lanes.iter().map(|l| l.blocks).max().unwrap_or(0);
        for j in 0..blocks {
            let w = load16(lanes, j);
            let (a0, b0, c0, d0) = (a, b, c, d);
            md5_steps!(step16, a, b, c, d, w, k);
            a = _mm512_add_epi32(a, a0);
            b = _mm512_add_epi32(b, b0);
            c = _mm512_add_epi32(c, c0);
            d = _mm512_add_epi32(d, d0);
            if lanes.iter().any(|l| l.blocks == j + 1) {
                let s = [store16(a), store16(b), store16(c), store16(d)];
                for (l, lane) in lanes.iter().enumerate() {
                    if lane.blocks == j + 1 {
                        out[l] = [s[0][l], s[1][l], s[2][l], s[3][l]];
                    }
                }
            }
        }
        out
    }

    /// The final MD5 state of each of 32 lanes: two groups of 16 advanced together.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn run32(lanes: &[Lane<'_>; 32]) -> [[u32; 4]; 32] {
        let mut a = [_mm512_set1_epi32(INIT[0] as i32); 2];
        let mut b = [_mm512_set1_epi32(INIT[1] as i32); 2];
        let mut c = [_mm512_set1_epi32(INIT[2] as i32); 2];
        let mut d = [_mm512_set1_epi32(INIT[3] as i32); 2];
        let mut out = [[0u32; 4]; 32];
        // Opaque to the optimizer, as in `run16`.
        let k = std::hint::black_box(K);
        let (low, high) = lanes.split_at(16);
        let blocks = lanes.iter().map(|l| l.blocks).max().unwrap_or(0);
        for j in 0..blocks {
            let w = [load16(low, j), load16(high, j)];
            let (a0, b0, c0, d0) = (a, b, c, d);
            md5_steps!(step16x2, a, b, c, d, w, k);
            for g in 0..2 {
                a[g] = _mm512_add_epi32(a[g], a0[g]);
                b[g] = _mm512_add_epi32(b[g], b0[g]);
                c[g] = _mm512_add_epi32(c[g], c0[g]);
                d[g] = _mm512_add_epi32(d[g], d0[g]);
            }
            if lanes.iter().any(|l| l.blocks == j + 1) {
                for g in 0..2 {
                    let s = [store16(a[g]), store16(b[g]), store16(c[g]), store16(d[g])];
                    for (l, lane) in lanes[16 * g..16 * g + 16].iter().enumerate() {
                        if lane.blocks == j + 1 {
                            out[16 * g + l] = [s[0][l], s[1][l], s[2][l], s[3][l]];
                        }
                    }
                }
            }
        }
        out
    }

    /// Loads block `j` of 8 lanes and transposes it so that vector `i` holds message word `i`
    /// of every lane.
    #[target_feature(enable = "avx2")]
    fn load8(lanes: &[Lane<'_>; 8], j: usize) -> [__m256i; 16] {
        let mut w = [_mm256_setzero_si256(); 16];
        for half in 0..2 {
            let rows: [__m256i; 8] = std::array::from_fn(|l| {
                let block: &[u8; 64] = lanes[l].block(j);
                let bytes: &[u8; 32] = &block.as_chunks::<32>().0[half];
                // SAFETY: `bytes` is a valid reference to 32 readable bytes, exactly one
                // unaligned 256-bit load.
                unsafe { _mm256_loadu_si256(bytes.as_ptr().cast()) }
            });
            // 4x4 transposes within 128-bit chunks (`u[4g + i]` holds, in chunk `k`, word
            // `8 * half + 4k + i` of lanes `4g..4g + 4`), then the two chunks exchanged.
            let mut u = [_mm256_setzero_si256(); 8];
            for g in 0..2 {
                let r = &rows[4 * g..4 * g + 4];
                let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
                let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
                let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
                let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
                u[4 * g] = _mm256_unpacklo_epi64(t0, t2);
                u[4 * g + 1] = _mm256_unpackhi_epi64(t0, t2);
                u[4 * g + 2] = _mm256_unpacklo_epi64(t1, t3);
                u[4 * g + 3] = _mm256_unpackhi_epi64(t1, t3);
            }
            for i in 0..4 {
                w[8 * half + i] = _mm256_permute2x128_si256::<0x20>(u[i], u[4 + i]);
                w[8 * half + 4 + i] = _mm256_permute2x128_si256::<0x31>(u[i], u[4 + i]);
            }
        }
        w
    }

    #[target_feature(enable = "avx2")]
    fn store8(v: __m256i) -> [u32; 8] {
        let mut out = [0u32; 8];
        // SAFETY: `out` is 32 writable bytes, exactly one unaligned 256-bit store.
        unsafe { _mm256_storeu_si256(out.as_mut_ptr().cast(), v) };
        out
    }

    /// The final MD5 state of each of 8 lanes.
    ///
    /// # Safety
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn run8(lanes: &[Lane<'_>; 8]) -> [[u32; 4]; 8] {
        let mut a = _mm256_set1_epi32(INIT[0] as i32);
        let mut b = _mm256_set1_epi32(INIT[1] as i32);
        let mut c = _mm256_set1_epi32(INIT[2] as i32);
        let mut d = _mm256_set1_epi32(INIT[3] as i32);
        let mut out = [[0u32; 4]; 8];
        // Opaque to the optimizer: with literal constants LLVM reassociates `a + w + k + f` so
        // that the constant is added after `f`, one more dependent add per step.
        let k = std::hint::black_box(K);
        let blocks = lanes.iter().map(|l| l.blocks).max().unwrap_or(0);
        for j in 0..blocks {
            let w = load8(lanes, j);
            let (a0, b0, c0, d0) = (a, b, c, d);
            md5_steps!(step8, a, b, c, d, w, k);
            a = _mm256_add_epi32(a, a0);
            b = _mm256_add_epi32(b, b0);
            c = _mm256_add_epi32(c, c0);
            d = _mm256_add_epi32(d, d0);
            if lanes.iter().any(|l| l.blocks == j + 1) {
                let s = [store8(a), store8(b), store8(c), store8(d)];
                for (l, lane) in lanes.iter().enumerate() {
                    if lane.blocks == j + 1 {
                        out[l] = [s[0][l], s[1][l], s[2][l], s[3][l]];
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(messages: &[Vec<u8>]) -> Vec<Md5Digest> {
        messages.iter().map(|m| Md5::digest(m).into()).collect()
    }

    fn check(kernel: Kernel, messages: &[Vec<u8>]) {
        let refs: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        let mut got = Vec::new();
        kernel.digests(&refs, &mut got);
        assert_eq!(
            got,
            reference(messages),
            "{kernel:?}, lengths {:?}",
            messages.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }

    #[test]
    fn known_vectors() {
        // RFC 1321, appendix A.5.
        let cases: [(&[u8], &str); 4] = [
            (b"", "d41d8cd98f00b204e9800998ecf8427e"),
            (b"abc", "900150983cd24fb0d6963f7d28e17f72"),
            (b"message digest", "f96b697d7cb7938d525a2f31aaf161d0"),
            (
                b"12345678901234567890123456789012345678901234567890123456789012345678901234567890",
                "57edf4a22be3c955ac49da2e2107b67a",
            ),
        ];
        for kernel in Kernel::ALL.into_iter().filter(|k| k.is_available()) {
            let messages: Vec<&[u8]> = cases.iter().map(|c| c.0).collect();
            let mut got = Vec::new();
            kernel.digests(&messages, &mut got);
            let hex: Vec<String> = got
                .iter()
                .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
                .collect();
            let want: Vec<&str> = cases.iter().map(|c| c.1).collect();
            assert_eq!(hex, want, "{kernel:?}");
        }
    }

    #[test]
    fn padding_boundaries_in_every_lane() {
        // Lengths around the 55/56/64-byte padding boundaries, placed in every lane position
        // with neighbours of other lengths.
        let lengths: Vec<usize> = (0..=130).chain([191, 192, 193, 1000, 4096]).collect();
        let mut rng = fastrand::Rng::with_seed(1);
        for kernel in Kernel::ALL.into_iter().filter(|k| k.is_available()) {
            for rotate in 0..kernel.lanes() {
                let mut lens = lengths.clone();
                lens.rotate_left(rotate);
                let messages: Vec<Vec<u8>> = lens
                    .iter()
                    .map(|&n| std::iter::repeat_with(|| rng.u8(..)).take(n).collect())
                    .collect();
                check(kernel, &messages);
            }
        }
    }

    #[test]
    fn random_groups_match_md5() {
        let mut rng = fastrand::Rng::with_seed(2);
        for kernel in Kernel::ALL.into_iter().filter(|k| k.is_available()) {
            for round in 0..200 {
                let count = rng.usize(1..=40);
                let messages: Vec<Vec<u8>> = (0..count)
                    .map(|_| {
                        // Mostly short messages (debug builds are slow); a few long ones.
                        let n = match rng.u8(..16) {
                            0 if round % 10 == 0 => rng.usize(50_000..52_000),
                            1..=5 => rng.usize(..64),
                            6..=10 => rng.usize(..300),
                            _ => rng.usize(..2048),
                        };
                        std::iter::repeat_with(|| rng.u8(..)).take(n).collect()
                    })
                    .collect();
                check(kernel, &messages);
            }
        }
    }

    #[test]
    fn detect_picks_an_available_kernel() {
        let kernel = Kernel::detect();
        assert!(kernel.is_available());
        assert!(Kernel::Scalar.is_available());
        assert_eq!(Kernel::ALL.iter().filter(|k| k.lanes() > 1).count(), 2);
        // A kernel the CPU lacks still computes correct digests (scalar fallback).
        check(Kernel::Avx512, &[b"abc".to_vec(), b"de".to_vec()]);
        check(Kernel::Avx2, &[b"abc".to_vec(), b"de".to_vec()]);
    }
}
