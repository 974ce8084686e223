// The inspector page: picks the dropped files apart into an image chain (by the base
// names core reads from each header), fulfils every read fvd-wasm asks for with
// File.slice, and shows what core returns. No format rule lives here.
import init, * as fvd from './pkg/fvd_wasm.js';
import { MapView, progress, showJournal, showLayout, showPartitions } from './views.js';

/** Looks an element up by id (the page's elements, of whatever kind each one is).
 * @type {(id: string) => any} */
const $ = (id) => document.getElementById(id);
const FIRST_BYTES = 65536; // the header area core reads names from
const MAX_RUNS = 200000;   // runs drawn on the map before it says it stopped
const LINES = 16;          // hex lines per page

let session = null;        // { insp, files, rawBase, size, runs }
/** @type {Promise<unknown>} */
let queue = Promise.resolve();
let cursor = 0;
let wasm = null;           // the module's exports (its memory is reported after each open)
let token = { cancelled: false }; // the scans of the current image stop when it is set
let mapView = null;
// What views.js needs from this file.
const ctx = {
  fvd, serial, readFile, moveTo,
  mapWindow: (start, end) => mapWindow(start, end).catch((e) => showError(errorText(e))),
  pump: (s) => pump(s),
  cursor: () => cursor,
  token: () => token,
};

/**
 * Runs `job` after every earlier job: the inspector has one request at a time.
 * @template T
 * @param {() => Promise<T>} job
 * @returns {Promise<T>}
 */
function serial(job) {
  /** @type {Promise<T>} */
  const next = queue.then(job, job);
  queue = next.catch(() => {});
  return next;
}

function setStatus(state, text) {
  $('status').dataset.state = state;
  $('status').textContent = text;
}

function showError(message) {
  $('error').hidden = false;
  $('error').textContent = message;
  setStatus('error', 'error');
}

function errorText(e) {
  return e instanceof Error ? e.message : String(e);
}

// Reads go through a small read-ahead cache of whole blocks: the engine asks for
// metadata a 512-byte page at a time, and each File.slice costs a round trip. Files are
// only read, so a cached block never goes stale. JS memory: BLOCK * MAX_BLOCKS.
const BLOCK = 256 << 10;
const MAX_BLOCKS = 32;
let bytesRead = 0;          // bytes taken from files since the last open began
const blocks = new Map();   // `${file id}:${block index}` -> Uint8Array, oldest first
const fileIds = new WeakMap();
let nextFileId = 0;

async function block(file, index) {
  if (!fileIds.has(file)) fileIds.set(file, nextFileId++);
  const key = `${fileIds.get(file)}:${index}`;
  let bytes = blocks.get(key);
  if (bytes) {
    blocks.delete(key);
  } else {
    bytes = new Uint8Array(await file.slice(index * BLOCK, (index + 1) * BLOCK).arrayBuffer());
    bytesRead += bytes.length;
    if (blocks.size >= MAX_BLOCKS) blocks.delete(blocks.keys().next().value);
  }
  blocks.set(key, bytes);
  return bytes;
}

/// `len` bytes of `file` at `offset` (fewer at its end).
async function readFile(file, offset, len) {
  if (len > BLOCK) {
    const bytes = new Uint8Array(await file.slice(offset, offset + len).arrayBuffer());
    bytesRead += bytes.length;
    return bytes;
  }
  const out = new Uint8Array(len);
  let filled = 0;
  while (filled < len) {
    const at = offset + filled;
    const index = Math.floor(at / BLOCK);
    const b = await block(file, index);
    const from = at - index * BLOCK;
    const n = Math.min(len - filled, b.length - from);
    if (n <= 0) break;
    out.set(b.subarray(from, from + n), filled);
    filled += n;
  }
  return out.subarray(0, filled);
}

async function firstBytes(file) {
  const bytes = new Uint8Array(await file.slice(0, FIRST_BYTES).arrayBuffer());
  bytesRead += bytes.length;
  return bytes;
}

/// Performs every file read the inspector asks for until it waits for none.
async function pump(s) {
  for (let r = s.insp.next_read(); r; r = s.insp.next_read()) {
    const layer = s.layers[r.layer];
    const file = r.file === 'image' ? layer.file : r.file === 'data' ? layer.data : s.rawBase;
    const offset = r.offset, len = r.len;
    r.free();
    if (!file) { s.insp.fail_read(); continue; }
    try {
      s.insp.complete_read(await readFile(file, offset, len));
    } catch (e) {
      s.insp.fail_read();
    }
  }
}

function baseNameOf(path) {
  return path.split(/[\\/]/).pop();
}

/// Orders the chosen files into a chain: the image (a file no other file names as its
/// base), then each base the header before it names.
async function arrange(files) {
  const infos = [];
  for (const [key, file] of files.entries()) {
    const first = await firstBytes(file);
    infos.push({ key, file, first, kind: fvd.probe_kind(first), base: fvd.base_name(first, file.size) ?? null });
  }
  const named = new Set(infos.filter((i) => i.base).map((i) => baseNameOf(i.base)));
  const images = infos.filter((i) => i.kind === 'fvd' || i.kind === 'qed');
  const top = images.find((i) => !named.has(i.file.name)) ?? images[0];
  if (!top) {
    const i = infos[0];
    throw new Error(`${i.file.name} is ${fvd.probe_text(i.first)}, not an FVD or QED image this inspector opens`);
  }
  const layers = [];
  let rawBase = null;
  let at = top;
  // The chain itself refuses loops and stacks deeper than it supports; this bound only
  // stops the walk.
  for (let depth = 0; at && depth <= 17; depth++) {
    const fields = fvd.header_fields(at.first);
    const dataName = fields.find((f) => f.name === 'data_file')?.value ?? '';
    const data = dataName ? infos.find((i) => i.file.name === baseNameOf(dataName))?.file ?? null : null;
    layers.push({ ...at, fields, data });
    if (!at.base) break;
    const below = infos.find((i) => i.file.name === baseNameOf(at.base));
    if (!below) break;
    if (below.kind === 'fvd' || below.kind === 'qed') {
      at = below;
    } else {
      rawBase = below.file;
      break;
    }
  }
  return { layers, rawBase };
}

async function openFiles(fileList) {
  const files = Array.from(fileList);
  if (files.length === 0) return;
  token.cancelled = true;
  token = { cancelled: false };
  clearViews();
  bytesRead = 0;
  const began = performance.now();
  $('error').hidden = true;
  $('error').textContent = '';
  setStatus('loading', `opening ${files.map((f) => f.name).join(', ')}…`);
  try {
    await serial(async () => {
      session?.insp.free();
      session = null;
      blocks.clear();
      const { layers, rawBase } = await arrange(files);
      const insp = new fvd.Inspector();
      for (const l of layers) insp.add_layer(l.first, l.file.size, l.data ? l.data.size : undefined, l.key);
      insp.start(rawBase !== null);
      const s = { insp, layers, rawBase, size: 0, runs: [] };
      await pump(s);
      insp.open_result();
      s.size = insp.virtual_size();
      session = s;
      showHeader(layers[0]);
      $('summary').textContent = `${layers[0].file.name}: ${insp.format()}, ${s.size} bytes virtual` +
        (layers.length > 1 ? `, on ${layers.slice(1).map((l) => l.file.name).join(' → ')}` : '') +
        (rawBase ? `, raw base ${rawBase.name}` : '');
      $('memory').textContent = `wasm memory for the engines: ${insp.memory_bytes()} bytes`;
    });
    cursor = Math.min(parseOffset(location.hash.slice(1)) ?? 0, Math.max(session.size - 1, 0));
    // How long each part took, for the benchmarks (ms).
    const timings = document.body.dataset;
    let t = performance.now();
    const lap = () => { const now = performance.now(); const ms = Math.round(now - t); t = now; return ms; };
    await showLayout(ctx, session);
    await showCursor();
    timings.cursorMs = String(lap());
    await showPartitions(ctx, session);
    await drawMap();
    timings.mapMs = String(lap());
    // From choosing the files to a drawn map, and the file bytes read by then.
    timings.firstMapMs = String(Math.round(performance.now() - began));
    timings.firstMapBytes = String(bytesRead);
    await showJournal(ctx, session);
    timings.journalMs = String(lap());
    await runCheck();
    timings.checkMs = String(lap());
    timings.wasmBytes = String(wasm.memory.buffer.byteLength);
    timings.bytesRead = String(bytesRead);
    setStatus('ready', 'ready');
  } catch (e) {
    session = null;
    showError(errorText(e));
  }
}

/// Empties every view, so an image that fails to open leaves none of the last one's.
function clearViews() {
  for (const id of ['summary', 'memory', 'layout-list', 'map-note', 'map-hover', 'map-range', 'cursor-state',
    'hex-view', 'partition-label', 'journal-status', 'findings', 'header-hex', 'field-at']) $(id).replaceChildren();
  for (const id of ['partitions', 'journal-rows', 'header-table']) $(id).querySelector('tbody').replaceChildren();
  $('check-status').textContent = 'not run';
  delete $('alloc-map').dataset.windows;
  for (const id of ['layout-bar', 'alloc-map']) {
    const c = $(id);
    c.getContext('2d').clearRect(0, 0, c.width, c.height);
  }
  if (mapView) mapView.s = null;
}

/// Marks the bytes of the field in `row` in the header hex view.
function markField(row) {
  for (const r of document.querySelectorAll('#header-table tr.selected')) r.classList.remove('selected');
  for (const b of document.querySelectorAll('#header-hex span.hl')) b.classList.remove('hl');
  row.classList.add('selected');
  const start = Number(row.dataset.offset), end = start + Number(row.dataset.len);
  const bytes = $('header-hex').children;
  for (let i = start; i < end && i < bytes.length; i++) bytes[i].classList.add('hl');
  bytes[start]?.scrollIntoView({ block: 'nearest' });
}

/// The first bytes of the image file, 16 a line, one element per byte (up to the end of
/// the last field).
function showHeaderBytes(layer) {
  const view = $('header-hex');
  const end = Math.min(layer.first.length, Math.max(...layer.fields.map((f) => f.offset + f.len)));
  const parts = [];
  for (let i = 0; i < end; i++) {
    if (i % 16 === 0) parts.push(`${i ? '\n' : ''}${hex(i, 6)} `);
    parts.push(`<span data-offset="${i}">${hex(layer.first[i], 2)}</span>`);
  }
  // Only hex digits and numbers built above go into this markup.
  view.innerHTML = parts.join(' ');
  view.onclick = (e) => {
    const offset = /** @type {HTMLElement} */ (e.target).dataset?.offset;
    if (offset === undefined) return;
    const name = fvd.field_at(layer.first, Number(offset)) ?? '';
    $('field-at').textContent = name || '(no field)';
    const row = document.querySelector(`#header-table tr[data-field="${name}"]`);
    if (row) markField(row);
  };
}

function showHeader(layer) {
  const body = $('header-table').querySelector('tbody');
  body.replaceChildren();
  $('field-at').textContent = '';
  for (const f of layer.fields) {
    const row = document.createElement('tr');
    row.dataset.field = f.name;
    row.dataset.value = f.value;
    row.dataset.offset = String(f.offset);
    row.dataset.len = String(f.len);
    row.addEventListener('click', () => markField(row));
    for (const text of [f.name, f.text, f.unit, f.meaning, `${f.offset}+${f.len}`]) {
      const cell = document.createElement('td');
      cell.textContent = text;
      row.append(cell);
    }
    body.append(row);
  }
  showHeaderBytes(layer);
}

/// `1M`, `0x100000`, `4096`, `2K`… as a byte offset (null when it is none).
function parseOffset(text) {
  const t = text.trim();
  if (/^0x[0-9a-f]+$/i.test(t)) return Number(BigInt(t));
  const m = /^(\d+)\s*([kmgt]?)i?b?$/i.exec(t);
  if (!m) return null;
  const scale = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40 }[m[2].toLowerCase()];
  return Number(m[1]) * scale;
}

const hex = (n, w) => n.toString(16).padStart(w, '0');

async function showCursor() {
  const s = session;
  if (!s) return;
  location.replace(`#0x${cursor.toString(16)}`);
  const sector = Math.floor(cursor / 512) * 512;
  const end = Math.min(Math.ceil((cursor + LINES * 16) / 512) * 512, Math.ceil(s.size / 512) * 512);
  const { bytes, state } = await serial(async () => {
    s.insp.begin_map(sector, 512);
    await pump(s);
    const run = s.insp.finish_map();
    const state = run.state;
    run.free();
    s.insp.begin_read(sector, end - sector);
    await pump(s);
    return { bytes: s.insp.finish_read(), state };
  });
  $('cursor-state').textContent = state;
  const lines = [];
  for (let off = cursor; off < Math.min(cursor + LINES * 16, s.size); off += 16) {
    const row = bytes.subarray(off - sector, Math.min(off - sector + 16, bytes.length));
    const hexes = Array.from(row, (b) => hex(b, 2)).join(' ');
    const ascii = Array.from(row, (b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${hex(off, 12)}  ${hexes.padEnd(47)}  |${ascii}|`);
  }
  $('hex-view').textContent = lines.join('\n');
  mapView?.render();
}

async function drawMap() {
  const s = session;
  if (!s) return;
  const runs = [];
  let stopped = false;
  const mine = token;
  s.runs = runs;
  // The map's block: QED's cluster; FVD's chunk when only the table maps it, else the
  // bitmap's block.
  const field = (name) => s.layers[0].fields.find((f) => f.name === name)?.value;
  const unit = Number(field('cluster_size') ??
    (field('table_offset') !== '0' && !field('base_img') ? field('chunk_size') : field('block_size')) ?? 65536);
  mapView.reset(s, unit);
  let shown = performance.now();
  await serial(async () => {
    for (let off = 0; off < s.size;) {
      if (runs.length >= MAX_RUNS) { stopped = true; break; }
      if (mine.cancelled) break;
      if (performance.now() - shown > 100) {
        // Let the page paint and the cancel button be clicked.
        progress('mapping', off / s.size);
        mapView.render();
        await new Promise((ok) => setTimeout(ok, 0));
        shown = performance.now();
      }
      s.insp.begin_map(off, s.size - off);
      await pump(s);
      const run = s.insp.finish_map();
      const r = { offset: run.offset, len: run.len, state: run.state };
      run.free();
      runs.push(r);
      if (r.len <= 0) break;
      off = r.offset + r.len;
    }
  });
  progress(null);
  mapView.render();
  const canvas = $('alloc-map');
  canvas.dataset.runs = String(runs.length);
  const end = runs.length ? runs[runs.length - 1].offset + runs[runs.length - 1].len : 0;
  canvas.dataset.mapped = String(end);
  s.mapped = end;
  $('map-note').textContent = stopped ? `(stopped after ${MAX_RUNS} runs)`
    : mine.cancelled ? `(cancelled: ${runs.length} runs, up to 0x${hex(end, 1)})` : `${runs.length} runs`;
}

/// Maps the part of the virtual bytes [start, end) the whole-disk scan did not reach (it
/// stopped or was cancelled), so a zoomed view shows its runs; at most MAX_RUNS runs.
async function mapWindow(start, end) {
  const s = session;
  if (!s || s.mapped === undefined) return;
  const windows = (s.windows ??= []);
  // The engine maps whole sectors.
  const from = Math.floor(Math.max(start, s.mapped) / 512) * 512;
  end = Math.min(Math.ceil(end / 512) * 512, s.size);
  if (from >= end || windows.some(([a, b]) => a <= from && end <= b)) return;
  // A cancel ends the scans of an open; this scan was asked for afterwards.
  if (token.cancelled) token = { cancelled: false };
  const mine = token;
  const found = [];
  await serial(async () => {
    for (let off = from; off < end && found.length < MAX_RUNS && !mine.cancelled;) {
      s.insp.begin_map(off, end - off);
      await pump(s);
      const run = s.insp.finish_map();
      const r = { offset: run.offset, len: run.len, state: run.state };
      run.free();
      found.push(r);
      if (r.len <= 0) break;
      off = r.offset + r.len;
    }
  });
  if (session !== s || found.length === 0) return;
  const last = found[found.length - 1];
  const to = last.offset + last.len;
  windows.push([from, to]);
  $('alloc-map').dataset.windows = String(windows.length);
  s.runs = s.runs.filter((r) => r.offset + r.len <= from || r.offset >= to).concat(found)
    .sort((a, b) => a.offset - b.offset);
  mapView.render();
}

/// Runs core's check of the image file (what `fvd-img check` reports), reading as it asks.
async function runCheck() {
  const s = session;
  const top = s.layers[0];
  const status = $('check-status');
  delete status.dataset.errors;
  delete status.dataset.leaks;
  $('findings').replaceChildren();
  status.textContent = 'checking…';
  await serial(async () => {
    const check = new fvd.Check(top.first, top.file.size, top.data ? top.data.size : undefined);
    const mine = token;
    try {
      let read = 0;
      for (let r = check.next_read(); r; r = check.next_read()) {
        const file = r.data ? top.data : top.file;
        const offset = r.offset, len = r.len;
        r.free();
        if (mine.cancelled) throw new Error('cancelled');
        check.complete_read(await readFile(file, offset, len));
        read += len;
        progress(`checking (${Math.round(read / 1024)} KiB read)`, Math.min(1, offset / Math.max(file.size, 1)));
      }
      const errors = check.errors(), leaks = check.leaks();
      status.dataset.errors = String(errors);
      status.dataset.leaks = String(leaks);
      status.textContent = errors === 0 && leaks === 0
        ? 'No errors were found on the image.'
        : `${errors} errors and ${leaks} leaked clusters were found on the image.`;
      for (const text of check.findings()) {
        const item = document.createElement('li');
        item.textContent = text;
        $('findings').append(item);
      }
    } catch (e) {
      // The image opened; only its check could not run: say so where the check shows.
      status.textContent = `the check could not run: ${errorText(e)}`;
    } finally {
      progress(null);
      check.free();
    }
  });
}

/// The sample images build-web.sh writes into samples/ (fetched from this server).
const SAMPLES = { fvd: ['overlay.fvd', 'base.raw'], qed: ['disk.qed'] };

async function openSample(which) {
  setStatus('loading', `fetching the ${which} sample…`);
  const files = [];
  for (const name of SAMPLES[which] ?? []) {
    const res = await fetch(`samples/${name}`);
    if (!res.ok) throw new Error(`sample ${name} is missing (run scripts/build-web.sh)`);
    files.push(new File([await res.blob()], name));
  }
  await openFiles(files);
}

function moveTo(offset) {
  if (!session || offset === null || !(offset >= 0)) return;
  cursor = Math.min(offset, Math.max(session.size - 1, 0));
  showCursor().catch((e) => showError(errorText(e)));
}

async function main() {
  wasm = await init();
  $('file-input').addEventListener('change', (e) => openFiles(/** @type {HTMLInputElement} */ (e.target).files));
  document.addEventListener('dragover', (e) => { e.preventDefault(); document.body.classList.add('dragging'); });
  document.addEventListener('dragleave', () => document.body.classList.remove('dragging'));
  document.addEventListener('drop', (e) => {
    e.preventDefault();
    document.body.classList.remove('dragging');
    openFiles(e.dataTransfer.files);
  });
  $('goto').addEventListener('keydown', (e) => {
    if (e.key !== 'Enter') return;
    const offset = parseOffset($('goto').value);
    if (offset === null) showError(`"${$('goto').value}" is not an offset (try 1M or 0x100000)`);
    else moveTo(offset);
  });
  $('prev').addEventListener('click', () => moveTo(Math.max(cursor - LINES * 16, 0)));
  $('next').addEventListener('click', () => moveTo(cursor + LINES * 16));
  mapView = new MapView(ctx);
  $('cancel').addEventListener('click', () => { token.cancelled = true; });
  $('journal-scan').addEventListener('click', () => session && showJournal(ctx, session, true).catch((e) => showError(errorText(e))));
  $('samples').addEventListener('click', () => openSample($('sample-choice').value).catch((e) => showError(errorText(e))));
  setStatus('ready', 'choose an image');
  document.body.dataset.ready = '1';
}

main().catch((e) => showError(errorText(e)));

/// "Export JSON": the `fvd-img KIND --output json` document of the open image, written by
/// core through fvd-wasm's export (reads served from File.slice like every other read);
/// shown in #export-json (data-kind, data-state) and offered as a download.
async function exportJson(kind) {
  const out = $('export-json');
  const s = session;
  out.dataset.kind = kind;
  out.dataset.state = 'loading';
  out.textContent = '';
  try {
    if (!s) throw new Error('open an image first');
    const top = s.layers[0];
    const fileOf = (r) => (r.file === 'image' ? s.layers[r.layer].file : r.file === 'data' ? s.layers[r.layer].data : s.rawBase);
    const text = await serial(async () => {
      let exp;
      try {
        if (kind === 'info') {
          const dataName = top.data ? top.fields.find((f) => f.name === 'data_file')?.value : undefined;
          exp = new fvd.InfoExport(top.first, top.file.name, top.file.size, dataName, top.data?.size);
          for (let r = exp.next_read(); r; r = exp.next_read()) {
            const offset = r.offset, len = r.len;
            r.free();
            exp.complete_read(await readFile(top.file, offset, len));
          }
        } else if (kind === 'check') {
          exp = new fvd.CheckExport(top.first, top.file.name, top.file.size, top.data?.size);
          for (let r = exp.next_read(); r; r = exp.next_read()) {
            const file = r.data ? top.data : top.file, offset = r.offset, len = r.len;
            r.free();
            exp.complete_read(await readFile(file, offset, len));
          }
        } else {
          exp = new fvd.MapExport();
          for (const l of s.layers) exp.add_layer(l.first, l.file.size, l.data ? l.data.size : undefined, l.key);
          exp.start(s.rawBase ? s.rawBase.size : undefined);
          for (let r = exp.next_read(); r; r = exp.next_read()) {
            const file = fileOf(r), offset = r.offset, len = r.len;
            r.free();
            if (!file) { exp.fail_read(); continue; }
            exp.complete_read(await readFile(file, offset, len));
          }
        }
        return exp.json();
      } finally {
        exp?.free();
      }
    });
    out.textContent = text;
    out.dataset.state = 'ready';
    const link = $('export-download');
    if (link.href) URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([text], { type: 'application/json' }));
    link.download = `${top.file.name}.${kind}.json`;
    link.textContent = `download ${link.download}`;
    link.hidden = false;
  } catch (e) {
    out.textContent = `the ${kind} export failed: ${errorText(e)}`;
    out.dataset.state = 'error';
  }
}
for (const kind of ['info', 'map', 'check']) $(`export-${kind}`).addEventListener('click', () => exportJson(kind));
