//! Fixed tables the engine indexes by slot numbers it handed out itself (request slots,
//! cache page slots, command slots), and the conversions of those numbers and of
//! request-bounded lengths to the widths commands carry.
//!
//! A slot number only ever comes from a position in the same table (`position`, `0..N`),
//! from an order or queue array the engine filled with such positions, or from a command
//! owner the engine emitted with one; numbers a host supplies (request ids, command ids)
//! go through `get` and are refused when out of range. So indexing a [`SlotTable`] cannot
//! go out of bounds, and these conversions cannot truncate.

use core::ops::{Index, IndexMut};

use super::{MAX_COMMANDS, MAX_DATA_REQUEST, MAX_REQUESTS};

// Slot numbers travel as u16 in ids and owners; lengths bounded by a request fit usize.
static_assertions::const_assert!(MAX_REQUESTS <= u16::MAX as usize);
static_assertions::const_assert!(MAX_COMMANDS <= u16::MAX as usize);
static_assertions::const_assert!(MAX_DATA_REQUEST <= u32::MAX as u64);
static_assertions::const_assert!(usize::BITS >= 32);

/// An array indexed by engine-assigned slot numbers (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SlotTable<T, const N: usize>(pub(crate) [T; N]);

impl<T, const N: usize> SlotTable<T, N> {
    pub(crate) fn iter(&self) -> core::slice::Iter<'_, T> {
        self.0.iter()
    }

    #[cfg_attr(not(feature = "qed-engine"), allow(dead_code))] // only QED walks it mutably
    pub(crate) fn iter_mut(&mut self) -> core::slice::IterMut<'_, T> {
        self.0.iter_mut()
    }

    pub(crate) fn get_mut(&mut self, slot: usize) -> Option<&mut T> {
        self.0.get_mut(slot)
    }

    #[cfg_attr(not(feature = "qed-engine"), allow(dead_code))] // only QED asks
    pub(crate) fn len(&self) -> usize {
        N
    }

    /// The first `n` entries (all of them when `n` exceeds the table).
    pub(crate) fn prefix(&self, n: usize) -> &[T] {
        self.0.get(..n).unwrap_or(&self.0)
    }

    pub(crate) fn copy_within(&mut self, src: core::ops::Range<usize>, dest: usize)
    where
        T: Copy,
    {
        self.0.copy_within(src, dest);
    }
}

impl<T, const N: usize> Index<usize> for SlotTable<T, N> {
    type Output = T;

    #[allow(clippy::indexing_slicing)] // engine-assigned slot numbers are < N (module docs)
    #[inline]
    fn index(&self, slot: usize) -> &T {
        &self.0[slot]
    }
}

impl<T, const N: usize> IndexMut<usize> for SlotTable<T, N> {
    #[allow(clippy::indexing_slicing)] // engine-assigned slot numbers are < N (module docs)
    #[inline]
    fn index_mut(&mut self, slot: usize) -> &mut T {
        &mut self.0[slot]
    }
}

/// The u16 form of an engine-assigned slot number (ids, owners, order arrays) or of an
/// offset within one metadata page.
#[allow(clippy::cast_possible_truncation)] // < MAX_COMMANDS, PAGE_BYTES <= u16::MAX (asserted)
#[inline]
pub(crate) fn slot_u16(slot: usize) -> u16 {
    slot as u16
}

/// A length or offset within one read or write request (at most `MAX_DATA_REQUEST`, 1 GiB,
/// checked at submission) or within an area of engine memory (a bounce slot, the journal
/// scratch area), as a buffer length: it fits usize on every target.
#[allow(clippy::cast_possible_truncation)] // <= MAX_DATA_REQUEST <= u32::MAX (asserted above)
#[inline]
pub(crate) fn buffer_len(len: u64) -> usize {
    len as usize
}
