// End-to-end tests of the inspector's views beyond the header, hex and check: partitions
// (against sfdisk), the FVD journal of an image left open, QED's need-check bit, the
// layout bar, the zoomable map with its tooltip, the sample images, cancel, hostile files,
// and how many bytes and how long big sparse images take. Screenshots of each view go to
// target/web-screens/. Needs scripts/build-web.sh to have built web-demo/pkg and samples.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { start, fvdImg, screens, sfdisk } from './harness.mjs';

let h;
const row = (byte) => Array(16).fill(byte).join(' ');

// Counts the bytes the page reads from files, and can slow each read down (for cancel).
function countReads() {
  window.bytesRead = 0;
  window.readDelayMs = 0;
  const slice = Blob.prototype.slice;
  Blob.prototype.slice = function (start = 0, end = this.size) {
    window.bytesRead += Math.max(0, Math.min(end, this.size) - start);
    const part = slice.call(this, start, end);
    if (window.readDelayMs > 0) {
      const read = part.arrayBuffer.bind(part);
      part.arrayBuffer = () => new Promise((ok) => setTimeout(ok, window.readDelayMs)).then(read);
    }
    return part;
  };
}

before(async () => {
  h = await start(countReads);
  const { run } = h;
  run('truncate', '-s', '4M', 'base.raw');
  run(fvdImg, 'io', '-f', 'raw', '-c', 'write -P 0x42 1M 64k', 'base.raw');
  run(fvdImg, 'create', '-f', 'fvd', '-b', 'base.raw', '-F', 'raw', 'overlay.fvd');
  run(fvdImg, 'io', '-c', 'write -P 0xab 0 64k', 'overlay.fvd');
  run('qemu-img', 'create', '-q', '-f', 'qed', '-o', 'cluster_size=65536', 'plain.qed', '8M');
  run('qemu-io', '-f', 'qed', '-c', 'write -P 0xcd 2M 64k', 'plain.qed');
});

after(async () => {
  await h?.close();
});

/// A 64 MiB raw disk partitioned by sfdisk from `script`, and what `sfdisk --json` says.
function partitioned(name, script) {
  h.run('truncate', '-s', '64M', name);
  h.run('sh', '-c', `printf '%s' "$0" | ${sfdisk()} --no-reread --no-tell-kernel -q ${name} >/dev/null`, script);
  return JSON.parse(h.run(sfdisk(), '--json', name).toString()).partitiontable;
}

async function listedPartitions() {
  return h.page.$$eval('#partitions tbody tr', (rows) => rows.map((r) => ({
    start: Number(r.dataset.start), size: Number(r.dataset.size), text: r.textContent,
  })));
}

test('mbr_and_gpt_partitions_match_sfdisk_and_are_marked_on_the_map', async () => {
  const mbr = partitioned('mbr.raw', 'label: dos\nstart=2048, size=20480, type=83, bootable\n' +
    'start=22528, size=10240, type=82\nstart=40960, size=40960, type=5\n');
  const gpt = partitioned('gpt.raw', 'label: gpt\n' +
    'start=2048, size=4096, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system"\n' +
    'start=6144, size=65536, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="root"\n');
  h.run(fvdImg, 'convert', '-q', '-f', 'raw', '-O', 'fvd', 'mbr.raw', 'mbr.fvd');
  h.run(fvdImg, 'convert', '-q', '-f', 'raw', '-O', 'qed', 'gpt.raw', 'gpt.qed');
  for (const [image, table, label] of [['mbr.fvd', mbr, /^MBR/], ['gpt.qed', gpt, /^GPT/]]) {
    assert.equal(await h.open(image), 'ready', await h.error());
    assert.match(await h.page.textContent('#partition-label'), label);
    const ours = await listedPartitions();
    assert.deepEqual(ours.map(({ start, size }) => ({ start, size })),
      table.partitions.map((p) => ({ start: p.start * 512, size: p.size * 512 })), image);
    await h.shot(`partitions-${image.replace('.', '-')}`, '#partitions');
    await h.shot(`map-${image.replace('.', '-')}`, '#alloc-map');
  }
  const ours = await listedPartitions();
  assert.match(ours[0].text, /EFI System.*EFI system/);
  assert.match(ours[1].text, /Linux filesystem.*root/);
  // The MBR listing marks the extended partition.
  assert.equal(await h.open('mbr.fvd'), 'ready');
  assert.match((await listedPartitions())[2].text, /extended/);
  // A damaged primary GPT header: the backup at the last sector is used, and said so.
  const damaged = fs.readFileSync(h.at('gpt.raw'));
  damaged[512 + 60] ^= 0xff; // the disk GUID, under the header CRC
  fs.writeFileSync(h.at('gpt-bad.raw'), damaged);
  h.run(fvdImg, 'convert', '-q', '-f', 'raw', '-O', 'qed', 'gpt-bad.raw', 'gpt-bad.qed');
  assert.equal(await h.open('gpt-bad.qed'), 'ready', await h.error());
  assert.match(await h.page.textContent('#partition-label'), /backup used/);
  assert.equal((await listedPartitions()).length, 2);
  // Both headers damaged: the page says why and still shows the rest of the image.
  damaged[64 * 1024 * 1024 - 512 + 60] ^= 0xff;
  fs.writeFileSync(h.at('gpt-worse.raw'), damaged);
  h.run(fvdImg, 'convert', '-q', '-f', 'raw', '-O', 'qed', 'gpt-worse.raw', 'gpt-worse.qed');
  assert.equal(await h.open('gpt-worse.qed'), 'ready', await h.error());
  assert.match(await h.page.textContent('#partition-label'), /unreadable: GPT header at LBA 1 has CRC-32/);
  assert.equal((await listedPartitions()).length, 0);
  // A partition row moves the cursor to its first byte.
  assert.equal(await h.open('mbr.fvd'), 'ready');
  await h.page.click('#partitions tbody tr:nth-child(2)');
  await h.page.waitForFunction(() => document.getElementById('hex-view').textContent.startsWith('000000b00000'));
});

/// Writes to an FVD image with fvd-img, flushes, and kills the process before it closes
/// the image: clean_shutdown stays 0 and the mappings live only in the journal.
async function crashAfterFlush(image, commands) {
  const args = ['io', ...commands.flatMap((c) => ['-c', c]), '-c', 'flush', '-c', 'read -q 0 512', '-c', 'read 0 512', '-c', 'sleep 30000', image];
  const child = spawn(fvdImg, args, { cwd: h.dir, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  await new Promise((ok, fail) => {
    child.stdout.on('data', (d) => {
      out += d;
      if (/read 512\/512 bytes at offset 0/.test(out)) ok();
    });
    child.on('exit', () => fail(new Error(`fvd-img io exited early: ${out}`)));
  });
  child.removeAllListeners('exit');
  const gone = new Promise((ok) => child.on('exit', ok));
  child.kill('SIGKILL');
  await gone;
}

test('an_fvd_image_left_open_lists_the_journal_records_a_replay_applies', async () => {
  h.run(fvdImg, 'create', '-f', 'fvd', '-b', 'base.raw', '-F', 'raw', '-o',
    'compact_image=on,chunk_size=64k,block_size=4k', 'dirty.fvd');
  await crashAfterFlush('dirty.fvd', ['write -q -P 0x5a 64k 8k', 'write -q -P 0x5b 3M 4k']);
  assert.equal(await h.open('dirty.fvd', 'base.raw'), 'ready', await h.error());
  assert.equal(await h.field('clean_shutdown'), '0');
  const status = await h.page.$eval('#journal-status', (e) => ({ ...e.dataset, text: e.textContent }));
  assert.equal(status.clean, '0');
  assert.ok(Number(status.current) >= 1 && Number(status.records) >= 2, JSON.stringify(status));
  assert.match(status.text, /Not closed cleanly/);
  const rows = await h.page.$$eval('#journal-rows tbody tr', (rs) => rs.map((r) => ({
    status: r.dataset.status, kind: r.dataset.kind, cells: Array.from(r.cells, (c) => c.textContent),
  })));
  const current = rows.filter((r) => r.status === 'current');
  assert.equal(current.length, Number(status.records));
  // The table records map chunk 1 (0x10000) and chunk 48 (3 MiB); the bitmap records
  // mark their blocks local.
  const ranges = current.map((r) => r.cells[5].split('–').map(Number));
  const covers = (at) => ranges.some(([a, b]) => a <= at && at < b);
  assert.ok(current.some((r) => r.kind === 'table'), JSON.stringify(rows));
  assert.ok(current.some((r) => r.kind === 'bitmap'), JSON.stringify(rows));
  assert.ok(covers(0x10000) && covers(3 << 20), JSON.stringify(ranges));
  // What the journal says is what the page reads: the overlay shows the writes.
  assert.deepEqual(await h.goTo('64K', 0x10000), { state: 'data', bytes: row('5a') });
  assert.deepEqual(await h.goTo('3M', 3 << 20), { state: 'data', bytes: row('5b') });
  await h.shot('journal-dirty-fvd', '#journal-rows');
  // A clean image reads no journal unless asked.
  assert.equal(await h.open('overlay.fvd', 'base.raw'), 'ready');
  assert.equal(await h.page.getAttribute('#journal-status', 'data-clean'), '1');
  assert.equal(await h.page.isVisible('#journal-scan'), true);
  await h.page.click('#journal-scan');
  await h.page.waitForFunction(() => document.getElementById('journal-status').dataset.current !== undefined);
  assert.equal(await h.page.getAttribute('#journal-status', 'data-current'), '0');
});

test('a_qed_image_a_writer_left_open_shows_its_need_check_bit', async () => {
  h.run('qemu-img', 'create', '-q', '-f', 'qed', 'open.qed', '8M');
  // qemu-io's abort ends the process before QEMU clears the bit (it exits by SIGABRT).
  spawnSync('qemu-io', ['-f', 'qed', '-c', 'write -P 0x11 1M 64k', '-c', 'abort', 'open.qed'], { cwd: h.dir, stdio: 'ignore' });
  assert.equal(await h.open('open.qed'), 'ready', await h.error());
  assert.equal(await h.page.getAttribute('#journal-status', 'data-need-check'), '1');
  assert.equal(await h.open('plain.qed'), 'ready');
  assert.equal(await h.page.getAttribute('#journal-status', 'data-need-check'), '0');
});

test('the_layout_bar_shows_each_region_of_the_file', async () => {
  assert.equal(await h.open('overlay.fvd', 'base.raw'), 'ready');
  const fvd = await h.page.$$eval('#layout-list li', (l) => l.map((e) => e.dataset.region));
  assert.deepEqual(fvd.filter((n) => n !== 'data'), ['header', 'bitmap', 'journal']);
  await h.shot('layout-fvd', '#layout-bar');
  assert.equal(await h.open('plain.qed'), 'ready');
  const qed = await h.page.$$eval('#layout-list li', (l) => l.map((e) => e.dataset.region));
  assert.deepEqual(qed, ['header', 'L1 table', 'clusters', 'L2 table']);
  await h.shot('image-qed');
});

test('the_map_zooms_to_single_blocks_names_the_bytes_under_the_mouse_and_moves_the_cursor_on_click', async () => {
  assert.equal(await h.open('overlay.fvd', 'base.raw'), 'ready');
  const len = async () => Number(await h.page.getAttribute('#alloc-map', 'data-view-len'));
  assert.equal(await len(), 4 << 20);
  await h.page.click('#zoom-in');
  assert.equal(await len(), 1 << 20);
  for (let i = 0; i < 10; i++) await h.page.click('#zoom-in');
  // Down to 16 blocks of the image (FVD block_size).
  const block = Number(await h.field('block_size'));
  assert.equal(await len(), Math.max(16 * block, 4096));
  await h.page.click('#zoom-all');
  assert.equal(await len(), 4 << 20);
  const box = await h.page.locator('#alloc-map').boundingBox();
  // The wheel zooms around the mouse.
  await h.page.mouse.move(box.x + box.width * 0.26, box.y + 10);
  await h.page.mouse.wheel(0, -100);
  assert.equal(await len(), 2 << 20);
  await h.page.click('#zoom-all');
  // Hover over the first pixel: FVD data at 0; over a quarter: base (1 MiB).
  await h.page.mouse.move(box.x + 1, box.y + 10);
  assert.match(await h.page.textContent('#map-tooltip'), /^0x0–0x[0-9a-f]+: data/);
  await h.page.mouse.move(box.x + box.width * 0.26, box.y + 10);
  assert.match(await h.page.textContent('#map-tooltip'), /: base/);
  await h.shot('map-hover', '.map-box');
  await h.page.mouse.click(box.x + box.width * 0.5, box.y + 10);
  await h.page.waitForFunction(() => document.getElementById('hex-view').textContent.startsWith('0000002'));
  assert.equal(await h.page.textContent('#cursor-state'), 'base');
});

test('the_sample_images_open_from_the_button', async () => {
  await h.page.selectOption('#sample-choice', 'fvd');
  await h.page.click('#samples');
  assert.equal(await h.settled(), 'ready', await h.error());
  assert.match(await h.page.textContent('#summary'), /overlay\.fvd: fvd.*raw base base\.raw/);
  assert.deepEqual(await h.goTo('0', 0), { state: 'data', bytes: row('ab') });
  assert.deepEqual(await h.goTo('1M', 1 << 20), { state: 'base', bytes: row('42') });
  await h.shot('sample-fvd');
  await h.page.selectOption('#sample-choice', 'qed');
  await h.page.click('#samples');
  assert.equal(await h.settled(), 'ready', await h.error());
  assert.deepEqual(await h.goTo('2M', 2 << 20), { state: 'data', bytes: row('cd') });
});

test('cancel_stops_the_scans_of_a_big_image_and_the_page_keeps_working', async () => {
  h.run(fvdImg, 'create', '-f', 'fvd', '-o', 'compact_image=on', 'slow.fvd', '1T');
  await h.page.evaluate(() => { window.readDelayMs = 20; });
  try {
    await h.page.setInputFiles('#file-input', h.at('slow.fvd'));
    await h.page.waitForSelector('#progress-box:not([hidden])', { timeout: 30000 });
    await h.shot('progress');
    await h.page.click('#cancel');
    assert.equal(await h.settled(), 'ready', await h.error());
  } finally {
    await h.page.evaluate(() => { window.readDelayMs = 0; });
  }
  const note = await h.page.textContent('#map-note');
  assert.match(note, /cancelled/);
  assert.match(await h.page.textContent('#check-status'), /cancelled/);
  assert.equal(await h.page.isHidden('#progress-box'), true);
  // The end of the disk was not mapped; zooming in there maps the view.
  const box = await h.page.locator('#alloc-map').boundingBox();
  await h.page.mouse.move(box.x + box.width - 2, box.y + 10);
  assert.match(await h.page.textContent('#map-tooltip'), /not scanned/);
  await h.page.mouse.wheel(0, -100);
  await h.page.waitForFunction(() => document.getElementById('alloc-map').dataset.viewLen === String(2 ** 39));
  await h.page.waitForSelector('#alloc-map[data-windows="1"]');
  await h.page.mouse.move(box.x + box.width - 3, box.y + 10);
  assert.match(await h.page.textContent('#map-tooltip'), /: unallocated/);
  await h.shot('map-after-cancel', '.map-box');
  assert.equal(await h.open('plain.qed'), 'ready');
  assert.deepEqual(await h.goTo('2M', 2 << 20), { state: 'data', bytes: row('cd') });
});

test('hostile_files_show_an_error_and_the_next_file_still_opens', async () => {
  const good = async () => {
    assert.equal(await h.open('plain.qed'), 'ready', await h.error());
    assert.equal(await h.page.isHidden('#error'), true);
  };
  // A qcow2 image made by qemu-img: named, not read as raw.
  h.run('qemu-img', 'create', '-q', '-f', 'qcow2', 'disk.qcow2', '64M');
  assert.equal(await h.open('disk.qcow2'), 'error');
  assert.match(await h.error(), /qcow2/i);
  await h.shot('error-qcow2');
  await good();
  // Random bytes.
  fs.writeFileSync(h.at('random.bin'), Buffer.from(Array.from({ length: 65536 }, (_, i) => (i * 7919 + 13) % 251)));
  assert.equal(await h.open('random.bin'), 'error');
  await good();
  // Truncated: a QED header cut short, and an FVD image cut before its metadata ends.
  fs.writeFileSync(h.at('short.qed'), fs.readFileSync(h.at('plain.qed')).subarray(0, 40));
  assert.equal(await h.open('short.qed'), 'error');
  await good();
  fs.writeFileSync(h.at('cut.fvd'), fs.readFileSync(h.at('overlay.fvd')).subarray(0, 9000));
  assert.equal(await h.open('cut.fvd', 'base.raw'), 'error');
  await good();
  // Overlapping regions: the FVD journal moved onto the bitmap.
  assert.equal(await h.open('overlay.fvd', 'base.raw'), 'ready');
  const at = Number(await h.page.getAttribute('[data-field="journal_offset"]', 'data-offset'));
  const bitmap = BigInt(await h.field('bitmap_offset'));
  const bytes = fs.readFileSync(h.at('overlay.fvd'));
  bytes.writeBigUInt64LE(bitmap, at);
  fs.writeFileSync(h.at('overlap.fvd'), bytes);
  assert.equal(await h.open('overlap.fvd', 'base.raw'), 'error');
  assert.match(await h.error(), /overlap/i);
  await good();
  // Huge sizes: a QED image claiming 2^62 bytes, an L1 table offset past the file.
  const qed = fs.readFileSync(h.at('plain.qed'));
  const sizeAt = Number(await h.page.getAttribute('[data-field="image_size"]', 'data-offset'));
  const l1At = Number(await h.page.getAttribute('[data-field="l1_table_offset"]', 'data-offset'));
  const big = Buffer.from(qed);
  big.writeBigUInt64LE(2n ** 62n, sizeAt);
  fs.writeFileSync(h.at('big.qed'), big);
  assert.equal(await h.open('big.qed'), 'error');
  const far = Buffer.from(qed);
  far.writeBigUInt64LE(2n ** 50n, l1At);
  fs.writeFileSync(h.at('far.qed'), far);
  assert.equal(await h.open('far.qed'), 'error');
  await good();
  assert.deepEqual(await h.goTo('2M', 2 << 20), { state: 'data', bytes: row('cd') });
});

test('sparse_images_of_1_gib_64_gib_and_1_tib_draw_their_map_reading_only_metadata', async () => {
  const figures = [];
  for (const [format, size] of [['fvd', '1G'], ['fvd', '64G'], ['fvd', '1T'], ['qed', '1G'], ['qed', '64G'], ['qed', '1T']]) {
    const name = `sparse-${size}.${format}`;
    const opts = format === 'fvd' ? ['-o', 'compact_image=on'] : [];
    h.run(fvdImg, 'create', '-f', format, ...opts, name, size);
    // A few data clusters so the map has something to draw.
    h.run(fvdImg, 'io', '-c', 'write -q -P 0x99 0 64k', '-c', 'write -q -P 0x98 512M 64k', name);
    await h.page.evaluate(() => { window.bytesRead = 0; });
    const started = Date.now();
    assert.equal(await h.open(name), 'ready', await h.error());
    const ms = Date.now() - started;
    const t = await h.page.evaluate(() => ({ ...document.body.dataset, bytes: window.bytesRead }));
    const file = fs.statSync(h.at(name));
    // The page counts what it reads itself; the wrapped Blob.slice agrees.
    assert.equal(Number(t.bytesRead), t.bytes);
    figures.push({ image: name, file_bytes: file.size, bytes_read: t.bytes, ready_ms: ms,
      first_map_ms: Number(t.firstMapMs), first_map_bytes: Number(t.firstMapBytes),
      cursor_ms: Number(t.cursorMs), map_ms: Number(t.mapMs), journal_ms: Number(t.journalMs),
      check_ms: Number(t.checkMs), wasm_memory_bytes: Number(t.wasmBytes),
      runs: Number(await h.page.getAttribute('#alloc-map', 'data-runs')) });
    // Never a data cluster beyond what the check and the cursor read: metadata only
    // (QED: header and tables; FVD: the table and the 16 MiB journal the check reads).
    const limit = format === 'qed' ? 2 << 20 : 40 << 20;
    assert.ok(t.bytes < limit, `${name}: read ${t.bytes} bytes`);
    assert.ok(ms < 15000, `${name}: took ${ms} ms`);
    assert.ok(Number(t.wasmBytes) <= 16 << 20, `wasm memory ${t.wasmBytes} bytes`);
    fs.rmSync(h.at(name));
  }
  console.table(figures);
  fs.writeFileSync(path.join(screens, 'sparse-figures.json'), JSON.stringify(figures, null, 2));
});

test('the_views_raise_no_script_error', () => {
  assert.deepEqual(h.pageErrors, []);
});
