// Drives Debian's chromium through the MLflow UI of a sweep made by tests/test_ui.py and prints
// what it saw as one JSON line: the trial rows under the sweep run, the metric names on the
// chart view, the compare view's heading, the experiment's Models tab, and the Evaluation runs
// view comparing the best trial's records (AFTER_RUN) with the start's (BEFORE_RUN).
// Screenshots go to OUT_DIR.
import { chromium } from 'playwright-core';

const [url, experimentId, outDir, afterRun, beforeRun] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium', args: ['--no-sandbox'] });
const seen = {};
try {
  const page = await browser.newPage({ viewport: { width: 1700, height: 1100 } });
  await page.goto(`${url}/#/experiments/${experimentId}/runs`);
  await page.getByText('Expand rows').waitFor({ timeout: 90000 });
  const close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]');
  if (await close.count()) await close.click();
  // the sweep's run: open its nested trial runs
  await page.locator('[data-component-id*="runnamecellrenderer"]').first().click();
  await page.getByText('trial-0', { exact: true }).first().waitFor({ timeout: 30000 });
  const body = await page.innerText('body');
  seen.trials = [...new Set(body.match(/trial-\d+/g) || [])].sort();
  await page.screenshot({ path: `${outDir}/runs.png` });
  // chart view: one chart per logged metric
  const views = page.locator('label:has(input[type="radio"])');
  await views.nth(1).click();
  await page.getByText('after/', { exact: false }).first().waitFor({ timeout: 30000 });
  await page.waitForTimeout(2000);
  seen.chart_metrics = [...new Set((await page.innerText('body'))
    .match(/\b(after|delta|before)\/[\w./-]+/g) || [])].sort();
  await page.screenshot({ path: `${outDir}/charts.png` });
  // back to the table: select the trials and compare them
  await views.nth(0).click();
  for (const name of seen.trials) {
    const row = page.locator('[role="row"]', { hasText: name }).first();
    await row.locator('input[type="checkbox"]').first().check();
  }
  await page.getByRole('button', { name: /^Compare/ }).first().click();
  await page.waitForURL(/compare-runs/, { timeout: 30000 });
  await page.getByText(/Comparing \d+ Runs/).first().waitFor({ timeout: 30000 });
  seen.compare_heading = (await page.getByText(/Comparing \d+ Runs/).first().innerText()).trim();
  seen.compare_url = page.url();
  // the Metrics box scrolls and renders only the rows near its view: scroll it through,
  // collecting every metric name it shows
  const first = page.getByText(/^after\//).first();
  await first.waitFor({ timeout: 30000 });
  const box = await first.evaluateHandle((el) => {
    let p = el;
    while (p && !(p.scrollHeight > p.clientHeight + 1 && getComputedStyle(p).overflowY !== 'visible')) {
      p = p.parentElement;
    }
    return p || document.scrollingElement;
  });
  const names = new Set();
  for (let i = 0, end = false; i < 60 && !end; i++) {
    end = await box.evaluate((b) => b.scrollTop + b.clientHeight >= b.scrollHeight - 1);
    for (const m of ((await page.innerText('body')).match(/\b(after|delta)\/[\w./-]+/g) || [])) {
      names.add(m);
    }
    await box.evaluate((b) => { b.scrollTop += 120; });
    await page.waitForTimeout(100);
  }
  seen.compare_metrics = [...names].sort();
  await page.screenshot({ path: `${outDir}/compare.png`, fullPage: true });
  // the experiment's Models tab: each trial's adapter as a LoggedModel, with its scores
  await page.goto(`${url}/#/experiments/${experimentId}/models`);
  await page.getByText('trial-0', { exact: true }).first().waitFor({ timeout: 30000 });
  await page.waitForTimeout(2000);
  const models = await page.innerText('body');
  seen.models = [...new Set(models.match(/trial-\d+/g) || [])].sort();
  seen.models_text = models.slice(0, 4000);
  await page.screenshot({ path: `${outDir}/models.png`, fullPage: true });
  // the Evaluation runs view: the best trial's per-example records against the start's
  await page.goto(`${url}/#/experiments/${experimentId}/evaluation-runs?selectedRunUuid=` +
                  `${afterRun}&compareToRunUuid=${beforeRun}`);
  const heading = page.getByText(/^Comparing/).first();
  await heading.waitFor({ timeout: 60000 });
  await page.getByText(/Assessments/).first().waitFor({ timeout: 30000 });
  await page.waitForTimeout(2000);
  seen.evaluation_heading = (await heading.locator('..').innerText()).replace(/\s+/g, ' ').trim();
  seen.evaluation_text = (await page.innerText('body')).slice(0, 6000);
  await page.screenshot({ path: `${outDir}/evaluations.png`, fullPage: true });
} catch (e) {
  seen.error = String(e).split('\n')[0];
} finally {
  await browser.close();
}
console.log(JSON.stringify(seen));
