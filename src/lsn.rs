//! Log sequence numbers.
//!
//! An LSN is a 64-bit byte position in the WAL, printed by Postgres as two
//! hexadecimal halves (`16/B374D848`). walhook uses the same text form in
//! payloads, logs and `/status`, so users can paste it into SQL.

use std::fmt;
use std::str::FromStr;

/// A WAL position.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The invalid (zero) position.
    pub const ZERO: Lsn = Lsn(0);

    /// Appends the `X/Y` text, as `Display` writes it, without the
    /// formatting machinery (payloads write it for every record).
    pub(crate) fn write_text(self, out: &mut Vec<u8>) {
        write_hex(self.0 >> 32, out);
        out.push(b'/');
        write_hex(self.0 & 0xFFFF_FFFF, out);
    }
}

/// Upper-case hex without leading zeros (`0` for zero).
fn write_hex(v: u64, out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let digits = ((64 - v.leading_zeros()).div_ceil(4)).max(1);
    for i in (0..digits).rev() {
        out.push(HEX[((v >> (4 * i)) & 0xf) as usize]);
    }
}

/// Appends `n` in decimal, as `Display` writes it.
pub(crate) fn write_decimal(n: u64, out: &mut Vec<u8>) {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    let mut n = n;
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at..]);
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

/// Error for text that is not `X/Y` in hexadecimal.
#[derive(Debug, thiserror::Error)]
#[error("invalid LSN {0:?}: expected two hexadecimal numbers separated by '/', like 0/16B3748")]
pub struct ParseLsnError(String);

impl FromStr for Lsn {
    type Err = ParseLsnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError(s.to_string());
        let (hi, lo) = s.split_once('/').ok_or_else(err)?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
        Ok(Lsn((u64::from(hi) << 32) | u64::from(lo)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn written_text_is_the_display_text(v: u64, small in 0u64..0x1_0000_0000) {
            for lsn in [Lsn(v), Lsn(small), Lsn(small << 32)] {
                let mut out = b"x".to_vec();
                lsn.write_text(&mut out);
                proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), format!("x{lsn}"));
            }
            for n in [v, small, 0, u64::MAX] {
                let mut out = Vec::new();
                write_decimal(n, &mut out);
                proptest::prop_assert_eq!(String::from_utf8(out).unwrap(), n.to_string());
            }
        }
    }

    #[test]
    fn lsn_text_round_trips() {
        let l: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(l.0, 0x16_B374_D848);
        assert_eq!(l.to_string(), "16/B374D848");
        assert_eq!(Lsn(0x16B3748).to_string(), "0/16B3748");
        assert!("16B374D848".parse::<Lsn>().is_err());
        assert!("x/1".parse::<Lsn>().is_err());
    }
}
