// The sandbox chat page's client (index.html): polls /sandbox/state, renders the channel, threads,
// ephemerals, modals and the app's Home tab from the bot's own Block Kit, and sends the user's commands,
// clicks, modal submissions and Home tab openings to the sandbox server, which signs them and posts them to
// the bot the way Slack does.
"use strict";

const POLL_MS = 500;
let state = null;          // the last /sandbox/state answer
let lastJson = "";         // its text, to skip re-rendering when nothing changed
let openThread = null;     // ts of the parent whose thread pane is open
let modalKey = "";         // id+hash of the modal on screen, so typing is not wiped by a re-render
let confirming = null;     // {button, message, ephemeral} while a Block Kit confirm dialog is shown
let page = "channel";      // what the main pane shows: "channel", or "home" (the app's Home tab)
let homeAsked = false;     // the Home tab was opened and the bot's view may still be on its way
let homeKey = "";          // id+hash of the Home view on screen: re-rendered only when the bot publishes anew

const $ = (id) => document.getElementById(id);

// Emoji as coloured glyphs every font has (headless browsers often have no colour-emoji font).
const EMOJI = {
  rotating_light: ["⚠", "red"], rocket: ["➚", "blue"], white_check_mark: ["✔", "green"],
  heavy_check_mark: ["✔", "green"], x: ["✖", "red"], mag: ["⌕", "blue"], arrows_counterclockwise: ["↻", "blue"],
  hourglass: ["◷", "amber"], hourglass_flowing_sand: ["◷", "amber"], red_circle: ["●", "red"],
  large_green_circle: ["●", "green"], grey_question: ["?", "grey"], warning: ["⚠", "amber"],
  no_entry_sign: ["⊘", "red"], no_entry: ["⊘", "red"], lock: ["✱", "amber"], snowflake: ["❄", "blue"],
  memo: ["✎", "blue"], pencil: ["✎", "blue"], bar_chart: ["▥", "blue"], stopwatch: ["◷", "grey"],
  chart_with_upwards_trend: ["↗", "blue"], chart_with_downwards_trend: ["↘", "red"], tada: ["★", "green"],
  bell: ["♪", "amber"], information_source: ["ℹ", "blue"], clipboard: ["≡", "grey"],
  ice_cube: ["❄", "blue"], octagonal_sign: ["⊘", "red"], robot_face: ["⚙", "blue"], sunny: ["☀", "amber"],
};

function escapeHtml(text) {
  return String(text).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
}

// Slack's text arrives with &, < and > escaped as entities; undo that before escaping for HTML.
function unescapeSlack(text) {
  return text.replace(/&lt;/g, "<").replace(/&gt;/g, ">").replace(/&amp;/g, "&");
}

function nameOf(id) {
  return (state && state.names[id]) || id;
}

// <@U..>, <#C..|name>, <!subteam^S..|@name>, <!here>, <https://x|label>; anything else stays literal text.
function control(inner) {
  const [target, label] = inner.split("|", 2);
  if (target.startsWith("@")) {
    const id = target.slice(1);
    const me = state && id === state.me.id ? " me" : "";
    return `<span class="mention${me}" data-user="${escapeHtml(id)}">@${escapeHtml(label || nameOf(id))}</span>`;
  }
  if (target.startsWith("#")) {
    const id = target.slice(1);
    const name = label || (state && state.channels[id]) || id;
    return `<span class="mention">#${escapeHtml(name)}</span>`;
  }
  if (target.startsWith("!subteam^")) {
    return `<span class="mention">${escapeHtml(label || "@" + target.slice(9))}</span>`;
  }
  if (target.startsWith("!")) {
    return `<span class="mention">@${escapeHtml(target.slice(1).split("^")[0])}</span>`;
  }
  if (/^(https?:|mailto:)/.test(target)) {
    return `<a href="${escapeHtml(target)}" target="_blank" rel="noopener">${escapeHtml(label || target)}</a>`;
  }
  return null;
}

function styles(html) {
  return html
    .replace(/(^|[^\w*])\*([^*\n]+?)\*(?![\w*])/g, "$1<b>$2</b>")
    .replace(/(^|[^\w_])_([^_\n]+?)_(?![\w_])/g, "$1<i>$2</i>")
    .replace(/(^|[^\w~])~([^~\n]+?)~(?![\w~])/g, "$1<s>$2</s>")
    .replace(/:([a-z0-9_+-]+):/g, (all, name) => {
      const found = EMOJI[name];
      return found ? `<span class="emoji emoji-${found[1]}" title=":${name}:">${found[0]}</span>` : all;
    })
    .replace(/\n/g, "<br>");
}

// Controls become placeholders first, so *bold* and _italic_ can span a mention as they do in Slack.
function plainSegment(text) {
  const rendered = [];
  const marked = text.replace(/<([^<>\n]+)>/g, (all, inner) => {
    const html = control(inner);
    if (html === null) return all;
    rendered.push(html);
    return `\u0000${rendered.length - 1}\u0000`;
  });
  return styles(escapeHtml(unescapeSlack(marked))).replace(/\u0000(\d+)\u0000/g, (all, i) => rendered[Number(i)]);
}

function mrkdwn(text) {
  return String(text || "").split("```").map((part, i) => {
    if (i % 2 === 1) return `<pre class="code-block">${escapeHtml(unescapeSlack(part.replace(/^\n/, "")))}</pre>`;
    return part.split(/(`[^`\n]+`)/).map((seg) => (
      seg.length > 1 && seg.startsWith("`") && seg.endsWith("`")
        ? `<code>${escapeHtml(unescapeSlack(seg.slice(1, -1)))}</code>` : plainSegment(seg)
    )).join("");
  }).join("");
}

function textObject(obj) {
  if (!obj) return "";
  return obj.type === "mrkdwn" ? mrkdwn(obj.text) : styles(escapeHtml(obj.text || "")).replace(/<b>|<\/b>|<i>|<\/i>/g, "");
}

function timeOf(ts) {
  return new Date(parseFloat(ts) * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

function button(el, ctx) {
  const style = el.style ? ` ${escapeHtml(el.style)}` : "";
  return `<button class="btn${style}" data-action-id="${escapeHtml(el.action_id || "")}" ` +
    `data-block-id="${escapeHtml(ctx.blockId || "")}" data-ts="${escapeHtml(ctx.ts)}" ` +
    `data-ephemeral="${ctx.ephemeral ? 1 : 0}">${escapeHtml((el.text && el.text.text) || "")}</button>`;
}

function renderBlock(block, ctx) {
  const c = { ...ctx, blockId: block.block_id };
  switch (block.type) {
    case "section": {
      let inner = block.text ? `<div class="text">${textObject(block.text)}</div>` : "";
      if (block.fields) inner += `<div class="fields">${block.fields.map((f) => `<div>${textObject(f)}</div>`).join("")}</div>`;
      let accessory = "";
      if (block.accessory && block.accessory.type === "button") accessory = button(block.accessory, c);
      if (block.accessory && block.accessory.type === "image") {
        accessory = `<img src="${escapeHtml(block.accessory.image_url)}" alt="${escapeHtml(block.accessory.alt_text || "")}" width="72">`;
      }
      return `<div class="block section"><div class="section-main">${inner}</div>${accessory}</div>`;
    }
    case "context":
      return `<div class="block context">${(block.elements || []).map((e) => (
        e.type === "image" ? `<img src="${escapeHtml(e.image_url)}" alt="${escapeHtml(e.alt_text || "")}">`
          : `<span>${textObject(e)}</span>`)).join("")}</div>`;
    case "divider":
      return `<hr class="divider">`;
    case "header":
      return `<div class="block header">${escapeHtml((block.text && block.text.text) || "")}</div>`;
    case "actions":
      return `<div class="block actions">${(block.elements || []).map((e) => (
        e.type === "button" ? button(e, c) : `<span class="unsupported">[${escapeHtml(e.type)}]</span>`)).join("")}</div>`;
    case "image":
      return `<div class="block block-image">${block.title ? `<div class="file-title">${escapeHtml(block.title.text)}</div>` : ""}` +
        `<img src="${escapeHtml(block.image_url)}" alt="${escapeHtml(block.alt_text || "")}"></div>`;
    case "input": {
      const el = block.element || {};
      const err = ctx.errors && ctx.errors[block.block_id];
      const value = ctx.values && ctx.values[block.block_id] ? ctx.values[block.block_id] : "";
      const field = el.multiline
        ? `<textarea data-block-id="${escapeHtml(block.block_id)}" data-input-id="${escapeHtml(el.action_id)}">${escapeHtml(value)}</textarea>`
        : `<input type="text" data-block-id="${escapeHtml(block.block_id)}" data-input-id="${escapeHtml(el.action_id)}" value="${escapeHtml(value)}">`;
      return `<div class="block input-block"><label>${escapeHtml((block.label && block.label.text) || "")}</label>${field}` +
        (block.hint ? `<div class="hint">${escapeHtml(block.hint.text)}</div>` : "") +
        (err ? `<div class="error">${escapeHtml(err)}</div>` : "") + `</div>`;
    }
    default:
      return `<div class="block unsupported">[${escapeHtml(block.type)} block]</div>`;
  }
}

function renderFiles(files) {
  return (files || []).map((f) => {
    const src = `/sandbox/files/${encodeURIComponent(f.id)}`;
    const title = `<div class="file-title">${escapeHtml(f.title || f.name)}</div>`;
    if ((f.mimetype || "").startsWith("image/")) return `<div class="file">${title}<img class="file-image" src="${src}" alt="${escapeHtml(f.title || f.name)}"></div>`;
    return `<div class="file"><a class="file-link" href="${src}" target="_blank">${escapeHtml(f.name)}</a></div>`;
  }).join("");
}

function authorOf(msg) {
  const fromBot = !!msg.bot_id || msg.user === "U0ROLLBOT" || !!msg.ephemeral;
  return [fromBot, fromBot ? "rollback-bot" : nameOf(msg.user)];
}

// Like Slack, a message from the same author within 5 minutes of the previous one shows no avatar or name.
function continues(msg, prev) {
  return !!prev && !msg.ephemeral && !prev.ephemeral && authorOf(prev)[1] === authorOf(msg)[1] &&
    parseFloat(msg.ts) - parseFloat(prev.ts) < 300;
}

function renderList(messages, opts) {
  return messages.map((m, i) => renderMessage(m, { ...opts, grouped: continues(m, messages[i - 1]) })).join("");
}

function renderMessage(msg, opts) {
  const [fromBot, author] = authorOf(msg);
  const ctx = { ts: msg.ts, ephemeral: !!msg.ephemeral };
  const body = msg.blocks && msg.blocks.length
    ? msg.blocks.map((b) => renderBlock(b, ctx)).join("")
    : `<div class="text">${mrkdwn(msg.text)}</div>`;
  const edited = msg.edited ? ` <span class="edited">(edited)</span>` : "";
  const onlyYou = msg.ephemeral ? `<div class="only-you">Only visible to you</div>` : "";
  let replies = "";
  if (opts.inChannel && msg.reply_count) {
    const n = msg.reply_count;
    replies = `<button class="replies-link" data-thread="${escapeHtml(msg.ts)}">${n} ${n === 1 ? "reply" : "replies"}` +
      ` <span class="last">Last reply ${timeOf(msg.latest_reply)}</span></button>`;
  }
  if (opts.grouped) {
    return `<div class="message grouped" data-ts="${escapeHtml(msg.ts)}"><div class="gutter">${timeOf(msg.ts).slice(0, 5)}</div>` +
      `<div class="message-body">${body}${edited}${renderFiles(msg.files)}${replies}</div></div>`;
  }
  return `<div class="message${msg.ephemeral ? " ephemeral" : ""}" data-ts="${escapeHtml(msg.ts)}">` +
    `<div class="avatar${fromBot ? "" : " user"}">${fromBot ? "RB" : escapeHtml(author.slice(0, 2).toUpperCase())}</div>` +
    `<div class="message-body">${onlyYou}<div class="message-head"><span class="author">${escapeHtml(author)}</span>` +
    `${fromBot ? '<span class="app-badge">APP</span>' : ""}<span class="time">${timeOf(msg.ts)}</span></div>` +
    `${body}${edited}${renderFiles(msg.files)}${replies}</div></div>`;
}

function atBottom(el) {
  return el.scrollHeight - el.scrollTop - el.clientHeight < 40;
}

function render() {
  $("sidebar-channel").textContent = state.channel.name;
  $("header-channel").textContent = state.channel.name;
  $("thread-channel").textContent = state.channel.name;
  $("banner").innerHTML = mrkdwn(state.banner || "");
  $("banner").classList.toggle("hidden", !state.banner);
  $("composer-input").placeholder = `Message #${state.channel.name}, e.g. /rollback help`;

  const list = $("messages");
  const stick = atBottom(list);
  list.innerHTML = renderList(state.messages, { inChannel: true });
  if (stick) list.scrollTop = list.scrollHeight;

  const pane = $("thread");
  if (openThread) {
    const parent = state.messages.find((m) => m.ts === openThread);
    const replies = state.threads[openThread] || [];
    const body = $("thread-body");
    const stickThread = atBottom(body);
    body.innerHTML = (parent ? renderMessage(parent, { inChannel: false }) : "") +
      `<div class="reply-divider">${replies.length} ${replies.length === 1 ? "reply" : "replies"}</div>` +
      renderList(replies, { inChannel: false });
    if (stickThread) body.scrollTop = body.scrollHeight;
    pane.classList.remove("hidden");
  } else {
    pane.classList.add("hidden");
  }

  $("status-rows").innerHTML = (state.status || []).map(([label, value, tone]) => (
    `<dt>${escapeHtml(label)}</dt><dd class="${escapeHtml(tone || "")}" data-label="${escapeHtml(label)}">${escapeHtml(value)}</dd>`
  )).join("");
  $("status-panel").classList.toggle("hidden", !(state.status || []).length);

  renderHome();
  renderModal();
}

// The app's Home tab: the view the bot last published for this user (views.publish), in place of the channel.
function renderHome() {
  const onHome = page === "home";
  $("home").classList.toggle("hidden", !onHome);
  $("channel").classList.toggle("hidden", onHome);
  $("home-link").classList.toggle("active", onHome);
  $("channel-link").classList.toggle("active", !onHome);
  if (onHome) $("thread").classList.add("hidden");
  if (!onHome) {
    homeKey = "";
    return;
  }
  const view = state.home;
  const key = view ? `${view.id}/${view.hash}` : `none/${homeAsked}`;
  if (key === homeKey) return;  // the channel moved on, the tab did not: keep the page (and a click) steady
  homeKey = key;
  const ctx = { ts: "", ephemeral: false };
  $("home-body").innerHTML = view && view.blocks
    ? view.blocks.map((b) => renderBlock(b, ctx)).join("")
    : `<div class="home-empty">${homeAsked ? "Opening rollback-bot's Home tab…" : "Nothing published yet."}</div>`;
}

// A link to a message of this channel (the Home tab's thread links, Slack's permalink shape
// .../archives/<channel>/p<ts without its dot>) opens its thread here instead of leaving the page.
function threadOfLink(href) {
  const found = /\/archives\/([A-Z0-9]+)\/p(\d{10})(\d{6})/.exec(href || "");
  if (!found || !state || found[1] !== state.channel.id) return null;
  return `${found[2]}.${found[3]}`;
}

async function openHome() {
  page = "home";
  homeAsked = true;
  render();
  await post("/sandbox/home", { tab: "home" });  // Slack sends app_home_opened each time the tab is opened
  refresh();
}

// -- dialogs ---------------------------------------------------------------------------------------

function showConfirm(btn, el) {
  const c = el.confirm;
  confirming = btn;
  const style = c.style === "danger" ? "danger" : "primary";
  $("dialog").innerHTML = `<div class="dialog-title">${escapeHtml((c.title && c.title.text) || "Are you sure?")}</div>` +
    `<div class="dialog-body">${textObject(c.text)}</div>` +
    `<div class="dialog-buttons"><button class="btn" id="confirm-deny">${escapeHtml((c.deny && c.deny.text) || "Cancel")}</button>` +
    `<button class="btn ${style}" id="confirm-ok">${escapeHtml((c.confirm && c.confirm.text) || "Yes")}</button></div>`;
  $("overlay").classList.remove("hidden");
  $("confirm-deny").onclick = () => { confirming = null; renderModal(true); };
  $("confirm-ok").onclick = () => {
    const target = confirming;
    confirming = null;
    renderModal(true);
    sendAction(target, true);
  };
}

function modalValues() {
  const values = {};
  document.querySelectorAll("#dialog [data-input-id]").forEach((input) => {
    values[input.dataset.blockId] = values[input.dataset.blockId] || {};
    values[input.dataset.blockId][input.dataset.inputId] = input.value;
  });
  return values;
}

function renderModal(force, errors, problem) {
  if (confirming) return;
  const view = state && state.view;
  const overlay = $("overlay");
  if (!view) {
    modalKey = "";
    overlay.classList.add("hidden");
    return;
  }
  const key = view.id + "/" + view.hash;
  if (key === modalKey && !force) return;
  const typed = {};
  Object.entries(modalValues()).forEach(([block, byAction]) => { typed[block] = Object.values(byAction)[0]; });
  modalKey = key;
  const ctx = { ts: "", ephemeral: false, errors: errors || {}, values: typed };
  $("dialog").innerHTML = `<div class="dialog-title">${escapeHtml((view.title && view.title.text) || "")}</div>` +
    `<div class="dialog-body">${(view.blocks || []).map((b) => renderBlock(b, ctx)).join("")}</div>` +
    (problem ? `<div class="dialog-error">${escapeHtml(problem)}</div>` : "") +
    `<div class="dialog-buttons"><button class="btn" id="modal-close">${escapeHtml((view.close && view.close.text) || "Cancel")}</button>` +
    (view.submit ? `<button class="btn primary" id="modal-submit">${escapeHtml(view.submit.text)}</button>` : "") + `</div>`;
  overlay.classList.remove("hidden");
  $("modal-close").onclick = async () => { await post("/sandbox/close", { view_id: view.id }); refresh(); };
  if (view.submit) {
    $("modal-submit").onclick = async (event) => {
      event.target.disabled = true;
      const answer = await post("/sandbox/submit", { view_id: view.id, values: modalValues() });
      if (!answer.ok) {
        renderModal(true, answer.errors, answer.errors ? "" : answer.error);
        return;
      }
      refresh();
    };
  }
}

// -- talking to the sandbox server -------------------------------------------------------------------

async function post(path, body) {
  try {
    const response = await fetch(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    return await response.json();
  } catch (err) {
    return { ok: false, error: String(err) };
  }
}

async function sendAction(btn, confirmed) {
  btn.disabled = true;
  await post("/sandbox/action", {
    channel: state.channel.id, ts: btn.dataset.ts, action_id: btn.dataset.actionId,
    block_id: btn.dataset.blockId || null, ephemeral: btn.dataset.ephemeral === "1", confirmed,
  });
  refresh();
}

function findElement(btn) {
  const all = [...state.messages, ...Object.values(state.threads).flat()];
  const msg = all.find((m) => m.ts === btn.dataset.ts);
  for (const block of (msg && msg.blocks) || []) {
    if (btn.dataset.blockId && block.block_id !== btn.dataset.blockId) continue;
    for (const el of [...(block.elements || []), ...(block.accessory ? [block.accessory] : [])]) {
      if (el.action_id === btn.dataset.actionId) return el;
    }
  }
  return null;
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href]");
  const linked = link && threadOfLink(link.getAttribute("href"));
  if (linked) {
    event.preventDefault();
    page = "channel";
    openThread = linked;
    render();
    return;
  }
  const btn = event.target.closest("button[data-action-id]");
  if (btn && !btn.closest("#dialog")) {
    const el = findElement(btn);
    if (el && el.confirm) showConfirm(btn, el);
    else sendAction(btn, false);
    return;
  }
  const replies = event.target.closest("[data-thread]");
  if (replies) {
    openThread = replies.dataset.thread;
    render();
    $("thread-body").scrollTop = $("thread-body").scrollHeight;
  }
});

$("thread-close").addEventListener("click", () => { openThread = null; render(); });
$("home-link").addEventListener("click", openHome);
$("home-tab").addEventListener("click", openHome);
$("channel-link").addEventListener("click", () => { page = "channel"; render(); });

$("composer").addEventListener("submit", async (event) => {
  event.preventDefault();
  const input = $("composer-input");
  const text = input.value.trim();
  if (!text) return;
  input.value = "";
  await post("/sandbox/command", { text });
  refresh();
});

async function refresh() {
  try {
    const response = await fetch("/sandbox/state", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const text = await response.text();
    $("offline").classList.add("hidden");
    if (text === lastJson) return;
    lastJson = text;
    state = JSON.parse(text);
    render();
    document.body.dataset.ready = "1";
  } catch (err) {
    // the sandbox stopped (Ctrl-C) or is restarting: keep the last picture and try again
    document.body.dataset.ready = "0";
    $("offline").classList.remove("hidden");
  }
}

refresh();
setInterval(refresh, POLL_MS);
