// Drives the page in headless Chromium (playwright-core): loads it, feeds it files through its <input type=file>,
// and prints what it reports (the JSON of <pre id="results">) for each file, as one JSON document on stdout.
// Used by tests/test_web.py and benchmarks/bench_web.py.
//
//   node web/tools/drive.mjs '{"url": "http://127.0.0.1:8000/", "files": ["a.png"], "screenshot": "s.png",
//                             "screenshot_after": 0, "bench_runs": 0, "timeout_ms": 120000}'
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const args = JSON.parse(process.argv[2]);
const executablePath = args.chromium || "/usr/bin/chromium";
const timeout = args.timeout_ms || 120000;
const profile = mkdtempSync(join(tmpdir(), "ft-chromium-"));
// a fresh profile each time (playwright passes it to Chromium as --user-data-dir)
const browser = await chromium.launchPersistentContext(profile, {
  executablePath,
  headless: true,
  viewport: { width: 1280, height: 1000 },
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const result = { url: args.url, runs: [], console: [], requests: [] };
try {
  const page = browser.pages()[0] || await browser.newPage();
  page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") result.console.push(`${m.type()}: ${m.text()}`); });
  page.on("pageerror", (e) => result.console.push(`pageerror: ${e.message}`));
  page.on("request", (r) => result.requests.push(r.url()));
  const t0 = Date.now();
  await page.goto(args.url);
  const readState = async () => JSON.parse(await page.locator("#results").textContent());
  await page.waitForFunction(() => {
    const s = JSON.parse(document.getElementById("results").textContent).state;
    return s === "ready" || s === "error";
  }, null, { timeout });
  result.load_ms = Date.now() - t0;
  result.ready = await readState();
  for (let i = 0; i < (args.files || []).length; i++) {
    const file = args.files[i];
    const t1 = Date.now();
    await page.setInputFiles("#file", file);
    // While the page works, ping its main thread: the longest wait is how long the UI was blocked.
    const name = file.split("/").pop();
    let maxWait = 0;
    for (;;) {
      const t = Date.now();
      const st = await page.evaluate(() => new Promise((r) => setTimeout(() => r(
        JSON.parse(document.getElementById("results").textContent)), 0)));
      maxWait = Math.max(maxWait, Date.now() - t);
      if (st.file === name && (st.state === "done" || st.state === "error")) break;
      if (Date.now() - t1 > timeout) throw new Error(`timed out on ${name}`);
      await new Promise((r) => setTimeout(r, 25));
    }
    const state = await readState();
    state.max_ui_wait_ms = maxWait;
    state.wall_ms = Date.now() - t1;
    state.status_text = await page.locator("#status").textContent();
    state.warning_text = (await page.locator("#warning").isVisible()) ? await page.locator("#warning").textContent() : null;
    // the page must still respond after every file
    state.responsive = await page.evaluate(() => new Promise((r) => setTimeout(() => r(true), 0)));
    result.runs.push(state);
    if (args.screenshot && i === (args.screenshot_after ?? 0)) await page.screenshot({ path: args.screenshot, fullPage: true });
    if (args.bench_runs && i === (args.bench_after ?? 0)) {
      result.bench = await page.evaluate((n) => window.faceTransfer.benchmark(n, 5), args.bench_runs);
    }
  }
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
process.stdout.write(JSON.stringify(result));
