//! Fixed-width lower-case hex of a number, made without `format!`. `{:032x}` of a `u128` went
//! through the formatter's generic integer path, about a thousand instructions for a trace id;
//! every job writes several (its `traceparent`, the trace id of its log lines, ETags).

/// The last `N` hex digits of a number (leading zeros kept), lower case.
pub struct Hex<const N: usize>([u8; N]);

impl<const N: usize> Hex<N> {
    const DIGITS: &'static [u8; 16] = b"0123456789abcdef";

    pub fn new(value: u128) -> Self {
        let mut digits = [b'0'; N];
        for (i, digit) in digits.iter_mut().rev().enumerate().take(32) {
            *digit = Self::DIGITS[((value >> (i * 4)) & 0xf) as usize];
        }
        Hex(digits)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits are ever written, so this never falls back.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl<const N: usize> std::fmt::Display for Hex<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Hex;

    #[test]
    fn matches_the_formatter() {
        for value in [
            0u128,
            1,
            0xabc,
            u64::MAX as u128,
            u128::MAX,
            0x0123_4567_89ab_cdef << 60,
        ] {
            assert_eq!(Hex::<32>::new(value).as_str(), format!("{value:032x}"));
            assert_eq!(
                Hex::<16>::new(value).as_str(),
                format!("{:016x}", value as u64)
            );
            assert_eq!(
                Hex::<2>::new(value).as_str(),
                format!("{:02x}", value as u8)
            );
        }
    }
}
