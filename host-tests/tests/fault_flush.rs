//! Failed flushes: a failed flush is reported to the flusher; on storage where it cannot
//! have lost anything the next flush makes every write durable; behind a page cache (files)
//! a failed flush may have dropped writes, so no later flush may succeed until the image is
//! reopened, or a crash would lose writes acknowledged before a successful flush.

mod fault_support;

use fault_support::{
    all, close_and_check, crashed, fill, inject, open, read_all, setup, write, Kind, Shared,
};
use fvd_core::engine::{FileId, IoError, Request, RequestError};
use fvd_host::host::driver::{Driver, DriverError};
use fvd_host::host::faults::{Errno, Fault, Kinds, Rule};

const K: u64 = 1024;

#[test]
fn a_failed_flush_is_reported_to_the_flusher_and_the_next_one_makes_writes_durable() {
    for kind in [Kind::Compact, Kind::Cow, Kind::DataFile, Kind::Qed] {
        let s = setup(kind);
        let (mut d, shared) = open(&s);
        d.write(8 * K, &fill(7, 16)).unwrap();
        inject(
            &mut d,
            Rule::from(0, Fault::Fail(Errno::Eio))
                .kinds(Kinds::FLUSHES)
                .times(1),
        );
        let outcomes = all(
            &mut d,
            vec![(Request::Flush, Vec::new()), write(300 * K, fill(9, 8))],
        );
        assert_eq!(
            outcomes[0],
            Err(RequestError::Io(IoError::Failed)),
            "{kind:?}"
        );
        assert!(
            outcomes[1].is_ok(),
            "{kind:?}: the write beside the flush failed"
        );
        d.flush().unwrap();
        // A crash now: both writes were acknowledged before the successful flush.
        let after_crash = read_all(&s, crashed(&shared), true, &format!("{kind:?} crash"));
        assert_eq!(
            after_crash[8 * K as usize..][..8192],
            fill(7, 16)[..],
            "{kind:?}"
        );
        assert_eq!(
            after_crash[300 * K as usize..][..4096],
            fill(9, 8)[..],
            "{kind:?}"
        );
        close_and_check(&s, d, &format!("{kind:?}"));
    }
}

/// Files behind a page cache as Linux runs it: a flush that fails may have dropped the
/// writes it could not make durable (the pages are marked clean, so they read back until
/// evicted but are never written again), and a later flush then succeeds.
#[derive(Clone)]
struct PageCache {
    files: Shared,
    fail_next_flush: std::rc::Rc<std::cell::Cell<bool>>,
    /// Whether the storage says so (what hosts on files do).
    tells: bool,
}

impl fvd_host::host::storage::Storage for PageCache {
    fn read_at(&mut self, file: FileId, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.files.read_at(file, offset, buf)
    }
    fn write_at(&mut self, file: FileId, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        self.files.write_at(file, offset, buf)
    }
    fn write_zeroes(
        &mut self,
        file: FileId,
        offset: u64,
        len: u64,
        unmap: bool,
    ) -> std::io::Result<()> {
        self.files.write_zeroes(file, offset, len, unmap)
    }
    fn flush(&mut self, file: FileId) -> std::io::Result<()> {
        let fail = self.fail_next_flush.replace(false);
        self.files.with(|m| {
            let f = match file {
                FileId::Data => m.data.as_mut(),
                _ => Some(&mut m.image),
            };
            if let Some(f) = f {
                // What is durable: the writes the cache still holds as dirty, never the
                // ones a failed flush dropped (they only read back from `current`).
                if !fail {
                    f.durable = f.after_cut(|_, _| true);
                }
                f.pending.clear();
            }
        });
        match fail {
            true => Err(std::io::Error::from_raw_os_error(libc::EIO)),
            false => Ok(()),
        }
    }
    fn set_len(&mut self, file: FileId, len: u64) -> std::io::Result<()> {
        self.files.set_len(file, len)
    }
    fn len(&mut self, file: FileId) -> std::io::Result<Option<u64>> {
        self.files.len(file)
    }
    fn failed_flush_loses_writes(&self) -> bool {
        self.tells
    }
}

#[test]
fn after_a_failed_flush_no_flush_claims_writes_the_page_cache_may_have_dropped() {
    for kind in [Kind::Compact, Kind::Qed] {
        for tells in [true, false] {
            let label = format!("{kind:?}, storage tells: {tells}");
            let s = setup(kind);
            let files = Shared::new(s.storage.clone());
            let storage = PageCache {
                files: files.clone(),
                fail_next_flush: Default::default(),
                tells,
            };
            let fail = storage.fail_next_flush.clone();
            let mut d = Driver::open(storage, s.options).unwrap();
            d.write(64 * K, &fill(1, 8)).unwrap();
            fail.set(true);
            assert!(d.flush().is_err(), "{label}: the failing flush succeeded");
            d.write(128 * K, &fill(2, 8)).unwrap();
            let second = d.flush();
            // A crash now: was A, acknowledged before a flush that succeeded, kept?
            let kept = Driver::open(crashed(&files), s.options)
                .and_then(|mut r| r.read(64 * K, 4096))
                .is_ok_and(|data| data == fill(1, 8));
            if tells {
                // The promise: no flush succeeds while a write before it may be lost.
                match second {
                    Err(DriverError::RequestIo { source, .. }) => assert!(
                        source
                            .to_string()
                            .contains("an earlier flush of this file failed"),
                        "{label}: {source}"
                    ),
                    other => panic!("{label}: the flush after a failed one gave {other:?}"),
                }
                let (_, clean) = d.close().unwrap();
                assert!(!clean, "{label}: marked clean after failed flushes");
                // A crash leaves an image that opens and reads (A may or may not be there:
                // no flush after it succeeded).
                read_all(&s, crashed(&files), true, &label);
            } else {
                // The control: a storage that does not say so gets its second flush
                // acknowledged, and the crash loses a write made before it (or leaves a
                // table pointing past the end of the file).
                assert!(second.is_ok(), "{label}");
                assert!(!kept, "{label}: the page cache model lost nothing");
            }
        }
    }
}
