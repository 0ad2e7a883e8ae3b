// browser.mjs: drive headless Debian Chromium (playwright-core) through a list of steps.
//
//   node tests/peers/browser.mjs --steps FILE [--out DIR]
//
// FILE is JSON {"steps":[...]}, run in order in one browser context:
//   {"goto": url}                          -> {"step":"goto","url":final,"status":N}
//   {"fill": {"selector": s, "value": v}}  -> {"step":"fill","selector":s}
//   {"click": selector}                    -> {"step":"click","selector":s,"url","status"}
//        (waits for the navigation the click starts, if any, to settle)
//   {"wait_url": prefix}                   -> {"step":"wait_url","url","status"}
//        (waits up to 15 s until the page URL starts with prefix)
//   {"save": name}                         -> {"step":"save","name","url","status","text"}
//        (text = document.body.innerText, or the raw body for non-HTML responses)
//   {"cookies": name}                      -> {"step":"cookies","name","cookies":[{name,value,
//        domain,path,httpOnly,secure,sameSite,expires}]}
// goto/fill/click time out after 15 s each. "status" is the HTTP status of the last main-frame navigation response.
//
// Success: stdout gets one line {"ok":true,"results":[one entry per step]}, exit 0.
// Failure (or the 60 s run timeout): one line {"ok":false,"error","url","step",
// "results":[so far],"screenshot":"OUT/failure.png" or null}, exit 1. OUT defaults to a temp dir.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const RUN_TIMEOUT_MS = 60_000;
const WAIT_URL_TIMEOUT_MS = 15_000;
const STEP_TIMEOUT_MS = 15_000; // default for goto, fill, click
const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--no-first-run',
];

function readArgs() {
  const { values } = parseArgs({ options: { steps: { type: 'string' }, out: { type: 'string' } } });
  if (!values.steps) throw new Error('usage: browser.mjs --steps FILE [--out DIR]');
  const { steps } = JSON.parse(fs.readFileSync(values.steps, 'utf8'));
  if (!Array.isArray(steps)) throw new Error('steps file must be {"steps":[...]}');
  return { steps, out: values.out };
}

// Remembers the last main-frame navigation response of the page.
function trackNavigations(page) {
  const nav = { response: undefined };
  page.on('response', (response) => {
    const request = response.request();
    if (request.isNavigationRequest() && request.frame() === page.mainFrame()) nav.response = response;
  });
  return nav;
}

const status = (nav) => nav.response?.status() ?? null;

// After an action, wait for a navigation it starts (if any) to load and go quiet.
async function settleAfter(page, action) {
  const navigated = page.waitForEvent('framenavigated', {
    predicate: (frame) => frame === page.mainFrame(),
    timeout: 10_000,
  }).catch(() => undefined);
  await action();
  await navigated;
  await page.waitForLoadState('load');
  await page.waitForLoadState('networkidle', { timeout: 5_000 }).catch(() => undefined);
}

async function pageText(page, nav) {
  const type = nav.response?.headers()['content-type'] ?? '';
  if (nav.response && type && !type.includes('html')) {
    try {
      return await nav.response.text();
    } catch {
      // fall through to the rendered text
    }
  }
  return page.evaluate(() => document.body?.innerText ?? '');
}

function cookieRecord(c) {
  const { name, value, domain, path: p, httpOnly, secure, sameSite, expires } = c;
  return { name, value, domain, path: p, httpOnly, secure, sameSite, expires };
}

async function runStep(step, { page, context, nav }) {
  if ('goto' in step) {
    const response = await page.goto(step.goto, { waitUntil: 'load' });
    if (response) nav.response = response;
    return { step: 'goto', url: page.url(), status: status(nav) };
  }
  if ('fill' in step) {
    await page.fill(step.fill.selector, String(step.fill.value));
    return { step: 'fill', selector: step.fill.selector };
  }
  if ('click' in step) {
    await settleAfter(page, () => page.click(step.click));
    return { step: 'click', selector: step.click, url: page.url(), status: status(nav) };
  }
  if ('wait_url' in step) {
    const prefix = step.wait_url;
    await page.waitForURL((u) => u.href.startsWith(prefix), { timeout: WAIT_URL_TIMEOUT_MS, waitUntil: 'commit' });
    await page.waitForLoadState('load');
    return { step: 'wait_url', url: page.url(), status: status(nav) };
  }
  if ('save' in step) {
    return { step: 'save', name: step.save, url: page.url(), status: status(nav), text: await pageText(page, nav) };
  }
  if ('cookies' in step) {
    return { step: 'cookies', name: step.cookies, cookies: (await context.cookies()).map(cookieRecord) };
  }
  throw new Error(`unknown step ${JSON.stringify(step)}`);
}

async function fail(state, err, outDir) {
  if (state.failing) return; // the run timeout and the step it interrupts both land here
  state.failing = true;
  const dir = outDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'browser-'));
  fs.mkdirSync(dir, { recursive: true });
  const screenshot = path.join(dir, 'failure.png');
  let url = null;
  let shot = null;
  try {
    url = state.page?.url() ?? null;
    if (state.page) {
      await state.page.screenshot({ path: screenshot, fullPage: true, timeout: 5_000 });
      shot = screenshot;
    }
  } catch (e) {
    console.error('screenshot failed:', e.message);
  }
  const error = String(err?.message ?? err).split('\n')[0];
  const line = { ok: false, error, url, step: state.index, results: state.results, screenshot: shot };
  await Promise.race([state.browser?.close(), new Promise((r) => { setTimeout(r, 5_000); })]).catch(() => undefined);
  process.stdout.write(`${JSON.stringify(line)}\n`);
  process.exit(1);
}

async function main() {
  const state = { results: [], index: null };
  let outDir;
  const timer = setTimeout(() => fail(state, new Error(`run timeout after ${RUN_TIMEOUT_MS} ms`), outDir), RUN_TIMEOUT_MS);
  try {
    const args = readArgs();
    outDir = args.out;
    state.browser = await chromium.launch({ executablePath: '/usr/bin/chromium', args: CHROMIUM_ARGS });
    state.context = await state.browser.newContext();
    state.context.setDefaultTimeout(STEP_TIMEOUT_MS);
    state.page = await state.context.newPage();
    state.nav = trackNavigations(state.page);
    for (const [index, step] of args.steps.entries()) {
      state.index = index;
      state.results.push(await runStep(step, state));
    }
    clearTimeout(timer);
    await state.browser.close();
    process.stdout.write(`${JSON.stringify({ ok: true, results: state.results })}\n`);
    process.exit(0);
  } catch (err) {
    clearTimeout(timer);
    await fail(state, err, outDir);
  }
}

main();
