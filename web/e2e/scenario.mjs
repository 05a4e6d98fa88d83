// The scenario in a real browser (Debian's chromium, driven by playwright-core):
// sign up, a streamed reply, stop, reload mid-reply, memory tool activity, the dashboard, the
// human block (with a stale edit merged), archival add/find/edit/delete, 375 px, budget used up,
// what the memory pass changed, the account deleted.
// Run by tests/web/test_browser.py, which starts the backend and scripts the model; it prints
// one JSON line (what it saw, and axe-core's serious or critical violations per page).
import { createRequire } from "node:module";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";

const require = createRequire(import.meta.url);
const BASE = process.env.AGENTMEM_URL;
const SHOTS = process.env.SCREENSHOT_DIR;
const TIMEOUT = 20_000;
const result = { steps: [], axe: {}, notes: {} };
mkdirSync(SHOTS, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  // No background traffic: this machine's network is closed.
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
const page = await context.newPage();
page.setDefaultTimeout(TIMEOUT);
const consoleErrors = [];
page.on("pageerror", (e) => consoleErrors.push(String(e)));

const step = (name) => result.steps.push(name);
async function axe(name) {
  await page.addScriptTag({ path: require.resolve("axe-core/axe.min.js") });
  const found = await page.evaluate(async () => {
    const run = await window.axe.run(document, { resultTypes: ["violations"] });
    return run.violations
      .filter((v) => v.impact === "serious" || v.impact === "critical")
      .map((v) => ({ id: v.id, impact: v.impact, nodes: v.nodes.map((n) => n.target.join(" ")) }));
  });
  result.axe[name] = found;
}
const shot = (name) => page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: false });
const assistant = () => page.locator("li.message.assistant").last();
const send = async (text) => {
  await page.getByLabel("Message", { exact: true }).fill(text);
  await page.getByRole("button", { name: "Send" }).click();
};
const api = (method, path, body) =>
  page.evaluate(
    async ([method, path, body]) => {
      const { access } = JSON.parse(localStorage.getItem("agentmem.session"));
      const res = await fetch(path, {
        method,
        headers: { Authorization: `Bearer ${access}`, "Content-Type": "application/json" },
        body: body ? JSON.stringify(body) : undefined,
      });
      return { status: res.status, body: await res.json().catch(() => null) };
    },
    [method, path, body],
  );

try {
  // Sign up.
  await page.goto(`${BASE}/`);
  await page.getByRole("heading", { name: "Create your account" }).waitFor();
  await axe("signup");
  await shot("signup");
  await page.getByLabel("Email").fill("grace@example.com");
  await page.getByLabel("Password").fill("correct horse battery staple");
  await page.getByRole("button", { name: "Sign up" }).click();
  await page.getByRole("button", { name: "Start a chat" }).click();
  await page.getByLabel("Message", { exact: true }).waitFor();
  step("signed up");

  // A reply streams in: its text is seen growing before it is whole.
  await send("Hello there");
  const lengths = new Set();
  const full = "Hello Grace, nice to meet you. How can I help you today with anything at all?";
  for (let i = 0; i < 400; i++) {
    const text = (await assistant().count()) ? await assistant().innerText() : "";
    if (text) lengths.add(text.length);
    if (text.includes("anything at all?")) break;
    await page.waitForTimeout(10);
  }
  await page.getByText(full).waitFor();
  result.notes.partialLengths = lengths.size;
  step("reply streamed");
  await page.getByRole("button", { name: "Send" }).waitFor();
  await axe("chat");
  await shot("chat");

  // Stop a long reply: it ends short of the whole story, marked stopped.
  await send("Tell me a long story");
  await assistant().getByText("Once").waitFor();
  await page.getByRole("button", { name: "Stop" }).click();
  await page.getByRole("button", { name: "Send" }).waitFor();
  await assistant().getByText("(stopped)").waitFor();
  result.notes.stoppedText = await assistant().innerText();
  step("stopped");

  // Reload mid-reply: the reply resumes and finishes.
  await send("Tell me another story");
  await assistant().getByText("Meanwhile").waitFor();
  await page.reload();
  await assistant().getByText("Meanwhile").waitFor();
  result.notes.afterReloadText = await assistant().innerText();
  await page.getByText("THE END.").waitFor({ timeout: 30_000 });
  result.notes.resumedText = await assistant().innerText();
  step("resumed after reload");

  // 409: another tab's reply is running in this conversation; this tab's message is refused
  // with a clear message, and the next one, once that reply is done, goes through.
  const otherTab = await page.evaluate(async () => {
    const { access } = JSON.parse(localStorage.getItem("agentmem.session"));
    const id = window.location.pathname.split("/").pop();
    const res = await fetch("/api/v1/chat/ui", {
      method: "POST",
      headers: { Authorization: `Bearer ${access}`, "Content-Type": "application/json" },
      body: JSON.stringify({
        id,
        trigger: "submit-message",
        messages: [{ id: "other-tab", role: "user", parts: [{ type: "text", text: "Other tab story" }] }],
      }),
    });
    window.otherTabDone = res.text();
    return res.status;
  });
  await send("Am I interrupting?");
  const conflict = page.getByRole("alert").filter({ hasText: "Conflict" });
  await conflict.waitFor();
  result.notes.conflict = { otherTab, alert: await conflict.innerText() };
  await page.evaluate(() => window.otherTabDone);
  step("409 shown");

  // The agent edits its memory: the tool call is shown.
  await send("Remember that I like green tea");
  await page.getByText(/Memory: core memory append ✓/).waitFor();
  await page.getByText("Noted: you like green tea.").waitFor();
  step("tool activity");

  // A second thing to remember, left to the memory pass (no tool call): the pass after each
  // turn notes "They work as a nurse." (and "They like green tea." for the turn above).
  await send("Remember that I work as a nurse");
  await page.getByText("Good to know.").waitFor();
  // The passes edit the human block: wait until they are all done, so the block editor below
  // opens on the block's last version (else its first save would meet a 412 of theirs).
  let passes = [];
  for (let i = 0; i < 200; i++) {
    passes = (await api("GET", "/api/v1/agent/memory/passes?limit=50")).body.items;
    const done = passes.every((p) => !["pending", "running"].includes(p.status));
    if (done && passes.reduce((n, p) => n + p.operations, 0) >= 2) break;
    await page.waitForTimeout(100);
  }
  result.notes.passes = passes.map((p) => `${p.status}:${p.operations}`);

  // Silent refresh: with a dead access token the first call gets a 401, the app refreshes the
  // tokens once and retries; the user sees nothing of it.
  const refreshes = [];
  page.on("request", (r) => r.url().endsWith("/api/v1/auth/refresh") && refreshes.push(r.url()));
  await page.evaluate(() => {
    const session = JSON.parse(localStorage.getItem("agentmem.session"));
    localStorage.setItem("agentmem.session", JSON.stringify({ ...session, access: "expired" }));
  });
  await page.reload();
  await page.getByLabel("Message", { exact: true }).waitFor();

  // The dashboard shows today's usage.
  await page.getByRole("link", { name: "Usage" }).click();
  await page.getByRole("heading", { name: "Usage" }).waitFor();
  await page.locator("figure.chart rect").first().waitFor();
  result.notes.messagesCard = await page.locator("dl[aria-label='Totals for the range'] dd").first().innerText();
  result.notes.refreshes = refreshes.length;
  result.notes.signedIn = await page.getByRole("button", { name: "Sign out" }).isVisible();
  await axe("dashboard");
  await shot("dashboard");
  step("dashboard");

  // The human block: saved, then a stale edit refused (another tab saved first), merged, saved.
  await page.getByRole("link", { name: "Memory" }).click();
  const human = page.getByLabel(/^human/);
  await human.fill("Name: Grace. Favourite animal: cats.");
  await page.getByRole("button", { name: "Save human" }).click();
  await page.getByRole("status").filter({ hasText: "Saved." }).first().waitFor();
  const other = await api("PATCH", "/api/v1/agent/memory/blocks/human", {
    value: "Name: Grace. Favourite animal: cats. Lives in Lisbon.",
  });
  result.notes.otherTab = other.status;
  await human.fill("Name: Grace. Favourite animal: cats. Plays chess.");
  await page.getByRole("button", { name: "Save human" }).click();
  await page.getByText("This block changed since you opened it").waitFor();
  await page.getByRole("button", { name: "Use the current value" }).click();
  await human.fill((await human.inputValue()) + " Plays chess.");
  await page.getByRole("button", { name: "Save human" }).click();
  await page.getByText("Saved.").first().waitFor();
  result.notes.humanBlock = (await api("GET", "/api/v1/agent/memory/blocks/human")).body.value;
  step("human block edited with a conflict merged");

  // Archival memory: add two, find one, edit it, delete the other.
  await page.getByLabel("New passage").fill("Grace's cat is called Miso");
  await page.getByRole("button", { name: "Add", exact: true }).click();
  await page.locator("ul.passages").getByText("Grace's cat is called Miso").waitFor();
  await page.getByLabel("New passage").fill("Grace takes the tram to work");
  await page.getByRole("button", { name: "Add", exact: true }).click();
  await page.locator("ul.passages").getByText("Grace takes the tram to work").waitFor();
  await page.getByLabel("Search archival memory").fill("Miso");
  await page.getByRole("button", { name: "Search", exact: true }).click();
  await page.locator("ul.passages").getByText("tram").waitFor({ state: "detached" });
  result.notes.found = await page.locator("ul.passages li").allInnerTexts();
  await page.getByRole("button", { name: "Edit: Grace's cat is called Miso" }).click();
  await page.getByLabel("Passage text").fill("Grace's cat is called Miso; he is grey");
  await page.getByRole("button", { name: "Save", exact: true }).click();
  await page.locator("ul.passages").getByText("he is grey").waitFor();
  await page.getByLabel("Search archival memory").fill("");
  await page.getByRole("button", { name: "Search", exact: true }).click();
  await page.getByRole("button", { name: "Delete: Grace takes the tram to work" }).click();
  await page.locator("ul.passages").getByText("tram").waitFor({ state: "detached" });
  // Paging: 10 a page, the rest behind "Load more".
  for (let i = 0; i < 10; i++) await api("POST", "/api/v1/agent/memory/archival", { text: `Note ${i}`, tags: [] });
  await page.getByRole("button", { name: "Search", exact: true }).click();
  await page.getByRole("button", { name: "Load more", exact: true }).click();
  await page.getByRole("button", { name: "Load more", exact: true }).waitFor({ state: "detached" });
  result.notes.passagesAfterPaging = await page.locator("ul.passages li").count();
  await axe("memory");
  await shot("memory");
  step("archival add, find, edit, delete");

  // The agent uses the edited human block (the message typed and sent from the keyboard).
  await page.getByRole("link", { name: "Chat" }).click();
  await page.getByLabel("Message", { exact: true }).focus();
  await page.keyboard.type("What is my favourite animal?");
  await page.keyboard.press("Enter");
  await page.getByText("Your favourite animal is cats.").waitFor();
  step("agent used the human block");

  // Conversations: rename this one, start another (listed first), delete it.
  const sidebar = page.getByRole("navigation", { name: "Conversations" });
  await sidebar.getByRole("button", { name: "Rename Hello there" }).click();
  await page.getByLabel("New title").fill("Grace's chat");
  await page.keyboard.press("Enter");
  await sidebar.getByRole("link", { name: "Grace's chat" }).waitFor();
  await sidebar.getByRole("button", { name: "New chat" }).click();
  await sidebar.getByRole("link", { name: "New chat" }).waitFor();
  result.notes.conversations = await sidebar.getByRole("link").allInnerTexts();
  page.once("dialog", (dialog) => dialog.accept());
  await sidebar.getByRole("button", { name: "Delete New chat" }).click();
  await sidebar.getByRole("link", { name: "New chat" }).waitFor({ state: "detached" });
  await sidebar.getByRole("link", { name: "Grace's chat" }).click();
  await page.getByText("Your favourite animal is cats.").waitFor();
  step("conversations renamed, created, deleted");

  // 375 px wide: nothing wider than the screen.
  await page.setViewportSize({ width: 375, height: 740 });
  result.notes.mobileOverflow = {};
  for (const [link, heading] of [["Usage", "Usage"], ["Memory", "Memory"], ["Chat", null]]) {
    await page.getByRole("link", { name: link }).click();
    if (heading) await page.getByRole("heading", { name: heading, exact: true }).waitFor();
    else await page.getByText("Your favourite animal is cats.").waitFor();
    await page.waitForTimeout(200);
    result.notes.mobileOverflow[link] = await page.evaluate(
      () => document.documentElement.scrollWidth - document.documentElement.clientWidth,
    );
    await axe(`${link.toLowerCase()}-375`);
  }
  await shot("chat-375");
  await page.setViewportSize({ width: 1280, height: 800 });
  step("375 px");

  // Budget used up: the budget is lowered to what is spent, the next message is refused.
  const budget = await api("GET", "/api/v1/user/budget");
  await api("POST", "/api/v1/user/budget", { max_budget: budget.body.spend });
  await send("One more question");
  const alert = page.getByRole("alert").filter({ hasText: "budget" });
  await alert.waitFor();
  result.notes.budgetAlert = await alert.innerText();
  await shot("budget-used-up");
  step("budget used up");

  // 429: messages past the per-user rate limit are refused with words, not a raw error.
  const limited = page.getByRole("alert").filter({ hasText: "Too many" });
  for (let i = 0; i < 30 && !(await limited.count()); i++) {
    await send(`Again ${i}`);
    await page.getByRole("alert").filter({ hasText: /budget|Too many/ }).waitFor();
  }
  result.notes.rateLimited = await limited.innerText();
  step("429 shown");

  // Signing out in another tab signs this one out too (the session is shared).
  const second = await context.newPage();
  await second.goto(`${BASE}/usage`);
  await second.getByRole("button", { name: "Sign out" }).click();
  await page.getByRole("heading", { name: "Create your account" }).waitFor();
  await second.close();
  step("signed out everywhere");

  // What the memory pass changed, on the memory page, newest first. The page asks for 20 at
  // a time; here each request asks for 1 (the query rewritten on its way), so the two
  // changes take two pages and "Load more changes" is what brings the second.
  await page.getByRole("button", { name: "I have an account: sign in" }).click();
  await page.getByLabel("Email").fill("grace@example.com");
  await page.getByLabel("Password").fill("correct horse battery staple");
  await page.getByRole("button", { name: "Sign in" }).click();
  await page.getByRole("button", { name: "Sign out" }).waitFor();
  await page.route("**/api/v1/agent/memory/changes?*", (route) => {
    const url = new URL(route.request().url());
    url.searchParams.set("limit", "1");
    return route.continue({ url: url.toString() });
  });
  await page.getByRole("link", { name: "Memory" }).click();
  const changes = page.getByRole("list", { name: "Memory changes" }).locator(":scope > li > p:first-child");
  await changes.first().waitFor();
  result.notes.changesFirstPage = await changes.allInnerTexts();
  await page.getByRole("button", { name: "Load more changes" }).click();
  await page.getByRole("button", { name: "Load more changes" }).waitFor({ state: "detached" });
  result.notes.changes = await changes.allInnerTexts();
  await page.getByText("Recent passes").click();
  result.notes.recentPasses = await page.getByRole("list", { name: "Recent memory passes" }).getByRole("listitem").allInnerTexts();
  await page.unroute("**/api/v1/agent/memory/changes?*");
  step("memory changes listed");

  // Delete the account from the usage page: a wrong password first (refused, said, nothing
  // deleted), then the right one; the sign-in page then says the account was deleted.
  await page.getByRole("link", { name: "Usage" }).click();
  const deletion = page.getByRole("region", { name: "Delete account" });
  const confirmButton = deletion.getByRole("button", { name: "Delete my account" });
  await deletion.getByLabel("Your password").fill("not my password");
  result.notes.enabledBeforeTypingDelete = await confirmButton.isEnabled();
  await deletion.getByLabel("Type DELETE to confirm").fill("DELETE");
  await confirmButton.click();
  const refused = deletion.getByRole("alert");
  await refused.waitFor();
  result.notes.wrongPassword = {
    alert: await refused.innerText(),
    passwordField: await deletion.getByLabel("Your password").inputValue(),
    signedIn: await page.getByRole("button", { name: "Sign out" }).isVisible(),
  };
  await deletion.getByLabel("Your password").fill("correct horse battery staple");
  await confirmButton.click();
  await page.getByRole("heading", { name: "Sign in" }).waitFor();
  result.notes.deletedNotice = await page.getByRole("status").innerText();
  result.notes.sessionAfterDeletion = await page.evaluate(() => localStorage.getItem("agentmem.session"));
  await axe("signin-after-deletion");
  step("account deleted");

  // Signing in again fails: the account is gone.
  await page.getByLabel("Email").fill("grace@example.com");
  await page.getByLabel("Password").fill("correct horse battery staple");
  await page.getByRole("button", { name: "Sign in" }).click();
  const signInRefused = page.getByRole("alert");
  await signInRefused.waitFor();
  result.notes.signInAgain = {
    alert: await signInRefused.innerText(),
    signedIn: await page.getByRole("button", { name: "Sign out" }).count(),
    login: await page.evaluate(async () => {
      const res = await fetch("/api/v1/auth/login", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ email: "grace@example.com", password: "correct horse battery staple" }),
      });
      return res.status;
    }),
  };
  step("signing in again refused");
} catch (error) {
  result.error = String(error?.stack ?? error);
  await shot("failure").catch(() => undefined);
} finally {
  result.pageErrors = consoleErrors;
  await browser.close();
  console.log(JSON.stringify(result));
}
