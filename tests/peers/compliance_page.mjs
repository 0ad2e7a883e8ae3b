// compliance_page.mjs: load costguard's compliance page (GET /admin/compliance) in headless
// Debian Chromium (playwright-core) and report what a person would see.
//
//   COMPLIANCE_TOKEN=… node tests/peers/compliance_page.mjs --url URL --screenshot FILE
//
// The admin API wants a bearer token, sent with every request of the page's context
// (extraHTTPHeaders); the token comes from the environment, never argv.
//
// One JSON line on stdout, exit 0: {"ok":true,"status","headers":{…},"console":[errors],
// "violations":[CSP violations],"summary_visible","summary_text","controls","badges",
// "fail_badge_color","title","screenshot"}. The caller asserts on it. Exit 1 with
// {"ok":false,"error"} if the page cannot be loaded at all (or the 60 s run timeout).

import { parseArgs } from 'node:util';
import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--no-first-run',
];

const { values } = parseArgs({ options: { url: { type: 'string' }, screenshot: { type: 'string' } } });
if (!values.url || !values.screenshot) {
  console.log(JSON.stringify({ ok: false, error: 'usage: compliance_page.mjs --url URL --screenshot FILE' }));
  process.exit(1);
}
const token = process.env.COMPLIANCE_TOKEN ?? '';
const timer = setTimeout(() => {
  console.log(JSON.stringify({ ok: false, error: 'run timed out after 60 s' }));
  process.exit(1);
}, 60_000);

let browser;
try {
  browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS });
  const context = await browser.newContext({
    extraHTTPHeaders: { Authorization: `Bearer ${token}` },
    viewport: { width: 1200, height: 900 },
  });
  // Runs before the page's own content (through the DevTools protocol, so the page's CSP,
  // which allows no script, does not stop it): collects CSP violations as the page sees them.
  await context.addInitScript(() => {
    window.__violations = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__violations.push({ directive: e.violatedDirective, blocked: e.blockedURI, sample: e.sample });
    });
  });
  const page = await context.newPage();
  const consoleErrors = [];
  page.on('console', (msg) => { if (msg.type() === 'error') consoleErrors.push(msg.text()); });
  page.on('pageerror', (err) => consoleErrors.push(`pageerror: ${err.message}`));
  const response = await page.goto(values.url, { waitUntil: 'load', timeout: 15_000 });
  const summary = page.locator('#summary');
  const summaryVisible = await summary.isVisible();
  const result = {
    ok: true,
    status: response?.status() ?? null,
    headers: response ? await response.allHeaders() : {},
    console: consoleErrors,
    violations: await page.evaluate(() => window.__violations ?? []),
    summary_visible: summaryVisible,
    summary_text: summaryVisible ? (await summary.innerText()) : '',
    controls: await page.locator('article.control').count(),
    badges: await page.locator('.badge').count(),
    fail_badge_color: await page.evaluate(() => {
      const b = document.querySelector('.badge.fail') ?? document.querySelector('.badge');
      return b ? getComputedStyle(b).backgroundColor : null;
    }),
    title: await page.title(),
    screenshot: values.screenshot,
  };
  fs.mkdirSync(path.dirname(values.screenshot), { recursive: true });
  await page.screenshot({ path: values.screenshot, fullPage: true });
  console.log(JSON.stringify(result));
  clearTimeout(timer);
  await browser.close();
  process.exit(0);
} catch (e) {
  console.log(JSON.stringify({ ok: false, error: String(e?.message ?? e) }));
  if (browser) await browser.close().catch(() => {});
  process.exit(1);
}
