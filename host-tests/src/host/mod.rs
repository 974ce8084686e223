//! The std host: the core engine run on files. [`storage`] is what the engine's commands
//! are performed on (bypassing the page cache through [`direct`] for `cache=none`), [`files`] opens an image with its data file and bases, [`gate`] and
//! [`lock`] decide what may be opened and keep other writers out (as QEMU does), [`driver`]
//! runs an image's chain of engines (core's chain serves base reads between images)
//! blocking on one thread and [`executor`] on a pool of I/O threads; [`faults`] injects failures into both; one error
//! type ([`error`]) for all of them.

pub mod direct;
pub mod driver;
pub mod error;
pub mod executor;
pub mod faults;
pub mod files;
pub mod gate;
pub mod lock;
pub mod storage;
