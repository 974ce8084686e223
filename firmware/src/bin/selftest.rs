//! The self-test firmware for QEMU's mps2-an386: runs [`fvd_firmware::selftest`] over a RAM
//! medium whose read-only prefix is the FAT16 factory image built by `build.rs` (in flash),
//! logs each case with defmt over semihosting, prints `N passed, N failed` and exits QEMU
//! with 0 only when every case passed. Panics and HardFaults exit non-zero.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::cell::RefCell;
use cortex_m::interrupt::{self, Mutex};
use defmt_semihosting as _;
use fvd_firmware::medium::Extent;
use fvd_firmware::ram::RamMedium;
use fvd_firmware::selftest::{Bench, KnownFile};
use fvd_firmware::Layout;

/// The factory image, in flash.
static BASE: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/base.img"));
const BASE_BLOCKS: usize = BASE.len() / 512;
/// The overlay partition: the base's size plus room for the FVD metadata.
const OVERLAY_BLOCKS: usize = BASE_BLOCKS + 512;

static OVERLAY: Mutex<RefCell<[u8; OVERLAY_BLOCKS * 512]>> =
    Mutex::new(RefCell::new([0; OVERLAY_BLOCKS * 512]));
static ENGINE: Mutex<RefCell<[u8; 96 << 10]>> = Mutex::new(RefCell::new([0; 96 << 10]));
static CHECK: Mutex<RefCell<[u8; 64 << 10]>> = Mutex::new(RefCell::new([0; 64 << 10]));

#[cortex_m_rt::entry]
fn main() -> ! {
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
        bench.run(|name, result| match result {
            Ok(()) => defmt::println!("{=str}: ok", name),
            Err(why) => defmt::println!("{=str}: FAILED: {=str}", name, why),
        })
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
