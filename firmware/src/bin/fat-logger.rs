//! `fat-logger`: a real power cut. On the host-file medium (QEMU semihosting), with the
//! command line `fat-logger IMAGE BASE [COUNT]`: opens the FVD overlay IMAGE over the raw
//! factory image BASE (creating the overlay when IMAGE is empty or missing), mounts the
//! FAT volume through it, prints `last=N` (the last line of LOG.TXT, 0 if none), then
//! appends lines `N\n` numbered on, flushing the FAT and the overlay after each and
//! printing `flushed=N`, forever or COUNT times (then closes the overlay cleanly). A host
//! test kills QEMU at random moments and checks that nothing flushed is ever lost.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::cell::RefCell;
use core::ffi::CStr;
use cortex_m::interrupt::{self, Mutex};
use defmt_semihosting as _;
use embedded_sdmmc::BlockDevice;
use fvd_firmware::hostfile::HostFile;
use fvd_firmware::logger::{self, LogEvent, LogFailure};
use fvd_firmware::medium::{Extent, Partition};
use fvd_firmware::{BaseFormat, BaseSpecOf, Geometry, OverlayDisk};

/// Overlay blocks beyond the base's size: room for the FVD metadata.
const METADATA_BLOCKS: u32 = 512;
/// Longest path accepted on the command line.
const PATH_MAX: usize = 200;

static ENGINE: Mutex<RefCell<[u8; 96 << 10]>> = Mutex::new(RefCell::new([0; 96 << 10]));

/// `arg` as a NUL-terminated path in `buf`.
fn c_path<'b>(arg: &str, buf: &'b mut [u8; PATH_MAX + 1]) -> Result<&'b CStr, LogFailure> {
    let bytes = arg.as_bytes();
    let to = buf.get_mut(..bytes.len()).ok_or("path too long")?;
    to.copy_from_slice(bytes);
    let with_nul = buf.get(..=bytes.len()).ok_or("path too long")?;
    CStr::from_bytes_with_nul(with_nul).map_err(|_| "path holds a NUL byte")
}

fn run(engine: &mut [u8]) -> Result<u32, LogFailure> {
    let args = semihosting::experimental::env::args::<512>().map_err(|_| "no command line")?;
    let mut args = (&args).into_iter();
    let _program = args.next();
    let mut arg = || -> Result<Option<&str>, LogFailure> {
        args.next()
            .transpose()
            .map_err(|_| "command line is not UTF-8")
    };
    let usage = "usage: fat-logger IMAGE BASE [COUNT]";
    let (image, base) = (arg()?.ok_or(usage)?, arg()?.ok_or(usage)?);
    let count = match arg()? {
        Some(n) => Some(n.parse::<u32>().map_err(|_| "COUNT is not a number")?),
        None => None,
    };
    let (mut image_buf, mut base_buf) = ([0u8; PATH_MAX + 1], [0u8; PATH_MAX + 1]);
    let base =
        HostFile::open_read_only(c_path(base, &mut base_buf)?).map_err(|_| "cannot open BASE")?;
    let base_blocks = base.num_blocks().map_err(|_| "BASE failed")?.0;
    let overlay_blocks = base_blocks
        .checked_add(METADATA_BLOCKS)
        .ok_or("BASE too large")?;
    let medium = HostFile::open_writable(c_path(image, &mut image_buf)?, overlay_blocks, false)
        .map_err(|_| "cannot open IMAGE")?;
    let base_extent = Extent {
        first: 0,
        blocks: base_blocks,
    };
    let spec = BaseSpecOf {
        len: base_extent.len(),
        format: BaseFormat::Raw,
    };
    let disk = OverlayDisk::open_or_create_over(
        &medium,
        Extent {
            first: 0,
            blocks: overlay_blocks,
        },
        Partition::new(&base, base_extent),
        spec,
        Geometry::default(),
        engine,
        16 << 10,
    )
    .map_err(|_| "cannot open the overlay")?;
    let last = logger::run(
        &disk,
        count,
        || disk.flush().map_err(|_| "overlay flush failed"),
        |event| match event {
            LogEvent::Found { last, torn } => {
                defmt::println!("last={=u32} torn={=u32}", last, torn)
            }
            LogEvent::Flushed(n) => defmt::println!("flushed={=u32}", n),
        },
    )?;
    disk.close().map_err(|_| "overlay close failed")?;
    Ok(last)
}

#[cortex_m_rt::entry]
fn main() -> ! {
    let result = interrupt::free(|cs| run(&mut ENGINE.borrow(cs).borrow_mut()[..]));
    match result {
        Ok(last) => {
            defmt::println!("done last={=u32}", last);
            semihosting::process::exit(0)
        }
        Err(why) => {
            defmt::println!("fat-logger: error: {=str}", why);
            semihosting::process::exit(1)
        }
    }
}

#[allow(unsafe_code)] // cortex-m-rt's exception handlers are unsafe fns by signature
#[cortex_m_rt::exception]
unsafe fn HardFault(_frame: &cortex_m_rt::ExceptionFrame) -> ! {
    semihosting::eprintln!("HardFault");
    semihosting::process::exit(3)
}
