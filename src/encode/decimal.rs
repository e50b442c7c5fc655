//! Integers in decimal without allocating: the hot encoders (CEF times, syslog headers, the
//! simulators' JSON) write several for every record, and `to_string` cost an allocation each.
//!
//! Owns: [`Decimal`]. Must not: format anything but integers. Invariant: the digits are those
//! `Display` writes for the number, with zeros in front up to the width asked for.

/// The decimal digits of an integer, held on the stack.
#[derive(Debug, Clone, Copy)]
pub struct Decimal {
    /// Room for `-` and the 20 digits of `u64::MAX`; the digits end at the end.
    bytes: [u8; 21],
    /// Where the written digits (or `-`) start.
    start: usize,
}

impl Decimal {
    /// `n`, at least `width` digits long (padded with zeros in front; at most 20).
    pub fn unsigned(n: u64, width: usize) -> Self {
        let mut bytes = [b'0'; 21];
        let mut start = bytes.len();
        let mut rest = n;
        loop {
            start -= 1;
            bytes[start] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        start = start.min(bytes.len() - width.min(20));
        Decimal { bytes, start }
    }

    /// `n`, with `-` in front when it is negative.
    pub fn signed(n: i64) -> Self {
        let mut d = Decimal::unsigned(n.unsigned_abs(), 1);
        if n < 0 {
            d.start -= 1;
            d.bytes[d.start] = b'-';
        }
        d
    }

    /// The digits.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    /// The digits as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and `-` are ever written.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_are_those_display_writes() {
        for n in [0, 7, 10, 99, 1_795_168_800_000, u64::MAX] {
            assert_eq!(Decimal::unsigned(n, 1).as_str(), n.to_string());
        }
        for n in [
            0,
            -1,
            -10,
            1_795_168_800_000,
            -1_795_168_800_000,
            i64::MAX,
            i64::MIN,
        ] {
            assert_eq!(Decimal::signed(n).as_str(), n.to_string());
        }
    }

    #[test]
    fn a_width_pads_with_zeros_and_never_cuts() {
        assert_eq!(Decimal::unsigned(7, 3).as_str(), "007");
        assert_eq!(Decimal::unsigned(2026, 4).as_str(), "2026");
        assert_eq!(Decimal::unsigned(12345, 2).as_str(), "12345");
        assert_eq!(Decimal::unsigned(0, 0).as_str(), "0");
        assert_eq!(Decimal::unsigned(5, 25).as_str(), "00000000000000000005");
    }
}
