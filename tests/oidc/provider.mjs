// A real OpenID Connect provider for Cordon's integration tests: the npm
// package `oidc-provider` (pinned in package-lock.json), run with node on
// loopback. Started and stopped by tests/src/oidc.rs; never for production.
//
// Usage:
//   node provider.mjs [--port N] [--issuer URL] [--clients JSON] [--id-token-ttl SECS]
// or the same through OIDC_PORT, OIDC_ISSUER, OIDC_CLIENTS, OIDC_ID_TOKEN_TTL
// (command-line options win). Port 0 (the default) picks a free port; the
// issuer defaults to http://127.0.0.1:PORT. Once listening it prints ONE JSON
// line on stdout: {"issuer": "...", "port": N, "clients": ["id", ...]}.
//
// Enabled: discovery, JWKS, authorization code + PKCE (native clients may use
// any loopback port for their redirect URI), the device authorization grant
// (`features.deviceFlow`), refresh tokens, userinfo. ID tokens carry the
// account's `email`, `name` and `groups` claims (conformIdTokenClaims off).
//
// Nobody types anything: /interaction/:uid is not a login page but completes
// login AND consent at once for the account a test route named. Test routes
// (loopback peers only, JSON in and out, POST):
//
//   /test/device/approve   {user_code, account, groups?, email?, name?}
//       Plays the user's browser through the provider's own pages: GET the
//       verification URI with the user code, submit its forms (xsrf and
//       confirmation included), pass the interaction as `account`, and land on
//       the success page. Answers {ok, status, url}.
//   /test/device/deny      {user_code}
//       Same pages, but presses "abort": the device's poll gets access_denied.
//   /test/authorize        {url, account, groups?, email?, name?}
//       Plays the browser from an authorization URL (auth code + PKCE) until
//       the provider redirects away from itself, then GETs that redirect (the
//       client's loopback listener) once. Answers {ok, status, url, body}.
//   /test/account          {account, groups?, email?, name?}
//       Creates or changes an account's claims.
//   /test/rotate           {keep_old?: true}
//       Key rotation: a new RSA signing key becomes the one tokens are signed
//       with and is published first in the JWKS; the previous keys stay
//       published unless keep_old is false. Answers {kid, kids}.
//   /test/sign             {claims?, header?, key?: "current"|"rogue", ttl?}
//       Signs arbitrary claims (merged over iss=issuer, aud=first client,
//       sub=test-user, iat=now, exp=now+ttl) for negative tests: wrong
//       audience or issuer, expired, ... `key: "rogue"` signs with a key that
//       is never published (its kid is unknown to any verifier).
//   /test/keys             {}  -> {kids: [...], signing_kid}

import { createServer } from 'node:http';
import { randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';
import { SignJWT, exportJWK, generateKeyPair, importJWK } from 'jose';

// ---------------------------------------------------------------------------
// options

const { values: argv } = parseArgs({
  options: {
    port: { type: 'string' },
    issuer: { type: 'string' },
    clients: { type: 'string' },
    'id-token-ttl': { type: 'string' },
  },
  strict: true,
});

const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
const DEFAULT_CLIENTS = [
  {
    client_id: 'cordon-cli',
    client_name: 'cordon CLI (tests)',
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    grant_types: [DEVICE_GRANT, 'authorization_code', 'refresh_token'],
    response_types: ['code'],
    redirect_uris: ['http://127.0.0.1/callback'],
  },
];

const port = Number(argv.port ?? process.env.OIDC_PORT ?? 0);
const clients = JSON.parse(argv.clients ?? process.env.OIDC_CLIENTS ?? JSON.stringify(DEFAULT_CLIENTS));
const idTokenTtl = Number(argv['id-token-ttl'] ?? process.env.OIDC_ID_TOKEN_TTL ?? 3600);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  throw new Error(`--port: expected 0..65535, got ${argv.port ?? process.env.OIDC_PORT}`);
}
if (!Array.isArray(clients) || clients.length === 0) {
  throw new Error('--clients: expected a non-empty JSON array of client metadata');
}
if (!Number.isInteger(idTokenTtl) || idTokenTtl < 1) {
  throw new Error('--id-token-ttl: expected a positive number of seconds');
}

// ---------------------------------------------------------------------------
// accounts and keys

/** account id -> {email, name, groups} */
const accounts = new Map();

function setAccount({ account, groups = [], email, name }) {
  if (typeof account !== 'string' || account === '') {
    throw new Error('`account` must be a non-empty string');
  }
  if (!Array.isArray(groups) || !groups.every((g) => typeof g === 'string')) {
    throw new Error('`groups` must be an array of strings');
  }
  accounts.set(account, {
    email: email ?? `${account}@example.test`,
    name: name ?? account,
    groups,
  });
}

async function newRsaKey() {
  const { privateKey } = await generateKeyPair('RS256', { extractable: true, modulusLength: 2048 });
  const jwk = await exportJWK(privateKey);
  return { ...jwk, kid: `k-${randomBytes(6).toString('hex')}`, alg: 'RS256', use: 'sig' };
}

/** Private JWKs, the signing key first. */
let keys = [await newRsaKey()];
const rogueKey = await newRsaKey();
const cookieKeys = [randomBytes(32).toString('hex')];

// ---------------------------------------------------------------------------
// the provider (rebuilt on key rotation: the in-memory adapter's storage is
// module-wide, so codes, sessions and grants survive the swap)

let issuer;
let provider;
/** provider.callback() of the current provider. */
let handler;

function buildProvider() {
  const p = new Provider(issuer, {
    clients,
    jwks: { keys },
    cookies: { keys: cookieKeys },
    findAccount(_ctx, id) {
      const account = accounts.get(id);
      if (!account) {
        return undefined;
      }
      return {
        accountId: id,
        claims() {
          return {
            sub: id,
            email: account.email,
            email_verified: true,
            name: account.name,
            groups: account.groups,
          };
        },
      };
    },
    claims: {
      openid: ['sub', 'groups'],
      email: ['email', 'email_verified'],
      profile: ['name'],
    },
    scopes: ['openid', 'offline_access', 'email', 'profile'],
    conformIdTokenClaims: false,
    features: {
      deviceFlow: { enabled: true },
      devInteractions: { enabled: false },
      revocation: { enabled: true },
      userinfo: { enabled: true },
    },
    interactions: {
      url(_ctx, interaction) {
        return `/interaction/${interaction.uid}`;
      },
    },
    issueRefreshToken(_ctx, client) {
      return client.grantTypeAllowed('refresh_token');
    },
    pkce: { required: () => true },
    responseTypes: ['code'],
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 120,
      DeviceCode: 600,
      Grant: 86400,
      IdToken: idTokenTtl,
      Interaction: 600,
      RefreshToken: 86400,
      Session: 86400,
    },
    clientBasedCORS: () => false,
  });
  p.on('server_error', (_ctx, err) => console.error('oidc-provider server_error:', err));
  return p;
}

// ---------------------------------------------------------------------------
// the scripted user: interactions and a small cookie-keeping browser

/** Who the next interaction logs in as (set while a test route browses). */
let pendingLogin;
/** Test routes that browse run one at a time. */
let browsing = Promise.resolve();

function serially(fn) {
  const run = browsing.then(fn, fn);
  browsing = run.catch(() => {});
  return run;
}

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  const account = pendingLogin;
  if (!account) {
    res.writeHead(403, { 'content-type': 'text/plain' });
    res.end('no test login pending: this provider only completes logins a test route asked for\n');
    return;
  }
  const { params, prompt } = details;
  const accountId = details.session?.accountId ?? account;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId, clientId: params.client_id });
  grant.addOIDCScope(String(params.scope ?? 'openid'));
  if (prompt.details.missingOIDCClaims) {
    grant.addOIDCClaims(prompt.details.missingOIDCClaims);
  }
  const result = { consent: { grantId: await grant.save() } };
  if (prompt.name === 'login') {
    result.login = { accountId: account };
  }
  await provider.interactionFinished(req, res, result, { mergeWithLastSubmission: true });
}

class Jar {
  #cookies = new Map();

  store(headers) {
    for (const line of headers.getSetCookie()) {
      const [pair] = line.split(';');
      const eq = pair.indexOf('=');
      if (eq > 0) {
        const name = pair.slice(0, eq).trim();
        const value = pair.slice(eq + 1).trim();
        if (/expires=Thu, 01 Jan 1970/i.test(line) || value === '') {
          this.#cookies.delete(name);
        } else {
          this.#cookies.set(name, value);
        }
      }
    }
  }

  header() {
    return [...this.#cookies].map(([k, v]) => `${k}=${v}`).join('; ');
  }
}

const unescapeHtml = (s) => s
  .replaceAll('&quot;', '"').replaceAll('&#39;', "'").replaceAll('&#x27;', "'")
  .replaceAll('&lt;', '<').replaceAll('&gt;', '>').replaceAll('&amp;', '&');

/** The first POST form of a page: its action and hidden inputs. */
function firstForm(html) {
  const form = /<form\b[^>]*\bmethod="post"[^>]*>([\s\S]*?)<\/form>/i.exec(html);
  if (!form) {
    return undefined;
  }
  const action = /\baction="([^"]*)"/i.exec(form[0]);
  const fields = new URLSearchParams();
  for (const input of form[1].matchAll(/<input\b[^>]*>/gi)) {
    const tag = input[0];
    if (!/\btype="hidden"/i.test(tag)) {
      continue;
    }
    const name = /\bname="([^"]*)"/i.exec(tag);
    const value = /\bvalue="([^"]*)"/i.exec(tag);
    if (name) {
      fields.append(unescapeHtml(name[1]), unescapeHtml(value ? value[1] : ''));
    }
  }
  return { action: action ? unescapeHtml(action[1]) : undefined, fields };
}

/**
 * Follows redirects and submits the first POST form of every page, keeping
 * cookies, until a page without a form, an error status, or (with
 * `leaveIssuer`) a redirect off the provider, which is fetched once and
 * ends the walk. `alter(fields)` may change a form before it is sent.
 */
async function browse(startUrl, { alter = () => {}, leaveIssuer = false } = {}) {
  const jar = new Jar();
  const origin = new URL(issuer).origin;
  let url = new URL(startUrl, issuer);
  let init = { method: 'GET' };
  for (let step = 0; step < 25; step += 1) {
    const res = await fetch(url, {
      ...init,
      redirect: 'manual',
      headers: { ...(init.headers ?? {}), cookie: jar.header() },
    });
    jar.store(res.headers);
    const location = res.headers.get('location');
    if (res.status >= 300 && res.status < 400 && location) {
      url = new URL(location, url);
      init = { method: 'GET' };
      if (url.origin !== origin) {
        if (!leaveIssuer) {
          return { ok: false, status: res.status, url: url.href, body: 'redirected off the provider' };
        }
        const away = await fetch(url, { redirect: 'manual' });
        return { ok: away.ok, status: away.status, url: url.href, body: await away.text() };
      }
      continue;
    }
    const body = await res.text();
    const form = res.status === 200 ? firstForm(body) : undefined;
    if (!form) {
      return { ok: res.ok, status: res.status, url: url.href, body };
    }
    alter(form.fields);
    url = new URL(form.action ?? url.href, url);
    init = {
      method: 'POST',
      body: form.fields.toString(),
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    };
  }
  return { ok: false, status: 0, url: url.href, body: 'too many steps' };
}

// ---------------------------------------------------------------------------
// test routes

function loopback(req) {
  const a = req.socket.remoteAddress ?? '';
  return a === '127.0.0.1' || a === '::1' || a === '::ffff:127.0.0.1';
}

async function readJson(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 1 << 20) {
      throw new Error('request body over 1 MiB');
    }
    chunks.push(chunk);
  }
  const text = Buffer.concat(chunks).toString('utf8');
  return text === '' ? {} : JSON.parse(text);
}

function reply(res, status, value) {
  const body = JSON.stringify(value);
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': Buffer.byteLength(body),
  });
  res.end(body);
}

function deviceUrl(userCode) {
  const u = new URL('/device', issuer);
  u.searchParams.set('user_code', userCode);
  return u;
}

const routes = {
  async '/test/account'(body) {
    setAccount(body);
    return { account: body.account };
  },
  '/test/device/approve': (body) => serially(async () => {
    setAccount(body);
    pendingLogin = body.account;
    try {
      const r = await browse(deviceUrl(String(body.user_code ?? '')));
      const ok = r.status === 200 && /success|sign-in is complete|complete/i.test(r.body);
      return { ok, status: r.status, url: r.url, body: ok ? undefined : r.body.slice(0, 2000) };
    } finally {
      pendingLogin = undefined;
    }
  }),
  '/test/device/deny': (body) => serially(async () => {
    const r = await browse(deviceUrl(String(body.user_code ?? '')), {
      alter(fields) {
        if (fields.has('confirm')) {
          fields.delete('confirm');
          fields.set('abort', 'yes');
        }
      },
    });
    return { ok: true, status: r.status, url: r.url };
  }),
  '/test/authorize': (body) => serially(async () => {
    setAccount(body);
    pendingLogin = body.account;
    try {
      return await browse(String(body.url ?? ''), { leaveIssuer: true });
    } finally {
      pendingLogin = undefined;
    }
  }),
  async '/test/rotate'(body) {
    const fresh = await newRsaKey();
    keys = body.keep_old === false ? [fresh] : [fresh, ...keys];
    provider = buildProvider();
    handler = provider.callback();
    return { kid: fresh.kid, kids: keys.map((k) => k.kid) };
  },
  async '/test/keys'() {
    return { kids: keys.map((k) => k.kid), signing_kid: keys[0].kid };
  },
  async '/test/sign'(body) {
    const jwk = body.key === 'rogue' ? rogueKey : keys[0];
    const now = Math.floor(Date.now() / 1000);
    const ttl = Number(body.ttl ?? 300);
    const claims = {
      iss: issuer,
      aud: clients[0].client_id,
      sub: 'test-user',
      iat: now,
      exp: now + ttl,
      ...(body.claims ?? {}),
    };
    const header = { alg: 'RS256', typ: 'JWT', kid: jwk.kid, ...(body.header ?? {}) };
    const token = await new SignJWT(claims)
      .setProtectedHeader(header)
      .sign(await importJWK(jwk, 'RS256'));
    return { token, kid: jwk.kid };
  },
};

async function testRoute(req, res, path) {
  if (!loopback(req)) {
    reply(res, 403, { error: 'test routes answer loopback peers only' });
    return;
  }
  const route = routes[path];
  if (!route || req.method !== 'POST') {
    reply(res, 404, { error: `no test route POST ${path}` });
    return;
  }
  try {
    reply(res, 200, await route(await readJson(req)));
  } catch (err) {
    reply(res, 400, { error: String(err?.message ?? err) });
  }
}

// ---------------------------------------------------------------------------
// the server

const server = createServer((req, res) => {
  const path = (req.url ?? '/').split('?')[0];
  if (path.startsWith('/test/')) {
    testRoute(req, res, path);
  } else if (path.startsWith('/interaction/')) {
    interaction(req, res).catch((err) => {
      console.error('interaction failed:', err);
      if (!res.headersSent) {
        res.writeHead(500, { 'content-type': 'text/plain' });
      }
      res.end(`interaction failed: ${err?.message ?? err}\n`);
    });
  } else {
    handler(req, res);
  }
});

server.listen(port, '127.0.0.1', () => {
  const actual = server.address().port;
  issuer = argv.issuer ?? process.env.OIDC_ISSUER ?? `http://127.0.0.1:${actual}`;
  provider = buildProvider();
  handler = provider.callback();
  process.stdout.write(`${JSON.stringify({ issuer, port: actual, clients: clients.map((c) => c.client_id) })}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
