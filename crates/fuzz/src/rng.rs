//! A small seeded generator (SplitMix64): a run is reproduced exactly from
//! its seed, with no dependency on a random-number crate's stream staying
//! the same across versions.

#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`; 0 when `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next_u64() % n as u64) as usize }
    }

    pub fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    pub fn byte(&mut self) -> u8 {
        self.next_u64() as u8
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// Mostly small, sometimes an edge value: for versions, counts, times.
    pub fn number(&mut self) -> u64 {
        match self.below(8) {
            0 => 0,
            1 => u64::MAX,
            2 => i64::MAX as u64,
            3 => 1 << self.below(64),
            _ => self.below(16) as u64,
        }
    }

    /// A short string: ASCII, CJK, controls or empty.
    pub fn text(&mut self) -> String {
        let len = self.below(12);
        (0..len)
            .map(|_| match self.below(6) {
                0 => char::from_u32(0x4E00 + self.below(0x5000) as u32).unwrap_or('中'),
                1 => char::from(self.below(32) as u8),
                2 => *self.pick(&['\u{0}', '\u{FFFD}', '\u{202E}', '"', '\\', '/', '.', ',']),
                _ => char::from(b'a' + self.below(26) as u8),
            })
            .collect()
    }

    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.byte()).collect()
    }
}
