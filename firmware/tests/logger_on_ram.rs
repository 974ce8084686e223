//! The fat-logger workload on the host, over the RAM medium with its volatile write cache:
//! power cuts at every medium command of a run (each unflushed block kept or dropped)
//! never lose a line reported flushed, and the restarted logger continues the numbering
//! with no gap or duplicate, writing over whatever torn tail the cut left. Also the rule
//! that finds the last line, on its own.

mod common;

use common::factory_fat16;
use fvd_firmware::logger::{self, LineScan, LogEvent};
use fvd_firmware::medium::Extent;
use fvd_firmware::ram::{CutAfter, RamMedium};
use fvd_firmware::{Geometry, Layout, OverlayDisk};

fn scan(bytes: &[u8]) -> LineScan {
    let mut scan = LineScan::default();
    // In uneven chunks, as a file is read.
    for chunk in bytes.chunks(3) {
        scan.feed(chunk);
    }
    scan
}

#[test]
fn the_last_line_is_the_end_of_the_longest_run_of_lines_numbered_from_one() {
    assert_eq!((scan(b"").last, scan(b"").end), (0, 0));
    assert_eq!((scan(b"1\n2\n3\n").last, scan(b"1\n2\n3\n").end), (3, 6));
    // A torn tail: a line without its newline, zeros from a dropped block, a wrong number.
    assert_eq!((scan(b"1\n2\n3").last, scan(b"1\n2\n3").end), (2, 4));
    assert_eq!(
        (scan(b"1\n2\n\0\0\0").last, scan(b"1\n2\n\0\0\0").end),
        (2, 4)
    );
    assert_eq!(
        (scan(b"1\n2\n4\n5\n").last, scan(b"1\n2\n4\n5\n").end),
        (2, 4)
    );
    assert_eq!(scan(b"\n1\n").last, 0);
    // Too many digits for a line number stop the scan instead of overflowing.
    assert_eq!(scan(b"1\n99999999999999999999\n").last, 1);
}

#[test]
fn a_power_cut_at_every_command_of_the_logger_loses_no_flushed_line() {
    let path = std::env::temp_dir().join(format!("fvd-fw-logger-{}.img", std::process::id()));
    let rom = factory_fat16(&path, &[]);
    std::fs::remove_file(&path).unwrap();
    let base_blocks = (rom.len() / 512) as u32;
    let overlay_blocks = base_blocks + 512;
    let layout = Layout {
        base: Extent {
            first: 0,
            blocks: base_blocks,
        },
        overlay: Extent {
            first: base_blocks,
            blocks: overlay_blocks,
        },
    };
    let mut ram = vec![0u8; overlay_blocks as usize * 512];
    let medium = RamMedium::<64>::with_rom(&rom, &mut ram);
    let mut memory = vec![0u8; 96 << 10];
    let mut durable = 0u32;
    let mut torn_tails = 0;
    let mut cut_points = 0;
    // Each round: a logger that dies after `budget` medium commands, a cut that keeps or
    // drops each unflushed block, then a restart that must find every flushed line.
    // Budgets grow until a whole run fits in one; each round continues the same log.
    for budget in 0u64.. {
        let dying = CutAfter::new(&medium, budget);
        let mut flushed = Vec::new();
        if let Ok(disk) =
            OverlayDisk::open_or_create(&dying, layout, Geometry::default(), &mut memory, 16 << 10)
        {
            let _ = logger::run(
                &disk,
                Some(12),
                || disk.flush().map_err(|_| "flush failed"),
                |event| {
                    if let LogEvent::Flushed(n) = event {
                        flushed.push(n)
                    }
                },
            );
        }
        if !dying.is_dead() {
            break; // the whole run fits in the budget: every command boundary was cut
        }
        cut_points += 1;
        medium.power_cut(budget ^ 0x5851_f42d_4c95_7f2d).unwrap();
        durable = flushed.last().copied().unwrap_or(durable);

        let disk = OverlayDisk::open_or_create(
            &medium,
            layout,
            Geometry::default(),
            &mut memory,
            16 << 10,
        )
        .unwrap_or_else(|e| panic!("budget {budget}: reopen after the cut failed: {e:?}"));
        let mut found = None;
        let mut after = Vec::new();
        logger::run(
            &disk,
            Some(2),
            || disk.flush().map_err(|_| "flush failed"),
            |event| match event {
                LogEvent::Found { last, torn } => {
                    found = Some(last);
                    torn_tails += usize::from(torn > 0);
                }
                LogEvent::Flushed(n) => after.push(n),
            },
        )
        .unwrap_or_else(|e| panic!("budget {budget}: the restarted logger failed: {e}"));
        let last = found.unwrap();
        assert!(
            last >= durable,
            "budget {budget}: line {durable} was reported flushed, the restart found {last}"
        );
        assert_eq!(after, [last + 1, last + 2], "budget {budget}");
        durable = last + 2;
        disk.close().unwrap();
    }
    assert!(cut_points > 20, "only {cut_points} cut points");
    println!("{cut_points} cut points, {torn_tails} torn tails written over, {durable} lines");
}
