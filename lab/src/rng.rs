//! The one random-number generator of the tests, the lab and the benchmark harness: xorshift64
//! (Marsaglia, "Xorshift RNGs", 2003, the 13/7/17 triple). Reproducible from its seed, no
//! dependency, and far from cryptographic: it makes payloads incompressible, MACs distinct and
//! malformed packets varied, nothing more.

/// A seeded xorshift64 stream.
#[derive(Debug, Clone)]
pub struct TestRng(u64);

impl TestRng {
    /// A stream from `seed`; xorshift's one bad state, zero, becomes one.
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// An index in `0..n` (`0` when `n` is zero); the modulo bias does not matter to a test.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// True `percent` times in a hundred, near enough.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// A unicast, locally administered MAC (IEEE 802: bit 0 of the first octet clear, bit 1 set).
    pub fn mac(&mut self) -> [u8; 6] {
        let b = self.next_u64().to_be_bytes();
        [(b[0] & 0xFC) | 0x02, b[1], b[2], b[3], b[4], b[5]]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_gives_the_same_stream_and_zero_is_not_stuck() {
        let a: Vec<u64> = std::iter::repeat_with({
            let mut rng = TestRng::new(7);
            move || rng.next_u64()
        })
        .take(4)
        .collect();
        let mut again = TestRng::new(7);
        assert!(a.iter().all(|&x| x == again.next_u64()));
        assert_ne!(TestRng::new(0).next_u64(), 0);
    }
}
