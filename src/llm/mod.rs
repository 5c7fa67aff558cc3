//! LLM wire formats, independent of the proxy: the request body (parse once, rewrite once) and
//! the taps that read token usage from answers as they stream past.

pub mod json_tap;
pub mod request;
pub mod sse;
pub mod usage;

/// Helpers shared by the taps' property tests.
#[cfg(test)]
pub(crate) mod test_util {
    use super::usage::Usage;

    /// Tiny deterministic PRNG (xorshift64*) so property tests are reproducible without `rand`.
    pub struct Rng(pub u64);

    impl Rng {
        pub fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        pub fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    pub fn u(p: u64, c: u64, t: u64) -> Option<Usage> {
        Some(Usage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: t,
        })
    }
}
