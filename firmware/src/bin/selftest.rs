//! The self-test firmware for QEMU's mps2-an386: runs [`fvd_firmware::selftest`] over a RAM
//! medium whose read-only prefix is the FAT16 factory image built by `build.rs` (in flash),
//! logs each case with defmt over semihosting; then, on the host-file medium, saves the
//! factory image as `target/firmware/base.img` and writes `target/firmware/disk.fvd`, an
//! FVD overlay over it holding FIRMWARE.TXT (paths relative to QEMU's working directory,
//! the workspace root under scripts/qemu-run.sh; the host test checks the pair with
//! fvd-img, fsck.fat and mtype). Prints `N passed, N failed` and exits QEMU with 0 only
//! when every case passed. Panics and HardFaults exit non-zero.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::cell::RefCell;
use cortex_m::interrupt::{self, Mutex};
use defmt_semihosting as _;
use fvd_firmware::hostfile::HostFile;
use fvd_firmware::medium::Extent;
use fvd_firmware::ram::RamMedium;
use fvd_firmware::selftest::{write_through_overlay_over, Bench, Failure, KnownFile};
use fvd_firmware::Layout;

/// The factory image, in flash.
static BASE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/base.img"));
const BASE_BLOCKS: usize = BASE.len() / 512;
/// The writable blocks: the base's size plus room for the FVD metadata and, in the case
/// that keeps the factory image as FVD, for that image (its metadata and used chunks).
const OVERLAY_BLOCKS: usize = BASE_BLOCKS + 1024;

static OVERLAY: Mutex<RefCell<[u8; OVERLAY_BLOCKS * 512]>> =
    Mutex::new(RefCell::new([0; OVERLAY_BLOCKS * 512]));
static ENGINE: Mutex<RefCell<[u8; 96 << 10]>> = Mutex::new(RefCell::new([0; 96 << 10]));
static CHECK: Mutex<RefCell<[u8; 64 << 10]>> = Mutex::new(RefCell::new([0; 64 << 10]));

/// Where the host-file case leaves the factory image and the overlay over it.
const BASE_PATH: &core::ffi::CStr = c"target/firmware/base.img";
const DISK_PATH: &core::ffi::CStr = c"target/firmware/disk.fvd";
/// What the host-file case writes through the overlay (the host test reads it back).
const FIRMWARE_TXT: &[u8] = b"written by the firmware on the host-file medium\n";

/// The host-file case: the factory image saved beside a new overlay the firmware writes.
fn host_file_overlay_beside_its_base(engine: &mut [u8]) -> Result<(), Failure> {
    semihosting::fs::write(BASE_PATH, BASE).map_err(|_| "cannot write base.img")?;
    let base = HostFile::open_read_only(BASE_PATH).map_err(|_| "cannot open base.img")?;
    let disk = HostFile::open_writable(DISK_PATH, OVERLAY_BLOCKS as u32, true)
        .map_err(|_| "cannot create disk.fvd")?;
    write_through_overlay_over(
        &disk,
        Extent {
            first: 0,
            blocks: OVERLAY_BLOCKS as u32,
        },
        &base,
        Extent {
            first: 0,
            blocks: BASE_BLOCKS as u32,
        },
        engine,
        16 << 10,
        "FIRMWARE.TXT",
        FIRMWARE_TXT,
    )
}

/// The seed of the random cut points: the first command-line argument (`cargo run ...
/// -- SEED` replays a run), else the host's clock.
fn seed() -> u64 {
    let args = semihosting::experimental::env::args::<64>();
    let given = args.ok().and_then(|args| {
        (&args)
            .into_iter()
            .nth(1)
            .and_then(|a| a.ok().and_then(|a| a.parse::<u64>().ok()))
    });
    given.unwrap_or_else(|| {
        let now = semihosting::experimental::time::SystemTime::now();
        let since = now.duration_since(semihosting::experimental::time::SystemTime::UNIX_EPOCH);
        since.map_or(0x5eed, |d| d.as_secs())
    })
}

#[cortex_m_rt::entry]
fn main() -> ! {
    let seed = seed();
    defmt::println!(
        "selftest: seed {=u64} (cargo run ... -- {=u64} replays it)",
        seed,
        seed
    );
    let tally = interrupt::free(|cs| {
        let mut overlay = OVERLAY.borrow(cs).borrow_mut();
        let mut engine = ENGINE.borrow(cs).borrow_mut();
        let mut check = CHECK.borrow(cs).borrow_mut();
        let medium = RamMedium::<64>::with_rom(BASE, &mut overlay[..]);
        let mut bench = Bench {
            medium: &medium,
            layout: Layout {
                base: Extent {
                    first: 0,
                    blocks: BASE_BLOCKS as u32,
                },
                overlay: Extent {
                    first: BASE_BLOCKS as u32,
                    blocks: OVERLAY_BLOCKS as u32,
                },
            },
            known: KnownFile {
                name: "HELLO.TXT",
                content: include_bytes!(concat!(env!("OUT_DIR"), "/HELLO.TXT")),
            },
            memory: &mut engine[..],
            cache_bytes: 16 << 10,
            check_memory: &mut check[..],
        };
        let report = |name: &str, result: Result<(), Failure>| match result {
            Ok(()) => defmt::println!("{=str}: ok", name),
            Err(why) => defmt::println!("{=str}: FAILED: {=str}", name, why),
        };
        let mut tally = bench.run(seed, report);
        let name = "host_file_overlay_beside_its_base";
        let result = host_file_overlay_beside_its_base(&mut engine[..]);
        tally.note(result.is_ok());
        report(name, result);
        tally
    });
    defmt::println!(
        "selftest: {=u32} passed, {=u32} failed",
        tally.passed,
        tally.failed
    );
    semihosting::process::exit(if tally.failed == 0 { 0 } else { 1 })
}

#[allow(unsafe_code)] // cortex-m-rt's exception handlers are unsafe fns by signature
#[cortex_m_rt::exception]
unsafe fn HardFault(_frame: &cortex_m_rt::ExceptionFrame) -> ! {
    semihosting::eprintln!("HardFault");
    semihosting::process::exit(3)
}
