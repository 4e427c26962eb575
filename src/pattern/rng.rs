//! The deterministic generator behind BigBird's random blocks, specified bit for bit so that
//! every backend (this crate, a kernel, a Python re-implementation) draws the same sets.
//!
//! # Specification
//!
//! All arithmetic is on unsigned 64-bit integers, wrapping.
//!
//! ```text
//! mix(z)   = z ^= z >> 30; z *= 0xBF58476D1CE4E5B9;
//!            z ^= z >> 27; z *= 0x94D049BB133111EB;
//!            z ^  z >> 31                         (SplitMix64's output function)
//! GAMMA    = 0x9E3779B97F4A7C15
//! state    = mix(mix(mix(seed) ^ h) ^ P)          (P, a query block, as two's complement)
//! next()   = state += GAMMA; return mix(state)     (the SplitMix64 stream)
//! below(n) = (next() * n) >> 64                    (128-bit product: uniform in [0, n))
//! ```
//!
//! Choosing `R` of `n` candidates (indices `0..n`, ascending block order) is Robert Floyd's
//! sampling algorithm, one draw per chosen element:
//!
//! ```text
//! chosen = {}
//! for k in n - R .. n:            (ascending)
//!     t = below(k + 1)
//!     chosen += (t in chosen) ? k : t
//! ```
//!
//! The multiply-shift reduction has a bias below `n / 2^64`, irrelevant here and cheaper to
//! reproduce on a GPU than rejection sampling.

/// SplitMix64's increment (the golden ratio in 64-bit fixed point).
pub const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function: a bijective 64-bit mixer.
pub const fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The SplitMix64 stream: `next() = mix64(state += GAMMA)`. The one seedable generator of
/// the crate: BigBird's draws ([`BlockRng`]), the CLI demo's inputs and the tests' data all
/// come from it.
#[derive(Clone, Copy, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// The stream whose state starts at `seed` (Vigna's reference seeding).
    pub const fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next 64-bit output.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix64(self.state)
    }

    /// A value in `[0, n)` by multiply-shift; `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// A uniform value in `[-1, 1)` on a grid of `2^-23` (exact in f32).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// A uniform integer in `[lo, hi]`; `lo <= hi`.
    pub fn int_in(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo) as u64 + 1) as i64
    }
}

/// The SplitMix64 stream of one (seed, head, query block) triple: BigBird's random blocks.
#[derive(Clone, Copy, Debug)]
pub struct BlockRng {
    stream: SplitMix64,
}

impl BlockRng {
    /// The stream for query block `q_block` of head `head` under `seed` (see the module
    /// documentation for the exact derivation).
    pub fn new(seed: u64, head: u64, q_block: i64) -> Self {
        BlockRng {
            stream: SplitMix64::new(mix64(mix64(mix64(seed) ^ head) ^ q_block as u64)),
        }
    }

    /// The next 64-bit output.
    pub fn next_u64(&mut self) -> u64 {
        self.stream.next_u64()
    }

    /// A value in `[0, n)` by multiply-shift; `n` must be positive.
    pub fn below(&mut self, n: u64) -> u64 {
        self.stream.below(n)
    }

    /// `r` distinct indices of `0..n` by Floyd's algorithm, ascending, written into `out`
    /// (cleared first). Takes all of `0..n` when `n <= r`.
    pub fn choose(&mut self, n: u64, r: u64, out: &mut Vec<u64>) {
        out.clear();
        if n <= r {
            out.extend(0..n);
            return;
        }
        for k in n - r..n {
            let t = self.below(k + 1);
            let pick = match out.binary_search(&t) {
                Ok(_) => k,
                Err(_) => t,
            };
            // `k` is larger than every earlier pick, so it lands at the end.
            let at = out.binary_search(&pick).unwrap_or_else(|at| at);
            out.insert(at, pick);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_reference_values() {
        // SplitMix64 seeded with 0 yields 0xE220A8397B1DCDAF first (Vigna's reference code).
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn choose_is_distinct_sorted_and_in_range() {
        let mut out = Vec::new();
        for seed in 0..50u64 {
            let mut r = BlockRng::new(seed, 3, 7);
            r.choose(20, 6, &mut out);
            assert_eq!(out.len(), 6);
            assert!(out.windows(2).all(|w| w[0] < w[1]));
            assert!(out.iter().all(|&x| x < 20));
        }
        BlockRng::new(1, 0, 0).choose(3, 5, &mut out);
        assert_eq!(out, vec![0, 1, 2]);
    }

    #[test]
    fn choose_covers_every_index() {
        // Over many streams each index of 0..10 is drawn at least once.
        let mut seen = [false; 10];
        let mut out = Vec::new();
        for p in 0..200 {
            BlockRng::new(9, 0, p).choose(10, 2, &mut out);
            for &x in &out {
                seen[x as usize] = true;
            }
        }
        assert!(seen.iter().all(|&s| s));
    }
}
