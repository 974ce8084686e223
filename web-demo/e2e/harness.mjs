// What the end-to-end tests of the inspector's views share: a scratch directory for the
// images they make, a static server for web-demo/ on 127.0.0.1, the system Chromium
// (playwright-core, never a browser download) with one page, and helpers to open files,
// move the cursor and save screenshots under target/web-screens/.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
export const fvdImg = process.env.FVD_IMG ?? path.resolve(root, '../target/debug/fvd-img');
export const screens = path.resolve(process.env.WEB_SCREENS ?? path.join(root, '../target/web-screens'));
const chromiumPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.wasm': 'application/wasm' };

/// Starts the server and the browser; `init` (a function run in the page before its
/// scripts) may wrap browser APIs, e.g. count the bytes read.
export async function start(init) {
  const h = { pageErrors: [] };
  h.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fvd-e2e-views-'));
  h.at = (name) => path.join(h.dir, name);
  h.run = (cmd, ...args) => execFileSync(cmd, args, { cwd: h.dir, stdio: ['ignore', 'pipe', 'pipe'] });
  fs.mkdirSync(screens, { recursive: true });

  h.server = http.createServer((req, res) => {
    const rel = decodeURIComponent(new URL(req.url, 'http://x').pathname).replace(/^\/+/, '') || 'index.html';
    const file = path.resolve(root, rel);
    if (!file.startsWith(root + path.sep) || !fs.existsSync(file) || fs.statSync(file).isDirectory()) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': TYPES[path.extname(file)] ?? 'application/octet-stream' });
    fs.createReadStream(file).pipe(res);
  });
  await new Promise((ok) => h.server.listen(0, '127.0.0.1', ok));
  h.url = `http://127.0.0.1:${h.server.address().port}/`;

  h.profile = fs.mkdtempSync(path.join(os.tmpdir(), 'fvd-chromium-'));
  h.context = await chromium.launchPersistentContext(h.profile, {
    executablePath: chromiumPath,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1100, height: 900 },
  });
  const page = h.context.pages()[0] ?? (await h.context.newPage());
  h.page = page;
  if (init) await page.addInitScript(init);
  page.on('pageerror', (e) => h.pageErrors.push(e.message));
  await page.goto(h.url);
  await page.waitForSelector('body[data-ready="1"]', { timeout: 20000 });

  /// Opens `names` (from the scratch directory) and waits until the page settled.
  h.open = async (...names) => {
    await page.setInputFiles('#file-input', names.map(h.at));
    return h.settled();
  };
  h.settled = async () => {
    await page.waitForFunction(() => document.getElementById('status').dataset.state !== 'loading', null, { timeout: 60000 });
    return page.getAttribute('#status', 'data-state');
  };
  h.error = () => page.textContent('#error');
  h.field = (name) => page.getAttribute(`[data-field="${name}"]`, 'data-value');
  /// Moves the cursor with the go-to box; returns the state and the first hex line's bytes.
  h.goTo = async (text, offset) => {
    await page.fill('#goto', text);
    await page.press('#goto', 'Enter');
    const prefix = offset.toString(16).padStart(12, '0');
    await page.waitForFunction((p) => document.getElementById('hex-view').textContent.startsWith(p), prefix, { timeout: 10000 });
    const first = (await page.textContent('#hex-view')).split('\n')[0];
    return { state: await page.textContent('#cursor-state'), bytes: first.slice(14, 14 + 47) };
  };
  /// Saves a screenshot of the element `selector` (or the viewport) as NAME.png.
  h.shot = async (name, selector) => {
    const file = path.join(screens, `${name}.png`);
    if (selector) await page.locator(selector).screenshot({ path: file });
    else await page.screenshot({ path: file });
    return file;
  };
  h.close = async () => {
    await h.context?.close();
    h.server?.close();
    fs.rmSync(h.profile, { recursive: true, force: true });
    fs.rmSync(h.dir, { recursive: true, force: true });
  };
  return h;
}

/// `sfdisk`, wherever Debian puts it.
export function sfdisk() {
  return ['/usr/sbin/sfdisk', '/sbin/sfdisk'].find((p) => fs.existsSync(p)) ?? 'sfdisk';
}
