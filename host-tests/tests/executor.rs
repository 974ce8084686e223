//! The concurrent executor against a flat model: random reads and writes at queue depth
//! 32 on plain, compact and copy-on-write images (and a raw file), then close, reopen
//! (with `files::open_image` and with the executor) and compare every byte.

use fvd_core::fvd::create::{BaseSpec, CreateOptions};
use fvd_host::host::driver::DriverOptions;
use fvd_host::host::executor::{Executor, ExecutorOptions, GuestBuffers, Ticket};
use fvd_host::host::files::open_image;
use fvd_host::testing::workload::{create_image, create_raw, pattern_byte};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const SIZE: u64 = 8 << 20;
const DEPTH: usize = 32;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Plain,
    Compact,
    Cow,
    Raw,
}

/// Makes an image of `kind` in `dir`; returns its path and the initial model.
fn make(dir: &Path, kind: Kind) -> (PathBuf, Vec<u8>) {
    let path = dir.join("disk.img");
    let mut model = vec![0u8; SIZE as usize];
    let mut options = CreateOptions {
        virtual_size: SIZE,
        ..Default::default()
    };
    match kind {
        Kind::Plain => {}
        Kind::Compact => {
            options.compact_image = true;
            options.chunk_size = Some(256 << 10);
            options.storage_grow_unit = Some(1 << 20);
        }
        Kind::Cow => {
            // A base shorter than the disk: the tail reads as zeros.
            let base_len = SIZE / 2 + 64 * 1024;
            create_raw(&dir.join("base.raw"), base_len, 7).unwrap();
            for (i, byte) in model[..base_len as usize].iter_mut().enumerate() {
                *byte = pattern_byte(i as u64, 7);
            }
            options.base = Some(BaseSpec {
                name: b"base.raw",
                format: b"raw",
                size: base_len,
            });
            options.block_size = Some(4096);
        }
        Kind::Raw => {
            create_raw(&path, SIZE, 3).unwrap();
            for (i, byte) in model.iter_mut().enumerate() {
                *byte = pattern_byte(i as u64, 3);
            }
            return (path, model);
        }
    }
    create_image(&path, &options).unwrap();
    (path, model)
}

fn open(path: &Path, kind: Kind, options: ExecutorOptions) -> Executor {
    match kind {
        Kind::Raw => Executor::open_raw(path, options).unwrap(),
        _ => Executor::open(path, options).unwrap(),
    }
}

struct InFlight {
    write: bool,
    lo: u64,
    hi: u64,
    /// What a read must return.
    expect: Vec<u8>,
}

/// Random reads and writes (512 B to 64 KiB, sector aligned) with `DEPTH` in flight. A
/// new request never overlaps one in flight of the other kind (the engine orders
/// overlapping writes but not reads against writes; with `ordered_writes` false, as for a
/// raw file, writes never overlap each other either), so the model is exact: writes apply
/// to it at submission, reads compare against it at submission.
fn exercise(
    executor: &mut Executor,
    model: &mut [u8],
    seed: u64,
    ops: usize,
    ordered_writes: bool,
) {
    let mut rng = Rng(seed | 1);
    let mut flying: HashMap<Ticket, InFlight> = HashMap::new();
    let mut issued = 0;
    let mut checked_reads = 0;
    while issued < ops || !flying.is_empty() {
        while flying.len() < DEPTH && issued < ops {
            let write = rng.below(2) == 0;
            let len = (rng.below(128) + 1) * 512;
            let lo = rng.below((SIZE - len) / 512 + 1) * 512;
            let hi = lo + len;
            let clash = flying.values().any(|f| {
                (f.write != write || (write && !ordered_writes)) && f.lo < hi && lo < f.hi
            });
            if clash {
                continue;
            }
            let ticket = if write {
                let mut data = vec![0u8; len as usize];
                for word in data.chunks_mut(8) {
                    word.copy_from_slice(&rng.next().to_le_bytes());
                }
                model[lo as usize..hi as usize].copy_from_slice(&data);
                executor.submit_write(lo, data).unwrap()
            } else {
                executor.submit_read(lo, len as usize).unwrap()
            };
            let expect = if write {
                Vec::new()
            } else {
                model[lo as usize..hi as usize].to_vec()
            };
            flying.insert(
                ticket,
                InFlight {
                    write,
                    lo,
                    hi,
                    expect,
                },
            );
            issued += 1;
            if rng.below(200) == 0 {
                let t = executor.submit_flush().unwrap();
                flying.insert(
                    t,
                    InFlight {
                        write: false,
                        lo: 0,
                        hi: 0,
                        expect: Vec::new(),
                    },
                );
            }
        }
        for done in executor.wait_some().unwrap() {
            let f = flying.remove(&done.ticket).expect("known ticket");
            done.result.unwrap();
            if !f.write && f.hi > f.lo {
                assert!(
                    done.data == f.expect,
                    "read {}..{} returned wrong data",
                    f.lo,
                    f.hi
                );
                checked_reads += 1;
            }
        }
    }
    assert!(checked_reads > ops / 4, "too few reads checked");
}

fn read_all(executor: &mut Executor) -> Vec<u8> {
    let mut all = Vec::with_capacity(SIZE as usize);
    let mut tickets = Vec::new();
    for at in (0..SIZE).step_by(1 << 20) {
        tickets.push(executor.submit_read(at, 1 << 20).unwrap());
    }
    for t in tickets {
        let done = executor.wait(t).unwrap();
        done.result.unwrap();
        all.extend_from_slice(&done.data);
    }
    all
}

fn assert_same(got: &[u8], model: &[u8], what: &str) {
    if let Some(at) = got.iter().zip(model).position(|(a, b)| a != b) {
        panic!("{what}: first difference at byte {at}");
    }
    assert_eq!(got.len(), model.len(), "{what}: length");
}

fn round_trip(kind: Kind, guest_buffers: GuestBuffers, seed: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut model) = make(dir.path(), kind);
    let options = ExecutorOptions {
        guest_buffers,
        ..Default::default()
    };
    let mut executor = open(&path, kind, options);
    exercise(&mut executor, &mut model, seed, 1000, kind != Kind::Raw);
    let syncs = executor.syncs();
    executor.flush().unwrap();
    assert!(executor.syncs() > syncs, "flush must call fdatasync");
    assert_same(&read_all(&mut executor), &model, "before close");
    exercise(
        &mut executor,
        &mut model,
        seed ^ 0x9e37,
        300,
        kind != Kind::Raw,
    );
    assert!(executor.close().unwrap(), "closed clean");

    if kind != Kind::Raw {
        let mut driver = open_image(&path, DriverOptions::default()).unwrap();
        let mut all = Vec::new();
        for at in (0..SIZE).step_by(1 << 20) {
            all.extend_from_slice(&driver.read(at, 1 << 20).unwrap());
        }
        assert_same(&all, &model, "reopened with open_image");
        let (_, clean) = driver.close().unwrap();
        assert!(clean);
    }
    let mut executor = open(&path, kind, options);
    assert_same(
        &read_all(&mut executor),
        &model,
        "reopened with the executor",
    );
    executor.close().unwrap();
}

#[test]
fn plain_image_matches_model() {
    round_trip(Kind::Plain, GuestBuffers::Shared, 11);
}

#[test]
fn compact_image_matches_model() {
    round_trip(Kind::Compact, GuestBuffers::Shared, 12);
}

#[test]
fn cow_image_over_raw_base_matches_model() {
    round_trip(Kind::Cow, GuestBuffers::Shared, 13);
}

#[test]
fn raw_mode_matches_model() {
    round_trip(Kind::Raw, GuestBuffers::Shared, 14);
}

#[test]
fn copied_guest_buffers_match_model() {
    round_trip(Kind::Cow, GuestBuffers::Copy, 15);
}

#[test]
fn cow_over_fvd_base_chain_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let (base_path, mut model) = make(dir.path(), Kind::Compact);
    let mut base = open(&base_path, Kind::Compact, ExecutorOptions::default());
    exercise(&mut base, &mut model, 21, 300, true);
    base.close().unwrap();
    let top = dir.path().join("top.img");
    create_image(
        &top,
        &CreateOptions {
            virtual_size: SIZE,
            base: Some(BaseSpec {
                name: b"disk.img",
                format: b"fvd",
                size: SIZE,
            }),
            ..Default::default()
        },
    )
    .unwrap();
    let mut executor = Executor::open(&top, ExecutorOptions::default()).unwrap();
    exercise(&mut executor, &mut model, 22, 500, true);
    assert_same(&read_all(&mut executor), &model, "chain");
    executor.close().unwrap();
}

#[test]
fn flush_calls_fdatasync_in_both_modes() {
    for kind in [Kind::Plain, Kind::Raw] {
        let dir = tempfile::tempdir().unwrap();
        let (path, _) = make(dir.path(), kind);
        let mut executor = open(&path, kind, ExecutorOptions::default());
        executor.write(4096, &[1; 4096]).unwrap();
        let before = executor.syncs();
        executor.flush().unwrap();
        assert!(executor.syncs() > before, "{kind:?}: flush synced");
        executor.close().unwrap();
    }
}

#[test]
fn read_only_refuses_writes_and_bad_buffers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = make(dir.path(), Kind::Plain);
    let mut executor = open(
        &path,
        Kind::Plain,
        ExecutorOptions {
            writable: false,
            ..Default::default()
        },
    );
    assert!(executor.submit_write(0, vec![0; 512]).is_err());
    assert!(executor
        .submit(
            fvd_core::engine::Request::Read {
                offset: 0,
                len: 1024
            },
            vec![0; 512]
        )
        .is_err());
    assert!(executor.submit_read(100, 512).is_err());
    assert_eq!(executor.read(0, 512).unwrap(), vec![0; 512]);
    executor.close().unwrap();
}
