// End-to-end tests of the inspector page in the system Chromium (playwright-core, no
// browser download). Images are made by fvd-img and qemu-img with known contents; the
// page is served from web-demo/ by a static server this test starts on 127.0.0.1.
// Needs scripts/build-web.sh to have built web-demo/pkg. FVD_IMG names the fvd-img binary.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const fvdImg = process.env.FVD_IMG ?? path.resolve(root, '../target/debug/fvd-img');
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm' };

let dir, server, url, context, page, profile;
const pageErrors = [];

const run = (cmd, ...args) => execFileSync(cmd, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
const at = (name) => path.join(dir, name);

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fvd-e2e-'));
  // A raw base: 0x42 at 1 MiB, zeros elsewhere.
  run('truncate', '-s', '4M', 'base.raw');
  run(fvdImg, 'io', '-f', 'raw', '-c', 'write -P 0x42 1M 64k', 'base.raw');
  // fvd-img: an FVD overlay on it with 0xab written at 0.
  run(fvdImg, 'create', '-f', 'fvd', '-b', 'base.raw', '-F', 'raw', 'overlay.fvd');
  run(fvdImg, 'io', '-c', 'write -P 0xab 0 64k', 'overlay.fvd');
  // qemu-img: a QED image with no base, 0xcd written at 2 MiB.
  run('qemu-img', 'create', '-q', '-f', 'qed', '-o', 'cluster_size=65536', 'plain.qed', '8M');
  run('qemu-io', '-f', 'qed', '-c', 'write -P 0xcd 2M 64k', 'plain.qed');
  // qemu-img: a QED overlay on the raw base with the base's 0x42 hidden by zeroes.
  run('qemu-img', 'create', '-q', '-f', 'qed', '-b', 'base.raw', '-F', 'raw', 'zeroed.qed');
  run('qemu-io', '-f', 'qed', '-c', 'write -z 1M 64k', 'zeroed.qed');
  // A chain of three: an FVD overlay (0x77 at 3 MiB) on a QED image on the raw base.
  run('qemu-img', 'create', '-q', '-f', 'qed', '-b', 'base.raw', '-F', 'raw', 'middle.qed');
  run('qemu-io', '-f', 'qed', '-c', 'write -P 0x55 2M 64k', 'middle.qed');
  run(fvdImg, 'create', '-f', 'fvd', '-b', 'middle.qed', '-F', 'qed', 'top.fvd');
  run(fvdImg, 'io', '-c', 'write -P 0x77 3M 64k', 'top.fvd');
  // A damaged QED image: a copy of plain.qed with one leaked cluster appended.
  fs.writeFileSync(at('leaky.qed'), Buffer.concat([fs.readFileSync(at('plain.qed')), Buffer.alloc(65536)]));
  // 1 TiB sparse images of both formats.
  run(fvdImg, 'create', '-f', 'qed', 'huge.qed', '1T');
  run(fvdImg, 'create', '-f', 'fvd', '-o', 'compact_image=on', 'huge.fvd', '1T');
  // Hostile files: random bytes, a truncated FVD header.
  fs.writeFileSync(at('random.bin'), Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919 + 13) % 251)));
  fs.writeFileSync(at('truncated.fvd'), fs.readFileSync(at('overlay.fvd')).subarray(0, 100));
  // An FVD header claiming a 4 EiB disk (virtual_disk_size, the u64 at byte 16, = 2^62).
  const huge = fs.readFileSync(at('overlay.fvd'));
  huge.writeBigUInt64LE(2n ** 62n, 16);
  fs.writeFileSync(at('oversized.fvd'), huge);

  server = http.createServer((req, res) => {
    const rel = decodeURIComponent(new URL(req.url, 'http://x').pathname).replace(/^\/+/, '') || 'index.html';
    const file = path.resolve(root, rel);
    if (!file.startsWith(root + path.sep) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  url = `http://127.0.0.1:${server.address().port}/`;

  profile = fs.mkdtempSync(path.join(os.tmpdir(), 'fvd-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1100, height: 900 },
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(url);
  await page.waitForSelector('body[data-ready="1"]', { timeout: 20000 });
});

after(async () => {
  await context?.close();
  server?.close();
  if (profile) fs.rmSync(profile, { recursive: true, force: true });
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

/// Opens `names` (from the test directory) and waits until the page settled.
async function open(...names) {
  await page.setInputFiles('#file-input', names.map(at));
  await page.waitForFunction(() => document.getElementById('status').dataset.state !== 'loading', null, { timeout: 20000 });
  return page.getAttribute('#status', 'data-state');
}

/// Moves the cursor to `offset` with the go-to box and returns the state and first hex line.
async function goTo(text, offset) {
  await page.fill('#goto', text);
  await page.press('#goto', 'Enter');
  const prefix = offset.toString(16).padStart(12, '0');
  await page.waitForFunction((p) => document.getElementById('hex-view').textContent.startsWith(p), prefix, { timeout: 10000 });
  const first = (await page.textContent('#hex-view')).split('\n')[0];
  return { state: await page.textContent('#cursor-state'), bytes: first.slice(14, 14 + 47) };
}

const field = (name) => page.getAttribute(`[data-field="${name}"]`, 'data-value');
const row = (byte) => Array(16).fill(byte).join(' ');

test('fvd_img_overlay_shows_header_values_and_written_base_and_zero_bytes', async () => {
  assert.equal(await open('overlay.fvd', 'base.raw'), 'ready', await page.textContent('#error'));
  assert.equal(await field('virtual_disk_size'), String(4 << 20));
  assert.equal(await field('base_img'), 'base.raw');
  assert.deepEqual(await goTo('0', 0), { state: 'data', bytes: row('ab') });
  assert.deepEqual(await goTo('1M', 1 << 20), { state: 'base', bytes: row('42') });
  assert.deepEqual(await goTo('0x300000', 3 << 20), { state: 'base', bytes: row('00') });
  assert.ok(Number(await page.getAttribute('#alloc-map', 'data-runs')) >= 2);
  const screens = path.resolve(process.env.WEB_SCREENS ?? path.join(root, '../target/web-screens'));
  fs.mkdirSync(screens, { recursive: true });
  await page.screenshot({ path: path.join(screens, 'overlay.png') });
});

test('selecting_a_header_field_marks_its_bytes_and_a_byte_names_its_field', async () => {
  assert.equal(await open('overlay.fvd', 'base.raw'), 'ready', await page.textContent('#error'));
  await page.click('[data-field="block_size"]');
  const marked = await page.$$eval('#header-hex span.hl', (s) => s.map((b) => Number(b.dataset.offset)));
  assert.deepEqual(marked, [2136, 2137, 2138, 2139, 2140, 2141, 2142, 2143]);
  await page.click('#header-hex span[data-offset="19"]');
  assert.equal(await page.textContent('#field-at'), 'virtual_disk_size');
  assert.equal(await page.getAttribute('#header-table tr.selected', 'data-field'), 'virtual_disk_size');
});

test('qemu_img_qed_shows_written_and_unallocated_bytes', async () => {
  assert.equal(await open('plain.qed'), 'ready', await page.textContent('#error'));
  assert.equal(await field('image_size'), String(8 << 20));
  assert.equal(await field('cluster_size'), '65536');
  assert.deepEqual(await goTo('2M', 2 << 20), { state: 'data', bytes: row('cd') });
  assert.deepEqual(await goTo('4096', 4096), { state: 'unallocated', bytes: row('00') });
});

test('qemu_img_zero_cluster_hides_the_base_bytes_below_it', async () => {
  assert.equal(await open('zeroed.qed', 'base.raw'), 'ready', await page.textContent('#error'));
  assert.deepEqual(await goTo('1M', 1 << 20), { state: 'zero', bytes: row('00') });
  assert.deepEqual(await goTo('0x110000', 0x110000), { state: 'base', bytes: row('00') });
});

test('hostile_files_show_an_error_and_the_next_file_still_opens', async () => {
  assert.equal(await open('random.bin'), 'error');
  assert.match(await page.textContent('#error'), /raw disk image/);
  assert.equal(await open('truncated.fvd'), 'error');
  assert.match(await page.textContent('#error'), /shorter than an FVD header/);
  assert.equal(await open('oversized.fvd', 'base.raw'), 'error');
  assert.match(await page.textContent('#error'), /virtual disk size \d+ exceeds the supported maximum/);
  assert.equal(await open('plain.qed'), 'ready', await page.textContent('#error'));
  assert.equal(await page.isHidden('#error'), true);
  assert.deepEqual(await goTo('2M', 2 << 20), { state: 'data', bytes: row('cd') });
});

test('a_chain_of_three_reads_each_layer_through_the_one_below', async () => {
  assert.equal(await open('top.fvd', 'middle.qed', 'base.raw'), 'ready', await page.textContent('#error'));
  assert.match(await page.textContent('#summary'), /middle\.qed.*raw base base\.raw/);
  assert.deepEqual(await goTo('3M', 3 << 20), { state: 'data', bytes: row('77') });
  assert.deepEqual(await goTo('2M', 2 << 20), { state: 'base', bytes: row('55') });
  assert.deepEqual(await goTo('1M', 1 << 20), { state: 'base', bytes: row('42') });
});

test('a_leaked_cluster_shows_in_the_check_counts', async () => {
  assert.equal(await open('leaky.qed'), 'ready', await page.textContent('#error'));
  assert.equal(await page.getAttribute('#check-status', 'data-errors'), '0');
  assert.equal(await page.getAttribute('#check-status', 'data-leaks'), '1');
  assert.equal(await open('plain.qed'), 'ready');
  assert.equal(await page.getAttribute('#check-status', 'data-leaks'), '0');
});

for (const name of ['huge.qed', 'huge.fvd']) {
  test(`a_1_tib_sparse_${name.replace('.', '_')}_opens_maps_and_checks_reading_only_metadata_within_10_s`, async () => {
    // Count every byte the page reads from a file.
    await page.evaluate(() => {
      window.bytesRead = 0;
      const slice = Blob.prototype.slice;
      if (!window.sliceWrapped) {
        Blob.prototype.slice = function (start = 0, end = this.size) {
          window.bytesRead += Math.max(0, Math.min(end, this.size) - start);
          return slice.call(this, start, end);
        };
        window.sliceWrapped = true;
      }
    });
    const started = Date.now();
    assert.equal(await open(name), 'ready', await page.textContent('#error'));
    const ms = Date.now() - started;
    const bytes = await page.evaluate(() => window.bytesRead);
    const t = await page.evaluate(() => ({ ...document.body.dataset }));
    console.log(`${name}: opened, mapped and checked in ${ms} ms reading ${bytes} bytes`, t,
      await page.getAttribute('#alloc-map', 'data-runs'));
    assert.equal(await field(name.endsWith('qed') ? 'image_size' : 'virtual_disk_size'), String(2 ** 40));
    // QED: the header cluster and the L1 table; FVD: the chunk table and, for the check,
    // the 16 MiB journal. Never a data cluster.
    const limit = name.endsWith('qed') ? 1 << 20 : 32 << 20;
    assert.ok(bytes < limit, `read ${bytes} bytes`);
    assert.ok(ms < 10000, `took ${ms} ms`);
    // Wasm memory only grows: this is the peak of every test so far.
    assert.ok(Number(t.wasmBytes) <= 16 << 20, `wasm memory ${t.wasmBytes} bytes`);
    const last = 2 ** 40 - 256;
    assert.deepEqual(await goTo(`0x${last.toString(16)}`, last), { state: 'unallocated', bytes: row('00') },
      await page.textContent('#error'));
  });
}

test('the_page_raises_no_script_error', () => {
  assert.deepEqual(pageErrors, []);
});
