//! Small numeric helpers shared by the format and the engine: sector size, alignment and
//! checked rounding. Everything here is total: overflow is reported, never wrapped.

// Every number here may come from an untrusted file or command line: arithmetic is
// checked, casts are fallible and slices are taken with `get`.

/// Bytes in a sector, the unit of every guest request and of journal commits.
pub const SECTOR_SIZE: u64 = 512;

/// Bytes in a page: every region of an FVD image starts on a multiple of this.
pub const PAGE_SIZE: u64 = 4096;

/// Rounds `value` up to a multiple of `unit` (`unit > 0`), or `None` on overflow.
pub const fn checked_round_up(value: u64, unit: u64) -> Option<u64> {
    match value.checked_rem(unit) {
        None => None,
        Some(0) => Some(value),
        // rem < unit, so the subtraction cannot wrap.
        Some(rem) => value.checked_add(unit.saturating_sub(rem)),
    }
}

/// `ceil(value / unit)` for `unit > 0`; `None` when `unit` is zero.
pub const fn div_ceil(value: u64, unit: u64) -> Option<u64> {
    match (value.checked_div(unit), value.checked_rem(unit)) {
        // value / unit < u64::MAX whenever unit > 1, and unit == 1 leaves no remainder.
        (Some(whole), Some(rem)) => Some(whole.saturating_add((rem != 0) as u64)),
        _ => None,
    }
}

/// True when `value` is a multiple of `unit` (`unit > 0`).
pub const fn is_aligned(value: u64, unit: u64) -> bool {
    matches!(value.checked_rem(unit), Some(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_checked() {
        assert_eq!(checked_round_up(0, 4096), Some(0));
        assert_eq!(checked_round_up(1, 4096), Some(4096));
        assert_eq!(checked_round_up(4096, 4096), Some(4096));
        assert_eq!(checked_round_up(u64::MAX, 4096), None);
        assert_eq!(checked_round_up(5, 0), None);
        assert_eq!(div_ceil(4097, 4096), Some(2));
        assert_eq!(div_ceil(0, 512), Some(0));
        assert!(is_aligned(8192, 4096));
        assert!(!is_aligned(8193, 4096));
        assert!(!is_aligned(1, 0));
    }
}
