//! Target `fvd_replay`: FVD images with a dirty journal ([`super::fvd`]: a valid header,
//! input-built journal sectors, torn and foreign ones, tables and bitmaps that may
//! contradict them) opened read-only (the journal laid over the metadata in memory) and
//! read-write (the journal replayed into the image). Where both opens succeed, the map
//! and the data of the whole disk must agree; after the read-write open is closed, a
//! read-only reopen must read what the read-write open read.

use super::fvd::{self, VIRTUAL_SIZE};
use super::input::Input;
use super::sparse::SparseStorage;
use super::{assert_agree, map_sectors, open, options, read_pieces, settle};
use fvd_core::engine::Mapping;

/// The map and the data one open sees.
struct Seen {
    map: Vec<Option<Mapping>>,
    data: Vec<Option<Vec<u8>>>,
}

fn look(driver: &mut crate::host::driver::Driver<SparseStorage>) -> Seen {
    // Map first: copy-on-read reads may move blocks into the image.
    let map = map_sectors(driver, VIRTUAL_SIZE);
    let data = read_pieces(driver, VIRTUAL_SIZE);
    Seen { map, data }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let case = fvd::build(&mut Input::new(data));
    let storage = SparseStorage::new(&case.image, case.base.as_deref());
    let read_only = open(storage.clone(), options(false))
        .ok()
        .map(|mut d| look(&mut d));
    let Ok(mut writer) = open(storage, options(true)) else {
        return;
    };
    let written = look(&mut writer);
    if let Some(read_only) = &read_only {
        assert_agree("map, read-only vs replayed", &read_only.map, &written.map);
        assert_agree(
            "data, read-only vs replayed",
            &read_only.data,
            &written.data,
        );
    }
    // Copy-on-read may have moved blocks into the image since the map was taken.
    let copied = writer.engine().stats().cor_fills > 0;
    let Ok((storage, _clean)) = settle(writer.close()) else {
        return;
    };
    let mut reopened = open(storage, options(false))
        .unwrap_or_else(|e| panic!("an image the engine closed does not reopen: {e}"));
    let again = look(&mut reopened);
    assert_agree("data, replayed vs reopened", &written.data, &again.data);
    if !copied {
        assert_agree("map, replayed vs reopened", &written.map, &again.map);
    }
}
