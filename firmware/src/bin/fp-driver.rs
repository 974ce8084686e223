//! Footprint binary `fp-driver` (see [`fvd_firmware::footprint`]): exits 0 when the
//! exercise succeeds. Its size minus `fp-medium`'s is what the rest costs.
#![no_std]
#![no_main]
#![deny(unsafe_code)]

use core::cell::RefCell;
use cortex_m::interrupt::{self, Mutex};
#[allow(unused_imports)]
use fvd_firmware::footprint::{ENGINE_BYTES, MEDIUM_BYTES};

static MEDIUM: Mutex<RefCell<[u8; MEDIUM_BYTES]>> = Mutex::new(RefCell::new([0; MEDIUM_BYTES]));
static ENGINE: Mutex<RefCell<[u8; ENGINE_BYTES]>> = Mutex::new(RefCell::new([0; ENGINE_BYTES]));

#[cortex_m_rt::entry]
fn main() -> ! {
    let ok = interrupt::free(|cs| {
        fvd_firmware::footprint::exercise_driver(
            &mut MEDIUM.borrow(cs).borrow_mut()[..],
            &mut ENGINE.borrow(cs).borrow_mut()[..],
        )
    });
    semihosting::process::exit(if ok { 0 } else { 1 })
}

#[allow(unsafe_code)] // cortex-m-rt's exception handlers are unsafe fns by signature
#[cortex_m_rt::exception]
unsafe fn HardFault(_frame: &cortex_m_rt::ExceptionFrame) -> ! {
    semihosting::process::exit(3)
}
