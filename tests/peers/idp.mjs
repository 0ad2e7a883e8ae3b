// idp.mjs: a real OpenID Provider (npm oidc-provider) for costguard's tests.
//
//   node tests/peers/idp.mjs --host 127.0.0.2 --port 0 --config FILE --state DIR
//
// --port 0 picks an ephemeral port. Once listening, exactly one JSON line goes to
// stdout: {"issuer":"http://HOST:PORT","port":PORT}. Everything else goes to stderr.
// SIGTERM/SIGINT exit at once.
//
// --config FILE (JSON, written by the test):
//   { "clients": [ oidc-provider client metadata ... ],
//     "users": { "alice": { "password", "email", "name"?, "tenant_id", "roles", "groups" } },
//     "ttl": { "AccessToken": s, "IdToken": s, "RefreshToken": s, ... }   (optional)
//     "rotate_refresh_tokens": true | false   (optional, default true) }
//
// --state DIR keeps the private signing keys in DIR/keys.json (created on first start
// with one RS256 and one EC P-256 ES256 key). The first key of an algorithm signs.
//
// Behaviour: PKCE (S256) required; scopes openid, email, profile, tenant (tenant_id,
// roles, groups), offline_access; custom claims go into the ID token; consent is
// auto-granted; the login form is ours (GET /interaction/:uid); RP-initiated logout
// auto-submits its confirmation form. Sessions, grants and tokens live in memory and
// survive key rotation (not a restart).
// Refresh tokens: a GET /auth with scope offline_access and no `prompt` parameter
// (or prompt=consent) from a client allowed the refresh_token grant gets one. With
// rotate_refresh_tokens (default) every refresh returns a new refresh token and
// presenting a used one revokes the whole grant.
//
// Test-only control endpoints (JSON):
//   POST /__test/rotate  {"alg":"RS256"|"ES256"}          -> {"kid": new}  (new key signs)
//   POST /__test/retire  {"kid": "..."}                    -> {"kids": [remaining]}
//   POST /__test/mint    {"claims":{}, "header":{}, "kid"?, "alg"?} -> {"token": "..."}
//        alg RS256/ES256 (default RS256): signed with that key; HS256: HMAC keyed with
//        the SPKI PEM of the RSA key (alg-confusion attack); none: unsigned.
//   GET  /__test/stats                                     -> {"jwks_fetches","token_requests","discovery_fetches"}
//   GET  /__test/public_pem?kid=...                        -> SPKI PEM (text/plain)
//   GET  /__test/keys                                      -> {"kids": [...]} in order

import http from 'node:http';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';

// oidc-provider prints notices with console.info; stdout is reserved for the ready line.
console.log = console.info = (...args) => console.error(...args);
const { default: Provider } = await import('oidc-provider');

const COOKIE_KEYS = [crypto.randomBytes(32).toString('hex')];
// Seconds; the test config's "ttl" overrides any of these.
const DEFAULT_TTL = {
  AccessToken: 3600, AuthorizationCode: 60, IdToken: 3600, RefreshToken: 14 * 86400,
  Grant: 14 * 86400, Session: 14 * 86400, Interaction: 3600,
};
const stats = { jwks_fetches: 0, token_requests: 0, discovery_fetches: 0 };

// ---------- arguments and config ----------

function readArgs() {
  const { values } = parseArgs({
    options: {
      host: { type: 'string', default: '127.0.0.2' },
      port: { type: 'string', default: '0' },
      config: { type: 'string' },
      state: { type: 'string' },
    },
  });
  if (!values.config || !values.state) {
    throw new Error('usage: idp.mjs --host H --port P --config FILE --state DIR');
  }
  return values;
}

function readConfig(file) {
  const config = JSON.parse(fs.readFileSync(file, 'utf8'));
  return {
    clients: config.clients ?? [],
    users: config.users ?? {},
    ttl: { ...DEFAULT_TTL, ...config.ttl },
    rotateRefreshTokens: config.rotate_refresh_tokens ?? true,
  };
}

// ---------- keys ----------

function newKey(alg) {
  const { privateKey } = alg === 'ES256'
    ? crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const kid = `${alg.toLowerCase()}-${crypto.randomBytes(6).toString('hex')}`;
  return { ...privateKey.export({ format: 'jwk' }), kid, alg, use: 'sig' };
}

function loadKeys(file) {
  if (fs.existsSync(file)) return JSON.parse(fs.readFileSync(file, 'utf8')).keys;
  const keys = [newKey('RS256'), newKey('ES256')];
  saveKeys(file, keys);
  return keys;
}

function saveKeys(file, keys) {
  fs.writeFileSync(file, `${JSON.stringify({ keys }, null, 2)}\n`, { mode: 0o600 });
}

function publicPem(jwk) {
  return crypto.createPublicKey({ key: jwk, format: 'jwk' }).export({ type: 'spki', format: 'pem' });
}

// ---------- storage ----------

// In-memory storage shared by every Provider built in this process: key rotation
// rebuilds the Provider, and sessions, grants and tokens must survive that (the
// built-in memory adapter keeps one store per Provider).
const store = new Map(); // key -> { payload, expiresAt (ms) }
const grantMembers = new Map(); // grantId -> Set of keys
const GRANTABLE = new Set(['AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode',
  'BackchannelAuthenticationRequest', 'PreAuthorizedCode']);

function storeGet(key) {
  const entry = store.get(key);
  if (entry?.expiresAt && entry.expiresAt < Date.now()) store.delete(key);
  else return entry?.payload;
  return undefined;
}

function storeSet(key, payload, expiresIn) {
  store.set(key, { payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : undefined });
}

class SharedMemoryAdapter {
  constructor(model) { this.model = model; }

  key(id) { return `${this.model}:${id}`; }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    storeSet(key, payload, expiresIn);
    if (payload.uid && this.model === 'Session') storeSet(`sessionUid:${payload.uid}`, id, expiresIn);
    if (payload.userCode) storeSet(`userCode:${payload.userCode}`, id, expiresIn);
    if (payload.grantId && GRANTABLE.has(this.model)) {
      if (!grantMembers.has(payload.grantId)) grantMembers.set(payload.grantId, new Set());
      grantMembers.get(payload.grantId).add(key);
    }
  }

  async find(id) { return storeGet(this.key(id)); }

  async findByUid(uid) {
    const id = storeGet(`sessionUid:${uid}`);
    return id ? this.find(id) : undefined;
  }

  async findByUserCode(userCode) {
    const id = storeGet(`userCode:${userCode}`);
    return id ? this.find(id) : undefined;
  }

  async consume(id) {
    const payload = storeGet(this.key(id));
    if (payload) payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) { store.delete(this.key(id)); }

  async revokeByGrantId(grantId) {
    for (const key of grantMembers.get(grantId) ?? []) store.delete(key);
    grantMembers.delete(grantId);
  }
}

// ---------- accounts, grants, provider ----------

function accountFinder(users) {
  return async (_ctx, id) => {
    const user = Object.hasOwn(users, id) ? users[id] : undefined;
    if (!user) return undefined;
    return {
      accountId: id,
      claims: async () => ({
        sub: id,
        email: user.email,
        email_verified: true,
        name: user.name ?? id,
        tenant_id: user.tenant_id,
        roles: user.roles ?? [],
        groups: user.groups ?? [],
      }),
    };
  };
}

// Consent is automatic: reuse (or create) the grant and add whatever was requested.
async function loadExistingGrant(ctx) {
  const { oidc } = ctx;
  const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
  let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
  if (!grant) {
    grant = new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
  }
  grant.addOIDCScope([...oidc.requestParamOIDCScopes].join(' '));
  if (oidc.requestParamClaims) grant.addOIDCClaims([...oidc.requestParamClaims]);
  await grant.save();
  return grant;
}

// Confirm the logout without a click: add logout=yes to the OP's form and submit it.
async function logoutSource(ctx, form) {
  ctx.body = `<!DOCTYPE html><html><head><title>Signing out</title></head><body>
${form}
<p>Signing out...</p>
<script>
  var f = document.getElementById('op.logoutForm');
  var i = document.createElement('input');
  i.type = 'hidden'; i.name = 'logout'; i.value = 'yes';
  f.appendChild(i);
  f.submit();
</script></body></html>`;
}

// oidc-provider drops offline_access unless the request has prompt=consent. A GET /auth
// that asks for offline_access and has no prompt parameter gets prompt=consent added
// (consent is automatic), so a plain request gets a refresh token.
async function offlineAccessWithoutPrompt(ctx, next) {
  const { query } = ctx;
  if (ctx.method === 'GET' && ctx.path === '/auth' && query.prompt === undefined
      && typeof query.scope === 'string' && query.scope.split(' ').includes('offline_access')) {
    ctx.query = { ...query, prompt: 'consent' };
  }
  await next();
}

function buildProvider(issuer, config, keys) {
  const provider = new Provider(issuer, {
    adapter: SharedMemoryAdapter,
    clients: config.clients,
    jwks: { keys },
    findAccount: accountFinder(config.users),
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
      tenant: ['tenant_id', 'roles', 'groups'],
    },
    scopes: ['openid', 'email', 'profile', 'tenant', 'offline_access'],
    conformIdTokenClaims: false,
    pkce: { required: () => true },
    loadExistingGrant,
    rotateRefreshToken: () => config.rotateRefreshTokens,
    ttl: config.ttl,
    cookies: { keys: COOKIE_KEYS },
    features: {
      devInteractions: { enabled: false },
      revocation: { enabled: true },
      introspection: { enabled: true },
      rpInitiatedLogout: { enabled: true, logoutSource },
    },
  });
  provider.use(offlineAccessWithoutPrompt);
  provider.on('server_error', (_ctx, err) => console.error('idp server_error:', err));
  for (const event of ['grant.error', 'authorization.error', 'end_session.error', 'userinfo.error']) {
    provider.on(event, (_ctx, err) => console.error(`idp ${event}: ${err.error}: ${err.error_detail ?? err.error_description}`));
  }
  return provider;
}

// ---------- interaction UI ----------

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function loginPage(uid, clientId, error, username = '') {
  const err = error ? `<p id="error" class="error" style="color:#b00">${escapeHtml(error)}</p>` : '';
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>Sign in</title></head><body>
<h1>Sign in</h1>
<p>to ${escapeHtml(clientId)}</p>
${err}
<form method="post" action="/interaction/${escapeHtml(uid)}/login" autocomplete="off">
  <label>Username <input name="username" value="${escapeHtml(username)}" autofocus></label>
  <label>Password <input name="password" type="password"></label>
  <button type="submit" id="login">Sign in</button>
</form></body></html>`;
}

function sendHtml(res, status, html) {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(html);
}

// A consent grant for everything the authorization request asked for.
async function autoGrant(provider, accountId, params) {
  const grant = new provider.Grant({ accountId, clientId: params.client_id });
  if (params.scope) grant.addOIDCScope(params.scope);
  return grant.save();
}

async function showInteraction(provider, req, res) {
  const details = await provider.interactionDetails(req, res);
  if (details.prompt.name === 'login') {
    sendHtml(res, 200, loginPage(details.uid, details.params.client_id));
    return;
  }
  // Any other prompt (consent): grant what was asked, no page.
  const grantId = await autoGrant(provider, details.session.accountId, details.params);
  await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
}

// Login also answers the consent prompt, so prompt=consent costs no extra round trip.
async function submitLogin(provider, users, req, res) {
  const details = await provider.interactionDetails(req, res);
  const form = new URLSearchParams(await readBody(req));
  const username = form.get('username') ?? '';
  const user = Object.hasOwn(users, username) ? users[username] : undefined;
  if (!user || user.password !== form.get('password')) {
    sendHtml(res, 200, loginPage(details.uid, details.params.client_id, 'Invalid username or password.', username));
    return;
  }
  const grantId = await autoGrant(provider, username, details.params);
  const result = { login: { accountId: username }, consent: { grantId } };
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
}

// ---------- test control endpoints ----------

function b64url(input) {
  return Buffer.from(input).toString('base64url');
}

function pickKey(keys, kid, alg) {
  const key = kid ? keys.find((k) => k.kid === kid) : keys.find((k) => k.alg === alg);
  if (!key) throw httpError(404, `no key for kid=${kid ?? ''} alg=${alg}`);
  return key;
}

function mint(keys, { claims = {}, header = {}, kid, alg = 'RS256' }) {
  const signWith = alg === 'HS256' ? 'RS256' : alg;
  const key = alg === 'none' ? undefined : pickKey(keys, kid, signWith);
  const fullHeader = { alg, ...(key ? { kid: key.kid } : {}), typ: 'JWT', ...header };
  const input = `${b64url(JSON.stringify(fullHeader))}.${b64url(JSON.stringify(claims))}`;
  return `${input}.${signature(alg, key, input)}`;
}

function signature(alg, key, input) {
  if (alg === 'none') return '';
  if (alg === 'HS256') return crypto.createHmac('sha256', publicPem(key)).update(input).digest('base64url');
  const privateKey = crypto.createPrivateKey({ key, format: 'jwk' });
  if (alg === 'RS256') return crypto.sign('sha256', Buffer.from(input), privateKey).toString('base64url');
  if (alg === 'ES256') {
    return crypto.sign('sha256', Buffer.from(input), { key: privateKey, dsaEncoding: 'ieee-p1363' }).toString('base64url');
  }
  throw httpError(400, `unsupported alg ${alg}`);
}

function httpError(status, message) {
  return Object.assign(new Error(message), { status });
}

function sendJson(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(`${JSON.stringify(body)}\n`);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

async function readJson(req) {
  const text = await readBody(req);
  try {
    return text ? JSON.parse(text) : {};
  } catch {
    throw httpError(400, 'body is not JSON');
  }
}

// ---------- the server ----------

class Idp {
  constructor(args) {
    this.config = readConfig(args.config);
    fs.mkdirSync(args.state, { recursive: true });
    this.keysFile = path.join(args.state, 'keys.json');
    this.keys = loadKeys(this.keysFile);
  }

  start(issuer) {
    this.issuer = issuer;
    this.provider = buildProvider(issuer, this.config, this.keys);
  }

  // Swap in a new key set; on failure keep the old one.
  replaceKeys(keys) {
    const provider = buildProvider(this.issuer, this.config, keys);
    this.keys = keys;
    this.provider = provider;
    saveKeys(this.keysFile, keys);
  }

  async handle(req, res) {
    const url = new URL(req.url, this.issuer);
    const p = url.pathname;
    if (p.startsWith('/__test/')) return this.control(req, res, url);
    const m = p.match(/^\/interaction\/([^/]+)(\/login)?$/);
    if (m && req.method === 'GET' && !m[2]) return showInteraction(this.provider, req, res);
    if (m && req.method === 'POST' && m[2]) return submitLogin(this.provider, this.config.users, req, res);
    this.count(p);
    return this.provider.callback()(req, res);
  }

  count(p) {
    if (p === '/jwks') stats.jwks_fetches += 1;
    else if (p === '/token') stats.token_requests += 1;
    else if (p === '/.well-known/openid-configuration') stats.discovery_fetches += 1;
  }

  async control(req, res, url) {
    const route = `${req.method} ${url.pathname}`;
    switch (route) {
      case 'POST /__test/rotate': return sendJson(res, 200, this.rotate(await readJson(req)));
      case 'POST /__test/retire': return sendJson(res, 200, this.retire(await readJson(req)));
      case 'POST /__test/mint': return sendJson(res, 200, { token: mint(this.keys, await readJson(req)) });
      case 'GET /__test/stats': return sendJson(res, 200, stats);
      case 'GET /__test/keys': return sendJson(res, 200, { kids: this.keys.map((k) => k.kid) });
      case 'GET /__test/public_pem': return this.sendPem(res, url.searchParams.get('kid'));
      default: throw httpError(404, `unknown test endpoint ${route}`);
    }
  }

  rotate({ alg }) {
    if (alg !== 'RS256' && alg !== 'ES256') throw httpError(400, 'alg must be RS256 or ES256');
    const key = newKey(alg);
    this.replaceKeys([key, ...this.keys]);
    return { kid: key.kid };
  }

  retire({ kid }) {
    if (!this.keys.some((k) => k.kid === kid)) throw httpError(404, `unknown kid ${kid}`);
    this.replaceKeys(this.keys.filter((k) => k.kid !== kid));
    return { kids: this.keys.map((k) => k.kid) };
  }

  sendPem(res, kid) {
    const key = this.keys.find((k) => k.kid === kid);
    if (!key) throw httpError(404, `unknown kid ${kid}`);
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end(publicPem(key));
  }
}

async function main() {
  const args = readArgs();
  const idp = new Idp(args);
  const server = http.createServer((req, res) => {
    idp.handle(req, res).catch((err) => {
      if (!err.status) console.error('idp error:', err);
      if (!res.headersSent) sendJson(res, err.status ?? 500, { error: err.message });
      else res.end();
    });
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(args.port), args.host, resolve);
  });
  const { port } = server.address();
  const issuer = `http://${args.host}:${port}`;
  idp.start(issuer);
  for (const sig of ['SIGTERM', 'SIGINT']) {
    process.on(sig, () => {
      server.closeAllConnections();
      process.exit(0);
    });
  }
  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
}

main().catch((err) => {
  console.error('idp failed:', err);
  process.exit(1);
});
