// The page's "Export JSON" equals `fvd-img info|map|check --output json` for the same
// images (parsed and compared deep-equal), except what a browser cannot know: the
// allocated sizes (`actual-size`, `data_file_actual_size`: the page gives file lengths).
// fvd-img runs in the images' directory so names are the relative names the page has;
// the images are written without holes (a browser File has none, and fvd-img map shows a
// hole in stored data as zeros). FVD_IMG names the fvd-img binary; needs web-demo/pkg.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
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

let dir, server, context, page, profile;
const pageErrors = [];
const run = (cmd, ...args) => execFileSync(cmd, args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
const at = (name) => path.join(dir, name);

/// Rewrites `name` with every byte stored (no holes).
function unsparse(name) {
  const bytes = fs.readFileSync(at(name));
  fs.rmSync(at(name));
  fs.writeFileSync(at(name), bytes);
}

before(async () => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fvd-export-'));
  fs.writeFileSync(at('base.raw'), Buffer.alloc(4 << 20, 0x42));
  run(fvdImg, 'create', '-f', 'fvd', '-b', 'base.raw', '-F', 'raw', 'overlay.fvd');
  run(fvdImg, 'io', '-c', 'write -P 0xab 0 64k', 'overlay.fvd');
  run(fvdImg, 'create', '-f', 'fvd', '-o', 'compact_image=on', 'compact.fvd', '8M');
  run(fvdImg, 'io', '-c', 'write -P 0xcd 1M 128k', 'compact.fvd');
  run('qemu-img', 'create', '-q', '-f', 'qed', '-b', 'base.raw', '-F', 'raw', 'middle.qed');
  run('qemu-io', '-f', 'qed', '-c', 'write -P 0x55 2M 64k', '-c', 'write -z 3M 64k', 'middle.qed');
  run(fvdImg, 'create', '-f', 'fvd', '-b', 'middle.qed', '-F', 'qed', 'top.fvd');
  run(fvdImg, 'io', '-c', 'write -P 0x77 3M 64k', 'top.fvd');
  for (const name of ['overlay.fvd', 'compact.fvd', 'middle.qed', 'top.fvd']) unsparse(name);
  // Damaged: a QED image with a leaked cluster appended.
  fs.writeFileSync(at('leaky.qed'), Buffer.concat([fs.readFileSync(at('middle.qed')), Buffer.alloc(65536)]));

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
  profile = fs.mkdtempSync(path.join(os.tmpdir(), 'fvd-chromium-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: chromiumPath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.on('pageerror', (e) => pageErrors.push(e.message));
  await page.goto(`http://127.0.0.1:${server.address().port}/`);
  await page.waitForSelector('body[data-ready="1"]', { timeout: 20000 });
});

after(async () => {
  await context?.close();
  server?.close();
  if (profile) fs.rmSync(profile, { recursive: true, force: true });
  if (dir) fs.rmSync(dir, { recursive: true, force: true });
});

async function open(...names) {
  await page.setInputFiles('#file-input', names.map(at));
  await page.waitForFunction(() => document.getElementById('status').dataset.state !== 'loading', null, { timeout: 20000 });
  assert.equal(await page.getAttribute('#status', 'data-state'), 'ready', await page.textContent('#error'));
}

/// Clicks the export button of `kind` and returns the text of #export-json.
async function exported(kind) {
  await page.click(`#export-${kind}`);
  await page.waitForFunction((k) => {
    const out = document.getElementById('export-json');
    return out.dataset.kind === k && out.dataset.state !== 'loading';
  }, kind, { timeout: 20000 });
  const text = await page.textContent('#export-json');
  assert.equal(await page.getAttribute('#export-json', 'data-state'), 'ready', text);
  return text;
}

/// `fvd-img KIND --output json IMAGE` in the images' directory (check exits 2 or 3 on a
/// damaged image: its report is still the document).
function cli(kind, image) {
  const r = spawnSync(fvdImg, [kind, '--output', 'json', image], { cwd: dir, encoding: 'utf8' });
  assert.ok(r.status === 0 || (kind === 'check' && r.status >= 2), `${kind} ${image}: ${r.stderr}`);
  return r.stdout;
}

/// Parsed, without the keys a browser cannot know.
// A browser File has a length but no allocation: the export's actual sizes are file
// lengths, the CLI's are allocated bytes (equal only by chance), so neither is compared.
function comparable(text) {
  const doc = JSON.parse(text);
  if (!Array.isArray(doc) && doc['format-specific']) {
    delete doc['actual-size'];
    delete doc['format-specific'].data.data_file_actual_size;
    for (const child of doc.children ?? []) delete child.info?.['actual-size'];
  }
  return doc;
}

const cases = [
  ['overlay.fvd', 'base.raw'],
  ['compact.fvd'],
  ['middle.qed', 'base.raw'],
  ['top.fvd', 'middle.qed', 'base.raw'],
  ['leaky.qed', 'base.raw'],
];

for (const files of cases) {
  test(`export_json_of_${files[0].replace('.', '_')}_equals_fvd_img_info_map_and_check`, async () => {
    await open(...files);
    for (const kind of ['info', 'map', 'check']) {
      const ours = await exported(kind);
      assert.deepEqual(comparable(ours), comparable(cli(kind, files[0])), `${kind} of ${files[0]}`);
      if (kind !== 'info') assert.equal(ours, cli(kind, files[0]), `${kind} of ${files[0]}: same text`);
    }
    assert.equal(await page.isHidden('#export-download'), false);
    assert.deepEqual(pageErrors, []);
  });
}

test('the_damaged_image_export_counts_its_leak', async () => {
  await open('leaky.qed', 'base.raw');
  const check = JSON.parse(await exported('check'));
  assert.equal(check.leaks, 1);
  assert.equal(check['leaked-clusters'].length, 1);
  await page.screenshot({ path: path.join(root, 'e2e', 'export.png'), fullPage: true });
});
