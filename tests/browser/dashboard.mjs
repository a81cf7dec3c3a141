// Drives Mooring's dashboard in Debian's chromium (playwright-core; it never downloads a browser).
// One phase per run; devcluster/tests/dashboard.rs runs the phases and does the side effects
// between them (MQTT clients, publishing, killing a node).
//
//   node dashboard.mjs <phase> [argument]
//
// Environment: DASHBOARD_URL (http://host:port), DASHBOARD_USER, DASHBOARD_PASSWORD,
// CLUSTER (namespace/name), SCREENSHOT_DIR. Exits non-zero with a message when a check fails.

import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set`);
  return v;
};
const url = env('DASHBOARD_URL');
const user = env('DASHBOARD_USER');
const password = env('DASHBOARD_PASSWORD');
const cluster = env('CLUSTER');
const shots = env('SCREENSHOT_DIR');
const [phase, arg] = process.argv.slice(2);
const clusterUrl = `${url}/clusters/${cluster}`;

class Failed extends Error {}
const check = (ok, message) => {
  if (!ok) throw new Failed(message);
};

/// Retries `probe` (which returns a truthy value when done) until `seconds` pass.
async function eventually(what, seconds, probe) {
  const deadline = Date.now() + seconds * 1000;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Failed(`${what}: not within ${seconds} s (last: ${last})`);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function shot(page, name) {
  mkdirSync(shots, { recursive: true });
  await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
}

async function signIn(page, password_ = password, { stay = false } = {}) {
  if (!stay) await page.goto(`${url}/login`);
  await page.fill('input[name=username]', user);
  await page.fill('input[name=password]', password_);
  await Promise.all([page.waitForLoadState('load'), page.click('[data-testid=login-submit]')]);
}

/// Opens `path` and waits until the page is hydrated (clicks work).
async function open(page, path) {
  await page.goto(path);
  await page.waitForSelector('body[data-hydrated=true]', { timeout: 30000 });
}

const phases = {
  async login(page) {
    await signIn(page, 'not-the-password');
    check(new URL(page.url()).pathname === '/login', `a wrong password left the login page: ${page.url()}`);
    check(await page.isVisible('[data-testid=login-error]'), 'no error shown for a wrong password');
    await shot(page, '01-login-refused');
    // A page asked for without a session sends to the login page.
    await page.goto(`${url}/alerts`);
    check(new URL(page.url()).pathname === '/login', 'the dashboard showed a page without a session');
    await signIn(page, password, { stay: true });
    check(new URL(page.url()).pathname === '/alerts', `sign-in did not go on to the page asked for: ${page.url()}`);
    await open(page, `${url}/`);
    const who = await page.textContent('[data-testid=whoami]');
    check(who.includes(user), `whoami says ${who}`);
    await page.waitForSelector('[data-testid=cluster-row]');
    const rows = await page.locator('[data-testid=cluster-row]').allTextContents();
    check(rows.some((r) => r.includes(cluster)), `the overview does not list ${cluster}: ${rows}`);
    await shot(page, '02-overview');
  },

  async nodes(page) {
    await signIn(page);
    await open(page, clusterUrl);
    // Live: telemetry rounds come every 10 s and the page refetches every 3 s, no reload.
    await eventually('3 nodes up and joined', 120, async () => {
      const rows = page.locator('[data-testid=node-row]');
      if ((await rows.count()) !== 3) return false;
      const status = await page.locator('[data-testid=node-status]').allTextContents();
      const membership = await page.locator('[data-testid=node-membership]').allTextContents();
      return status.every((s) => s.trim() === 'up') && membership.every((m) => m.trim() === 'joined')
        ? true
        : `status ${status}, membership ${membership}`;
    });
    check(await page.isVisible('[data-testid=membership-matrix]'), 'no membership matrix');
    const cells = await page.locator('[data-testid=membership-matrix] td').allTextContents();
    check(cells.length === 9 && cells.every((c) => c.trim() === '✓'), `matrix cells: ${cells}`);
    // Each HAProxy replica's view of each broker server, read from its stats page.
    await eventually('every load balancer backend UP', 90, async () => {
      const states = await page.locator('[data-testid=backend-row] .badge').allTextContents();
      return states.length >= 3 && states.every((s) => s.trim() === 'UP') ? true : `states ${states}`;
    });
    check((await page.locator('[data-testid=event-row]').count()) > 0, 'no Events listed');
    await shot(page, '03-cluster');
  },

  async kick(page) {
    const id = arg;
    await signIn(page);
    await open(page, `${clusterUrl}/clients`);
    await page.fill('[data-testid=client-search]', id);
    const row = page.locator(`[data-testid=client-row][data-client-id="${id}"]`);
    await eventually(`client ${id} listed`, 60, async () => (await row.count()) === 1);
    await shot(page, '04-clients');
    await row.locator('[data-testid=kick]').click();
    await page.waitForSelector('[data-testid=kick-confirm]');
    await shot(page, '05-kick-confirm');
    await page.click('[data-testid=kick-confirm]');
    const flash = await page.waitForSelector('[data-testid=flash]');
    const said = await flash.textContent();
    check(said.includes(`Disconnected ${id}`), `the kick said: ${said}`);
    await shot(page, '06-kicked');
  },

  async 'viewer-cannot-kick'(page) {
    const id = arg;
    await signIn(page);
    await open(page, `${clusterUrl}/clients`);
    await page.fill('[data-testid=client-search]', id);
    const row = page.locator(`[data-testid=client-row][data-client-id="${id}"]`);
    await eventually(`client ${id} listed`, 60, async () => (await row.count()) === 1);
    check((await page.locator('[data-testid=kick]').count()) === 0, 'a viewer sees a kick button');
    await shot(page, '07-clients-viewer');
    // Straight to the server function, with the viewer's own CSRF token: refused.
    const [ns, name] = cluster.split('/');
    const answer = await page.evaluate(async ({ ns, name, id }) => {
      const me = await (await fetch('/api/me', { method: 'POST' })).json();
      const r = await fetch('/api/kick_client', {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({ namespace: ns, name, client_id: id, csrf: me.csrf }),
      });
      return { status: r.status, text: await r.text() };
    }, { ns, name, id });
    check(answer.status >= 400 && answer.text.includes('only an admin'), `the server let a viewer kick: ${JSON.stringify(answer)}`);
  },

  async topics(page) {
    const topic = arg;
    await signIn(page);
    await open(page, `${clusterUrl}/topics`);
    const card = page.locator(`[data-testid=topic-chart][data-topic="${topic}"]`);
    await card.waitFor({ timeout: 30000 });
    const rate = await eventually(`a message rate on ${topic}`, 90, async () => {
      const text = await card.locator('[data-testid=topic-rate]').textContent();
      // "12.5 msg/s in · 25.0 msg/s out" (a broker that does not count a direction shows "—").
      const values = (text.match(/[0-9]+(\.[0-9]+)?/g) ?? []).map(Number);
      return values.some((v) => v > 0) ? text : false;
    });
    const lines = () => card.locator('polyline').evaluateAll((ps) => ps.map((p) => p.getAttribute('points') ?? ''));
    const before = await lines();
    const after = await eventually('the chart to move', 60, async () => {
      const now = await lines();
      return now.join('|') !== before.join('|') ? now : false;
    });
    check(after.some((l) => l.split(' ').length >= 2), `the chart has too few points: ${after}`);
    console.log(`topic ${topic}: ${rate}`);
    await shot(page, '08-topics');
  },

  async 'alert-fires'(page) {
    const name = arg;
    await signIn(page);
    await open(page, `${url}/alerts`);
    await eventually(`${name} firing`, 180, async () =>
      (await page.locator(`[data-testid=alert-active][data-name="${name}"]`).count()) > 0);
    await shot(page, '09-alert-firing');
  },

  async 'alert-resolves'(page) {
    const name = arg;
    await signIn(page);
    await open(page, `${url}/alerts`);
    await eventually(`${name} resolved`, 240, async () =>
      (await page.locator(`[data-testid=alert-active][data-name="${name}"]`).count()) === 0 &&
      (await page.locator(`[data-testid=alert-history][data-name="${name}"][data-state=resolved]`).count()) > 0);
    await shot(page, '10-alert-resolved');
    await open(page, clusterUrl);
    await shot(page, '11-cluster-after-repair');
  },
};

const run = phases[phase];
if (!run) {
  console.error(`unknown phase ${phase}; one of: ${Object.keys(phases).join(', ')}`);
  process.exit(2);
}
const profile = mkdtempSync(join(tmpdir(), 'mooring-chromium-'));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1400, height: 900 },
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const page = browser.pages()[0] ?? (await browser.newPage());
const errors = [];
page.on('pageerror', (e) => errors.push(String(e)));
let code = 0;
try {
  await run(page);
  check(errors.length === 0, `errors in the page: ${errors.join('; ')}`);
  console.log(`phase ${phase}: ok`);
} catch (e) {
  code = 1;
  console.error(`phase ${phase} FAILED: ${e instanceof Failed ? e.message : e.stack}`);
  await shot(page, `failed-${phase}`).catch(() => {});
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(code);
