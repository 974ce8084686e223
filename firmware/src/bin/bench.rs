//! Throughput of the virtual disk against the raw medium, in QEMU (mps2-an386): sequential
//! and random reads and writes of 512 bytes and 4 KiB, over a 1 MiB virtual disk whose
//! base and overlay live on a RAM medium, and the same requests on the raw base partition
//! of that medium, in the same run. Each figure is the mean over passes of 1 MiB repeated
//! for at least half a second of the host's clock (semihosting SYS_CLOCK, 10 ms steps).
//! `cargo run -p fvd-firmware --target thumbv7em-none-eabihf --features qemu --release
//! --bin bench` prints one line per case and the driver's size in RAM.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::cell::RefCell;
use cortex_m::interrupt::{self, Mutex};
use defmt_semihosting as _;
use embedded_sdmmc::{Block, BlockDevice, BlockIdx};
use fvd_firmware::medium::{Extent, Medium};
use fvd_firmware::ram::RamMedium;
use fvd_firmware::workload::Rng;
use fvd_firmware::{Geometry, Layout, OverlayDisk};
use semihosting::experimental::time::Instant;

const BASE_BLOCKS: u32 = 2048;
const OVERLAY_BLOCKS: u32 = BASE_BLOCKS + 512;
const BYTES: usize = (BASE_BLOCKS + OVERLAY_BLOCKS) as usize * 512;
/// Metadata cache of the engine.
const CACHE_BYTES: usize = 16 << 10;
/// Bytes moved by one pass.
const PASS: u64 = 1 << 20;
/// Least time measured per case, in centiseconds.
const MIN_CENTIS: u64 = 50;

static MEDIUM: Mutex<RefCell<[u8; BYTES]>> = Mutex::new(RefCell::new([0; BYTES]));
static ENGINE: Mutex<RefCell<[u8; 64 << 10]>> = Mutex::new(RefCell::new([0; 64 << 10]));

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    SeqRead,
    SeqWrite,
    RandRead,
    RandWrite,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::SeqRead => "sequential read",
            Kind::SeqWrite => "sequential write",
            Kind::RandRead => "random read",
            Kind::RandWrite => "random write",
        }
    }
}

/// One pass of `kind` requests of `blocks` blocks each on `disk`; false on an error.
fn pass<D: BlockDevice>(disk: &D, kind: Kind, blocks: usize, rng: &mut Rng) -> bool {
    let mut buf = [
        Block::new(),
        Block::new(),
        Block::new(),
        Block::new(),
        Block::new(),
        Block::new(),
        Block::new(),
        Block::new(),
    ];
    let Some(buf) = buf.get_mut(..blocks) else {
        return false;
    };
    let requests = PASS / (blocks as u64 * 512);
    let slots = u64::from(BASE_BLOCKS) / blocks as u64;
    for i in 0..requests {
        let slot = match kind {
            Kind::SeqRead | Kind::SeqWrite => i % slots,
            Kind::RandRead | Kind::RandWrite => rng.below(slots),
        };
        let at = BlockIdx((slot * blocks as u64) as u32);
        let ok = match kind {
            Kind::SeqRead | Kind::RandRead => disk.read(buf, at).is_ok(),
            Kind::SeqWrite | Kind::RandWrite => {
                for b in buf.iter_mut() {
                    b.contents[0] = i as u8;
                }
                disk.write(buf, at).is_ok()
            }
        };
        if !ok {
            return false;
        }
    }
    true
}

/// KiB/s of `kind` on `disk` (`flush` ends each write pass), or 0 on an error.
fn measure<D: BlockDevice>(disk: &D, flush: &dyn Fn() -> bool, kind: Kind, blocks: usize) -> u32 {
    let mut rng = Rng::new(0x1234_5678);
    let start = Instant::now();
    let mut passes = 0u64;
    loop {
        if !pass(disk, kind, blocks, &mut rng) || !flush() {
            return 0;
        }
        passes += 1;
        let centis = (start.elapsed().as_millis() / 10) as u64;
        if centis >= MIN_CENTIS {
            return (passes * PASS * 100 / centis / 1024) as u32;
        }
    }
}

#[cortex_m_rt::entry]
fn main() -> ! {
    let failed = interrupt::free(|cs| {
        let mut bytes = MEDIUM.borrow(cs).borrow_mut();
        let mut engine = ENGINE.borrow(cs).borrow_mut();
        let medium = RamMedium::<0>::new(&mut bytes[..]);
        let layout = Layout {
            base: Extent {
                first: 0,
                blocks: BASE_BLOCKS,
            },
            overlay: Extent {
                first: BASE_BLOCKS,
                blocks: OVERLAY_BLOCKS,
            },
        };
        let Ok(disk) = OverlayDisk::open_or_create(
            &medium,
            layout,
            Geometry::default(),
            &mut engine[..],
            CACHE_BYTES,
        ) else {
            return true;
        };
        defmt::println!(
            "bench: 1 MiB virtual disk, 4 KiB copy-on-write blocks, {=usize} KiB metadata cache; driver object {=usize} B",
            CACHE_BYTES / 1024,
            core::mem::size_of_val(&disk)
        );
        let mut failed = false;
        // The first pass over a new overlay allocates every block (copy from the base).
        let mut rng = Rng::new(1);
        let first = Instant::now();
        let ok = pass(&disk, Kind::SeqWrite, 8, &mut rng) && disk.flush().is_ok();
        let centis = ((first.elapsed().as_millis() / 10) as u64).max(1);
        failed |= !ok;
        defmt::println!(
            "first sequential write 4096 B (allocating): overlay {=u64} KiB/s",
            PASS * 100 / centis / 1024
        );
        let raw_flush = || medium.flush().is_ok();
        let disk_flush = || disk.flush().is_ok();
        for blocks in [1usize, 8] {
            for kind in [
                Kind::SeqRead,
                Kind::SeqWrite,
                Kind::RandRead,
                Kind::RandWrite,
            ] {
                let raw = measure(&medium, &raw_flush, kind, blocks);
                let overlay = measure(&disk, &disk_flush, kind, blocks);
                failed |= raw == 0 || overlay == 0;
                defmt::println!(
                    "{=str} {=usize} B: raw {=u32} KiB/s, overlay {=u32} KiB/s, overlay/raw {=u32}%",
                    kind.name(),
                    blocks * 512,
                    raw,
                    overlay,
                    (u64::from(overlay) * 100 / u64::from(raw.max(1))) as u32
                );
            }
        }
        failed
    });
    semihosting::process::exit(if failed { 1 } else { 0 })
}

#[allow(unsafe_code)] // cortex-m-rt's exception handlers are unsafe fns by signature
#[cortex_m_rt::exception]
unsafe fn HardFault(_frame: &cortex_m_rt::ExceptionFrame) -> ! {
    semihosting::eprintln!("HardFault");
    semihosting::process::exit(3)
}
