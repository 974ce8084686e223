// The inspector's views beyond the header, hex and check: the file's layout bar, the
// partition table of the virtual disk, the FVD journal / QED need-check state, and the
// zoomable allocation map with its tooltip, progress and cancel. Every value shown comes
// from fvd-wasm (core); this file only draws. `ctx` carries what app.js owns: the wasm
// module (fvd), serial(), pump(), readFile(), moveTo() and the cancel token.

/** Looks an element up by id (the page's elements, of whatever kind each one is).
 * @type {(id: string) => any} */
const $ = (id) => document.getElementById(id);
const hex = (n, w = 1) => n.toString(16).padStart(w, '0');

export const COLORS = { data: '#22aa77', base: '#5577cc', zero: '#dddddd', unallocated: '#ffffff' };
const REGION_COLORS = {
  header: '#cc5544', bitmap: '#ddaa22', journal: '#aa44cc', table: '#3388dd', data: '#99ddbb',
  'L1 table': '#3388dd', 'L2 table': '#66bbee', clusters: '#99ddbb',
};
const PART_COLORS = ['#e07b39', '#8c5fbf', '#3aa1a1', '#c44e7a'];

/// `n` bytes in the largest whole binary unit.
export function human(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1 && n % 1024 === 0) { n /= 1024; i++; }
  return `${n} ${units[i]}`;
}

function cells(row, texts) {
  for (const t of texts) {
    const td = document.createElement('td');
    td.textContent = t;
    row.append(td);
  }
  return row;
}

// ---- progress and cancel --------------------------------------------------------------

/// Shows `label` and how far a scan got (0..1); `null` hides the indicator.
export function progress(label, fraction) {
  const box = $('progress-box');
  if (label === null) { box.hidden = true; return; }
  box.hidden = false;
  $('progress').value = Math.max(0, Math.min(1, fraction));
  $('progress-text').textContent = `${label} ${Math.floor(fraction * 100)}%`;
}

// ---- layout bar -------------------------------------------------------------------------

/// The image file's regions to scale (core's layout; QED: the L2 tables its L1 names).
export async function showLayout(ctx, s) {
  const top = s.layers[0];
  const list = $('layout-list');
  list.replaceChildren();
  let rows = [];
  try {
    rows = ctx.fvd.regions(top.first, top.file.size).map((r) => ({ name: r.name, offset: r.offset, len: r.len }));
    const l1 = rows.find((r) => r.name === 'L1 table');
    if (l1 && l1.len <= 4 << 20) {
      const bytes = await ctx.readFile(top.file, l1.offset, l1.len);
      rows.push(...ctx.fvd.qed_l2_tables(top.first, top.file.size, bytes).map((r) => ({ name: r.name, offset: r.offset, len: r.len })));
    }
  } catch (e) {
    list.textContent = `layout unavailable: ${e.message ?? e}`;
  }
  s.regions = rows;
  const canvas = $('layout-bar');
  const g = canvas.getContext('2d');
  const size = Math.max(top.file.size, 1);
  g.fillStyle = '#f4f4f4';
  g.fillRect(0, 0, canvas.width, canvas.height);
  // Largest first, so a small region (a header beside a 16 MiB journal) is drawn over
  // its neighbours; each is at least 3 px wide so it can be seen.
  for (const r of [...rows].sort((a, b) => b.len - a.len)) {
    const x0 = Math.floor((r.offset / size) * canvas.width);
    const w = Math.max(3, Math.ceil((r.len / size) * canvas.width));
    g.fillStyle = REGION_COLORS[r.name] ?? '#888';
    g.fillRect(x0, 0, w, canvas.height);
  }
  canvas.dataset.regions = String(rows.length);
  const l2 = rows.filter((r) => r.name === 'L2 table');
  for (const r of rows.filter((x) => x.name !== 'L2 table')) {
    const li = document.createElement('li');
    li.dataset.region = r.name;
    li.innerHTML = `<span class="swatch"></span>`;
    /** @type {HTMLElement} */ (li.firstChild).style.background = REGION_COLORS[r.name] ?? '#888';
    li.append(`${r.name}: bytes 0x${hex(r.offset)}–0x${hex(r.offset + r.len)} (${human(r.len)})`);
    list.append(li);
  }
  if (l2.length) {
    const li = document.createElement('li');
    li.dataset.region = 'L2 table';
    li.innerHTML = `<span class="swatch"></span>`;
    /** @type {HTMLElement} */ (li.firstChild).style.background = REGION_COLORS['L2 table'];
    li.append(`${l2.length} L2 table(s) of ${human(l2[0].len)}: first at 0x${hex(l2[0].offset)}`);
    list.append(li);
  }
  canvas.onmousemove = (e) => {
    const rect = canvas.getBoundingClientRect();
    const at = ((e.clientX - rect.left) / rect.width) * size;
    const slack = (2 / canvas.width) * size;
    const hit = rows.filter((r) => r.name !== 'data' && r.name !== 'clusters')
      .find((r) => at >= r.offset - slack && at < r.offset + r.len + slack)
      ?? rows.find((r) => at >= r.offset && at < r.offset + r.len);
    canvas.title = hit ? `${hit.name}: 0x${hex(hit.offset)}–0x${hex(hit.offset + hit.len)} (${human(hit.len)})` : '';
  };
}

// ---- partitions -------------------------------------------------------------------------

/// Reads the virtual disk's partition table through the chain and lists it.
export async function showPartitions(ctx, s) {
  const body = $('partitions').querySelector('tbody');
  body.replaceChildren();
  s.partitions = [];
  const note = $('partition-label');
  note.textContent = 'reading…';
  await ctx.serial(async () => {
    const p = new ctx.fvd.Partitions(s.size);
    try {
      for (let off = p.want_offset(); off !== undefined; off = p.want_offset()) {
        s.insp.begin_read(off, p.want_len());
        await ctx.pump(s);
        p.give(s.insp.finish_read());
      }
      note.textContent = p.label() === 'none' ? 'no partition table (no MBR boot signature)' : p.label();
      for (const r of p.rows()) {
        s.partitions.push({ index: r.index, start: r.start, size: r.size, extended: r.extended, error: r.error });
        const row = document.createElement('tr');
        row.dataset.index = String(r.index);
        row.dataset.start = String(r.start);
        row.dataset.size = String(r.size);
        if (r.error) {
          row.classList.add('bad');
          cells(row, [String(r.index), r.error, '', '', '']);
        } else {
          cells(row, [String(r.index), r.kind + (r.extended ? ' — extended' : ''), r.name,
            `0x${hex(r.start)} (sector ${r.start / 512})`, `0x${hex(r.start + r.size)} (${human(r.size)})`]);
          const start = r.start; // r is freed below
          row.addEventListener('click', () => ctx.moveTo(start));
        }
        body.append(row);
        r.free();
      }
    } catch (e) {
      note.textContent = `partition table unreadable: ${e.message ?? e}`;
    } finally {
      p.free();
    }
  });
}

// ---- journal / need-check ---------------------------------------------------------------

/// The FVD journal (scanned when the image is not clean, or on request) or QED's
/// need-check state.
export async function showJournal(ctx, s, force = false) {
  const top = s.layers[0];
  const status = $('journal-status');
  const body = $('journal-rows').querySelector('tbody');
  body.replaceChildren();
  for (const k of Object.keys(status.dataset)) delete status.dataset[k];
  $('journal-scan').hidden = true;
  if (top.kind === 'qed') {
    const need = ctx.fvd.qed_need_check(top.first, top.file.size);
    status.dataset.needCheck = need ? '1' : '0';
    status.textContent = need
      ? 'QED need-check bit set: the last writer did not close the image; QEMU checks and repairs it at its next read-write open (this page reads it as it is).'
      : 'QED need-check bit clear: the image was closed cleanly. QED has no journal.';
    return;
  }
  let j;
  try {
    j = new ctx.fvd.Journal(top.first, top.file.size);
  } catch (e) {
    status.textContent = `no journal view: ${e.message ?? e}`;
    return;
  }
  try {
    status.dataset.clean = j.clean() ? '1' : '0';
    status.dataset.epoch = String(j.epoch());
    if (j.clean() && !force) {
      status.textContent = `Clean shutdown (epoch ${j.epoch()}): a reader replays nothing. ` +
        `The journal has ${j.sectors()} sectors.`;
      $('journal-scan').hidden = false;
      return;
    }
    const token = ctx.token();
    await ctx.serial(async () => {
      const total = j.sectors();
      let done = 0;
      for (let r = j.next_read(); r; r = j.next_read()) {
        const offset = r.offset, len = r.len;
        r.free();
        if (token.cancelled) break;
        j.complete_read(await ctx.readFile(top.file, offset, len));
        done += len / 512;
        progress('reading the journal', done / total);
      }
    });
    progress(null);
    for (const [k, f] of [['current', 'current'], ['records', 'records'], ['stale', 'stale'], ['torn', 'torn'], ['damaged', 'damaged']]) {
      status.dataset[k] = String(j[f]());
    }
    const next = j.next_epoch();
    status.textContent = `${j.clean() ? 'Clean shutdown' : 'Not closed cleanly: a read-write open replays the journal'}` +
      ` (epoch ${j.epoch()}). ${j.current()} sector(s) of this epoch hold ${j.records()} record(s) a replay applies; ` +
      `${j.stale()} stale, ${j.torn()} torn, ${j.damaged()} misplaced or malformed, ${j.unwritten()} unwritten. ` +
      (next < 0 ? 'The epoch is exhausted: no writer may open the image.' : `The next writer moves to epoch ${next}.`) +
      (token.cancelled ? ' (scan cancelled)' : '');
    for (const r of j.rows()) {
      const row = document.createElement('tr');
      row.dataset.status = r.status;
      row.dataset.kind = r.kind;
      const range = r.guest_start >= 0 ? `0x${hex(r.guest_start)}–0x${hex(r.guest_end)}` : '';
      cells(row, [String(r.sector), r.epoch >= 0 ? String(r.epoch) : '—', r.status, r.kind, r.detail, range, r.fault]);
      if (r.guest_start >= 0) {
        const start = r.guest_start;
        row.addEventListener('click', () => ctx.moveTo(start));
      }
      body.append(row);
      r.free();
    }
  } finally {
    j.free();
  }
}

// ---- allocation map ---------------------------------------------------------------------

/// The map's view of the virtual disk: [start, start + len), zoomable from the whole
/// disk down to `minLen` (16 blocks).
export class MapView {
  constructor(ctx) {
    this.ctx = ctx;
    this.s = null;
    this.start = 0;
    this.len = 1;
    this.minLen = 512;
    const canvas = $('alloc-map');
    canvas.addEventListener('wheel', (e) => {
      if (!this.s) return;
      e.preventDefault();
      this.zoom(e.deltaY < 0 ? 0.5 : 2, this.offsetAt(e));
    }, { passive: false });
    canvas.addEventListener('click', (e) => this.s && ctx.moveTo(Math.floor(this.offsetAt(e) / 16) * 16));
    canvas.addEventListener('mousemove', (e) => this.hover(e));
    canvas.addEventListener('mouseleave', () => { $('map-tooltip').hidden = true; });
    $('zoom-in').addEventListener('click', () => this.zoom(0.25, this.start + this.len / 2));
    $('zoom-out').addEventListener('click', () => this.zoom(4, this.start + this.len / 2));
    $('zoom-all').addEventListener('click', () => this.zoom(Infinity, 0));
  }

  /// A new session: the whole disk; blocks of `unit` bytes.
  reset(s, unit) {
    this.s = s;
    this.start = 0;
    this.len = Math.max(s.size, 1);
    this.unit = unit;
    this.minLen = Math.min(this.len, Math.max(16 * unit, 4096));
    $('map-note').textContent = '';
    $('map-hover').textContent = '';
    this.render();
  }

  offsetAt(e) {
    const rect = $('alloc-map').getBoundingClientRect();
    const f = Math.min(Math.max((e.clientX - rect.left) / rect.width, 0), 0.999999);
    return Math.min(Math.floor(this.start + f * this.len), this.s.size - 1);
  }

  /// Scales the window by `factor` around virtual byte `at`.
  zoom(factor, at) {
    if (!this.s) return;
    const len = Math.min(Math.max(this.len * factor, this.minLen), this.s.size);
    const f = (at - this.start) / this.len;
    let start = Math.round(at - f * len);
    start = Math.min(Math.max(start, 0), this.s.size - len);
    this.start = start;
    this.len = len;
    this.render();
    // A view past where the whole-disk scan stopped is mapped now.
    this.ctx.mapWindow(start, start + len);
  }

  /// The run holding virtual byte `at` (binary search over the scanned runs).
  runAt(at) {
    const runs = this.s.runs;
    let lo = 0, hi = runs.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const r = runs[mid];
      if (at < r.offset) hi = mid - 1;
      else if (at >= r.offset + r.len) lo = mid + 1;
      else return r;
    }
    return null;
  }

  render() {
    const s = this.s;
    const canvas = $('alloc-map');
    const g = canvas.getContext('2d');
    const W = canvas.width, H = canvas.height, band = 12, top = H - band;
    g.fillStyle = '#f0f0f0';
    g.fillRect(0, 0, W, H);
    if (!s) return;
    const x = (off) => ((off - this.start) / this.len) * W;
    // Not scanned yet (a cancelled or stopped scan): hatched.
    g.fillStyle = '#c8c8c8';
    for (let px = 0; px < W; px += 6) g.fillRect(px, 0, 2, top);
    for (const r of s.runs) {
      if (r.offset + r.len <= this.start || r.offset >= this.start + this.len) continue;
      const x0 = Math.max(0, Math.floor(x(r.offset)));
      const x1 = Math.min(W, Math.max(x0 + 1, Math.ceil(x(r.offset + r.len))));
      g.fillStyle = COLORS[r.state];
      g.fillRect(x0, 0, x1 - x0, top);
    }
    // Block boundaries once a block is at least 6 px wide.
    const px = (this.unit / this.len) * W;
    if (px >= 6) {
      g.fillStyle = 'rgba(0,0,0,0.12)';
      for (let b = Math.ceil(this.start / this.unit) * this.unit; b < this.start + this.len; b += this.unit) {
        g.fillRect(Math.floor(x(b)), 0, 1, top);
      }
    }
    // The partitions, in a band under the map.
    g.fillStyle = '#fff';
    g.fillRect(0, top, W, band);
    g.font = '10px sans-serif';
    for (const [i, p] of (s.partitions ?? []).filter((p) => !p.error).entries()) {
      if (p.start + p.size <= this.start || p.start >= this.start + this.len) continue;
      const x0 = Math.max(0, Math.floor(x(p.start)));
      const x1 = Math.min(W, Math.max(x0 + 2, Math.ceil(x(p.start + p.size))));
      g.fillStyle = PART_COLORS[i % PART_COLORS.length];
      g.globalAlpha = p.extended ? 0.4 : 0.9;
      g.fillRect(x0, top + 1, x1 - x0, band - 2);
      g.globalAlpha = 1;
      g.fillStyle = '#fff';
      if (x1 - x0 > 14) g.fillText(String(p.index), x0 + 3, H - 3);
    }
    // The cursor.
    const c = x(this.ctx.cursor());
    if (c >= 0 && c <= W) { g.fillStyle = '#d00'; g.fillRect(Math.floor(c), 0, 2, H); }
    canvas.dataset.viewStart = String(this.start);
    canvas.dataset.viewLen = String(this.len);
    $('map-range').textContent = `showing 0x${hex(this.start)}–0x${hex(this.start + this.len)} ` +
      `(${human(this.len)} of ${human(s.size)}; ${(this.len / W / this.unit).toPrecision(3)} blocks of ${human(this.unit)} a pixel)`;
  }

  hover(e) {
    if (!this.s) return;
    const canvas = $('alloc-map');
    const rect = canvas.getBoundingClientRect();
    const pxBytes = this.len / canvas.width;
    const at = this.offsetAt(e);
    const a = Math.floor(at / Math.max(pxBytes, 1)) * Math.max(pxBytes, 1);
    const run = this.runAt(at);
    const part = (this.s.partitions ?? []).find((p) => !p.error && at >= p.start && at < p.start + p.size);
    const text = `0x${hex(Math.floor(a))}–0x${hex(Math.floor(a + Math.max(pxBytes, 1)))}: ` +
      (run ? `${run.state} (run 0x${hex(run.offset)}–0x${hex(run.offset + run.len)})` : 'not scanned') +
      (part ? `; partition ${part.index}` : '');
    $('map-hover').textContent = text;
    const tip = $('map-tooltip');
    tip.hidden = false;
    tip.textContent = text;
    tip.style.left = `${e.clientX - rect.left + 12}px`;
    tip.style.top = `${e.clientY - rect.top + 12}px`;
  }
}
