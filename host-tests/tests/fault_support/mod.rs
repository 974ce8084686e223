//! Support for the fault tests (`fault_sweep.rs`, `fault_promises.rs`, `fault_flush.rs`):
//! each kind of image in memory, files shared with the test so that they outlive a driver
//! (a crash, a failed open), the checks after a run (`fvd-img check`, a full read), and
//! helpers that drive one image with a fault plan. The sweep machinery is in [`sweep`].
#![allow(dead_code)]

pub mod sweep;

use fvd_core::engine::{FileId, Request, RequestError};
use fvd_core::fvd::create::{plan, BaseSpec, CreateOptions};
use fvd_core::qed::{QedBacking, QedCreateOptions};
use fvd_host::host::driver::{Driver, DriverOptions};
use fvd_host::host::faults::{FaultPlan, Rule};
use fvd_host::host::storage::Storage;
use fvd_host::testing::memstore::{MemFile, MemStorage};
use fvd_host::testing::newimage::initial_metadata;
use std::cell::RefCell;
use std::io;
use std::rc::Rc;

pub const SECTOR: usize = 512;
const MIB: u64 = 1 << 20;
/// Commands one run may perform: far more than any workload here needs.
pub const COMMAND_BUDGET: u64 = 100_000;

/// The kinds of image swept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// FVD without a table: data in place.
    Plain,
    /// FVD compact: chunks allocated on first write, the file grown in steps.
    Compact,
    /// FVD compact over a raw base: partial blocks copied on write.
    Cow,
    /// As `Cow`, with copy-on-read fills.
    Cor,
    /// FVD compact with a separate data file.
    DataFile,
    /// QED: clusters and L2 tables appended.
    Qed,
    /// QED over a raw backing file, copying on read.
    QedBase,
}

impl Kind {
    /// True when the image has a base.
    pub fn has_base(self) -> bool {
        matches!(self, Kind::Cow | Kind::Cor | Kind::QedBase)
    }

    pub fn size(self) -> u64 {
        match self {
            // Two L2 tables of 512 clusters.
            Kind::Qed | Kind::QedBase => 4 * MIB,
            _ => MIB,
        }
    }
}

/// A fresh image, its guest content and how to drive it.
#[derive(Clone)]
pub struct Setup {
    pub kind: Kind,
    pub storage: MemStorage,
    pub initial: Vec<u8>,
    pub options: DriverOptions,
}

pub fn base_bytes(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 / SECTOR) as u8 ^ 0x5a).collect()
}

/// A fresh image of `kind`.
pub fn setup(kind: Kind) -> Setup {
    setup_sized(kind, kind.size())
}

/// A fresh image of `kind` with `size` bytes (a base of three quarters of it).
pub fn setup_sized(kind: Kind, size: u64) -> Setup {
    let base_len = (size * 3 / 4) as usize;
    let base = kind.has_base().then(|| base_bytes(base_len));
    let mut initial = vec![0u8; size as usize];
    if let Some(base) = &base {
        initial[..base.len()].copy_from_slice(base);
    }
    let (image, data) = match kind {
        Kind::Qed | Kind::QedBase => {
            let plan = fvd_core::qed::plan(&QedCreateOptions {
                size,
                cluster_size: 4096,
                table_size: 1,
                backing: base.as_ref().map(|_| QedBacking {
                    name: b"base",
                    format: b"raw",
                }),
            })
            .unwrap();
            let mut image = vec![0u8; plan.file_len as usize];
            plan.write_header_area(&mut image).unwrap();
            (image, None)
        }
        _ => {
            let compact = kind != Kind::Plain;
            let header = plan(&CreateOptions {
                virtual_size: size,
                compact_image: compact,
                chunk_size: compact.then_some(16384),
                storage_grow_unit: compact.then_some(65536),
                block_size: Some(4096),
                journal_size: Some(8192),
                data_file: (kind == Kind::DataFile).then_some(b"data".as_slice()),
                base: base.as_ref().map(|b| BaseSpec {
                    name: b"base",
                    format: b"raw",
                    size: b.len() as u64,
                }),
                ..Default::default()
            })
            .unwrap();
            let data = (kind == Kind::DataFile).then(Vec::new);
            (initial_metadata(&header), data)
        }
    };
    let storage = MemStorage {
        image: MemFile::new(image),
        data: data.map(MemFile::new),
        base: base.map(MemFile::new),
        writes: 0,
    };
    let options = DriverOptions {
        cache_bytes: 6 * 512,
        copy_on_read: Some(matches!(kind, Kind::Cor | Kind::QedBase)),
        ..DriverOptions::default()
    };
    Setup {
        kind,
        storage,
        initial,
        options,
    }
}

/// The storage a driver runs on, shared so that the test keeps it when the driver is
/// dropped (a crash) or fails to open; counts every attempt to change the base.
#[derive(Clone)]
pub struct Shared(Rc<RefCell<(MemStorage, u64)>>);

impl Shared {
    pub fn new(storage: MemStorage) -> Shared {
        Shared(Rc::new(RefCell::new((storage, 0))))
    }

    /// The files as they are now.
    pub fn storage(&self) -> MemStorage {
        self.0.borrow().0.clone()
    }

    /// Runs `f` on the files as they are now.
    pub fn with<R>(&self, f: impl FnOnce(&mut MemStorage) -> R) -> R {
        f(&mut self.0.borrow_mut().0)
    }

    pub fn base_changes(&self) -> u64 {
        self.0.borrow().1
    }

    fn changing(&self, file: FileId) {
        if file == FileId::Base {
            self.0.borrow_mut().1 += 1;
        }
    }
}

impl Storage for Shared {
    fn read_at(&mut self, file: FileId, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        self.0.borrow_mut().0.read_at(file, offset, buf)
    }
    fn write_at(&mut self, file: FileId, offset: u64, buf: &[u8]) -> io::Result<()> {
        self.changing(file);
        self.0.borrow_mut().0.write_at(file, offset, buf)
    }
    fn write_zeroes(&mut self, file: FileId, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.changing(file);
        self.0.borrow_mut().0.write_zeroes(file, offset, len, unmap)
    }
    fn flush(&mut self, file: FileId) -> io::Result<()> {
        self.0.borrow_mut().0.flush(file)
    }
    fn set_len(&mut self, file: FileId, len: u64) -> io::Result<()> {
        self.changing(file);
        self.0.borrow_mut().0.set_len(file, len)
    }
    fn len(&mut self, file: FileId) -> io::Result<Option<u64>> {
        self.0.borrow_mut().0.len(file)
    }
}

/// `sectors` sectors of a pattern that differs per sector.
pub fn fill(pattern: u8, sectors: u64) -> Vec<u8> {
    (0..sectors as usize * SECTOR)
        .map(|i| pattern ^ (i / SECTOR) as u8)
        .collect()
}

/// Opens `storage` (no faults) and reads the whole disk.
pub fn read_all(s: &Setup, storage: MemStorage, writable: bool, label: &str) -> Vec<u8> {
    let options = DriverOptions {
        writable,
        ..s.options
    };
    let mut driver =
        Driver::open(storage, options).unwrap_or_else(|e| panic!("{label}: reopen: {e}"));
    driver.limit_commands(COMMAND_BUDGET);
    let data = driver
        .read(0, s.initial.len())
        .unwrap_or_else(|e| panic!("{label}: read after reopen: {e}"));
    if writable {
        let (_, clean) = driver.close().unwrap();
        assert!(clean, "{label}: close after recovery was not clean");
    }
    data
}

/// `fvd-img check` of the image in `storage` (its durable bytes): must find nothing, or
/// only leaks. Returns the exit status (0 or 3).
pub fn check(s: &Setup, storage: &MemStorage, label: &str) -> u8 {
    let dir = tempfile::tempdir().unwrap();
    let name = match s.kind {
        Kind::Qed | Kind::QedBase => "image.qed",
        _ => "image.fvd",
    };
    std::fs::write(dir.path().join(name), &storage.image.durable).unwrap();
    if let Some(data) = &storage.data {
        std::fs::write(dir.path().join("data"), &data.durable).unwrap();
    }
    if let Some(base) = &storage.base {
        std::fs::write(dir.path().join("base"), &base.durable).unwrap();
    }
    let path = dir.path().join(name);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let status = fvd_host::cli::run_with(
        ["fvd-img".as_ref(), "check".as_ref(), path.as_os_str()],
        &mut out,
        &mut err,
    );
    assert!(
        status == 0 || status == 3,
        "{label}: check after the clean close exits {status}:\n{}{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    status
}

/// Opens `s` on shared files with an empty fault plan.
pub fn open(s: &Setup) -> (Driver<Shared>, Shared) {
    let shared = Shared::new(s.storage.clone());
    let mut driver =
        Driver::open_with_faults(shared.clone(), s.options, Some(FaultPlan::new())).unwrap();
    driver.limit_commands(COMMAND_BUDGET);
    (driver, shared)
}

/// Installs `rule` for the commands from now on (`rule.from` counts from now).
pub fn inject(driver: &mut Driver<Shared>, rule: Rule) {
    let plan = driver.faults_mut().unwrap();
    let now = plan.commands();
    plan.push(Rule {
        from: now + rule.from,
        ..rule
    });
}

/// The fault clears.
pub fn clear(driver: &mut Driver<Shared>) {
    driver.faults_mut().unwrap().clear();
}

/// Submits every request, then waits for all; returns their outcomes in order.
pub fn all(
    driver: &mut Driver<Shared>,
    requests: Vec<(Request, Vec<u8>)>,
) -> Vec<Result<Vec<u8>, RequestError>> {
    let ids: Vec<_> = requests
        .into_iter()
        .map(|(r, b)| driver.submit(r, b).unwrap())
        .collect();
    ids.into_iter()
        .map(|id| {
            let (result, data) = driver.wait(id).unwrap();
            result.map(|_| data)
        })
        .collect()
}

/// A write request with its data.
pub fn write(offset: u64, data: Vec<u8>) -> (Request, Vec<u8>) {
    let len = data.len() as u64;
    (Request::Write { offset, len }, data)
}

/// A read request with its buffer.
pub fn read(offset: u64, len: u64) -> (Request, Vec<u8>) {
    (Request::Read { offset, len }, vec![0; len as usize])
}

/// Clean close, then `fvd-img check` (nothing or leaks) and the content read back.
pub fn close_and_check(s: &Setup, driver: Driver<Shared>, label: &str) -> (u8, Vec<u8>) {
    let (shared, clean) = driver.close().unwrap();
    assert!(clean, "{label}: close was not clean");
    let storage = shared.storage();
    assert_eq!(
        storage.base.as_ref().map(|b| &b.current),
        s.storage.base.as_ref().map(|b| &b.current),
        "{label}: the base changed"
    );
    assert_eq!(shared.base_changes(), 0, "{label}: the base was written");
    let status = check(s, &storage, label);
    (status, read_all(s, storage, false, label))
}

/// The files as a crash right now would leave them (nothing unflushed survives).
pub fn crashed(shared: &Shared) -> MemStorage {
    let now = shared.storage();
    MemStorage {
        image: MemFile::new(now.image.durable.clone()),
        data: now.data.as_ref().map(|d| MemFile::new(d.durable.clone())),
        base: now.base.clone(),
        writes: 0,
    }
}
