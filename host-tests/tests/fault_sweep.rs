//! Fault sweeps: a small workload of concurrent writes, reads, write-zeroes and flushes runs
//! on each kind of image (FVD plain, compact, over a base with copy-on-write and with
//! copy-on-read, with a data file; QED with and without a backing file) while storage
//! command N fails, for every N in turn; the fault at N is chosen by N: EIO before or after
//! the command's effect, a torn write, a short read (that fails, ends early or just goes
//! on), a full file system (ENOSPC) or a file size limit (EFBIG) from N on, a base whose
//! reads all fail from N on. At every N:
//!
//! - nothing hangs (a command budget turns a runaway engine into a failure);
//! - a failure reaches the guest as an I/O error of the request whose data the failed
//!   command carried, and of no other request; a failed metadata command fails only
//!   requests of the batch it happened in (and the flush that reports it); once the fault
//!   clears, every request succeeds and a flush and a clean close follow;
//! - reads return only data that was written (or was there);
//! - after a crash right after the run, every write acknowledged before a successful flush
//!   reads back; after the clean close, `fvd-img check` finds nothing or only leaks and
//!   every acknowledged write reads back; failed writes leave old or new data;
//! - the base is never written.

mod fault_support;

use fault_support::sweep::sweep;
use fault_support::Kind;
use fvd_core::engine::FileId;
use fvd_host::host::faults::{AfterShort, Errno, Fault, Kinds, Rule};

/// The fault injected at command `n`, and whether it lasts (until cleared) or hits once.
fn fault_at(n: u64, kind: Kind) -> Rule {
    match n % 7 {
        0 => Rule::at(n, Fault::Fail(Errno::Eio)),
        1 => Rule::at(n, Fault::FailAfterEffect(Errno::Eio)),
        2 => Rule::at(
            n,
            Fault::Torn {
                bytes: 512,
                errno: Errno::Eio,
            },
        ),
        3 => Rule::from(n, Fault::NoGrowth(Errno::NoSpace)).kinds(Kinds::GROWING),
        4 if kind.has_base() => {
            // A base that ends early must not read as zeros (an image file that ends early
            // reads as zeros past its end: that is how the engine uses it).
            let short = Fault::ShortRead {
                bytes: 256,
                then: AfterShort::Eof,
            };
            Rule::at(n, short).on(FileId::Base).kinds(Kinds::READS)
        }
        4 => {
            let short = Fault::ShortRead {
                bytes: 256,
                then: AfterShort::Fail(Errno::Eio),
            };
            Rule::at(n, short).kinds(Kinds::READS)
        }
        5 => Rule::at(
            n,
            Fault::ShortRead {
                bytes: 256,
                then: AfterShort::Continue,
            },
        )
        .kinds(Kinds::READS),
        _ if kind.has_base() => Rule::from(n, Fault::Fail(Errno::Eio))
            .on(FileId::Base)
            .kinds(Kinds::READS),
        _ => Rule::from(n, Fault::NoGrowth(Errno::TooLarge)).kinds(Kinds::GROWING),
    }
}

#[test]
fn faults_at_every_command_of_a_plain_image_keep_the_promises() {
    sweep(Kind::Plain, 11, fault_at);
}

#[test]
fn faults_at_every_command_of_a_compact_image_keep_the_promises() {
    sweep(Kind::Compact, 12, fault_at);
}

#[test]
fn faults_at_every_command_of_a_copy_on_write_image_keep_the_promises() {
    sweep(Kind::Cow, 13, fault_at);
}

#[test]
fn faults_at_every_command_of_a_copy_on_read_image_keep_the_promises() {
    sweep(Kind::Cor, 14, fault_at);
}

#[test]
fn faults_at_every_command_of_an_image_with_a_data_file_keep_the_promises() {
    sweep(Kind::DataFile, 15, fault_at);
}

#[test]
fn faults_at_every_command_of_a_qed_image_keep_the_promises() {
    sweep(Kind::Qed, 16, fault_at);
}

#[test]
fn faults_at_every_command_of_a_qed_image_over_a_backing_file_keep_the_promises() {
    sweep(Kind::QedBase, 17, fault_at);
}
