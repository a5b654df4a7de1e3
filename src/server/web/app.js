// The page of cnclip serve: plain JavaScript over the JSON API v1 (see README, "cnclip serve").
'use strict';

const TEXT = {
  en: {
    placeholder: 'Describe a photo, or drop / paste an image', search: 'Search', pick: 'Search by an example image',
    drop: 'Drop an image to find similar photos', close: 'Close', copy: 'Copy path', copied: 'Copied',
    like: 'More like this', original: 'Original', searching: 'Searching…', results: n => `${n} photos`,
    more: n => `${n} photos, scroll for more`, none: 'No matching photos.', empty: 'The index is empty. Run: cnclip index PATH',
    ready: n => `${n} photos indexed. Type a description, or drop an image.`, similarTo: 'Photos like',
    imageQuery: 'Photos like this image', error: 'Error', notImage: 'That is not an image file.',
  },
  zh: {
    placeholder: '描述一张照片，或拖入 / 粘贴图片', search: '搜索', pick: '以图搜图',
    drop: '松开以搜索相似照片', close: '关闭', copy: '复制路径', copied: '已复制',
    like: '相似照片', original: '原图', searching: '搜索中…', results: n => `${n} 张照片`,
    more: n => `${n} 张照片，向下滚动加载更多`, none: '没有找到匹配的照片。', empty: '索引为空。请运行：cnclip index 路径',
    ready: n => `已索引 ${n} 张照片。输入描述，或拖入图片。`, similarTo: '相似照片：',
    imageQuery: '与此图片相似的照片', error: '出错了', notImage: '这不是图片文件。',
  },
};
const LANG = (navigator.languages || [navigator.language || 'en']).some(l => /^zh/i.test(l)) ? 'zh' : 'en';
const T = TEXT[LANG];
const PAGE = 40;

const $ = id => document.getElementById(id);
const els = {
  form: $('search'), q: $('q'), file: $('file'), pick: $('pick'), grid: $('grid'), status: $('status'),
  more: $('more'), drop: $('drop'), viewer: $('viewer'), full: $('full'), video: $('video'), path: $('path'), score: $('score'),
  copy: $('copy'), like: $('like'), open: $('open'), close: $('close'), queryImage: $('query-image'),
  queryThumb: $('query-thumb'), queryLabel: $('query-label'),
};

// The current query: {kind: 'text', q} | {kind: 'similar', id} | {kind: 'image', blob, name}.
let current = null;
let results = [];
let loading = false;
let exhausted = true;
let generation = 0;  // answers of an older query are dropped
let viewing = -1;

function localize() {
  document.documentElement.lang = LANG === 'zh' ? 'zh-CN' : 'en';
  for (const el of document.querySelectorAll('[data-i18n]')) el.textContent = T[el.dataset.i18n];
  for (const el of document.querySelectorAll('[data-i18n-placeholder]')) el.placeholder = T[el.dataset.i18nPlaceholder];
  for (const el of document.querySelectorAll('[data-i18n-title]')) {
    el.title = T[el.dataset.i18nTitle];
    el.setAttribute('aria-label', T[el.dataset.i18nTitle]);
  }
}

function setStatus(text, kind = '') {
  els.status.textContent = text;
  els.status.className = 'status' + (kind ? ' ' + kind : '');
}

async function api(url, options) {
  const res = await fetch(url, Object.assign({credentials: 'same-origin'}, options));
  let body = null;
  try { body = await res.json(); } catch (e) { /* not JSON */ }
  if (!res.ok) {
    const message = body && body.error ? body.error.message : `HTTP ${res.status}`;
    throw new Error(message);
  }
  return body;
}

function requestFor(query, offset) {
  const page = `k=${PAGE}&offset=${offset}`;
  if (query.kind === 'text') return [`/api/v1/search?q=${encodeURIComponent(query.q)}&${page}`];
  if (query.kind === 'similar') return [`/api/v1/similar/${query.id}?${page}`];
  return [`/api/v1/search/image?${page}`, {method: 'POST', body: query.blob,
    headers: {'Content-Type': query.blob.type && query.blob.type.startsWith('image/') ? query.blob.type : 'application/octet-stream'}}];
}

function tile(hit, index) {
  const b = document.createElement('button');
  b.type = 'button';
  b.className = 'tile';
  b.title = hit.path;
  const img = document.createElement('img');
  img.loading = 'lazy';
  img.decoding = 'async';
  img.alt = hit.path.split('/').pop();
  img.src = hit.thumbnail;
  const score = document.createElement('span');
  score.className = 'badge';
  score.textContent = hit.score === null ? '–' : hit.score.toFixed(3);
  const rank = document.createElement('span');
  rank.className = 'rank';
  rank.textContent = hit.rank;
  b.append(img, rank, score);
  if (hit.video) {  // a video: the poster is the matching frame; the badge says where it is
    const moment = document.createElement('span');
    moment.className = 'moment';
    moment.textContent = '▶ ' + clock(hit.time);
    b.append(moment);
  }
  b.addEventListener('click', () => openViewer(index));
  return b;
}

function summarize() {
  if (results.length === 0) setStatus(T.none, 'big');
  else setStatus(exhausted ? T.results(results.length) : T.more(results.length));
}

async function loadMore() {
  if (!current || loading || exhausted) return;
  loading = true;
  const mine = generation;
  try {
    const body = await api(...requestFor(current, results.length));
    if (mine !== generation) return;
    const start = results.length;
    results.push(...body.results);
    const frag = document.createDocumentFragment();
    body.results.forEach((hit, i) => frag.append(tile(hit, start + i)));
    els.grid.append(frag);
    exhausted = body.results.length < PAGE;
    summarize();
  } catch (e) {
    if (mine === generation) setStatus(`${T.error}: ${e.message}`, 'error big');
    exhausted = true;
  } finally {
    if (mine === generation) loading = false;
    // Fill the screen: a tall window may show the sentinel without any scrolling.
    if (mine === generation && !exhausted && isVisible(els.more)) loadMore();
  }
}

function isVisible(el) {
  const r = el.getBoundingClientRect();
  return r.top < window.innerHeight + 400;
}

function run(query) {
  generation += 1;
  loading = false;
  current = query;
  results = [];
  exhausted = false;
  els.grid.replaceChildren();
  closeViewer(false);
  els.queryImage.hidden = query.kind === 'text';
  if (query.kind === 'image') {
    els.queryThumb.src = URL.createObjectURL(query.blob);
    els.queryLabel.textContent = T.imageQuery + (query.name ? ` (${query.name})` : '');
  } else if (query.kind === 'similar') {
    els.queryThumb.src = `/api/v1/thumb/${query.id}`;
    els.queryLabel.textContent = T.similarTo;
  }
  if (query.kind === 'text') els.q.value = query.q;
  setStatus(T.searching);
  loadMore();
}

// The URL holds the query (?q=TEXT or ?similar=ID), so back/forward and shared links work. An
// uploaded image cannot live in a URL: its entry restores only while the page keeps it.
const images = new Map();
function fromLocation() {
  const p = new URLSearchParams(location.search);
  if (p.get('q')) return {kind: 'text', q: p.get('q')};
  if (/^\d+$/.test(p.get('similar') || '')) return {kind: 'similar', id: p.get('similar')};
  const key = history.state && history.state.image;
  if (key && images.has(key)) return images.get(key);
  return null;
}

function navigate(query) {
  let url = '/';
  let state = null;
  if (query.kind === 'text') url = '/?q=' + encodeURIComponent(query.q);
  else if (query.kind === 'similar') url = '/?similar=' + query.id;
  else {
    const key = 'img' + Date.now() + Math.random().toString(36).slice(2);
    images.set(key, query);
    url = '/?image';
    state = {image: key};
  }
  history.pushState(state, '', url);
  run(query);
}

async function showHome() {
  generation += 1;
  current = null;
  results = [];
  els.grid.replaceChildren();
  els.queryImage.hidden = true;
  els.q.value = '';
  try {
    const info = await api('/api/v1/info');
    if (current) return;
    setStatus(info.files === 0 ? T.empty : T.ready(info.files), 'big');
  } catch (e) {
    setStatus(`${T.error}: ${e.message}`, 'error big');
  }
}

function route() {
  const query = fromLocation();
  if (query) run(query); else showHome();
}

function searchImage(blob, name) {
  if (!blob) return;
  if (blob.type && !blob.type.startsWith('image/')) {
    setStatus(T.notImage, 'error');
    return;
  }
  navigate({kind: 'image', blob, name: name || ''});
}

// Seconds as m:ss (h:mm:ss past an hour).
function clock(t) {
  const s = Math.floor(t % 60), m = Math.floor(t / 60) % 60, h = Math.floor(t / 3600);
  const ss = String(s).padStart(2, '0');
  return h ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

// --- the large view ---------------------------------------------------------------------
function openViewer(index) {
  const hit = results[index];
  if (!hit) return;
  viewing = index;
  if (hit.video) {
    // Played from the matching moment (a media fragment; the server answers the Range requests).
    els.full.hidden = true;
    els.full.removeAttribute('src');
    els.video.hidden = false;
    els.video.poster = hit.thumbnail;
    els.video.src = `${hit.video}#t=${hit.time}`;
  } else {
    els.video.hidden = true;
    els.video.removeAttribute('src');
    els.full.hidden = false;
    // A format browsers do not show (HEIC, TIFF, camera RAW): the thumbnail, the original linked.
    els.full.src = hit.viewable === false ? hit.thumbnail : hit.image;
  }
  els.full.alt = hit.path;
  els.path.textContent = hit.path;
  els.score.textContent = (hit.score === null ? '' : `#${hit.rank} · ${hit.score.toFixed(4)}`) +
    (hit.video ? ` · ${clock(hit.start)}–${clock(hit.end)}` : '');
  els.open.href = hit.image;
  els.copy.textContent = T.copy;
  els.viewer.hidden = false;
  els.close.focus();
}

function closeViewer(focusTile = true) {
  if (els.viewer.hidden) return;
  els.viewer.hidden = true;
  els.full.removeAttribute('src');
  els.video.pause();
  els.video.removeAttribute('src');
  els.video.load();
  if (focusTile && els.grid.children[viewing]) els.grid.children[viewing].focus();
  viewing = -1;
}

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = document.createElement('textarea');
  area.value = text;
  area.setAttribute('readonly', '');
  area.className = 'offscreen';
  document.body.append(area);
  area.select();
  document.execCommand('copy');
  area.remove();
}

// --- wiring ---------------------------------------------------------------------------
localize();
els.form.addEventListener('submit', e => {
  e.preventDefault();
  const q = els.q.value.trim();
  if (q) navigate({kind: 'text', q});
});
els.pick.addEventListener('click', () => els.file.click());
els.file.addEventListener('change', () => {
  const f = els.file.files[0];
  els.file.value = '';
  if (f) searchImage(f, f.name);
});
document.addEventListener('paste', e => {
  const item = [...(e.clipboardData ? e.clipboardData.items : [])].find(i => i.kind === 'file' && i.type.startsWith('image/'));
  if (item) {
    e.preventDefault();
    searchImage(item.getAsFile(), '');
  }
});
let dragDepth = 0;
const hasFiles = e => e.dataTransfer && [...e.dataTransfer.types].includes('Files');
window.addEventListener('dragenter', e => { if (hasFiles(e)) { dragDepth += 1; els.drop.hidden = false; } });
window.addEventListener('dragleave', () => { dragDepth = Math.max(0, dragDepth - 1); if (!dragDepth) els.drop.hidden = true; });
window.addEventListener('dragover', e => { if (hasFiles(e)) e.preventDefault(); });
window.addEventListener('drop', e => {
  if (!hasFiles(e)) return;
  e.preventDefault();
  dragDepth = 0;
  els.drop.hidden = true;
  const f = [...e.dataTransfer.files][0];
  if (f) searchImage(f, f.name);
});
document.addEventListener('keydown', e => {
  if (e.key === '/' && document.activeElement !== els.q && els.viewer.hidden) {
    e.preventDefault();
    els.q.focus();
    els.q.select();
  } else if (!els.viewer.hidden) {
    if (e.key === 'Escape') closeViewer();
    else if (e.key === 'ArrowRight') openViewer(Math.min(viewing + 1, results.length - 1));
    else if (e.key === 'ArrowLeft') openViewer(Math.max(viewing - 1, 0));
  }
});
els.close.addEventListener('click', () => closeViewer());
els.viewer.addEventListener('click', e => { if (e.target === els.viewer) closeViewer(); });
els.copy.addEventListener('click', async () => {
  try {
    await copyText(els.path.textContent);
    els.copy.textContent = T.copied;
  } catch (e) {
    els.copy.textContent = T.error;
  }
});
els.like.addEventListener('click', () => {
  const hit = results[viewing];
  if (hit) navigate({kind: 'similar', id: String(hit.id)});
});
new IntersectionObserver(entries => {
  if (entries.some(e => e.isIntersecting)) loadMore();
}, {rootMargin: '400px'}).observe(els.more);
window.addEventListener('popstate', route);
// A token given in the URL became a cookie (set by the server): drop it from the address bar.
if (new URLSearchParams(location.search).has('token')) {
  const p = new URLSearchParams(location.search);
  p.delete('token');
  history.replaceState(null, '', '/' + (p.toString() ? '?' + p : ''));
}
route();
